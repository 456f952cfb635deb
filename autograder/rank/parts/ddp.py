"""Rank parts of 04_ddp (ddp_parts.py, ddp_train.py): call the learner's functions on this rank's inputs.

Each part returns what the learner's code produced (devices, the samples a loader gave,
trained weights, file bytes, a sum over the group) for the harness to judge. The spies
here (init_process_group's arguments, torch.save's callers, a forward hook) only explain
a failure; they never make a pass.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..device import ddp_device_ids
from ..groupwatch import Refused, device_str, init_args, init_problem, simulate_gpu_host, vote
from ..toolkit import (build_model, environment, float32, patched, script_store, secret_synthetic_tensors,
                       state_of)


# ================================================================ ddp.init

def init(ctx, learner, inputs):
    """setup_distributed() on a simulated GPU host, then for real; then all-reduce the harness's secret value."""
    import torch
    import torch.distributed as dist

    out = {"simulated": simulate_gpu_host(learner, inputs["simulated_env"], inputs["gpus"])}
    folder = ctx.scratch / f"ddp_init_{inputs['nonce']}"
    folder.mkdir(exist_ok=True)
    real_init = dist.init_process_group
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE")}
    seen: list[dict] = []

    def watched_init(*args, **kwargs):
        found = init_args(real_init, args, kwargs)
        seen.append(found)
        problem = init_problem(found, env, torch.device(ctx.device).type, ctx.backend)
        peer = vote(folder, ctx, problem)
        if problem or peer:
            out.update(refused=problem) if problem else out.update(peer_refused=peer)
            raise Refused(problem or peer)
        return real_init(*args, **kwargs)

    try:
        with patched(dist, "init_process_group", watched_init, learner):
            device = learner.setup_distributed()
    except Refused:
        out["init"] = seen[-1]
        return out
    finally:
        (folder / f"done{ctx.rank}").touch()
    out.update(init=seen[-1] if seen else None, device=device_str(device), initialized=dist.is_initialized())
    if out["initialized"]:
        out.update(backend=str(dist.get_backend()), rank=dist.get_rank(), world_size=dist.get_world_size())
        value = torch.tensor([inputs["value"]], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(value)   # the harness sent each rank its own secret: only a real group gives the sum
        out["sum"] = value.item()
    return out


# ================================================================ ddp.data

class TokenDataset:
    """Item i is (tensor(tokens[i]), tokens[i] % 10): each sample names itself with a secret token.

    A plain module-level class (DataLoader and DistributedSampler need only __len__ and
    __getitem__), so loader worker processes can unpickle it."""

    def __init__(self, tokens: list[int]):
        self.tokens = list(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        import torch

        return torch.tensor(self.tokens[i]), self.tokens[i] % 10


def data(ctx, learner, inputs):
    """The tokens this rank's loader gave, epoch by epoch, and what the loader is (for the hints)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    loader = learner.make_train_loader(TokenDataset(inputs["tokens"]), inputs["batch_size"])
    sampler = getattr(loader, "sampler", None)
    info = {"loader": type(loader).__name__, "is_loader": isinstance(loader, DataLoader),
            "loader_drop_last": bool(getattr(loader, "drop_last", False)), "sampler": type(sampler).__name__,
            "distributed": isinstance(sampler, DistributedSampler),
            "shuffle": getattr(sampler, "shuffle", None), "drop_last": getattr(sampler, "drop_last", None)}
    epochs, batch_sizes = [], set()
    for epoch in range(inputs["epochs"]):
        learner.start_epoch(loader, epoch)
        seen = []
        for batch in loader:
            tokens = torch.as_tensor(batch[0] if isinstance(batch, (list, tuple)) else batch).reshape(-1)
            seen += tokens.tolist()
            batch_sizes.add(len(tokens))
        epochs.append(seen)
    return {**info, "epochs": epochs, "batch_sizes": sorted(batch_sizes)}


# ================================================================ ddp.wrap

def wrap(ctx, learner, inputs):
    """wrap_model() on this rank's starting weights, then SGD on this rank's slices; the wrapped model's weights."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = build_model(inputs["model"])
    device = torch.device(ctx.device)
    with float32():   # so a GPU's results compare with the CPU reference
        wrapped = learner.wrap_model(model, device)
        if not isinstance(wrapped, DDP):
            return {"is_ddp": False, "type": type(wrapped).__name__, "is_model": wrapped is model}
        out = {"is_ddp": True, "param_devices": sorted({str(p.device) for p in wrapped.module.parameters()})}
        buckets = {"calls": 0}

        def counting_allreduce(state, bucket):   # a hint only: which buckets DDP all-reduced
            buckets["calls"] += 1
            return default_hooks.allreduce_hook(state, bucket)

        try:
            wrapped.register_comm_hook(None, counting_allreduce)
        except RuntimeError:   # the learner registered a hook already: the weights decide anyway
            buckets["calls"] = None
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=inputs["lr"], momentum=inputs["momentum"])
        for images, labels in inputs["batches"]:
            optimizer.zero_grad()
            F.cross_entropy(wrapped(images.to(device)), labels.to(device)).backward()
            optimizer.step()
    return {**out, "buckets": buckets["calls"], "state": state_of(wrapped.module)}


# ================================================================ ddp.metrics

def metrics(ctx, learner, inputs):
    import torch

    got = learner.reduce_metrics(*inputs["counts"])
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return {"kind": type(got).__name__}
    try:
        values = [float(v.item() if isinstance(v, torch.Tensor) else v) for v in got]
    except (TypeError, ValueError, RuntimeError):
        return {"kind": "pair of " + ", ".join(type(v).__name__ for v in got)}
    return {"kind": "pair", "values": values}


# ================================================================ ddp.checkpoint

SAVE_DELAY = 0.5   # seconds each torch.save waits before writing: a rank that does not wait for the writer sees no file


def _describe(obj) -> dict:
    import torch
    from torch import nn

    if isinstance(obj, nn.Module):
        return {"kind": f"module {type(obj).__name__}"}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"kind": "state_dict", "keys": len(obj)}
    return {"kind": type(obj).__name__}


def checkpoint(ctx, learner, inputs):
    """save_checkpoint() on a DDP model holding the harness's weights; the file's bytes right after it returned."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = build_model(inputs["model"]).to(torch.device(ctx.device))
    wrapped = DDP(model, device_ids=ddp_device_ids(ctx.device))
    folder = ctx.scratch / f"checkpoint_{inputs['nonce']}"
    folder.mkdir(exist_ok=True)
    path = folder / inputs["filename"]
    saves = []

    def watched_save(obj, f, *args, **kwargs):
        saves.append(_describe(obj))
        time.sleep(SAVE_DELAY)
        return real_save(obj, f, *args, **kwargs)

    with patched(torch, "save", watched_save, learner) as real_save:
        learner.save_checkpoint(wrapped, str(path))
    return {"saves": saves, "file": path.read_bytes() if path.is_file() else None}


# ================================================================ ddp.train

def _fingerprint(tensors) -> str:
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TrainingProbe:
    """A global forward pre-hook: what EuroSATNet and any DDP wrapper did in training mode (hints only)."""

    def __init__(self):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from eurosat.model import EuroSATNet

        self._torch, self._net, self._ddp = torch, EuroSATNet, DistributedDataParallel
        self.images, self.ddp_forwards, self.model, self.initial = 0, 0, None, None
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if not (module.training and self._torch.is_grad_enabled()):
            return
        if isinstance(module, self._ddp):
            self.ddp_forwards += 1
        elif isinstance(module, self._net):
            if self.model is None:
                self.model, self.initial = module, _fingerprint(module.parameters())
            self.images += len(args[0]) if args else 0

    def report(self) -> dict:
        final = _fingerprint(self.model.parameters()) if self.model is not None else None
        return {"trained": self.model is not None, "images": self.images, "ddp_forwards": self.ddp_forwards,
                "changed": final is not None and final != self.initial, "final": final}


@contextmanager
def _replaced(modules, original, replacement):
    """Every name bound to `original` in these modules points to `replacement` for the block
    (`from eurosat.data import synthetic_tensors` binds the function itself in the importing module)."""
    bound = [(m, k) for m in modules for k, v in list(vars(m).items()) if v is original]
    for module, name in bound:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name in bound:
            setattr(module, name, original)


def train(ctx, learner, inputs):
    """main(argv) on ranks 0..world-1 (the others idle), on the harness's images; the files it wrote.

    The harness's synthetic images replace eurosat.data.synthetic_tensors (and every name for it in
    the learner's modules) for the two calls load_data makes: (n, seed) for training, (n // 4 or 16,
    seed + 1) for validation. Each run gets a store of its own on the harness's port (toolkit.script_store).
    """
    import torch.distributed as dist

    import eurosat.data

    world = inputs["world"]
    if ctx.rank >= world:
        return {"idle": True}
    seed = inputs["seed"]
    real, injected = secret_synthetic_tensors(inputs)

    folder = ctx.scratch / inputs["tag"]
    folder.mkdir(exist_ok=True)
    here = Path(learner.__file__).parent   # the learner's files: the module and what it imports from its folder
    own = [m for m in list(sys.modules.values()) if Path(getattr(m, "__file__", None) or "/").parent == here]
    metrics_path, checkpoint_path = folder / "metrics.json", folder / "model.pt"
    argv = [str(a) for a in inputs["argv"]] + ["--seed", str(seed), "--metrics", str(metrics_path),
                                              "--checkpoint", str(checkpoint_path)]
    env = {"LOCAL_RANK": str(ctx.local_rank if world > 1 else 0),
           "LOCAL_WORLD_SIZE": os.environ.get("LOCAL_WORLD_SIZE") if world > 1 else "1"}
    probe = TrainingProbe()
    try:
        with (_replaced([eurosat.data, *own], real, injected), environment(env),
              script_store(inputs["port"], ctx.rank, world)):
            learner.main(argv)
    finally:
        probe.handle.remove()
        if dist.is_initialized():   # a script that forgot to clean up must not break the next run
            dist.destroy_process_group()
    out = probe.report()
    if ctx.rank == 0:
        out["checkpoint"] = checkpoint_path.read_bytes() if checkpoint_path.is_file() else None
        out["metrics"] = metrics_path.read_text(errors="replace")[:100_000] if metrics_path.is_file() else None
    return out
