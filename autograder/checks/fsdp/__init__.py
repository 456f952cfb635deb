"""06_fsdp (fsdp_parts.py, fsdp_train.py): what the trusted side of the FSDP checks shares.

Models travel as specs with their weights (rank/toolkit.py's build_model rebuilds them in the
rank); weights and data are drawn here from the call's secret, each rank receiving only its own
batches. What comes back (local shards, file bytes, losses) was made in the learner's process:
every field is checked for its type before use, and files are read with torch.load(weights_only=True)
after a static look at the pickle, which never runs it.

Tolerance (ATOL + RTOL x |expected|, wherever FSDP's training is compared with another run): FSDP
averages gradients with a reduce-scatter, DDP with an all-reduce, one process over one big batch:
the same sums in another order. In float32 that moves parameters by ~1e-7 after a few steps
(measured: 9e-8 for SGD, 2e-7 for Adam), so 1e-4 absolute + 1e-3 relative separates rounding from
a real difference (a wrong gradient scale or ranks that never communicate move them by ~1e-3).
Shards right after sharding are copies: compared exactly.
"""
from __future__ import annotations

import io
import math
import pickletools
import re
import zipfile
from typing import Any

from .. import one_thread, saved  # noqa: F401 (one_thread: the assignment's checks import it from here)
from ..draws import random_state, rank_batches  # noqa: F401 (the assignment's checks import them from here)
from ..replies import TAMPERED_HINT, field, reply, tensors  # noqa: F401 (likewise)
from ..saved import is_state_dict  # noqa: F401 (the assignment's checks import it from here)

ATOL, RTOL = 1e-4, 1e-3
STRAY_SHARE = 0.01   # of a tensor's elements that may lie beyond the tolerance after training: see strays
TWICE = "can only be applied to a module once"   # fully_shard's own error message
TWICE_HINT = ("fully_shard was applied twice to the same module. model.blocks() already lists every "
              "block and the head: call fully_shard once on each of them, then once on the model "
              "(and call shard_model only once per model).")
SHARDED_MARKS = ("DTensor", "ShardedTensor", "torch.distributed")   # in a pickle: a sharded-only checkpoint


def explain(error: dict) -> str | None:
    """A hint for an exception raised in the learner's code (None: the harness's generic one)."""
    text = f"{error['type']}: {error['message']}"
    if TWICE in text:
        return TWICE_HINT
    if re.search(r"NVIDIA driver|not compiled with CUDA|No CUDA GPUs|cuda.*not available", text, re.I):
        return ("This rank has no GPU, yet something asked for CUDA: build the mesh on the device that "
                "exists, init_device_mesh('cuda' if torch.cuda.is_available() else 'cpu', (world_size,)), "
                "and pass it to every fully_shard call (without a mesh, fully_shard builds one on the accelerator "
                "PyTorch detects: CUDA on a GPU host).")
    if "BFloat16" in text or "bfloat16" in text:
        return ("bf16 MixedPrecisionPolicy fails on CPU for BatchNorm (its parameters in bf16, its running "
                "statistics in fp32): leave mp_policy out here, the check compares with fp32 training (the "
                "notebook's section 6 keeps BatchNorm in fp32 with a fully_shard of its own).")
    if "Default process group has not been initialized" in text:
        return "Initialise the process group (dist.init_process_group) before building the device mesh."
    return None


# ------------------------------------------------------------------ FSDP's layout and tolerance

def chunk_of(full, rank: int, world_size: int):
    """The rows of `full` that rank `rank` holds under FSDP2's Shard(0): torch.chunk's, empty past the end."""
    import torch

    chunks = torch.chunk(full, world_size, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


def excess(got, want) -> float:
    """Largest |got - want| beyond ATOL + RTOL |want| (<= 0: within tolerance); inf on a shape mismatch."""
    if tuple(got.shape) != tuple(want.shape):
        return math.inf
    if got.numel() == 0:
        return -ATOL
    if not want.is_floating_point():   # counters (BatchNorm's num_batches_tracked): exact
        return -ATOL if got.dtype == want.dtype and bool((got == want).all()) else math.inf
    got, want = got.detach().to(want.dtype), want.detach()   # float32: the tolerance is far above its rounding
    return float(((got - want).abs() - (ATOL + RTOL * want.abs())).max())


# ------------------------------------------------------------------ checkpoint files (bytes the learner's process wrote)

def pickle_names(raw: bytes) -> set[str]:
    """Every string in a torch.save file's pickle (class and module names among them), read without running it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        stream = archive.read(member)
    except (zipfile.BadZipFile, StopIteration, KeyError, OSError):
        stream = raw   # the legacy (non-zip) format is a pickle stream itself
    names = set()
    try:
        for _, arg, _ in pickletools.genops(stream):
            if isinstance(arg, str):
                names.add(arg)
    except Exception:  # noqa: a truncated or foreign stream; torch.load will name the problem
        pass
    return names


def load_saved(raw: bytes) -> tuple[Any, str]:
    """(object, "") from a checkpoint's bytes, or (None, why not): "sharded: ..." when it holds sharded tensors."""
    marks = sorted(n for n in pickle_names(raw) if any(m in n for m in SHARDED_MARKS))
    if marks:
        return None, f"sharded: it holds {', '.join(marks[:2])}"
    return saved.load_saved(raw)


def elements_off(got, want) -> int:
    """How many elements of `got` lie beyond ATOL + RTOL |want| (every one on a shape or dtype mismatch; counters
    such as BatchNorm's num_batches_tracked must be equal)."""
    if tuple(got.shape) != tuple(want.shape):
        return max(want.numel(), 1)
    if not want.is_floating_point():
        return 0 if got.dtype == want.dtype and bool((got == want).all()) else max(want.numel(), 1)
    got, want = got.detach().to(want.dtype), want.detach()
    return int(((got - want).abs() > ATOL + RTOL * want.abs()).sum())


def strays(got: dict, want: dict, share: float = STRAY_SHARE) -> list[tuple[str, int, int]]:
    """[(key, elements off, elements)], the largest share off first, for every tensor of two trained state dicts
    with more than `share` of its elements (one at least) beyond the tolerance. Rounding moves every element by ~1e-7, but a few may be
    moved much further by a decision the summation order tips: after SGD, an activation at ~0 on the other side
    of a ReLU (or a max-pool tie) routes one gradient elsewhere, moving a few weights by ~lr x that gradient
    (fsdp.checkpoint at 3 ranks, 2 elements of 576 by 1.3e-4, about 1 draw in 50 here); after Adam, an element
    whose gradient sums to about zero takes a step of up to lr in the direction the order decides (fsdp.train at 3
    ranks, 1 element of 14.4 M). A mistake (a stale or untrained copy, a wrong gradient scale, ranks that never
    communicate) moves every element of a tensor, or every BatchNorm statistic. Counters are never strays."""
    found = [(k, off, w.numel()) for k, w in want.items()
             if (off := elements_off(got[k], w)) > (max(1, int(share * w.numel())) if w.is_floating_point() else 0)]
    return sorted(found, key=lambda s: s[1] / max(s[2], 1), reverse=True)
