"""07_from_scratch (scratch_parts.py): naive all-reduce, BucketedDDP, ShardedOptimizer (ZeRO-1), gpipe_step.

What the checks share: secret models and data (every rank receives only its own batches, and
for BucketedDDP its own initial weights, so that a right result shows that the ranks
communicated), the comparison of tensors with a stated tolerance, and the bucket plan that the
notebook's semantics define (used to name a mistake, never to decide).

Tolerances. The ranks compute in float32 and gloo (or NCCL) adds the ranks' gradients in an
order of its own; the harness adds them in float64. Over three SGD steps on these small models
the two agree to ~1e-6 relative; 1e-4 relative (plus a small absolute floor for values near 0)
is far below the smallest mistake the checks must see (a sum instead of a mean is off by a
factor N, a missing broadcast by the distance between two random initialisations).
"""
from __future__ import annotations

from typing import Any

RTOL, ATOL = 1e-4, 1e-6


# ------------------------------------------------------------------ secret models and data

def mlp_spec(sizes: list[int], *, buffer: bool = False, unused: bool = False, float64: bool = False) -> dict:
    spec = {"sizes": [int(s) for s in sizes], "buffer": buffer, "unused": unused}
    return {**spec, "dtype": "float64"} if float64 else spec


def secret_state(trial, spec: dict, salt: int) -> dict:
    """Weights (and the buffer) drawn from the call's secret; the trusted process's own RNG is left alone."""
    import torch

    from ...rank.parts._scratch_models import build_net
    from ...rank.toolkit import state_of

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.generator(salt).initial_seed())
        model = build_net(spec)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.randn_like(p) * (0.6 if name.endswith("weight") else 0.2))
            for b in model.buffers():
                b.copy_(torch.randn_like(b) * 0.5)
    return state_of(model)


def secret_batches(trial, salt: int, steps: int, rows: int, d_in: int, d_out: int, *, float64: bool = False) -> list:
    """[[x, y], ...]: `steps` regression batches of `rows` rows from the secret."""
    import torch

    g, dtype = trial.generator(salt), torch.float64 if float64 else torch.float32
    return [[torch.randn(rows, d_in, generator=g, dtype=dtype), torch.randn(rows, d_out, generator=g, dtype=dtype)]
            for _ in range(steps)]


def param_sizes(spec: dict) -> list[tuple[str, int]]:
    """(name, numel) of the model's parameters in registration order."""
    from ...rank.parts._scratch_models import build_net

    return [(n, p.numel()) for n, p in build_net(spec).named_parameters()]


def bucket_plan(sizes: list[tuple[str, int]], cap_mb: float, *, reverse: bool = True) -> list[list[str]]:
    """The notebook's buckets: parameters in reverse registration order (or as registered), a bucket closed
    before a parameter would push it over the cap (float32: 4 bytes per element)."""
    cap = cap_mb * 2**20
    order = list(reversed(sizes)) if reverse else list(sizes)
    buckets, current, size = [], [], 0
    for name, numel in order:
        if current and size + 4 * numel > cap:
            buckets.append(current)
            current, size = [], 0
        current.append(name)
        size += 4 * numel
    if current:
        buckets.append(current)
    return buckets


# ------------------------------------------------------------------ comparisons

def close(a: Any, b: Any, rtol: float = RTOL, atol: float = ATOL) -> bool:
    import torch

    if a is None or b is None:
        return a is None and b is None
    return (isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(b.shape)
            and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)))


def gap(a, b) -> float:
    """Largest absolute difference (inf when the shapes or presence differ)."""
    import torch

    if a is None or b is None or not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(b.shape):
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def ratio(got, want) -> float | None:
    """got / want by least squares (None when want is ~0): 2.0 for a sum over 2 ranks instead of the mean."""
    import torch

    if got is None or want is None or not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return None
    w = want.double().flatten()
    denominator = float(w @ w)
    return float(got.double().flatten() @ w) / denominator if denominator > 1e-12 else None


def mismatched(got: dict, want: dict, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """Names whose tensors differ (missing names count)."""
    return [n for n in want if not close(got.get(n) if isinstance(got, dict) else None, want[n], rtol, atol)]


def fmt_names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def wire(run, gradient_numel: int, element_size: int = 8) -> tuple[float | None, str]:
    """(bytes the job sent during the task / ring all-reduces of `gradient_numel` elements, the figure in words);
    (None, why) where the bytes are not measured: one rank, NCCL (GPU traffic does not cross the loopback), or no
    sandbox (the host's loopback carries every process's traffic)."""
    ws, sent = run.world_size, run.sent_bytes
    if ws < 2:
        return None, "bytes not measured: one rank has nothing to send"
    if sent is None:
        return None, ("bytes NOT MEASURED here (NCCL traffic does not cross the loopback; without the sandbox the "
                      "loopback is the host's)")
    syncs = sent / (2 * (ws - 1) * element_size * gradient_numel)
    return syncs, f"{sent / 2**10:,.0f} KiB on the loopback, {syncs:.2f}x one all-reduce of the gradients per step"

