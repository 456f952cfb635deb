"""The reference formulas of 03_concepts and the typical wrong ones (trusted side only; not in the student pack).

Bytes per parameter, ZeRO paper (Rajbhandari et al., 2020), activations not counted:
                    weights  gradients  optimizer state
  fp32,  Adam          4         4      8  (exp_avg + exp_avg_sq, fp32)
  mixed, Adam          2         2     12  (fp32 master weights 4 + two fp32 moments 8)
  fp32,  SGD+momentum  4         4      4  (momentum buffer, fp32)
  mixed, SGD+momentum  2         2      8  (fp32 master weights 4 + fp32 momentum 4)
ZeRO-1 shards the optimizer state over the ranks, ZeRO-2 also the gradients, ZeRO-3 (FSDP)
also the weights; "none" (DDP) keeps everything on every rank.

GPipe (and 1F1B, which reorders the same work): with p stages and m microbatches a step
takes m + p - 1 slots per stage, of which m are busy: the idle fraction is (p-1)/(m+p-1).

Ring all-reduce of n bytes over N ranks: a reduce-scatter (N - 1 steps) then an all-gather
(N - 1 steps); in every step each rank sends one chunk of n/N bytes: 2 (N - 1)/N * n.
"""
from __future__ import annotations

from typing import Callable

SHARDED = {"none": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
           "zero3": ("optimizer", "gradients", "weights")}
MOMENT_BYTES = {"adam": 8, "sgd": 4}     # fp32 optimizer moments per parameter


def bytes_per_parameter(optimizer: str = "adam", precision: str = "fp32") -> dict[str, int]:
    """The three parts of the model state, in bytes per parameter (the notebook's table)."""
    if precision == "mixed":
        return {"weights": 2, "gradients": 2, "optimizer": 4 + MOMENT_BYTES[optimizer]}
    return {"weights": 4, "gradients": 4, "optimizer": MOMENT_BYTES[optimizer]}


def _memory(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none", *,
            parts: dict[str, float] | None = None, sharded: tuple[str, ...] | None = None) -> float:
    parts = parts if parts is not None else bytes_per_parameter(optimizer, precision)
    sharded = SHARDED[shard] if sharded is None else sharded
    return n_params * sum(b / world_size if name in sharded else b for name, b in parts.items())


def memory(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none") -> float:
    """Bytes of weights + gradients + optimizer state on each rank."""
    return _memory(n_params, optimizer, precision, world_size, shard)


def bubble(n_stages: int, n_microbatches: int) -> float:
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


def allreduce(n_bytes: float, world_size: int) -> float:
    return 2 * (world_size - 1) / world_size * n_bytes


# ------------------------------------------------------------------ typical mistakes, by the name the hints use

def _with(optimizer, precision, /, **changes) -> dict[str, float]:
    return {**bytes_per_parameter(optimizer, precision), **changes}


def _counting(**changes):
    """The answer of someone who counts these parts per parameter differently (0: forgotten)."""
    return lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard, parts=_with(optimizer, precision, **changes))


def _sharding(stage: str, as_if: str):
    return lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard, sharded=SHARDED[as_if] if shard == stage else None)


MEMORY_MISTAKES: dict[str, Callable[..., float]] = {
    "weights only": _counting(gradients=0, optimizer=0),
    "optimizer state forgotten": _counting(optimizer=0),
    "gradients forgotten": _counting(gradients=0),
    "Adam counted with one moment": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard,
        parts=_with(optimizer, precision, optimizer=(4 if precision == "mixed" else 0) + 4)),
    "SGD counted like Adam": lambda n, optimizer, precision, world_size, shard: _memory(
        n, "adam", precision, world_size, shard),
    "mixed precision counted as 2 B for everything": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard,
        parts={"weights": 2, "gradients": 2, "optimizer": MOMENT_BYTES[optimizer] / 2}),
    "fp32 master copy of the weights forgotten": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard, parts=_with(optimizer, precision, optimizer=MOMENT_BYTES[optimizer])),
    "mixed precision split as in fp32": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, "fp32", world_size, shard),
    "mixed precision with fp32 weights and gradients": _counting(weights=4, gradients=4),
    "shard='none' divided by the world size": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard, sharded=SHARDED["zero3"] if shard == "none" else None),
    "nothing sharded": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, "none"),
    "zero1 also shards the gradients": _sharding("zero1", "zero2"),
    "zero2 also shards the weights": _sharding("zero2", "zero3"),
    "zero2 does not shard the gradients": _sharding("zero2", "zero1"),
    "zero3 does not shard the weights": _sharding("zero3", "zero2"),
    "everything sharded": lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard, sharded=SHARDED["zero3"] if shard != "none" else ()),
    "total over all ranks instead of per rank": lambda n, optimizer, precision, world_size, shard:
        world_size * _memory(n, optimizer, precision, world_size, shard),
    "bytes per parameter, not for the model": lambda n, optimizer, precision, world_size, shard: _memory(
        1, optimizer, precision, world_size, shard),
    **{f"not in bytes (in {unit})": (lambda n, optimizer, precision, world_size, shard, f=factor:
                                     f * _memory(n, optimizer, precision, world_size, shard))
       for unit, factor in (("bits", 8), ("MB", 1e-6), ("MiB", 2.0**-20), ("GB", 1e-9), ("GiB", 2.0**-30))},
}

BUBBLE_MISTAKES: dict[str, Callable[..., float]] = {
    "(p - 1)/m: idle time relative to busy time": lambda n_stages, n_microbatches: (n_stages - 1) / n_microbatches,
    "arguments swapped": lambda n_stages, n_microbatches: (n_microbatches - 1) / (n_microbatches + n_stages - 1),
    "busy fraction instead of idle fraction": lambda n_stages, n_microbatches:
        n_microbatches / (n_microbatches + n_stages - 1),
    "a percentage, not a fraction": lambda n_stages, n_microbatches: 100 * bubble(n_stages, n_microbatches),
    "integer division": lambda n_stages, n_microbatches: (n_stages - 1) // (n_microbatches + n_stages - 1),
    "off by one in the step length": lambda n_stages, n_microbatches: (n_stages - 1) / (n_microbatches + n_stages),
    "p/(m + p)": lambda n_stages, n_microbatches: n_stages / (n_microbatches + n_stages),
}

ALLREDUCE_MISTAKES: dict[str, Callable[..., float]] = {
    "one rank still sends": lambda n_bytes, world_size:
        n_bytes if world_size == 1 else allreduce(n_bytes, world_size),
    "only one phase counted": lambda n_bytes, world_size: (world_size - 1) / world_size * n_bytes,
    "the full buffer twice": lambda n_bytes, world_size: 2 * n_bytes,
    "the full buffer at every step, or the total over all ranks": lambda n_bytes, world_size:
        2 * (world_size - 1) * n_bytes,
    "the full buffer to every other rank": lambda n_bytes, world_size: (world_size - 1) * n_bytes,
    "integer division": lambda n_bytes, world_size: 2 * ((world_size - 1) // world_size) * n_bytes,
    **{f"not in bytes (in {unit})": (lambda n_bytes, world_size, f=factor: f * allreduce(n_bytes, world_size))
       for unit, factor in (("bits", 8), ("MB", 1e-6), ("GB", 1e-9))},
}


def predictions(reference: Callable[..., float], mistakes: dict[str, Callable[..., float]],
                calls: list) -> list[dict]:
    """For each (args, kwargs): the right value and what each typical mistake gives (None where undefined)."""
    out = []
    for args, kwargs in calls:
        wrong = {}
        for name, formula in mistakes.items():
            try:
                wrong[name] = float(formula(*args, **kwargs))
            except ZeroDivisionError:
                wrong[name] = None
        out.append({"want": float(reference(*args, **kwargs)), "mistakes": wrong})
    return out
