"""Checks for 03_concepts: training memory, pipeline bubble and ring all-reduce volume (concepts.py).

Numeric exercises, run as LocalChecks (one plain process, no torchrun, no torch). Each check
calls the learner's function on a fixed table of cases (the visible part) plus cases drawn
from a seeded RNG (`check(..., seed=3)` draws other ones, so an answer table copied from the
visible run fails), then on invalid arguments that the notebook asks to reject with
ValueError. On the first wrong answer the value is compared with the typical mistakes (each
a formula of its own) to name the one that was made.

Tolerance: relative 1e-6. The answers are exact formulas; the cases use buffers and
parameter counts that divide by the world size, so integer arithmetic (`//`) is exact too,
and 1e-6 only absorbs float rounding.
"""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import Any, Callable

from ..verdict import CheckFailed
from . import LocalCheck, register

RTOL = 1e-6
WORLD_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 64, 128, 1000, 1024)


def _close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-12)


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return repr(x)
    if float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):_}"
    return f"{float(x):.6g}"


@dataclass(frozen=True)
class Mistake:
    """A typical wrong formula: if the learner's answer equals it (and not the reference), say so."""
    name: str
    formula: Callable[..., float]
    hint: str


def _call(fn: Callable, args: tuple, kwargs: dict) -> str:
    parts = [_fmt(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kwargs.items()]
    return f"{fn.__name__}({', '.join(parts)})"


def _answer(fn: Callable, args: tuple, kwargs: dict, *, signature_hint: str,
            explain: Callable[[BaseException], str | None] = lambda exc: None) -> float:
    """Call the learner's function on one valid case; a number back, or CheckFailed naming the call."""
    call = _call(fn, args, kwargs)
    try:
        got = fn(*args, **kwargs)
    except Exception as exc:  # the learner's code may raise anything; name the call that did
        hint = explain(exc)
        if hint is None:
            hint = (signature_hint if isinstance(exc, TypeError) else
                    "Replace the raise line with your code." if isinstance(exc, NotImplementedError) else
                    "These arguments are valid: compute the value instead of raising.")
        raise CheckFailed(f"{call} raised {type(exc).__name__}: {str(exc)[:200]}", hint) from None
    if got is None:
        raise CheckFailed(f"{call} returned None", "The function computes a value but does not return it: "
                                                   "add a return statement.")
    if isinstance(got, bool) or not isinstance(got, numbers.Real) or not math.isfinite(float(got)):
        raise CheckFailed(f"{call} returned {got!r} ({type(got).__name__}), not a finite number",
                          "Return a plain int or float.")
    return float(got)


def _diagnose(fn: Callable, cases: list[tuple[tuple, dict]], wants: list[float], gots: list[float | None],
              mistakes: list[Mistake], generic_hint: str) -> None:
    """Fail on the first wrong answer, naming the typical mistake that explains most answers."""
    bad = next((i for i, (w, g) in enumerate(zip(wants, gots)) if g is not None and not _close(g, w)), None)
    if bad is None:
        return
    args, kwargs = cases[bad]
    message = f"{_call(fn, args, kwargs)} returned {_fmt(gots[bad])}, expected {_fmt(wants[bad])}"

    def predicts(m: Mistake, i: int) -> float | None:
        try:
            return float(m.formula(*cases[i][0], **cases[i][1]))
        except ZeroDivisionError:
            return None

    scored = []
    for order, m in enumerate(mistakes):
        wrong = predicts(m, bad)
        if wrong is None or _close(wrong, wants[bad]) or not _close(gots[bad], wrong):
            continue
        explained = sum(1 for i, g in enumerate(gots)
                        if g is not None and (p := predicts(m, i)) is not None and _close(g, p))
        scored.append((-explained, order, m))
    if scored:
        m = min(scored, key=lambda t: t[:2])[2]
        raise CheckFailed(f"{message} ({m.name})", m.hint)
    raise CheckFailed(message, generic_hint)


def _run_cases(fn: Callable, cases: list[tuple[tuple, dict]], reference: Callable[..., float],
               mistakes: list[Mistake], generic_hint: str, signature_hint: str,
               explain: Callable[[BaseException], str | None] = lambda exc: None) -> None:
    """Ask the learner's function every case, then fail on the first wrong one (raised or returned)."""
    wants = [float(reference(*a, **k)) for a, k in cases]
    gots: list[float | None] = []
    first_error: CheckFailed | None = None
    for args, kwargs in cases:
        try:
            gots.append(_answer(fn, args, kwargs, signature_hint=signature_hint, explain=explain))
        except CheckFailed as failure:
            gots.append(None)
            first_error = first_error or failure
            break   # later answers cannot change which case fails first
    if first_error is not None:
        # a wrong value before the raising case is the first thing to fix
        _diagnose(fn, cases[:len(gots)], wants[:len(gots)], gots, mistakes, generic_hint)
        raise first_error
    _diagnose(fn, cases, wants, gots, mistakes, generic_hint)


def _rejects(fn: Callable, args: tuple, kwargs: dict, why: str, hint: str) -> None:
    """The notebook asks for ValueError on invalid arguments: check one such call."""
    call = _call(fn, args, kwargs)
    try:
        got = fn(*args, **kwargs)
    except ValueError:
        return
    except Exception as exc:
        raise CheckFailed(f"{call} ({why}) raised {type(exc).__name__}, not ValueError",
                          f"Check the arguments first and raise ValueError with a clear message: {hint}") from None
    raise CheckFailed(f"{call} ({why}) returned {_fmt(got)} instead of raising ValueError",
                      f"Invalid arguments must raise ValueError (the exercise asks for it): {hint}")


# ================================================================ concepts.memory
# Bytes per parameter, ZeRO paper (Rajbhandari et al. 2019), activations not counted:
#                     weights  gradients  optimizer state
#   fp32,  Adam          4         4      8  (exp_avg + exp_avg_sq, fp32)
#   mixed, Adam          2         2     12  (fp32 master weights 4 + two fp32 moments 8)
#   fp32,  SGD+momentum  4         4      4  (momentum buffer, fp32)
#   mixed, SGD+momentum  2         2      8  (fp32 master weights 4 + fp32 momentum 4)
# ZeRO-1 shards the optimizer state over the ranks, ZeRO-2 also the gradients, ZeRO-3 (FSDP)
# also the weights; "none" (DDP) keeps everything on every rank.

OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("fp32", "mixed")
SHARDS = ("none", "zero1", "zero2", "zero3")
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


def reference_memory(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none") -> float:
    """Bytes of weights + gradients + optimizer state on each rank."""
    return _memory(n_params, optimizer, precision, world_size, shard)


def _with(optimizer, precision, /, **changes) -> dict[str, float]:
    return {**bytes_per_parameter(optimizer, precision), **changes}


def _counting(**changes):
    """The answer of someone who counts these parts per parameter differently (0: forgotten)."""
    return lambda n, optimizer, precision, world_size, shard: _memory(
        n, optimizer, precision, world_size, shard, parts=_with(optimizer, precision, **changes))


_STAGES = ("ZeRO-1 (zero1) shards only the optimizer state; ZeRO-2 (zero2) also the gradients; ZeRO-3 (zero3, "
           "FSDP) also the weights. Divide just the sharded parts by world_size.")

MEMORY_MISTAKES = [
    Mistake("weights only", _counting(gradients=0, optimizer=0),
            "Training keeps much more than the weights: add the gradients (one per parameter) and the "
            "optimizer state (Adam: two moments)."),
    Mistake("optimizer state forgotten", _counting(optimizer=0),
            "Count the optimizer state too: Adam keeps two fp32 moments per parameter (exp_avg, exp_avg_sq: "
            "8 B), SGD with momentum one fp32 buffer (4 B); mixed precision adds the 4 B fp32 master copy."),
    Mistake("gradients forgotten", _counting(gradients=0),
            "Count the gradients: backward() fills a .grad as large as each parameter (4 B in fp32, "
            "2 B in mixed precision)."),
    Mistake("Adam counted with one moment",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, precision, world_size, shard,
                    parts=_with(optimizer, precision, optimizer=(4 if precision == "mixed" else 0) + 4)),
            "Adam keeps two fp32 moments per parameter (exp_avg and exp_avg_sq): 8 B, not 4 B."),
    Mistake("SGD counted like Adam",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, "adam", precision, world_size, shard),
            "SGD with momentum keeps one fp32 buffer per parameter (4 B), Adam two (8 B)."),
    Mistake("mixed precision counted as 2 B for everything",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, precision, world_size, shard,
                    parts={"weights": 2, "gradients": 2, "optimizer": MOMENT_BYTES[optimizer] / 2}),
            "Mixed precision computes with 2-byte weights and gradients, but the optimizer still works in "
            "fp32: it keeps a 4 B fp32 master copy of the weights plus fp32 moments (Adam: 4 + 8 = 12 B)."),
    Mistake("fp32 master copy of the weights forgotten",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, precision, world_size, shard,
                    parts=_with(optimizer, precision, optimizer=MOMENT_BYTES[optimizer])),
            "In mixed precision the optimizer updates an fp32 master copy of the weights (4 B per parameter, "
            "part of the optimizer state) and copies it into the 2-byte weights."),
    Mistake("mixed precision split as in fp32",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, "fp32", world_size, shard),
            "The total per parameter is the same in mixed precision and fp32 (Adam: 16 B), but it splits "
            "differently: mixed keeps 2 B weights, 2 B gradients and 12 B optimizer state (fp32 master + "
            "moments). ZeRO shards the parts separately, so the split matters."),
    Mistake("mixed precision with fp32 weights and gradients", _counting(weights=4, gradients=4),
            "In mixed precision the weights and gradients used in forward and backward are 2-byte "
            "(bf16/fp16); the fp32 copy lives in the optimizer state."),
    Mistake("shard='none' divided by the world size",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, precision, world_size, shard,
                    sharded=SHARDED["zero3"] if shard == "none" else None),
            "shard='none' is plain data parallelism (DDP): every rank keeps a full copy of weights, "
            "gradients and optimizer state, whatever the world size."),
    Mistake("nothing sharded",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, precision, world_size, "none"),
            "With ZeRO each rank keeps only 1/world_size of the sharded parts. " + _STAGES),
    *[Mistake(f"{stage} {'also shards' if extra else 'does not shard'} the {part}",
              lambda n, optimizer, precision, world_size, shard, st=stage, sh=as_if:
              _memory(n, optimizer, precision, world_size, shard, sharded=SHARDED[sh] if shard == st else None),
              f"Sharding the wrong parts: {hint} " + _STAGES)
      for stage, as_if, part, extra, hint in (
          ("zero1", "zero2", "gradients", True, "ZeRO-1 keeps full gradients on every rank."),
          ("zero2", "zero3", "weights", True, "ZeRO-2 keeps full weights on every rank."),
          ("zero2", "zero1", "gradients", False, "ZeRO-2 also divides the gradients by world_size."),
          ("zero3", "zero2", "weights", False, "ZeRO-3 also divides the weights by world_size."))],
    Mistake("everything sharded",
            lambda n, optimizer, precision, world_size, shard:
            _memory(n, optimizer, precision, world_size, shard,
                    sharded=SHARDED["zero3"] if shard != "none" else ()),
            "Sharding the wrong parts: only ZeRO-3 divides everything by world_size. " + _STAGES),
    Mistake("total over all ranks instead of per rank",
            lambda n, optimizer, precision, world_size, shard:
            world_size * _memory(n, optimizer, precision, world_size, shard),
            "Return the bytes on ONE rank, not the sum over all ranks."),
    Mistake("bytes per parameter, not for the model",
            lambda n, optimizer, precision, world_size, shard:
            _memory(1, optimizer, precision, world_size, shard),
            "Multiply the bytes per parameter by n_params."),
    *[Mistake(f"not in bytes (in {unit})",
              lambda n, optimizer, precision, world_size, shard, f=factor:
              f * _memory(n, optimizer, precision, world_size, shard),
              "Return bytes: no conversion to bits, MB or GB.")
      for unit, factor in (("bits", 8), ("MB", 1e-6), ("MiB", 2.0**-20), ("GB", 1e-9), ("GiB", 2.0**-30))],
]

_MEMORY_SIGNATURE = ("Keep the signature from the exercise: training_memory_bytes(n_params, optimizer='adam', "
                     "precision='fp32', world_size=1, shard='none'); the check passes the last four by name.")
_MEMORY_GENERIC = ("Bytes per parameter: weights + gradients + optimizer state (fp32 Adam 4 + 4 + 8, mixed Adam "
                   "2 + 2 + 12, fp32 SGD 4 + 4 + 4, mixed SGD 2 + 2 + 8), times n_params; " + _STAGES)

# The visible table, in teaching order: each part of the state alone first, then sharding.
MEMORY_CASES = [
    (1_000_000, "adam", "fp32", 1, "none"),
    (1_000_000, "sgd", "fp32", 1, "none"),
    (1_000_000, "adam", "mixed", 1, "none"),
    (1_000_000, "sgd", "mixed", 1, "none"),
    (0, "adam", "fp32", 1, "none"),
    (1_500_000_000, "adam", "mixed", 8, "none"),
    (1_500_000_000, "adam", "mixed", 8, "zero1"),
    (1_500_000_000, "adam", "mixed", 8, "zero2"),
    (1_500_000_000, "adam", "mixed", 8, "zero3"),
    (1_500_000_000, "adam", "fp32", 8, "zero1"),
    (1_500_000_000, "adam", "fp32", 8, "zero2"),
    (7_000_000_000, "sgd", "fp32", 4, "zero1"),
    (7_000_000_000, "sgd", "mixed", 4, "zero2"),
    (6_000_000, "sgd", "fp32", 3, "zero3"),
    (1_000_000, "adam", "fp32", 1, "zero3"),
    (1_000_000, "sgd", "mixed", 1, "zero1"),
]
MEMORY_INVALID = [
    ((1_000_000,), {"world_size": 0}, "world_size < 1"),
    ((1_000_000,), {"world_size": 0, "shard": "zero3"}, "world_size < 1"),
    ((-1,), {}, "negative n_params"),
    ((1_000_000,), {"shard": "zero4"}, "unknown shard"),
    ((1_000_000,), {"optimizer": "lion"}, "unknown optimizer"),
    ((1_000_000,), {"precision": "fp8"}, "unknown precision"),
]


def memory_cases(seed: int, n_random: int) -> list[tuple]:
    rng = random.Random(f"concepts.memory/{seed}")
    cases = list(MEMORY_CASES)
    for _ in range(n_random):
        ws = rng.choice(WORLD_SIZES)
        cases.append((ws * rng.randint(1, 10**9), rng.choice(OPTIMIZERS), rng.choice(PRECISIONS), ws,
                      rng.choice(SHARDS)))
    return cases


def _run_memory(learner, params: dict) -> str:
    fn = learner.training_memory_bytes
    cases = memory_cases(int(params.get("seed", 0)), int(params.get("cases", 24)))
    calls = [((n,), dict(optimizer=o, precision=p, world_size=ws, shard=s)) for n, o, p, ws, s in cases]
    _run_cases(fn, calls, reference_memory, MEMORY_MISTAKES, _MEMORY_GENERIC, _MEMORY_SIGNATURE)
    for args, kwargs, why in MEMORY_INVALID:
        _rejects(fn, args, kwargs, why, "n_params >= 0, world_size >= 1, optimizer in ('adam', 'sgd'), "
                                        "precision in ('fp32', 'mixed'), shard in ('none', 'zero1', 'zero2', "
                                        "'zero3').")
    largest = max(c[3] for c in cases)
    return (f"training_memory_bytes() matched the reference on {len(cases)} cases (Adam/SGD, fp32/mixed, "
            f"none/zero1/zero2/zero3, 1 to {largest} ranks) and rejected {len(MEMORY_INVALID)} invalid calls")


register(LocalCheck(id="concepts.memory", functions=("training_memory_bytes",), run=_run_memory,
                    defaults={"seed": 0, "cases": 24}))


# ================================================================ concepts.bubble
# GPipe (and 1F1B, which reorders the same work): with p stages and m microbatches a step
# takes m + p - 1 slots per stage, of which m are busy: the idle fraction is (p-1)/(m+p-1).

def reference_bubble(n_stages: int, n_microbatches: int) -> float:
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


BUBBLE_MISTAKES = [
    Mistake("(p - 1)/m: idle time relative to busy time",
            lambda n_stages, n_microbatches: (n_stages - 1) / n_microbatches,
            "(p - 1)/m compares the idle time with the busy time (the ratio the Megatron-LM paper uses); the "
            "bubble FRACTION is idle / (busy + idle): a step lasts m + p - 1 slots, of which p - 1 are idle, "
            "so (p - 1)/(m + p - 1)."),
    Mistake("arguments swapped",
            lambda n_stages, n_microbatches: (n_microbatches - 1) / (n_microbatches + n_stages - 1),
            "The signature is bubble_fraction(n_stages, n_microbatches): the p - 1 idle slots come from the "
            "stages, not the microbatches."),
    Mistake("busy fraction instead of idle fraction",
            lambda n_stages, n_microbatches: n_microbatches / (n_microbatches + n_stages - 1),
            "m/(m + p - 1) is the fraction of the step a stage is busy (the efficiency); the bubble is the "
            "rest."),
    Mistake("a percentage, not a fraction",
            lambda n_stages, n_microbatches: 100 * reference_bubble(n_stages, n_microbatches),
            "Return a fraction between 0 and 1, not a percentage."),
    Mistake("integer division",
            lambda n_stages, n_microbatches: (n_stages - 1) // (n_microbatches + n_stages - 1),
            "// is integer (floor) division and gives 0 here: use / for a fraction."),
    Mistake("off by one in the step length",
            lambda n_stages, n_microbatches: (n_stages - 1) / (n_microbatches + n_stages),
            "A step lasts m + p - 1 slots: the last microbatch enters the first stage at slot m and needs "
            "p - 1 more slots to leave the last stage. The bubble is (p - 1)/(m + p - 1)."),
    Mistake("p/(m + p)",
            lambda n_stages, n_microbatches: n_stages / (n_microbatches + n_stages),
            "Each stage idles p - 1 slots (not p) in a step of m + p - 1 slots: (p - 1)/(m + p - 1)."),
]
_BUBBLE_SIGNATURE = "Keep the signature: bubble_fraction(n_stages, n_microbatches); the check passes them by name."
_BUBBLE_GENERIC = ("With p stages and m microbatches a GPipe step lasts m + p - 1 slots per stage and p - 1 of "
                   "them are idle: (p - 1)/(m + p - 1).")

BUBBLE_CASES = [(1, 1), (1, 8), (2, 1), (2, 4), (4, 4), (4, 8), (4, 32), (8, 1), (8, 64), (3, 10)]
BUBBLE_INVALID = [((0, 4), "n_stages < 1"), ((4, 0), "n_microbatches < 1"), ((-2, 8), "n_stages < 1")]


def bubble_cases(seed: int, n_random: int) -> list[tuple[int, int]]:
    rng = random.Random(f"concepts.bubble/{seed}")
    return list(BUBBLE_CASES) + [(rng.randint(1, 64), rng.randint(1, 512)) for _ in range(n_random)]


def _run_bubble(learner, params: dict) -> str:
    fn = learner.bubble_fraction
    cases = bubble_cases(int(params.get("seed", 0)), int(params.get("cases", 16)))
    calls = [((), dict(n_stages=p, n_microbatches=m)) for p, m in cases]
    _run_cases(fn, calls, reference_bubble, BUBBLE_MISTAKES, _BUBBLE_GENERIC, _BUBBLE_SIGNATURE)
    for (p, m), why in BUBBLE_INVALID:
        _rejects(fn, (), dict(n_stages=p, n_microbatches=m), why, "a pipeline needs at least one stage and "
                                                                   "one microbatch.")
    return (f"bubble_fraction() matched (p - 1)/(m + p - 1) on {len(cases)} cases and rejected "
            f"{len(BUBBLE_INVALID)} invalid calls")


register(LocalCheck(id="concepts.bubble", functions=("bubble_fraction",), run=_run_bubble,
                    defaults={"seed": 0, "cases": 16}))


# ================================================================ concepts.allreduce
# Ring all-reduce of n bytes over N ranks: a reduce-scatter (N - 1 steps) then an all-gather
# (N - 1 steps); in every step each rank sends one chunk of n/N bytes: 2 (N - 1)/N * n.

def reference_allreduce(n_bytes: float, world_size: int) -> float:
    return 2 * (world_size - 1) / world_size * n_bytes


_PHASES = ("a ring all-reduce is a reduce-scatter (N - 1 steps) followed by an all-gather (N - 1 steps), and "
           "in each step a rank sends one chunk of n_bytes/N: 2 (N - 1)/N * n_bytes.")

ALLREDUCE_MISTAKES = [
    Mistake("one rank still sends",
            lambda n_bytes, world_size: n_bytes if world_size == 1 else reference_allreduce(n_bytes, world_size),
            "With one rank there is nobody to send to: 0 bytes (the formula gives 0 for N = 1)."),
    Mistake("only one phase counted",
            lambda n_bytes, world_size: (world_size - 1) / world_size * n_bytes,
            "(N - 1)/N * n_bytes is one phase only (the reduce-scatter, or the all-gather): " + _PHASES),
    Mistake("the full buffer twice",
            lambda n_bytes, world_size: 2 * n_bytes,
            "2 * n_bytes (the full buffer twice, or 2N chunks) is only the limit for many ranks: each phase has "
            "N - 1 steps of one chunk of n_bytes/N, so " + _PHASES),
    Mistake("the full buffer at every step, or the total over all ranks",
            lambda n_bytes, world_size: 2 * (world_size - 1) * n_bytes,
            "2 (N - 1) * n_bytes sends the whole buffer at each step (or sums over all N ranks); each step sends "
            "one chunk of n_bytes/N and the answer is per rank: " + _PHASES),
    Mistake("the full buffer to every other rank",
            lambda n_bytes, world_size: (world_size - 1) * n_bytes,
            "(N - 1) * n_bytes is a naive exchange of whole buffers; the ring sends chunks: " + _PHASES),
    Mistake("integer division",
            lambda n_bytes, world_size: 2 * ((world_size - 1) // world_size) * n_bytes,
            "(N - 1) // N is 0 for every N: multiply first or use / ."),
    *[Mistake(f"not in bytes (in {unit})",
              lambda n_bytes, world_size, f=factor: f * reference_allreduce(n_bytes, world_size),
              "Return bytes, in the unit of n_bytes.")
      for unit, factor in (("bits", 8), ("MB", 1e-6), ("GB", 1e-9))],
]
_ALLREDUCE_SIGNATURE = ("Keep the signature: ring_allreduce_bytes(n_bytes, world_size); the check passes them "
                        "by name.")


def _explain_allreduce(exc: BaseException) -> str | None:
    if isinstance(exc, ZeroDivisionError):
        return "With one rank there is nobody to send to: return 0 bytes (avoid dividing by N - 1)."
    return None


ALLREDUCE_CASES = [(100_000_000, 2), (100_000_000, 4), (100_000_000, 8), (3_000_000_000, 3), (96_000_000, 1),
                   (0, 4), (4096, 1024), (1_000_000_000, 1000)]
ALLREDUCE_INVALID = [((1000, 0), "world_size < 1"), ((-8, 2), "negative n_bytes")]


def allreduce_cases(seed: int, n_random: int) -> list[tuple[int, int]]:
    rng = random.Random(f"concepts.allreduce/{seed}")
    cases = list(ALLREDUCE_CASES)
    for _ in range(n_random):
        ws = rng.choice(WORLD_SIZES)
        cases.append((ws * rng.randint(1, 10**9), ws))
    return cases


def _run_allreduce(learner, params: dict) -> str:
    fn = learner.ring_allreduce_bytes
    cases = allreduce_cases(int(params.get("seed", 0)), int(params.get("cases", 16)))
    calls = [((), dict(n_bytes=n, world_size=ws)) for n, ws in cases]
    _run_cases(fn, calls, reference_allreduce, ALLREDUCE_MISTAKES, "Count what one rank sends: " + _PHASES,
               _ALLREDUCE_SIGNATURE, explain=_explain_allreduce)
    for (n, ws), why in ALLREDUCE_INVALID:
        _rejects(fn, (), dict(n_bytes=n, world_size=ws), why, "world_size >= 1 and n_bytes >= 0.")
    return (f"ring_allreduce_bytes() matched 2 (N - 1)/N * n_bytes on {len(cases)} cases (1 to "
            f"{max(c[1] for c in cases)} ranks) and rejected {len(ALLREDUCE_INVALID)} invalid calls")


register(LocalCheck(id="concepts.allreduce", functions=("ring_allreduce_bytes",), run=_run_allreduce,
                    defaults={"seed": 0, "cases": 16}))
