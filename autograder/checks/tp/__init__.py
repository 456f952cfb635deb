"""10_tensor_parallel (tp_parts.py): Megatron's layers by hand, a ViT block, DTensor's plans, 2D (FSDP x TP).

What the checks share: secret weights and data (drawn from the call's secret; every rank gets the same full weights
and inputs, as a tensor-parallel group does), the slices a rank must hold (contiguous, in rank order: rank r of N
keeps features [r n/N, (r + 1) n/N)), and the comparison of tensors.

Tolerances. The ranks compute in float32 and add partial sums in an order of their own; the reference adds in one
process. On these small layers the two agree to ~1e-6 relative; 1e-4 of the tensor's largest value is far below
the smallest mistake the checks must see (a missing all-reduce leaves a partial sum, a bias added on every rank is
off by (N - 1) x the bias).
"""
from __future__ import annotations

from typing import Any

RTOL = 1e-4

DELEGATION = ("this exercise builds tensor parallelism by hand (Megatron's f and g as autograd Functions around "
              "dist.all_reduce); {api} does that work for you",
              "Write the autograd Functions yourself: forward and backward, each with dist.all_reduce where Megatron "
              "puts it. DTensor and parallelize_module are the next exercise's.")

# What tp.layers and tp.block may not reach: DTensor (and its parallel plans), and the library's differentiable
# collectives (their backward is written for you).
BY_HAND = {api: (DELEGATION[0].format(api=api), DELEGATION[1]) for api in (
    "torch.distributed.tensor", "torch.distributed._tensor", "torch.distributed.nn",
    "torch.distributed._functional_collectives")}


def my_slice(size: int, rank: int, world_size: int) -> slice:
    n = size // world_size
    return slice(rank * n, (rank + 1) * n)


def secret_tensor(generator, *shape, scale: float = 1.0):
    import torch

    return torch.randn(*shape, generator=generator) * scale


def secret_weights(module, generator, scale: float = 0.3) -> dict:
    """`module`'s state with every parameter drawn from `generator` (biases and layer norms too: a default bias of
    zero or a norm weight of one would hide a bias added twice or a norm left out)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def close(got: Any, want, rtol: float = RTOL) -> bool:
    """Same shape, and every element within rtol x the largest |want| (plus a floor for all-zero tensors)."""
    import torch

    if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return False
    scale = float(want.abs().max()) if want.numel() else 0.0
    return bool(((got.double() - want.double()).abs() <= rtol * scale + 1e-7).all())


def gap(got: Any, want) -> str:
    """The largest difference in words (or why there is none to show)."""
    import torch

    if not isinstance(got, torch.Tensor):
        return f"got {type(got).__name__}"
    if tuple(got.shape) != tuple(want.shape):
        return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    return f"largest difference {float((got.double() - want.double()).abs().max()):.3g}"


def weight_and_bias(params: dict, prefix: str = "") -> tuple[Any, Any]:
    """The (value, grad) entries of the 2-D and the 1-D parameter under `prefix` (None where there is none), for
    a layer of the learner's own making whose parameter names are its own."""
    found = {2: None, 1: None}
    for name, entry in params.items():
        if prefix and not ("." + name).count("." + prefix + "."):
            continue
        value = entry.get("value") if isinstance(entry, dict) else None
        if value is not None and value.ndim in found and found[value.ndim] is None:
            found[value.ndim] = entry
    return found[2], found[1]


def matches(got, want) -> bool:
    """A weight held as nn.Linear holds it, or transposed (both are correct ways to keep a slice)."""
    return close(got, want) or (got is not None and getattr(got, "ndim", 0) == 2 and close(got.T, want))


def wire(run, elements: int) -> tuple[float | None, str]:
    """(bytes the job sent during the task / ring all-reduces of `elements` float32 values in all, in words);
    (None, why) where the bytes are not measured."""
    ws, sent = run.world_size, run.sent_bytes
    if ws < 2:
        return None, "bytes not measured: one rank has nothing to send"
    if sent is None:
        return None, ("bytes NOT MEASURED here (NCCL traffic does not cross the loopback; without the sandbox the "
                      "loopback is the host's)")
    syncs = sent / (2 * (ws - 1) * 4 * elements)
    return syncs, f"{sent / 2**10:,.0f} KiB on the loopback, {syncs:.2f}x the all-reduces of the activations"
