"""Checks for 06_fsdp: shard_model and save_full_checkpoint (fsdp_parts.py), the whole fsdp_train.py.

Every scenario runs the learner's code on the EuroSAT CNN inside each torchrun rank and
compares, in the rank, with a reference it builds itself from the same seed: a
single-process model trained on the global batch (fsdp.wrap), the parameters gathered
from the shards (fsdp.checkpoint), or DDP trained on the same data in the same job
(fsdp.train). Only small summaries travel to the judge as JSON.

Tolerance (fsdp.wrap, fsdp.train): FSDP averages gradients with a reduce-scatter, DDP
with an all-reduce, the single process with one big batch: the same sums in a different
order. In float32 that changes parameters by ~1e-7 after a few steps (measured: 9e-8 for
SGD, 2e-7 for Adam), so 1e-4 absolute + 1e-3 relative separates rounding from a real
difference (a wrong gradient scale or unsynchronised ranks move parameters by ~1e-3).
"""
from __future__ import annotations

import copy
import math
import re
import statistics
import time

from ..verdict import CheckFailed, expect
from . import DistributedCheck, Run, register

ATOL, RTOL = 1e-4, 1e-3
TWICE = "can only be applied to a module once"
TWICE_HINT = ("fully_shard was applied twice to the same module. model.blocks() already lists every "
              "conv block and the head: call fully_shard once on each of them, then once on the model "
              "(and call shard_model only once per model).")


# ---------------------------------------------------------------- shared helpers (run inside the ranks)

def _device(ctx):
    import torch

    device = torch.device(ctx.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 rounds convolutions to ~1e-3: comparisons would measure TF32, not sharding.
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return device


def _mesh(device, name: str = "dp"):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=(name,))


def _reference_shard(model, mesh, **fsdp_kwargs):
    """The reference auto-wrap: every block, then the root."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks():
        fully_shard(block, mesh=mesh, **fsdp_kwargs)
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t):
    return t.to_local() if _is_dtensor(t) else t


def _nbytes(t) -> int:
    if t is None:
        return 0
    t = _local(t)
    return t.numel() * t.element_size()


def _expected_shard(full, rank: int, world_size: int):
    """Rows of `full` that rank `rank` holds under Shard(0): torch.chunk, empty for ranks past the end."""
    import torch

    chunks = torch.chunk(full, world_size, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


def _max_excess(got, want) -> float:
    """Largest |got - want| beyond the tolerance (<= 0 means within tolerance); inf on a shape mismatch."""
    if tuple(got.shape) != tuple(want.shape):
        return math.inf
    if got.numel() == 0:
        return 0.0
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float(((got - want).abs() - (ATOL + RTOL * want.abs())).max())


def _applied_twice(exc: BaseException, model) -> str | None:
    """Which module fully_shard was applied to twice, from its error message (None: another error)."""
    message = str(exc)
    if TWICE not in message:
        return None
    if repr(model) in message:
        return "the model (root)"
    for name, child in model.named_children():
        if repr(child) in message:
            return f"model.{name}"
    return "one module"


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if TWICE in text:
        return TWICE_HINT
    if re.search(r"NVIDIA driver|not compiled with CUDA|No CUDA GPUs|cuda.*not available", text, re.I):
        return ("This rank has no GPU, yet something asked for CUDA: build the mesh on the device that "
                "exists, init_device_mesh('cuda' if torch.cuda.is_available() else 'cpu', (world_size,)), "
                "and pass it to every fully_shard call (without a mesh, fully_shard builds a CUDA one).")
    if "BFloat16" in text or "bfloat16" in text:
        return ("bf16 MixedPrecisionPolicy fails on CPU for convolutions followed by BatchNorm: leave "
                "mp_policy out here (mixed precision is shown on a Linear model in the notebook).")
    if "Default process group has not been initialized" in text:
        return "Initialise the process group (dist.init_process_group) before building the device mesh."
    return None


def _step(model, optimizer, x, y):
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


# ---------------------------------------------------------------- fsdp.wrap
# shard_model(model, mesh=None, **fsdp_kwargs): fully_shard every block of model.blocks(),
# then the root. Evidence: every block and the root are FSDP modules; every parameter is a
# DTensor placed Shard(0) on the mesh, each rank holding its torch.chunk slice (~1/N); the
# kwargs reach every unit (with reshard_after_forward=False the blocks keep their gathered
# parameters after forward); a given mesh is used; and a few SGD steps on the per-rank slices
# of a global batch leave the gathered parameters equal to one process trained on the whole
# batch (no BatchNorm, so per-rank statistics do not enter).

def _wrap_scenario(ctx, learner):
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    from eurosat.model import EuroSATNet

    p = ctx.params
    device = _device(ctx)
    kwargs = {} if p["reshard_after_forward"] is None else {"reshard_after_forward": p["reshard_after_forward"]}
    torch.manual_seed(ctx.seed)
    model = EuroSATNet(width=p["width"], blocks=p["blocks"], norm=False)
    reference = copy.deepcopy(model).to(device)
    names = [name for name, _ in model.named_children()]
    try:
        out = learner.shard_model(model, **kwargs)
    except Exception as exc:  # fully_shard's own "applied twice" error, turned into a clear result
        twice = _applied_twice(exc, model)
        if twice is None:
            raise
        return {"twice": twice}

    result: dict = {"returned": ("same" if out is model else "ddp" if isinstance(out, DistributedDataParallel)
                                 else "none" if out is None else "module" if isinstance(out, nn.Module)
                                 else type(out).__name__)}
    result["root_unit"] = isinstance(model, FSDPModule)
    result["block_units"] = {n: isinstance(getattr(model, n), FSDPModule) for n in names}
    result["extra_units"] = [n for n, m in model.named_modules()
                             if n and n not in names and isinstance(m, FSDPModule)]
    params = {}
    for name, prm in model.named_parameters():
        info = {"dtensor": _is_dtensor(prm), "numel": prm.numel(), "local": _local(prm).numel(),
                "expected": _expected_shard(torch.empty(prm.shape, device="meta"), ctx.rank,
                                            ctx.world_size).numel()}
        if info["dtensor"]:
            info["placements"] = [repr(pl) for pl in prm.placements]
            info["shard0"] = [pl.is_shard(0) for pl in prm.placements] == [True]
            info["mesh"] = [prm.device_mesh.device_type, prm.device_mesh.size()]
        params[name] = info
    result["params"] = params

    # A mesh passed in must be the one used: this one carries a dimension name that no default mesh has.
    torch.manual_seed(ctx.seed)
    other = EuroSATNet(width=p["width"], blocks=p["blocks"], norm=False)
    learner.shard_model(other, mesh=_mesh(device, "given_by_the_check"), **kwargs)
    result["given_mesh_used"] = all(getattr(getattr(q, "device_mesh", None), "mesh_dim_names", None)
                                    == ("given_by_the_check",) for q in other.parameters())

    if not (result["root_unit"] and all(result["block_units"].values())):
        return result  # the judge rejects the structure; training would only cost time
    # Train: each rank takes its slice of a seeded global batch; the reference takes it all.
    g = torch.Generator().manual_seed(1000 + ctx.seed)
    optimizer = torch.optim.SGD(out.parameters(), lr=p["lr"], momentum=0.9)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=p["lr"], momentum=0.9)
    n = p["batch_per_rank"] * ctx.world_size
    after_forward = {}
    try:
        for step in range(p["steps"]):
            x = torch.randn(n, 3, 64, 64, generator=g).to(device)
            y = torch.randint(0, 10, (n,), generator=g).to(device)
            mine, theirs = x.chunk(ctx.world_size)[ctx.rank], y.chunk(ctx.world_size)[ctx.rank]
            optimizer.zero_grad(set_to_none=True)
            logits = out(mine)
            if step == 0:  # which blocks still hold gathered (plain) parameters after forward
                after_forward = {b: not any(_is_dtensor(q) for q in getattr(model, b).parameters())
                                 for b in names}
            nn.functional.cross_entropy(logits, theirs).backward()
            optimizer.step()
            _step(reference, ref_optimizer, x, y)
        excess, worst = -math.inf, ""
        for (name, q), r in zip(model.named_parameters(), reference.parameters()):
            full = q.full_tensor() if _is_dtensor(q) else q  # the gathered parameter (a collective)
            e = _max_excess(full, r)
            if e > excess:
                excess, worst = e, name
        result["train"] = {"excess": excess, "worst": worst}
    except Exception as exc:
        result["train_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    result["after_forward_unsharded"] = after_forward
    dist.barrier()
    return result


def _judge_wrap(run: Run) -> str:
    ws = run.world_size
    raf = run.params["reshard_after_forward"]
    for o in run.ranks:
        r, res = o.rank, o.result
        if "twice" in res:
            raise CheckFailed(f"rank {r}: shard_model applied fully_shard twice to {res['twice']} "
                              "(fully_shard refuses a module it has already sharded)", TWICE_HINT)
        returned = res["returned"]
        expect(returned != "ddp", f"rank {r}: shard_model returned a DistributedDataParallel model, not FSDP",
               "DDP keeps a full replica of every parameter on every rank. Shard instead: "
               "fully_shard(block, mesh=mesh) for each block in model.blocks(), then fully_shard(model, mesh=mesh).")
        expect(returned in ("same", "module"), f"rank {r}: shard_model returned {returned}, not the model",
               "fully_shard changes the model in place; end shard_model with `return model`.")
        blocks, root = res["block_units"], res["root_unit"]
        unwrapped = [b for b, ok in blocks.items() if not ok]
        if not root and not any(blocks.values()):
            raise CheckFailed(f"rank {r}: no FSDP unit at all: neither the blocks nor the model were passed "
                              "to fully_shard", "Call fully_shard(block, mesh=mesh) for each block in "
                              "model.blocks(), then fully_shard(model, mesh=mesh).")
        if root and len(unwrapped) == len(blocks):
            raise CheckFailed(f"rank {r}: only the root is an FSDP unit (one unit for the whole model)",
                              "With a single unit, forward all-gathers every parameter at once and keeps them "
                              "until backward: the peak is the full model. fully_shard each block of "
                              "model.blocks() first, then the root.")
        expect(root, f"rank {r}: the blocks are FSDP units but the root (the model itself) is not",
               "After the blocks, call fully_shard(model, mesh=mesh) too: the root unit starts the first "
               "all-gather, owns any parameters outside the blocks and waits for the last reduce-scatter "
               "at the end of backward.")
        expect(not unwrapped, f"rank {r}: blocks {', '.join(unwrapped)} are not FSDP units",
               "Loop over every entry of model.blocks() (the conv blocks and the head).")
        params = res["params"]
        plain = [n for n, i in params.items() if not i["dtensor"]]
        expect(not plain, f"rank {r}: parameters {', '.join(plain[:3])} are not sharded (not DTensors)",
               "Every parameter must belong to a unit: fully_shard each block, then the root.")
        for name, info in params.items():
            expect(info["shard0"] and info["mesh"][1] == ws,
                   f"rank {r}: {name} is placed {info['placements']} on a mesh of {info['mesh'][1]} ranks, "
                   f"expected Shard(dim=0) over all {ws}",
                   "Build a 1-D mesh over every rank: init_device_mesh(device_type, (dist.get_world_size(),)).")
            expect(info["local"] == info["expected"],
                   f"rank {r}: holds {info['local']} of {name}'s {info['numel']} values, expected its 1/{ws} "
                   f"slice ({info['expected']})", "Shard with fully_shard on a mesh over all ranks.")
        expect(res["given_mesh_used"], f"rank {r}: shard_model(model, mesh=mesh) did not shard on the given mesh",
               "Use the mesh argument when it is given; build a mesh only when it is None.")
        if "train_error" in res:
            raise CheckFailed(f"rank {r}: training the sharded model failed: {res['train_error']}",
                              "Forward and backward must work on the sharded model; see the output below.")
        if raf is False:
            kept = [b for b, unsharded in res["after_forward_unsharded"].items() if not unsharded]
            expect(not kept, f"rank {r}: with reshard_after_forward=False, blocks {', '.join(kept)} freed their "
                             "gathered parameters after forward anyway",
                   "Pass **fsdp_kwargs on to every fully_shard call (the blocks and the root).")
        train = res["train"]
        expect(train["excess"] <= 0,
               f"rank {r}: after {run.params['steps']} SGD steps the gathered parameters differ from one "
               f"process trained on the whole batch (worst: {train['worst']}, {train['excess'] + ATOL:.2g} "
               f"beyond rounding)", "Shard every block and the root on one mesh over all ranks, and build "
                                    "the model from the same seed on every rank.")
    steps = run.params["steps"]
    return (f"each block and the root are FSDP units; every parameter is a Shard(0) DTensor, 1/{ws} per rank; "
            f"after {steps} steps the gathered parameters match one process on the global batch")


register(DistributedCheck(
    id="fsdp.wrap", functions=("shard_model",), scenario=_wrap_scenario, judge=_judge_wrap, explain=_explain,
    defaults={"seed": 0, "steps": 3, "batch_per_rank": 4, "width": 8, "blocks": 3, "lr": 0.05,
              "reshard_after_forward": None}))


# ---------------------------------------------------------------- fsdp.checkpoint
# save_full_checkpoint(model, path): the full state dict, gathered from the shards (a
# collective on every rank), written once by one rank, as plain tensors that load strictly
# into the plain model. The model is sharded by the reference wrap and trained two steps (so
# parameters and BatchNorm buffers differ from their initial values). torch.save and the
# torch.distributed.checkpoint savers are watched in every rank: who wrote, and how often.

def _checkpoint_scenario(ctx, learner):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from eurosat.model import EuroSATNet

    p = ctx.params
    device = _device(ctx)
    torch.manual_seed(ctx.seed)
    model = _reference_shard(EuroSATNet(width=p["width"], norm=True), _mesh(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2000 + ctx.seed + ctx.rank)
    for _ in range(2):
        _step(model, optimizer, torch.randn(4, 3, 64, 64, generator=g).to(device),
              torch.randint(0, 10, (4,), generator=g).to(device))
    full = {n: q.full_tensor().detach().cpu() for n, q in model.named_parameters()}  # collective: every rank
    buffers = {n: b.detach().cpu() for n, b in model.named_buffers()}
    path = ctx.job_dir / f"fsdp_full_seed{ctx.seed}.pt"

    writes, dcp_calls = [], []
    real_save = torch.save

    def spy_save(obj, f, *args, **kwargs):
        writes.append(str(f))
        return real_save(obj, f, *args, **kwargs)

    def spy_dcp(name, original):
        def spy(*args, **kwargs):
            dcp_calls.append(name)
            return original(*args, **kwargs)
        return spy

    saved_dcp = {name: getattr(dcp, name) for name in ("save", "async_save", "save_state_dict") if hasattr(dcp, name)}
    torch.save = spy_save
    for name, original in saved_dcp.items():
        setattr(dcp, name, spy_dcp(name, original))
    try:
        learner.save_full_checkpoint(model, str(path))
    finally:
        torch.save = real_save
        for name, original in saved_dcp.items():
            setattr(dcp, name, original)
    dist.barrier()  # the learner may not have waited for rank 0's write
    result = {"writes": len(writes), "dcp": dcp_calls}
    if ctx.rank == 0:
        result["file"] = _inspect_checkpoint(path, p["width"], full, buffers)
    dist.barrier()  # rank 0 reads before anyone moves on
    return result


def _inspect_checkpoint(path, width: int, full: dict, buffers: dict) -> dict:
    import torch

    from eurosat.model import EuroSATNet

    if path.is_dir():
        return {"kind": "directory"}
    if not path.exists():
        return {"kind": "missing"}
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        return {"kind": "unreadable", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    if not isinstance(state, dict):
        return {"kind": type(state).__name__}
    plain = EuroSATNet(width=width, norm=True)
    expected = plain.state_dict()
    values = list(state.values())
    info = {"kind": "dict", "keys": len(state), "expected_keys": len(expected),
            "missing": sorted(set(expected) - set(state))[:5], "unexpected": sorted(set(state) - set(expected))[:5],
            "dtensors": sum(_is_dtensor(v) for v in values),
            "sharded_tensors": sum(type(v).__name__ == "ShardedTensor" for v in values),
            "not_tensors": sum(not torch.is_tensor(v) for v in values)}
    info["wrong_shape"] = sorted(k for k, v in state.items() if k in expected and torch.is_tensor(v)
                                 and not _is_dtensor(v) and tuple(v.shape) != tuple(expected[k].shape))[:5]
    if info["dtensors"] or info["sharded_tensors"] or info["not_tensors"]:
        return info
    try:
        plain.load_state_dict(state, strict=True)
        info["strict_load"] = "ok"
    except Exception as exc:
        info["strict_load"] = str(exc).strip().splitlines()[0][:300]
        return info
    loaded = dict(plain.named_parameters())
    bad = [n for n, t in full.items() if _max_excess(loaded[n], t) > 0]
    bad += [n for n, t in buffers.items() if not torch.equal(plain.get_buffer(n).cpu(), t)]
    info["mismatch"] = bad[:5]
    return info


def _judge_checkpoint(run: Run) -> str:
    writers = [o.rank for o in run.ranks if o.result["writes"]]
    total = sum(o.result["writes"] for o in run.ranks)
    if any(o.result["dcp"] for o in run.ranks):
        raise CheckFailed("save_full_checkpoint used torch.distributed.checkpoint.save, which writes a sharded "
                          "checkpoint (a folder of per-rank pieces), not one full state dict",
                          "Gather the full state dict with get_model_state_dict(model, options=StateDictOptions("
                          "full_state_dict=True, cpu_offload=True)) on every rank, then torch.save it on rank 0.")
    expect(len(writers) <= 1, f"ranks {writers} each wrote the checkpoint (every rank writes the same file)",
           "Only one rank may write: gather on every rank (a collective), then `if dist.get_rank() == 0: "
           "torch.save(state, path)`. Several writers race on one file, and with cpu_offload=True the other "
           "ranks hold an empty dict.")
    expect(total <= 1, f"rank {writers[0] if writers else 0} wrote the checkpoint {total} times",
           "Call torch.save once, after the whole state dict is gathered.")
    info = run.ranks[0].result["file"]
    kind = info["kind"]
    expect(kind != "missing", "no checkpoint file was written at the given path",
           "Save with torch.save(state, path) on rank 0, using the path argument.")
    expect(kind != "directory", "the checkpoint path is a folder (a sharded checkpoint), not one file",
           "Write one file with torch.save on rank 0, from the gathered full state dict.")
    expect(kind == "dict", f"the checkpoint holds {kind if kind != 'unreadable' else info.get('error')}, "
                           "not a state dict", "Save the state dict itself: torch.save(state, path).")
    if info["dtensors"] or info["sharded_tensors"]:
        raise CheckFailed(f"the checkpoint holds {info['dtensors'] or info['sharded_tensors']} sharded tensors "
                          "(DTensor): a sharded-only checkpoint, with only one rank's slice of each parameter",
                          "model.state_dict() of an FSDP model returns each rank's shards. Gather the full, "
                          "unsharded state dict first: get_model_state_dict(model, options=StateDictOptions("
                          "full_state_dict=True, cpu_offload=True)), then torch.save it on rank 0.")
    expect(not info["not_tensors"], f"{info['not_tensors']} entries of the checkpoint are not tensors",
           "Save the model's state dict (parameter and buffer names -> tensors), nothing else in it.")
    if info["wrong_shape"]:
        raise CheckFailed(f"{', '.join(info['wrong_shape'][:3])} have the shape of one rank's shard, "
                          "not the full tensor (a sharded-only checkpoint)",
                          "to_local() keeps this rank's slice only. Gather with get_model_state_dict(model, "
                          "options=StateDictOptions(full_state_dict=True, cpu_offload=True)).")
    expect(not info["missing"] and not info["unexpected"],
           f"the checkpoint's keys do not match the plain model's (missing: {info['missing']}, "
           f"unexpected: {info['unexpected']})",
           "Save the state dict with the plain model's names, buffers included: get_model_state_dict(...) "
           "gives exactly that (no wrapper prefix, nothing nested).")
    expect(info["strict_load"] == "ok", f"the checkpoint does not load strictly into the plain model: "
                                        f"{info['strict_load']}", "Save the full state dict of the whole model.")
    expect(not info["mismatch"], f"the saved values of {', '.join(info['mismatch'])} differ from the model's "
                                 "(gathered) parameters and buffers",
           "Save the model's current state, gathered after training, not a copy made earlier.")
    return (f"one full checkpoint written once (rank {writers[0] if writers else 0}), plain tensors, "
            f"loads strictly into the plain model and matches the gathered parameters")


register(DistributedCheck(
    id="fsdp.checkpoint", functions=("save_full_checkpoint",), scenario=_checkpoint_scenario,
    judge=_judge_checkpoint, explain=_explain, defaults={"seed": 0, "width": 8}))


# ---------------------------------------------------------------- fsdp.train
# The whole fsdp_train.py, run through its main(argv) in every rank on in-memory synthetic
# data; then, in the same job and process group, the harness trains DDP on the same data
# with the same seed, model and optimizer. A global optimizer-step hook sees both runs: at
# every step it counts this rank's bytes of parameters, gradients and optimizer state (the
# local shards of DTensors) and the time since the previous step. Judged: the FSDP bytes
# per rank against DDP's (threshold per profile: an unsharded "FSDP" fails), and training
# equal to DDP's (initial weights, each epoch's train loss, the final parameters), and the
# script's full checkpoint loading into the plain model.

class _StepRecorder:
    """Global optimizer-step hooks: bytes held and step times, per optimizer run."""

    def __init__(self):
        self.optimizer = None
        self.bytes = None          # {"params", "grads", "optimizer"} at the largest step
        self.step_times: list[float] = []
        self.initial = None        # local copies of the parameters before the first step
        self.param_kinds: list[str] = []
        self._last = None

    def pre(self, optimizer, args, kwargs):
        if self.initial is None:
            self.optimizer = optimizer
            params = [q for group in optimizer.param_groups for q in group["params"]]
            self.initial = [_local(q).detach().clone() for q in params]
            self.param_kinds = ["DTensor" if _is_dtensor(q) else type(q).__name__ for q in params]

    def post(self, optimizer, args, kwargs):
        if optimizer is not self.optimizer:
            return
        now = time.perf_counter()
        if self._last is not None:
            self.step_times.append(now - self._last)
        self._last = now
        params = [q for group in optimizer.param_groups for q in group["params"]]
        state = [v for s in optimizer.state.values() for v in s.values() if hasattr(v, "element_size")]
        held = {"params": sum(_nbytes(q) for q in params), "grads": sum(_nbytes(q.grad) for q in params),
                "optimizer": sum(_nbytes(v) for v in state)}
        if self.bytes is None or sum(held.values()) > sum(self.bytes.values()):
            self.bytes = held

    def summary(self) -> dict:
        times = self.step_times[1:] or self.step_times  # the first interval includes lazy initialisation
        return {"bytes": self.bytes, "step_seconds": statistics.median(times) if times else None,
                "steps": len(self.step_times) + (self._last is not None), "param_kinds": self.param_kinds}


def _record(run):
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    recorder = _StepRecorder()
    hooks = [register_optimizer_step_pre_hook(recorder.pre), register_optimizer_step_post_hook(recorder.post)]
    try:
        value = run()
    finally:
        for h in hooks:
            h.remove()
    return recorder, value


def _train_argv(ctx) -> list[str]:
    p = ctx.params
    argv = ["--synthetic", str(p["images"]), "--epochs", str(p["epochs"]), "--batch-size", str(p["batch_size"]),
            "--lr", str(p["lr"]), "--width", str(p["width"]), "--seed", str(ctx.seed),
            "--checkpoint", str(ctx.job_dir / "fsdp_train_full.pt"), "--metrics", str(ctx.job_dir / "metrics.json")]
    if p["reshard_after_forward"] is not None:
        argv.append("--reshard-after-forward" if p["reshard_after_forward"] else "--no-reshard-after-forward")
    return argv


def _ddp_reference(ctx, learner, argv: list[str], device):
    """What fsdp_train.py does, with DDP: the script's own arguments and data, same seed, model, optimizer, loop."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    from autograder.policy import ddp_device_ids
    from eurosat.model import EuroSATNet
    from eurosat.train import train_one_epoch

    args = learner.parse_args(argv)
    train_set = learner.load_data(args)[0]
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    torch.manual_seed(args.seed)
    model = EuroSATNet(width=args.width).to(device)
    initial = [q.detach().clone() for q in model.parameters()]
    ddp = DistributedDataParallel(model, device_ids=ddp_device_ids(str(device)))
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    def run():
        losses = []
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            stats = train_one_epoch(ddp, loader, nn.CrossEntropyLoss(), optimizer, device, progress=False)
            total = torch.tensor([stats.loss * stats.images, stats.images], dtype=torch.float64, device=device)
            dist.all_reduce(total)
            losses.append((total[0] / total[1]).item())
        return losses

    recorder, losses = _record(run)
    return recorder, losses, initial, [q.detach() for q in model.parameters()]


def _compare(got: list, want: list, rank: int, world_size: int) -> tuple[float, int]:
    """Worst excess over tolerance between the learner's (local) tensors and the reference's slices."""
    worst, where = -math.inf, -1
    for i, (g, w) in enumerate(zip(got, want)):
        w = _expected_shard(w, rank, world_size) if tuple(g.shape) != tuple(w.shape) else w
        e = _max_excess(g, w)
        if e > worst:
            worst, where = e, i
    return worst, where


def _epoch_losses(metrics) -> list[float] | None:
    """The global train loss of each epoch from main()'s metrics (None if it returned something else)."""
    try:
        return [float(e["train_loss"]) for e in metrics["epochs"]]
    except (TypeError, KeyError, ValueError):
        return None


def _train_scenario(ctx, learner):
    import torch
    import torch.distributed as dist

    from eurosat.model import EuroSATNet

    # The script creates its process group and destroys it at the end. Its destroy is deferred so
    # that the DDP reference runs in the same group: re-creating a group in the same torchrun job
    # can read the old group's rendezvous keys from the store and fail to connect.
    argv = _train_argv(ctx)
    real_destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda *args, **kwargs: None
    try:
        recorder, metrics = _record(lambda: learner.main(argv))
    finally:
        dist.destroy_process_group = real_destroy
    device = _device(ctx)
    if not dist.is_initialized():  # destroyed through another name than dist.destroy_process_group
        ctx.init_group()
    result = {"fsdp": recorder.summary(), "metrics_type": type(metrics).__name__}
    if recorder.optimizer is None:
        return result
    ddp, ddp_losses, ddp_initial, ddp_final = _ddp_reference(ctx, learner, argv, device)
    result["ddp"] = ddp.summary()
    final = [_local(q).detach() for group in recorder.optimizer.param_groups for q in group["params"]]
    shapes_ok = len(final) == len(ddp_final)
    result["compare"] = {
        "count": [len(final), len(ddp_final)],
        "initial": _compare(recorder.initial, ddp_initial, ctx.rank, ctx.world_size) if shapes_ok else None,
        "final": _compare(final, ddp_final, ctx.rank, ctx.world_size) if shapes_ok else None,
        "losses": [_epoch_losses(metrics), ddp_losses]}
    if ctx.rank == 0:  # the script's checkpoint: present, and it loads into the plain model
        path = ctx.job_dir / "fsdp_train_full.pt"
        try:
            EuroSATNet(width=ctx.params["width"]).load_state_dict(torch.load(path, map_location="cpu"), strict=True)
            result["checkpoint"] = "ok"
        except Exception as exc:
            result["checkpoint"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    dist.barrier()
    return result


def _memory_bound(run: Run) -> float:
    """The largest FSDP/DDP bytes ratio allowed: max_memory_ratio is set for 2 ranks (ideal 1/2), scaled as 2/N."""
    return run.thresholds.get("max_memory_ratio", 0.65) * 2 / max(run.world_size, 1)


def _judge_train(run: Run) -> tuple[str, dict]:
    ws = run.world_size
    first = run.ranks[0].result
    expect(first["fsdp"]["bytes"] is not None, "fsdp_train.py never called optimizer.step()",
           "Keep the given training loop (train_one_epoch) and make sure main() trains for --epochs epochs.")
    fsdp = [o.result["fsdp"]["bytes"] for o in run.ranks]
    ddp = [o.result["ddp"]["bytes"] for o in run.ranks]
    memory = {"ranks": list(range(ws)), "bytes": {"DDP": [sum(b.values()) for b in ddp],
                                                  "FSDP": [sum(b.values()) for b in fsdp]}}
    details = {"memory": memory}
    ratios = [f / d for f, d in zip(memory["bytes"]["FSDP"], memory["bytes"]["DDP"])]
    bound = _memory_bound(run)
    memory.update(ratio=max(ratios), threshold=bound, parts={"DDP": ddp[0], "FSDP": fsdp[0]})
    times = [(o.result["fsdp"]["step_seconds"], o.result["ddp"]["step_seconds"]) for o in run.ranks]
    if all(f and d for f, d in times):
        details["step_seconds"] = {"FSDP": max(f for f, _ in times), "DDP": max(d for _, d in times)}

    def fail(message, hint):
        failure = CheckFailed(message, hint)
        failure.details = details
        raise failure

    kinds = first["fsdp"]["param_kinds"]
    if "DTensor" not in kinds and fsdp[0]["grads"] == 0:
        fail("the optimizer's parameters are plain tensors that never get gradients: it was created before "
             "shard_model, so it holds the model's old parameters, which fully_shard replaced",
             "Create the optimizer after shard_model(model): fully_shard swaps every parameter for a sharded "
             "DTensor, and the optimizer must step those.")
    if max(ratios) > bound:
        sharded = "DTensor" in kinds
        fail(f"FSDP holds {max(ratios):.2f}x DDP's bytes per rank (parameters + gradients + Adam state); "
             f"with {ws} ranks it must be at most {bound:.2f}x (ideal 1/{ws})",
             "The model is not sharded: " + ("some parameters are plain tensors; " if sharded else
                                            "no parameter is a DTensor (DDP, or no shard_model?); ")
             + "call shard_model(model, ...) from fsdp_parts and create the optimizer after it.")
    for o in run.ranks:
        r, cmp_ = o.rank, o.result["compare"]
        expect(cmp_["count"][0] == cmp_["count"][1],
               f"rank {r}: the optimizer steps {cmp_['count'][0]} parameters, the model has {cmp_['count'][1]}",
               "Give the optimizer all of the sharded model's parameters: Adam(model.parameters(), ...).")
        if cmp_["initial"][0] > 0:
            fail(f"rank {r}: the initial weights differ from DDP's (torch.manual_seed(seed) then EuroSATNet)",
                 "Keep the given seeding: every rank must build the same initial model, because fully_shard "
                 "keeps each rank's slice of its own copy (nothing is broadcast from rank 0).")
        got, want = cmp_["losses"]
        if got is not None and (len(got) != len(want) or any(
                abs(a - b) > ATOL + RTOL * abs(b) for a, b in zip(got, want))):
            fail(f"rank {r}: the train losses {[round(x, 5) for x in got]} differ from DDP's "
                 f"{[round(x, 5) for x in want]} on the same data",
                 "Keep the given data pipeline (DistributedSampler with the seed, set_epoch) and loop, shard "
                 "with shard_model and create Adam after sharding, with --lr.")
        if cmp_["final"][0] > 0:
            fail(f"rank {r}: after training, parameter #{cmp_['final'][1]} differs from DDP's",
                 "Train with the given loop on the sharded model, with Adam(model.parameters(), lr=args.lr) "
                 "created after shard_model.")
    ckpt = first.get("checkpoint")
    expect(ckpt == "ok", f"the script's full checkpoint does not load into the plain model: {ckpt}",
           "Call save_full_checkpoint(model, args.checkpoint) on every rank after training.")
    summary = (f"FSDP holds {max(ratios):.2f}x DDP's bytes per rank (pass line {bound:.2f}x, {ws} ranks) and "
               f"trains like DDP (losses and parameters match)")
    if "step_seconds" in details:
        s = details["step_seconds"]
        summary += f"; step time {s['FSDP'] / s['DDP']:.2f}x DDP's"
    return summary, details


def _explain_train(error: dict) -> str | None:
    hint = _explain(error)
    if hint:
        return hint
    if "main" in error["message"] and error["type"] in ("AttributeError", "TypeError"):
        return "Keep the given main(argv=None) function: the check calls it with its own arguments."
    return None


register(DistributedCheck(
    id="fsdp.train", functions=("main", "parse_args", "load_data"), scenario=_train_scenario,
    judge=_judge_train, init_group=False, explain=_explain_train,
    defaults={"seed": 0, "images": 160, "epochs": 2, "batch_size": 16, "lr": 1e-3, "width": 16,
              "reshard_after_forward": None}))
