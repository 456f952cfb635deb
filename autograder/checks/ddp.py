"""Checks for 04_ddp: setup_distributed, the sharded loader, the DDP wrapper, metrics, checkpoint (ddp_parts.py)
and the whole training script with its speed-up (ddp_train.py).

Each exercise's story reads top to bottom: what the learner writes, the per-rank
scenario (runs in every torchrun rank), and the judge (runs in the harness, names
the mistake in its hint). Every input is seeded, so each rank can rebuild what the
other ranks had without trusting communication.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .. import policy
from ..verdict import CheckFailed, expect
from . import DistributedCheck, Run, environment, register

# ---------------------------------------------------------------- helpers (run inside the ranks)


@contextmanager
def _patched(owner, name: str, replacement, learner=None):
    """Replace owner.name for the block; also any name in the learner's module bound to the original
    (`from torch import save` binds the function itself, which patching the module would miss)."""
    original = getattr(owner, name)
    aliases = [k for k, v in vars(learner).items() if v is original] if learner is not None else []
    setattr(owner, name, replacement)
    for k in aliases:
        setattr(learner, k, replacement)
    try:
        yield original
    finally:
        setattr(owner, name, original)
        for k in aliases:
            setattr(learner, k, original)


def _fingerprint(tensors) -> str:
    """A digest of the exact bytes of some tensors: equal digests mean bitwise-equal replicas."""
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _device_str(value) -> str:
    import torch

    return str(value) if isinstance(value, torch.device) else f"{type(value).__name__} {value!r}"


# ================================================================ ddp.init
# setup_distributed() must create the process group from torchrun's environment (env://),
# with the backend that fits the device (NCCL for GPUs, gloo for CPUs), and return
# cuda:LOCAL_RANK on a GPU host, else cpu; the rule is the one in autograder/policy.py.
#
# Each rank calls it twice:
# 1. on a simulated GPU host: torch.cuda reports 4 GPUs, the environment says RANK=7,
#    LOCAL_RANK=3, WORLD_SIZE=8, and init_process_group only records its arguments. This
#    tests the CUDA branch on a CPU machine: it must pick cuda:3 (not cuda:0, not cuda:7)
#    and NCCL. Nothing real is initialised.
# 2. for real, under torchrun's environment: init_process_group is watched; arguments that
#    would hang or crash (a hard-coded rank, NCCL without GPUs) are refused with an
#    explanation instead of being passed on. Then the group must work (one all_reduce).

SIM_ENV = {"RANK": "7", "LOCAL_RANK": "3", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}
SIM_GPUS = 4


class _Refused(BaseException):
    """init_process_group arguments the check does not pass on. BaseException: `except Exception`
    in the learner's code must not swallow it."""


def _init_args(real_init, args, kwargs) -> dict:
    import inspect

    bound = inspect.signature(real_init).bind_partial(*args, **kwargs).arguments
    rank, world = bound.get("rank", -1), bound.get("world_size", -1)
    return {"backend": None if bound.get("backend") is None else str(bound["backend"]),
            "init_method": bound.get("init_method"),
            "rank": None if rank in (None, -1) else rank,
            "world_size": None if world in (None, -1) else world,
            "store": bound.get("store") is not None,
            "device_id": None if bound.get("device_id") is None else str(bound.get("device_id"))}


def _backend_ok(backend: str | None, device_type: str, expected: str) -> bool:
    if backend is None:
        return False
    backend = backend.lower()
    return backend == expected or f"{device_type}:{expected}" in backend.replace(" ", "")


def _problem_with_init(args: dict, env: dict, device_type: str, expected_backend: str) -> str | None:
    """Why these init_process_group arguments are wrong for this rank, or None."""
    if args["rank"] is not None and str(args["rank"]) != env["RANK"]:
        return f"rank={args['rank']!r} passed to init_process_group by the process whose RANK is {env['RANK']}"
    if args["world_size"] is not None and str(args["world_size"]) != env["WORLD_SIZE"]:
        return f"world_size={args['world_size']!r} passed to init_process_group, but WORLD_SIZE is {env['WORLD_SIZE']}"
    if args["init_method"] not in (None, "env://"):
        return f"init_method={args['init_method']!r} instead of torchrun's environment (env://)"
    if not _backend_ok(args["backend"], device_type, expected_backend):
        return f"backend {args['backend']!r} on a {device_type.upper()} rank (expected {expected_backend!r})"
    return None


def _simulate_gpu_host(learner) -> dict:
    """Call setup_distributed() as if on rank 7 of 8 with 4 GPUs per node; nothing is initialised."""
    import torch
    import torch.distributed as dist

    record: dict = {"init": None, "set_device": []}

    def fake_init(*args, **kwargs):
        record["init"] = _init_args(real_init, args, kwargs)

    def fake_set_device(device):
        record["set_device"].append(str(device))

    fakes = [(torch.cuda, "is_available", lambda: True), (torch.cuda, "device_count", lambda: SIM_GPUS),
             (torch.cuda, "set_device", fake_set_device),
             (torch.cuda, "current_device", lambda: int(SIM_ENV["LOCAL_RANK"])),
             (dist, "init_process_group", fake_init), (dist, "is_initialized", lambda: record["init"] is not None),
             (dist, "get_rank", lambda group=None: int(SIM_ENV["RANK"])),
             (dist, "get_world_size", lambda group=None: int(SIM_ENV["WORLD_SIZE"])),
             (dist, "get_backend", lambda group=None: (record["init"] or {}).get("backend"))]
    accel = getattr(torch, "accelerator", None)
    if accel is not None:
        fakes += [(accel, name, value) for name, value in
                  (("is_available", lambda: True), ("device_count", lambda: SIM_GPUS),
                   ("current_accelerator", lambda *a, **k: torch.device("cuda")),
                   ("set_device_index", fake_set_device), ("set_device_idx", fake_set_device))
                  if hasattr(accel, name)]
    real_init = dist.init_process_group
    with ExitStack() as stack:
        stack.enter_context(environment(dict(SIM_ENV)))
        for owner, name, value in fakes:
            stack.enter_context(_patched(owner, name, value, learner))
        try:
            device = learner.setup_distributed()
        except Exception as exc:  # reported by the judge, with the simulation explained
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return {"device": _device_str(device), "init": record["init"], "set_device": record["set_device"]}


def _vote(folder: Path, ctx, problem: str | None) -> str | None:
    """Post this rank's verdict on its init_process_group arguments, wait for every rank's; return a
    peer's refusal, if any. Then either every rank calls the real init, or none does (no hang)."""
    import json

    (folder / f".vote{ctx.rank}").write_text(json.dumps(problem))
    (folder / f".vote{ctx.rank}").rename(folder / f"vote{ctx.rank}")
    deadline = time.monotonic() + ctx.time_limit
    while time.monotonic() < deadline:
        votes = {r: folder / f"vote{r}" for r in range(ctx.world_size)}
        if all(v.exists() for v in votes.values()):
            return next((f"rank {r}: {json.loads(v.read_text())}" for r, v in votes.items()
                         if r != ctx.rank and json.loads(v.read_text())), None)
        gone = [r for r in votes if not votes[r].exists() and (folder / f"done{r}").exists()]
        if gone:
            return f"rank {gone[0]} returned from setup_distributed() without calling init_process_group"
        time.sleep(0.005)
    return "not every rank called init_process_group"


def _init_scenario(ctx, learner):
    import torch
    import torch.distributed as dist

    out = {"simulated": _simulate_gpu_host(learner), "expected_device": ctx.device,
           "expected_backend": ctx.backend}
    folder = ctx.job_dir / "ddp_init"
    folder.mkdir(exist_ok=True)
    real_init = dist.init_process_group
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE")}
    seen: list[dict] = []

    def watched_init(*args, **kwargs):
        found = _init_args(real_init, args, kwargs)
        seen.append(found)
        problem = _problem_with_init(found, env, torch.device(ctx.device).type, ctx.backend)
        peer = _vote(folder, ctx, problem)
        if problem or peer:
            out.update(refused=problem) if problem else out.update(peer_refused=peer)
            raise _Refused(problem or peer)
        return real_init(*args, **kwargs)

    try:
        with _patched(dist, "init_process_group", watched_init, learner):
            device = learner.setup_distributed()
    except _Refused:
        out["init"] = seen[-1]
        return out
    finally:
        (folder / f"done{ctx.rank}").touch()
    out.update(init=seen[-1] if seen else None, device=_device_str(device), initialized=dist.is_initialized())
    if dist.is_initialized():
        out.update(backend=str(dist.get_backend()), rank=dist.get_rank(), world_size=dist.get_world_size())
        t = torch.tensor([float(ctx.rank + 1)], device=ctx.device)
        dist.all_reduce(t)
        out["all_reduce"] = t.item()
    return out


def _judge_init(run: Run) -> str:
    ws = run.world_size
    for o in run.ranks:
        r, res = o.rank, o.result
        sim = res["simulated"]
        where = "on a simulated GPU host (CUDA available, RANK=7, LOCAL_RANK=3, WORLD_SIZE=8)"
        expect("error" not in sim, f"rank {r}: setup_distributed() raised {sim.get('error')} {where}",
               "On a GPU host setup_distributed() should only pick the device, set it, and create the group; "
               "this part of the check pretends CUDA exists (nothing can run on that GPU).")
        expect(sim["init"] is not None, f"rank {r}: setup_distributed() never called dist.init_process_group {where}",
               "Create the process group in every case: dist.init_process_group(backend=...).")
        problem = _problem_with_init(sim["init"], SIM_ENV, "cuda", "nccl")
        if problem:
            _fail_init_args(f"rank {r} {where}: {problem}", sim["init"], gpu=True)
        device = sim["device"]
        expect(device != "cuda:0", f"rank {r}: returned cuda:0 {where}; expected cuda:3",
               "Every process on a node would use GPU 0: pick the GPU by LOCAL_RANK, "
               "torch.device('cuda', int(os.environ['LOCAL_RANK'])).")
        expect(device != "cuda:7", f"rank {r}: returned cuda:7 {where}; expected cuda:3",
               "RANK counts processes across all nodes; a node has only LOCAL_WORLD_SIZE GPUs: "
               "use LOCAL_RANK to pick the GPU.")
        expect(device == "cuda:3", f"rank {r}: returned {device} {where}; expected cuda:3",
               "When torch.cuda.is_available(), return torch.device('cuda', LOCAL_RANK).")

    refused = [o for o in run.ranks if "refused" in o.result]
    if refused:
        _fail_init_args(f"rank {refused[0].rank}: {refused[0].result['refused']}", refused[0].result["init"], gpu=False)
    for o in run.ranks:
        r, res = o.rank, o.result
        expect("peer_refused" not in res, f"{res.get('peer_refused')}",
               "Every rank must create the process group: call dist.init_process_group in setup_distributed().")
        expect(res["device"] == res["expected_device"],
               f"rank {r}: returned {res['device']}; expected {res['expected_device']} on this machine",
               "Return torch.device('cpu') when torch.cuda.is_available() is False, else "
               "torch.device('cuda', LOCAL_RANK); a torch.device, not a str.")
        expect(res["initialized"], f"rank {r}: no process group after setup_distributed()",
               "Call dist.init_process_group(...) and do not destroy the group before returning.")
        expect(res["rank"] == r and res["world_size"] == ws,
               f"rank {r}: the group says rank {res['rank']} of {res['world_size']}, expected rank {r} of {ws}",
               "Let init_process_group read RANK and WORLD_SIZE from the environment (do not pass them).")
        expect(res["all_reduce"] == ws * (ws + 1) / 2,
               f"rank {r}: an all_reduce over the new group gave {res['all_reduce']}, expected {ws * (ws + 1) / 2}",
               "The group must contain every rank: init_process_group with torchrun's environment.")
    return f"setup_distributed() created the {run.ranks[0].result['backend']} group on all {ws} ranks, " \
           f"returned {run.ranks[0].result['device']}, and picks cuda:LOCAL_RANK with NCCL on a GPU host"


def _fail_init_args(message: str, args: dict, *, gpu: bool) -> None:
    if "rank=" in message:
        raise CheckFailed(message, "Do not hard-code rank=0 (or any rank): every process would claim that rank and "
                                   "the group would never form. Leave rank and world_size out: env:// reads them "
                                   "from RANK and WORLD_SIZE, which torchrun sets for each process.")
    if "world_size=" in message:
        raise CheckFailed(message, "Leave world_size out: torchrun sets WORLD_SIZE for every process.")
    if "init_method" in message:
        raise CheckFailed(message, "torchrun exports MASTER_ADDR and MASTER_PORT: use the default init_method "
                                   "(env://) instead of an address of your own.")
    if args["backend"] is None:
        raise CheckFailed(message, "Pass the backend explicitly: 'nccl' when CUDA is available, else 'gloo'.")
    if gpu:
        raise CheckFailed(message, "With GPUs use NCCL (backend='nccl'): gloo would move every gradient through "
                                   "the CPU.")
    raise CheckFailed(message, "NCCL only drives GPUs: always-NCCL fails on a CPU machine. Choose the backend "
                               "from the device: 'nccl' if torch.cuda.is_available() else 'gloo'.")


def _explain_init(error: dict) -> str | None:
    text = error["message"]
    if "trying to initialize the default process group twice" in text:
        return "setup_distributed() must create the group once; do not call it twice or init twice inside it."
    if error["type"] == "KeyError":
        return "Read LOCAL_RANK (and nothing else) from os.environ; torchrun sets it for every process."
    return None


register(DistributedCheck(id="ddp.init", functions=("setup_distributed",), scenario=_init_scenario,
                          judge=_judge_init, init_group=False, explain=_explain_init))


# ================================================================ ddp.data
# make_train_loader(dataset, batch_size) must give each rank a disjoint share of the data
# (a DistributedSampler), and start_epoch(loader, epoch) must reshuffle (set_epoch).
# The dataset here is made of indices: item i is (tensor(i), i % 10), so each rank reports
# exactly which samples it saw, in which order, epoch after epoch. With a dataset size
# that does not divide by the world size, DistributedSampler (drop_last=False) pads the
# last round with ceil(n / ws) * ws - n repeated samples; exactly that padding is accepted.

class IndexDataset:
    """n items; item i is (tensor(i), i % 10): an image's place taken by its index.

    A plain class (DataLoader and DistributedSampler only need __len__ and __getitem__), defined
    at module level so that loader worker processes can unpickle it."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        import torch

        return torch.tensor(i), i % 10


def _data_scenario(ctx, learner):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    n, batch_size, epochs = ctx.params["size"], ctx.params["batch_size"], ctx.params["epochs"]
    dataset = IndexDataset(n)
    loader = learner.make_train_loader(dataset, batch_size)
    sampler = getattr(loader, "sampler", None)
    info = {"loader": type(loader).__name__, "is_loader": isinstance(loader, DataLoader),
            "loader_drop_last": bool(getattr(loader, "drop_last", False)), "sampler": type(sampler).__name__,
            "distributed": isinstance(sampler, DistributedSampler),
            "sampler_rank": getattr(sampler, "rank", None), "num_replicas": getattr(sampler, "num_replicas", None),
            "shuffle": getattr(sampler, "shuffle", None), "drop_last": getattr(sampler, "drop_last", None)}
    epochs_seen, batch_sizes = [], []
    for epoch in range(epochs):
        learner.start_epoch(loader, epoch)
        seen = []
        for batch in loader:
            indices = batch[0] if isinstance(batch, (list, tuple)) else batch
            indices = torch.as_tensor(indices).reshape(-1)
            seen += indices.tolist()
            batch_sizes.append(len(indices))
        epochs_seen.append(seen)
    return {**info, "epochs": epochs_seen, "batch_sizes": sorted(set(batch_sizes))}


def _judge_data(run: Run) -> str:
    ws, n = run.world_size, run.params["size"]
    batch_size, results = run.params["batch_size"], run.results()
    share = math.ceil(n / ws)
    padding = share * ws - n
    for r, res in enumerate(results):
        expect(res["is_loader"], f"rank {r}: make_train_loader returned a {res['loader']}",
               "Return a torch.utils.data.DataLoader.")
    for epoch in range(run.params["epochs"]):
        per_rank = [res["epochs"][epoch] for res in results]
        label = f"epoch {epoch}"
        if ws > 1 and all(len(set(s)) == n for s in per_rank):
            raise CheckFailed(f"{label}: every rank iterated over the whole dataset ({n} samples each, "
                              f"{ws} ranks)",
                              "Each rank must see only its share: build the DataLoader with "
                              "sampler=DistributedSampler(dataset, shuffle=True) (and no shuffle=True on the "
                              "DataLoader). Without it, every rank repeats the whole epoch.")
        if ws > 1 and all(sorted(s) == sorted(per_rank[0]) for s in per_rank):
            raise CheckFailed(f"{label}: all {ws} ranks received the same samples",
                              "The sampler was built with the wrong rank (the same on every process): leave "
                              "rank and num_replicas out of DistributedSampler(...) so it reads them from the "
                              "process group (or pass dist.get_rank(), not LOCAL_RANK or 0).")
        counts: dict[int, int] = {}
        for s in per_rank:
            for i in s:
                counts[i] = counts.get(i, 0) + 1
        missing = sorted(set(range(n)) - set(counts))
        strange = sorted(i for i in counts if not (isinstance(i, int) and 0 <= i < n))
        expect(not strange, f"{label}: the loader produced items {strange[:5]} that are not in the dataset",
               "Load the dataset you were given; do not transform the samples.")
        if missing:
            dropped = any(res["drop_last"] or res["loader_drop_last"] for res in results)
            raise CheckFailed(f"{label}: {len(missing)} of {n} samples were never seen (e.g. {missing[:5]})",
                              "Keep drop_last=False (the default) on the sampler and the loader: every sample "
                              "must be used; the sampler pads the last round instead." if dropped
                              else "Together the ranks must cover the dataset: use DistributedSampler with the "
                                   "process group's rank and world size.")
        extra = sum(counts.values()) - n
        lengths = [len(s) for s in per_rank]
        expect(extra <= padding,
               f"{label}: {extra} samples were seen more than once (the sampler's padding allows {padding}); "
               f"samples per rank {lengths}",
               "The ranks' shares overlap: the sampler's num_replicas and rank must be the process group's "
               "world size and this process's rank.")
        expect(len(set(lengths)) == 1,
               f"{label}: ranks saw different numbers of samples: {lengths}",
               "Every rank must take the same number of steps, or DDP's all-reduce waits forever: "
               "DistributedSampler gives equal shares.")
    for r, res in enumerate(results):
        expect(res["distributed"], f"rank {r}: the loader's sampler is a {res['sampler']}, not a DistributedSampler",
               "Use torch.utils.data.DistributedSampler: it splits the data by rank and pads to equal shares.")
        expect(max(res["batch_sizes"] or [0]) == min(batch_size, share),
               f"rank {r}: batches of {res['batch_sizes']} samples; expected batch_size={batch_size}",
               "Pass batch_size to the DataLoader: it is the per-rank batch.")
    for epoch in range(1, run.params["epochs"]):
        before = [res["epochs"][epoch - 1] for res in results]
        now = [res["epochs"][epoch] for res in results]
        if before == now:
            if not all(res["shuffle"] for res in results):
                raise CheckFailed(f"epochs {epoch - 1} and {epoch} visited the samples in the same order",
                                  "Shuffle: DistributedSampler(dataset, shuffle=True) (the default), then "
                                  "start_epoch must call loader.sampler.set_epoch(epoch).")
            raise CheckFailed(f"epochs {epoch - 1} and {epoch} visited the samples in the same order",
                              "DistributedSampler shuffles with seed + epoch: start_epoch must call "
                              "loader.sampler.set_epoch(epoch), or every epoch repeats the first order.")
    pad = f", {padding} padded" if padding else ""
    return (f"{ws} ranks saw disjoint shares of {share} samples covering all {n}{pad}, "
            f"reshuffled every epoch ({run.params['epochs']} epochs)")


def _explain_data(error: dict) -> str | None:
    if "has no attribute 'set_epoch'" in error["message"]:
        return ("Only a DistributedSampler has set_epoch: the loader was built without one. Give the DataLoader "
                "sampler=DistributedSampler(dataset, shuffle=True), and call loader.sampler.set_epoch(epoch).")
    return None


register(DistributedCheck(id="ddp.data", functions=("make_train_loader", "start_epoch"), scenario=_data_scenario,
                          judge=_judge_data, explain=_explain_data,
                          defaults={"size": 53, "batch_size": 4, "epochs": 3}))


# ================================================================ ddp.wrap
# wrap_model(model, device) must move the model and wrap it in a real
# DistributedDataParallel (device_ids only on CUDA). Each rank starts from different
# weights (DDP must broadcast rank 0's), trains `steps` SGD steps on its own slice of a
# seeded global batch, and compares with a single-process model trained from rank 0's
# weights on the whole global batch. A comm hook (wrapping DDP's own allreduce_hook)
# counts the gradient buckets that were all-reduced: the communication is observed,
# not inferred from the numbers. The model has no BatchNorm (norm=False): BatchNorm
# statistics over a rank's slice differ from those over the global batch.
#
# Tolerance: DDP averages per-rank mean gradients; the reference takes one mean over
# the global batch. In float32 the two sums run in different orders, which changes
# results in the last bits (~1e-7 relative per step); over a few steps with momentum
# that stays far below 1e-4 absolute, while training without the all-reduce (each rank
# on its own slice) moves weights by ~1e-2. TF32 is off so GPUs compare at float32 too.

WRAP_TOLERANCE = 1e-4


def _small_model(seed: int, norm: bool):
    import torch

    from eurosat.model import EuroSATNet

    torch.manual_seed(seed)
    return EuroSATNet(width=4, blocks=2, norm=norm)


def _global_batch(seed: int, step: int, rows: int, size: int):
    import torch

    g = torch.Generator().manual_seed(10_000 * seed + step)
    return torch.randn(rows, 3, size, size, generator=g), torch.randint(0, 10, (rows,), generator=g)


def _train_reference(model, steps: int, seed: int, rows: int, size: int, part: slice | None = None):
    """SGD on the global batch (or on one slice of it): what DDP must reproduce."""
    import copy

    import torch
    import torch.nn.functional as F

    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        x, y = _global_batch(seed, step, rows, size)
        if part is not None:
            x, y = x[part], y[part]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _wrap_scenario(ctx, learner):
    import torch
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    seed, steps, per_rank, size = ctx.seed, ctx.params["steps"], ctx.params["batch_per_rank"], ctx.params["image_size"]
    rows = per_rank * ctx.world_size
    start = _small_model(100 * seed, norm=False)              # rank 0's initial weights
    model = _small_model(100 * seed + ctx.rank, norm=False)   # other ranks start elsewhere
    device = torch.device(ctx.device)
    wrapped = learner.wrap_model(model, device)
    if not isinstance(wrapped, DDP):
        return {"is_ddp": False, "type": type(wrapped).__name__,
                "is_model": wrapped is model or type(wrapped).__name__ == type(model).__name__}
    inner = wrapped.module
    out = {"is_ddp": True, "device_ids": wrapped.device_ids, "expected_device": str(device),
           "param_devices": sorted({str(p.device) for p in inner.parameters()})}
    if out["param_devices"] != [str(device)]:
        return out

    buckets = {"calls": 0, "numel": 0}

    def counting_allreduce(state, bucket):
        buckets["calls"] += 1
        buckets["numel"] += bucket.buffer().numel()
        return default_hooks.allreduce_hook(state, bucket)

    try:
        wrapped.register_comm_hook(None, counting_allreduce)
        out["hooked"] = True
    except RuntimeError:   # the learner registered a hook already: the numbers below still decide
        out["hooked"] = False
    mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        x, y = _global_batch(seed, step, rows, size)
        opt.zero_grad()
        F.cross_entropy(wrapped(x[mine].to(device)), y[mine].to(device)).backward()
        opt.step()

    def max_diff(a, b) -> float:
        return max((pa.detach().cpu() - pb.detach().cpu()).abs().max().item()
                   for pa, pb in zip(a.parameters(), b.parameters()))

    reference = _train_reference(start, steps, seed, rows, size)
    alone = _train_reference(start, steps, seed, rows, size, part=mine)
    out.update(fingerprint=_fingerprint(inner.parameters()), diff=max_diff(inner, reference),
               alone_diff=max_diff(alone, reference), moved=max_diff(start, reference),
               buckets_per_step=buckets["calls"] / steps, numel_per_step=buckets["numel"] / steps,
               n_params=sum(p.numel() for p in inner.parameters()))
    return out


def _judge_wrap(run: Run) -> str:
    results = run.results()
    for r, res in enumerate(results):
        if not res["is_ddp"]:
            raise CheckFailed(f"rank {r}: wrap_model returned " + ("the model itself, not wrapped in a "
                              "DistributedDataParallel" if res["is_model"] else
                              f"a {res['type']}, not a DistributedDataParallel"),
                              "Wrap the model: DistributedDataParallel(model.to(device), device_ids=...). Without "
                              "DDP nothing averages the gradients and the replicas drift apart.")
        expect(res["param_devices"] == [res["expected_device"]],
               f"rank {r}: the model's parameters are on {', '.join(res['param_devices'])}, not on "
               f"{res['expected_device']}",
               "Move the model to the device before wrapping: model.to(device).")
    expect(all(res["fingerprint"] == results[0]["fingerprint"] for res in results),
           "after training, the replicas' parameters differ between ranks",
           "DDP keeps replicas identical by all-reducing every gradient: train through the wrapped model.")
    res = results[0]
    if res["hooked"]:
        expect(res["buckets_per_step"] >= 1, "no gradient all-reduce was observed during backward",
               "Train through the DDP-wrapped model so that backward() all-reduces the gradients.")
        expect(res["numel_per_step"] >= res["n_params"],
               f"only {res['numel_per_step']:.0f} of {res['n_params']} gradient values were all-reduced per step",
               "Every parameter's gradient must be all-reduced: wrap the whole model.")
    expect(res["moved"] > 100 * WRAP_TOLERANCE, "internal: the reference did not train", "")
    if res["diff"] > WRAP_TOLERANCE:
        alone = abs(res["diff"] - res["alone_diff"]) < WRAP_TOLERANCE
        raise CheckFailed(f"after {run.params['steps']} steps the parameters differ from one model trained on the "
                          f"global batch by up to {res['diff']:.2e} (tolerance {WRAP_TOLERANCE:.0e})"
                          + (": each rank trained on its own data only" if alone else ""),
                          "Return the DistributedDataParallel wrapper itself, built over the default process "
                          "group, so gradients are averaged over all ranks.")
    buckets = f", {res['buckets_per_step']:.0f} bucket(s) all-reduced per step" if res["hooked"] else ""
    return (f"wrap_model() returned a DistributedDataParallel; after {run.params['steps']} steps on {run.world_size} "
            f"ranks the replicas are identical and match one model trained on the global batch "
            f"(max difference {res['diff']:.1e}){buckets}")


def _explain_wrap(error: dict) -> str | None:
    if "device_ids" in error["message"]:
        return ("device_ids is only for CUDA modules: device_ids=[0] on CPU fails. Pass "
                "device_ids=[device.index] when device.type == 'cuda', else leave it out (None).")
    return None


register(DistributedCheck(id="ddp.wrap", functions=("wrap_model",), scenario=_wrap_scenario, judge=_judge_wrap,
                          explain=_explain_wrap, defaults={"steps": 4, "batch_per_rank": 4, "image_size": 16}))


# ================================================================ ddp.metrics
# reduce_metrics(correct, total, loss_sum) must return the global (accuracy, mean loss):
# sums over ranks divided by the global count. The ranks hold different numbers of
# samples, so an average of per-rank averages is wrong too, and each common mistake gives
# a different number that the judge recognises.

def _rank_counts(seed: int, rank: int) -> tuple[int, int, float]:
    import torch

    g = torch.Generator().manual_seed(1000 * seed + rank)
    total = 5 + 9 * rank + int(torch.randint(0, 10, (1,), generator=g))
    correct = int(total * (0.2 + 0.6 * torch.rand(1, generator=g).item()))   # accuracies differ by rank
    loss_sum = float(total * (0.3 + 0.4 * rank + torch.rand(1, generator=g).item()))
    return correct, total, round(loss_sum, 6)


def _metrics_scenario(ctx, learner):
    import torch

    got = learner.reduce_metrics(*_rank_counts(ctx.seed, ctx.rank))
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return {"kind": type(got).__name__}
    try:
        values = [float(v.item() if isinstance(v, torch.Tensor) else v) for v in got]
    except (TypeError, ValueError, RuntimeError):
        return {"kind": "pair of " + ", ".join(type(v).__name__ for v in got)}
    return {"kind": "pair", "values": values, "all_reduce": ctx.calls.get("all_reduce", 0)}


def _metrics_candidates(seed: int, ws: int, rank: int) -> dict[str, tuple[float, float]]:
    """What reduce_metrics returns on `rank` when done right and when done in each usual wrong way."""
    counts = [_rank_counts(seed, r) for r in range(ws)]
    c, t, l = (sum(x[i] for x in counts) for i in range(3))
    mine = counts[rank]
    means = [(x[0] / x[1], x[2] / x[1]) for x in counts]
    return {
        "right": (c / t, l / t),
        "local": (mine[0] / mine[1], mine[2] / mine[1]),
        "summed": (c / t, l),
        "summed_means": (c / t, sum(m[1] for m in means)),
        "mean_of_means": (sum(m[0] for m in means) / ws, sum(m[1] for m in means) / ws),
        "loss_by_local_count": (c / t, l / mine[1]),
    }


METRICS_HINTS = {
    "local": ("this rank's own metrics, not reduced over ranks",
              "Each rank only counted its own samples: dist.all_reduce the sums (correct, total, loss_sum) "
              "with ReduceOp.SUM before dividing."),
    "summed": ("the mean loss is the summed loss, not averaged",
               "After summing loss_sum over ranks, divide it by the summed total (the global sample count)."),
    "summed_means": ("the per-rank mean losses were summed, not averaged",
                     "Sum loss_sum and total over ranks, then divide: summing the ranks' mean losses counts "
                     "every rank's mean once, whatever its size."),
    "mean_of_means": ("an average of per-rank averages",
                      "Ranks hold different numbers of samples: sum correct, total and loss_sum over ranks "
                      "(all_reduce SUM), then divide by the global total. gloo has no AVG; AVG would be wrong "
                      "here anyway."),
    "loss_by_local_count": ("the summed loss divided by this rank's count",
                            "Reduce total as well, and divide the global loss sum by the global total."),
}


def _judge_metrics(run: Run) -> str:
    ws = run.world_size
    close = lambda a, b: all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a, b))  # noqa: E731
    for o in run.ranks:
        r, res = o.rank, o.result
        expect(res["kind"] == "pair", f"rank {r}: reduce_metrics returned {res['kind']}, not (accuracy, mean_loss)",
               "Return a tuple of two numbers: (accuracy, mean_loss).")
        got = res["values"]
        candidates = _metrics_candidates(run.params.get("seed", 0), ws, r)
        right = candidates.pop("right")
        if close(got, right):
            continue
        # A whole wrong pair first (e.g. both local), then a right accuracy with a wrong loss.
        wrong = [name for name, pair in candidates.items() if close(got, pair)]
        wrong += [name for name, pair in candidates.items() if close(got[:1], right[:1]) and close(got[1:], pair[1:])]
        expected = f"expected {right[0]:.4f}, {right[1]:.4f} over all {ws} ranks"
        if wrong:
            what, hint = METRICS_HINTS[wrong[0]]
            raise CheckFailed(f"rank {r}: got accuracy {got[0]:.4f}, mean loss {got[1]:.4f}: {what} ({expected})",
                              hint)
        raise CheckFailed(f"rank {r}: got accuracy {got[0]:.4f}, mean loss {got[1]:.4f}; {expected}",
                          "accuracy = sum of correct / sum of total, mean loss = sum of loss_sum / sum of total, "
                          "each sum taken over all ranks with dist.all_reduce.")
    acc, loss = run.ranks[0].result["values"]
    return f"reduce_metrics() gave the global accuracy {acc:.4f} and mean loss {loss:.4f} on all {ws} ranks " \
           f"(unequal samples per rank)"


register(DistributedCheck(id="ddp.metrics", functions=("reduce_metrics",), scenario=_metrics_scenario,
                          judge=_judge_metrics))


# ================================================================ ddp.checkpoint
# save_checkpoint(model, path) gets the DDP-wrapped model and the same path on every rank.
# torch.save is watched: each call is recorded (which rank, what object) and delayed a
# little before writing, so that a rank that returns without waiting for the writer (no
# barrier) finds no file. Right after save_checkpoint returns, every rank loads the file
# into a plain EuroSATNet with strict=True and compares every tensor with the trained model.

SAVE_DELAY = 0.5   # seconds each torch.save waits before writing (exposes a missing barrier)


def _describe_saved(obj) -> dict:
    import torch
    from torch import nn

    if isinstance(obj, nn.Module):
        return {"kind": f"module {type(obj).__name__}"}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)
        return {"kind": "state_dict", "prefixed": sum(k.startswith("module.") for k in keys), "keys": len(keys)}
    return {"kind": type(obj).__name__}


def _checkpoint_scenario(ctx, learner):
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = torch.device(ctx.device)
    model = _small_model(100 * ctx.seed, norm=True).to(device)     # with BatchNorm: buffers must be saved too
    wrapped = DDP(model, device_ids=policy.ddp_device_ids(ctx.device))
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    for step in range(2):  # the same batch on every rank: parameters and buffers stay identical
        x, y = _global_batch(ctx.seed, step, 8, 16)
        opt.zero_grad()
        F.cross_entropy(wrapped(x.to(device)), y.to(device)).backward()
        opt.step()
    folder = ctx.job_dir / "checkpoint"
    folder.mkdir(exist_ok=True)
    path = folder / ctx.params["filename"]

    saves = []

    def watched_save(obj, f, *args, **kwargs):
        saves.append({"target": str(f), **_describe_saved(obj)})
        time.sleep(SAVE_DELAY)
        return real_save(obj, f, *args, **kwargs)

    with _patched(torch, "save", watched_save, learner) as real_save:
        learner.save_checkpoint(wrapped, str(path))
    out = {"saves": saves, "path": str(path), "exists": path.exists()}
    if not out["exists"]:
        return out
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # a pickled module, or a file still being written
        out["load_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return out
    out["saved"] = _describe_saved(saved)
    plain = _small_model(0, norm=True)
    try:
        plain.load_state_dict(saved, strict=True)
    except Exception as exc:
        out["strict_error"] = str(exc).splitlines()[0][:300] + " ..."
        return out
    trained = model.state_dict()
    out["mismatched"] = [k for k, v in plain.state_dict().items() if not torch.equal(v, trained[k].cpu())]
    return out


def _judge_checkpoint(run: Run) -> str:
    results = run.results()
    writers = [r for r, res in enumerate(results) if res["saves"]]
    ws = run.world_size
    if len(writers) > 1:
        raise CheckFailed(f"ranks {writers} all called torch.save on the same file",
                          "Only one rank should write: `if dist.get_rank() == 0: torch.save(...)`. Several "
                          "writers to one file can leave it corrupt, and waste I/O on every rank.")
    expect(writers, "no rank called torch.save", "Save with torch.save(state_dict, path) on rank 0.")
    expect(writers == [0], f"rank {writers[0]} wrote the checkpoint, not rank 0",
           "By convention rank 0 writes (dist.get_rank() == 0): it exists in every job, whatever its size.")
    save = results[0]["saves"][0]
    expect(len(results[0]["saves"]) == 1, f"rank 0 called torch.save {len(results[0]['saves'])} times",
           "Save the checkpoint once.")
    if save["kind"].startswith("module"):
        raise CheckFailed(f"rank 0 saved the whole {save['kind'][7:]} object, not a state dict",
                          "Save model.module.state_dict(): a state dict loads into any EuroSATNet, a pickled "
                          "module depends on the class's code and DDP's internals.")
    if save["kind"] == "state_dict" and save["prefixed"]:
        raise CheckFailed(f"the saved state dict's keys start with 'module.' ({save['prefixed']} of "
                          f"{save['keys']} keys): it is the DDP wrapper's",
                          "Save the wrapped model's state dict, model.module.state_dict(): its keys have no "
                          "'module.' prefix, so the file loads into the plain model with strict=True.")
    for r, res in enumerate(results):
        if not res["exists"]:
            raise CheckFailed(f"rank {r}: no checkpoint at {Path(res['path']).name} right after "
                              "save_checkpoint() returned (rank 0 was still writing)",
                              "Add dist.barrier() after rank 0's torch.save (on every rank, outside the if): "
                              "nobody returns before the file is complete.")
        if "load_error" in res:
            raise CheckFailed(f"rank {r}: the checkpoint could not be loaded right after save_checkpoint() "
                              f"returned: {res['load_error']}",
                              "Save a state dict (tensors only), and add dist.barrier() after rank 0's "
                              "torch.save so nobody reads a half-written file.")
        if "strict_error" in res:
            raise CheckFailed(f"rank {r}: the checkpoint does not load into the plain model with strict=True: "
                              f"{res['strict_error']}",
                              "Save model.module.state_dict(): the whole state of the wrapped model, with its "
                              "own key names.")
        expect(not res["mismatched"],
               f"rank {r}: the checkpoint's {', '.join(res['mismatched'][:3])} differ from the trained model's",
               "Save the model's current state at the time of the call, not an earlier copy.")
    return f"rank 0 alone wrote {save['keys']} tensors; on all {ws} ranks the file was complete on return, " \
           f"loaded into the plain model with strict=True and matched the trained weights"


def _explain_checkpoint(error: dict) -> str | None:
    if "module" in error["message"] and "has no attribute" in error["message"]:
        return "save_checkpoint receives the DDP-wrapped model: its .module is the plain model."
    return None


register(DistributedCheck(id="ddp.checkpoint", functions=("save_checkpoint",), scenario=_checkpoint_scenario,
                          judge=_judge_checkpoint, explain=_explain_checkpoint,
                          defaults={"filename": "model.pt"}))


# ================================================================ ddp.train
# The whole script, ddp_train.py, imported in every rank and driven through its main(argv):
#
# 1. Runs. Each call of main() is one torchrun-like run: the check gives it a fresh
#    rendezvous (MASTER_PORT picked by rank 0, a store of its own) and the environment of
#    either 1 rank (rank 0 alone; the other ranks wait) or all ranks. The same processes
#    alternate: warm-up on all ranks, then `repeats` pairs of (1 rank, N ranks) in the
#    order AB, BA, AB... (autograder/measure.py), on the same synthetic images
#    (--synthetic, generated once per process), the same global work.
# 2. Observation. A global forward pre-hook sees every training-mode forward: of the
#    EuroSATNet (images per rank, the time of the first one, the trained replica) and of
#    a DistributedDataParallel wrapper. A run lasts from the earliest rank's first training
#    forward to the slowest rank's return from main() (data generation, group set-up and
#    model construction are not timed; training, evaluation and the checkpoint are).
# 3. Correctness, from the first N-rank run: each rank trained on its share of the images
#    (not the whole set), through DDP, replicas identical and changed by training; rank 0's
#    metrics JSON reports the validation accuracy and loss that the final model really
#    has on the whole validation set; the checkpoint loads into the plain model.
# 4. Speed (unless repeats=0: a correctness-only variant): the median over pairs of
#    t(1 rank) / t(N ranks) must reach min_efficiency x ideal (course.yaml, per profile);
#    ideal is the number of ranks, on the cpu profile at most the number of cores. A script
#    in which every rank trains on every image, or whose ranks take turns, gets about 1x.

BUSY = 0.1   # above this share of a timed run spent waiting for a core, a slow result is blamed on the machine


def _wait_for(condition, ctx, what: str) -> None:
    """Poll the file system (there may be no process group) until `condition()`; stop if a peer failed."""
    deadline = time.monotonic() + ctx.time_limit
    while not condition():
        if any(not _ok(path) for path in ctx.job_dir.glob("rank*.json")):
            raise RuntimeError(f"another rank failed while this one waited for {what}; see its output")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _ok(path: Path) -> bool:
    import json

    try:
        return json.loads(path.read_text()).get("ok", True)
    except (OSError, ValueError):
        return True   # being written


def _file_barrier(folder: Path, tag: str, ctx) -> None:
    """Every rank reached the end of run `tag` (the ranks that sat it out included)."""
    (folder / f"{tag}.rank{ctx.rank}").touch()
    _wait_for(lambda: all((folder / f"{tag}.rank{r}").exists() for r in range(ctx.world_size)), ctx,
              f"the other ranks to finish run {tag}")


def _rendezvous_port(folder: Path, tag: str, ctx) -> int:
    """Rank 0 picks a free port for this run's store and publishes it; the others read it."""
    from ..launch import free_port

    path = folder / f"{tag}.port"
    if ctx.rank == 0:
        tmp = folder / f".{tag}.port.tmp"
        tmp.write_text(str(free_port()))
        tmp.rename(path)
    _wait_for(path.exists, ctx, f"rank 0's port for run {tag}")
    return int(path.read_text())


class _TrainingProbe:
    """A global forward pre-hook: what the EuroSATNet and any DDP wrapper did in training mode."""

    def __init__(self):
        import torch

        from eurosat.model import EuroSATNet
        from torch.nn.parallel import DistributedDataParallel

        self._torch, self._net, self._ddp = torch, EuroSATNet, DistributedDataParallel
        self.reset()
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    def reset(self) -> None:
        self.images, self.ddp_forwards, self.first, self.model, self.initial = 0, 0, None, None, None

    def _hook(self, module, args):
        if not (module.training and self._torch.is_grad_enabled()):
            return
        if isinstance(module, self._ddp):
            self.ddp_forwards += 1
        elif isinstance(module, self._net):
            if self.first is None:
                self.first = time.monotonic()
                self.model, self.initial = module, _fingerprint(module.parameters())
            self.images += len(args[0]) if args else 0


def _waited_for_cpu() -> float:
    """Seconds this thread has spent runnable but not running (Linux schedstat run_delay; 0 elsewhere).

    It grows only when other programs hold the cores, not while a rank sleeps waiting for a
    peer, so it tells a busy machine apart from ranks that serialise."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _train_run(ctx, learner, probe: _TrainingProbe, folder: Path, tag: str, world: int, images: int) -> dict | None:
    """One call of main() on ranks 0..world-1 with a fresh rendezvous; None on the ranks that sat out."""
    import torch.distributed as dist

    result = None
    if ctx.rank < world:
        p = ctx.params
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_rendezvous_port(folder, tag, ctx)),
               "RANK": str(ctx.rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(ctx.local_rank if world > 1 else 0),
               "LOCAL_WORLD_SIZE": os.environ.get("LOCAL_WORLD_SIZE") if world > 1 else "1",
               "TORCHELASTIC_USE_AGENT_STORE": "False"}   # rank 0 hosts this run's store
        argv = ["--epochs", str(p["epochs"]), "--batch-size", str(p["batch_size"]), "--seed", str(ctx.seed),
                "--synthetic", str(images), "--metrics", str(folder / f"{tag}.json"),
                "--checkpoint", str(folder / f"{tag}.pt")]
        probe.reset()
        waited = _waited_for_cpu()
        with environment(env):
            try:
                learner.main(argv)
            finally:
                end = time.monotonic()
                if dist.is_initialized():   # a script that forgot to clean up must not break the next run
                    dist.destroy_process_group()
        result = {"tag": tag, "world": world, "first": probe.first, "end": end, "images": probe.images,
                  "waited_for_cpu": _waited_for_cpu() - waited,
                  "ddp_forwards": probe.ddp_forwards, "initial": probe.initial,
                  "final": _fingerprint(probe.model.parameters()) if probe.model is not None else None,
                  "argv": argv}
    _file_barrier(folder, tag, ctx)
    return result


def _verify_outputs(learner, probe: _TrainingProbe, run: dict) -> dict:
    """Rank 0, after the correctness run: the metrics JSON against the model itself, and the checkpoint."""
    import json

    import torch
    import torch.nn.functional as F

    from eurosat.model import EuroSATNet

    out: dict = {}
    argv = run["argv"]
    metrics_path, checkpoint_path = Path(argv[argv.index("--metrics") + 1]), Path(argv[argv.index("--checkpoint") + 1])
    try:
        history = json.loads(metrics_path.read_text())["epochs"]
        out["reported"] = [float(history[-1]["val_accuracy"]), float(history[-1]["val_loss"])]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        out["metrics_error"] = f"{type(exc).__name__}: {exc}"[:200]
    model = probe.model
    if model is not None:
        _, val_set, _ = learner.load_data(learner.parse_args(argv))
        images = torch.stack([val_set[i][0] for i in range(len(val_set))])
        labels = torch.tensor([int(val_set[i][1]) for i in range(len(val_set))])
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            logits = model(images.to(device)).cpu()
        out["actual"] = [(logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()]
        out["n_val"] = len(val_set)
        try:
            plain = EuroSATNet()
            plain.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True), strict=True)
            out["checkpoint_matches"] = _fingerprint(plain.parameters()) == _fingerprint(model.parameters())
        except Exception as exc:
            out["checkpoint_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return out


def _train_scenario(ctx, learner):
    import eurosat.data

    from ..measure import pair_order

    p = ctx.params
    folder = ctx.job_dir / "ddp_train"
    folder.mkdir(exist_ok=True)
    # Synthetic images are generated once per process and reused by every run: not what is timed.
    cache: dict = {}
    real_synthetic = eurosat.data.synthetic_tensors

    def synthetic_once(n, *, seed=0, size=eurosat.data.IMAGE_SIZE):
        if (n, seed, size) not in cache:
            cache[n, seed, size] = real_synthetic(n, seed=seed, size=size)
        return cache[n, seed, size]

    probe = _TrainingProbe()
    runs: list[dict] = []
    with ExitStack() as stack:
        stack.enter_context(_patched(eurosat.data, "synthetic_tensors", synthetic_once, learner))
        stack.callback(probe.handle.remove)
        ws = ctx.world_size
        if ws > 1 and p["repeats"] > 0:
            _train_run(ctx, learner, probe, folder, "warmup", ws, p["warmup_images"])
            order = [(f"{side}{i}", 1 if side == "a" else ws) for i, pair in enumerate(pair_order(p["repeats"]))
                     for side in pair]
        else:   # correctness only: one run on all ranks
            order = [("b0", ws)]
        check = {}
        for tag, world in order:
            result = _train_run(ctx, learner, probe, folder, tag, world, p["images"])
            if result is not None:
                runs.append(result)
            if tag == "b0" and ctx.rank == 0:
                check = _verify_outputs(learner, probe, result)
    return {"runs": runs, "check": check, "cpus": len(os.sched_getaffinity(0))}


def _speedup(run: Run) -> dict | None:
    """Paired speed-up and the pass line (details['speedup'] for the widget), or None with one rank."""
    from ..measure import summarize

    ws, p = run.world_size, run.params
    if ws == 1 or p["repeats"] < 1:
        return None
    by_tag: dict[str, list[dict]] = {}
    for o in run.ranks:
        for r in o.result["runs"]:
            by_tag.setdefault(r["tag"], []).append(r)
    missing = [t for t, rs in by_tag.items() if any(r["first"] is None for r in rs)]
    if missing:
        return None
    seconds = {t: max(r["end"] for r in rs) - min(r["first"] for r in rs) for t, rs in by_tag.items()}
    # The share of each timed run that its busiest rank spent waiting for a core (other programs).
    busy = max(max(r.get("waited_for_cpu", 0.0) for r in rs) / seconds[t] for t, rs in by_tag.items() if t != "warmup")
    pairs = range(p["repeats"])
    stats = summarize([seconds[f"a{i}"] for i in pairs], [seconds[f"b{i}"] for i in pairs],
                      work=p["images"] * p["epochs"])
    cpus = run.ranks[0].result["cpus"]
    ideal = float(min(ws, cpus) if run.profile == "cpu" else ws)
    threshold = round(run.thresholds.get("min_efficiency", 0.0) * ideal, 2)
    return {"measured": round(stats["median_ratio"], 2), "ideal": ideal, "threshold": threshold,
            "label": f"{ws} ranks vs 1 (same {p['images'] * p['epochs']} images)",
            "ratios": [round(x, 2) for x in stats["ratios"]],
            "images_per_sec": {"1 rank": round(stats["baseline_rate"], 1),
                               f"{ws} ranks": round(stats["parallel_rate"], 1)},
            "busy": round(busy, 3)}


def _fail(message: str, hint: str, speed: dict | None, *, mention_speed: bool = True) -> None:
    """Fail with the speed-up attached (the widget draws it even when something else is wrong)."""
    failure = CheckFailed(message + (f" (speed-up {speed['measured']:.2f}x, pass line {speed['threshold']:.2f}x)"
                                     if speed and mention_speed else ""), hint)
    failure.details = {"speedup": speed} if speed else {}
    raise failure


def _judge_train(run: Run) -> str:
    ws, p = run.world_size, run.params
    n, epochs = p["images"], p["epochs"]
    speed = _speedup(run)
    first = [next(r for r in o.result["runs"] if r["tag"] == "b0") for o in run.ranks]
    share = math.ceil(n / ws)
    for r, res in enumerate(first):
        if res["first"] is None:
            _fail(f"rank {r}: main() never trained the EuroSATNet (no training-mode forward was seen)",
                  "Keep the given scaffolding: main(argv) builds EuroSATNet, wraps it, and trains it.", speed)
        per_epoch = res["images"] / epochs
        if ws > 1 and per_epoch >= n:
            _fail(f"rank {r} trained on {per_epoch:.0f} images per epoch: every rank processed the whole "
                  f"dataset ({n} images), so {ws} ranks did the work {ws} times",
                  "Build the training loader with make_train_loader(train_set, ...) (a DistributedSampler): "
                  f"each rank must train on its own share, about {n}/{ws} images per epoch.", speed)
        if per_epoch != share:
            _fail(f"rank {r} trained on {per_epoch:.0f} images per epoch; expected its share, {share} of {n}",
                  "Use make_train_loader for the training data and call start_epoch every epoch.", speed)
        if res["ddp_forwards"] == 0:
            _fail(f"rank {r}: the model was trained without DistributedDataParallel",
                  "Wrap the model with wrap_model(EuroSATNet(), device) and train the wrapper: otherwise "
                  "gradients are never averaged and the replicas drift apart.", speed)
        if res["final"] == res["initial"]:
            _fail(f"rank {r}: the model's weights did not change during training",
                  "Keep the optimizer over model.parameters() and the training loop of the scaffolding.", speed)
    if len({res["final"] for res in first}) > 1:
        _fail("after training, the ranks' replicas differ",
              "Train the DDP wrapper that wrap_model returns, with one optimizer over its parameters.", speed)
    check = run.ranks[0].result["check"]
    if "metrics_error" in check:
        _fail(f"rank 0's metrics JSON could not be read: {check['metrics_error']}",
              "Keep the scaffolding that writes the metrics JSON on rank 0 at the end of main().", speed)
    got, actual = check["reported"], check["actual"]
    if abs(got[0] - actual[0]) > 1e-6 or abs(got[1] - actual[1]) > 1e-4 * max(1.0, actual[1]):
        _fail(f"the reported validation accuracy {got[0]:.4f} and loss {got[1]:.4f} are not the model's: "
              f"on all {check['n_val']} validation images it has {actual[0]:.4f} and {actual[1]:.4f}",
              "Report reduce_metrics(correct, total, loss_sum) of the validation counts, so every rank's "
              "share of the validation set counts.", speed)
    if "checkpoint_error" in check or not check.get("checkpoint_matches"):
        _fail("the checkpoint does not hold the trained weights in the plain model's format: "
              + check.get("checkpoint_error", "weights differ"),
              "Call save_checkpoint(model, args.checkpoint) after training (the ddp.checkpoint exercise).", speed)
    if speed is None:
        why = "speed-up needs 2 or more ranks" if ws == 1 else "speed-up not measured (repeats=0)"
        return f"ddp_train.py trained on {ws} rank(s): correct shares, DDP, metrics and checkpoint; {why}", {}
    if speed["measured"] < speed["threshold"]:
        busy = speed["busy"] > BUSY
        _fail(f"{ws} ranks were only {speed['measured']:.2f}x as fast as 1 rank on the same work "
              f"(pairs: {', '.join(f'{x:.2f}x' for x in speed['ratios'])}); the pass line is "
              f"{speed['threshold']:.2f}x" + (f"; the machine was busy: a rank waited for a free core "
                                              f"{speed['busy']:.0%} of the time" if busy else ""),
              "The ranks did not have a core each: other programs were using the cores (or there are more "
              "ranks than cores). Close them, or wait for other jobs to finish, and run the check again." if busy else
              "Something makes the ranks wait for each other or repeat work: no dist.barrier() or .item() on "
              "every step, no rank-0-only work inside the loop, each rank trains its own share.", speed,
              mention_speed=False)
    return (f"ddp_train.py: {ws} ranks trained disjoint shares through DDP (identical replicas, metrics and "
            f"checkpoint right) {speed['measured']:.2f}x as fast as 1 rank (ideal {speed['ideal']:.0f}x, "
            f"pass line {speed['threshold']:.2f}x)", {"speedup": speed})


register(DistributedCheck(id="ddp.train", functions=("main", "parse_args", "load_data"), scenario=_train_scenario,
                          judge=_judge_train, init_group=False, measures_speed=True, explain=_explain_data,
                          defaults={"images": 384, "epochs": 1, "batch_size": 32, "repeats": 3,
                                    "warmup_images": 64}))
