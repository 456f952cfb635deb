"""efficiency.checkpointing: checkpoint_blocks(model) -> nn.Module puts activation checkpointing (non-reentrant) on
every top-level block of the model: the same gradients, a lower peak memory for the step.

Scenario: an MLP of `blocks` blocks (Linear width -> hidden, GELU, Linear hidden -> width) and a head, weights and
one batch from the call's secret: its activations (batch x hidden per block, ~8 MiB each by default) dwarf its
weights, so what checkpointing saves shows in real memory. Each rank runs the same step (no process group).

Evidence, from outside the learner's processes:
- Gradients: every rank's gradients, in the order of model.parameters() (a wrapper may rename parameters, never
  reorder them), equal those the harness computes for the plain model on the same batch. Tolerance ATOL + RTOL |g|:
  recomputing a block repeats the same operations on the same inputs, so only summation order can differ.
- Memory: each rank's peak resident memory over the step (VmHWM, reset through /proc/<pid>/clear_refs when the
  inputs are sent: meter.MemoryWindow) above its resident memory at that moment, against two runs in a job the
  learner's code is not in (the source notebook's efficiency_parts.py): the plain model's step and the reference's
  checkpointed step. Pass line: reference + share x (plain - reference) (course.yaml). Not absolute peaks: the
  jobs' resident memory before the step differs by up to ~150 MiB with what each imported (measured: a file that
  never imports torch.utils.checkpoint starts 77 MiB lower in RssAnon, 150 MiB in VmRSS). All jobs run with glibc
  told to mmap every block of 1 MiB or more (fsdp.train's ALLOCATOR): activations (4 MiB each here) get fresh
  pages, so they show in the peak whatever the process held before. A learner who wanted its step to reuse memory
  held before the window would have to change the allocator and hold that memory when the window opens: the check
  fails a rank that holds more private memory (RssAnon + RssShmem) then than the reference job's by over half the
  saving. (Known limit: memory a learner's file saves by importing less, up to ~77 MiB, is room that guard does
  not see.) Where VmHWM cannot be reset (a notebook as an ordinary user: the ranks are not dumpable), the figure is
  the one polled every 20 ms (the step takes about a second: its peak is seen, a little low) and the verdict says
  so. When plain and reference differ by less than min_gain_mib the measurement cannot decide: inconclusive.
  Measured (2 busy cores, 2 ranks): plain +83-84 MiB, reference +34, the course's solution as a learner +34-38,
  nothing checkpointed +106. GPUs: NVML's figure per process as fsdp.train (not measured on a GPU yet).

What the rank observes (what checkpoint_blocks returned, missing gradients) names the mistake: reentrant checkpoint
on inputs that do not require grad cuts the graph (the blocks' parameters get no gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...verdict import CheckFailed, Inconclusive, expect
from .. import Check, one_thread
from ..draws import random_state
from ..fsdp.train import ALLOCATOR
from ..replies import field

ATOL, RTOL = 1e-6, 1e-4
MODULE = "efficiency_parts.py"
# The student pack has no reference to measure: its self-check passes a step that adds at most this share of the
# plain model's (measured: the course's solution 0.41-0.46x, nothing checkpointed 1.0-1.3x).
PACK_SHARE = 0.75


@dataclass(frozen=True)
class CheckpointingThresholds:
    share: float          # the learner's peak: at most reference + share x (plain - reference)
    min_gain_mib: float   # plain - reference below this: the measurement cannot decide (inconclusive)


def _spec(p: dict) -> dict:
    return {"kind": "mlp", "width": p["width"], "hidden": p["hidden"], "blocks": p["blocks"]}


def _inputs(trial) -> dict:
    import torch

    p = trial.params
    spec = _spec(p)
    state = random_state(trial.generator(0), spec)
    g = trial.generator(1)
    x = torch.randn(p["batch"], p["width"], generator=g)
    y = torch.randint(0, 10, (p["batch"],), generator=g)
    return {"model": {**spec, "state": state}, "x": x, "y": y}


def _plain_gradients(step: dict) -> list:
    import torch.nn.functional as F

    from ...rank.toolkit import build_model

    with one_thread():
        model = build_model(step["model"])
        F.cross_entropy(model(step["x"]), step["y"]).backward()
        return [p.grad.detach().clone() for p in model.parameters()]


def _judge_gradients(outcomes, want: list) -> None:
    for o in outcomes:
        r = o.rank
        returned = field(o, "returned", str)
        expect(returned in ("same", "module"), f"rank {r}: checkpoint_blocks returned {returned}, not the model",
               "Wrap the blocks in place and return the model.")
        grads = field(o, "grads", list)
        expect(len(grads) == len(want), f"rank {r}: the wrapped model has {len(grads)} parameters, the model had "
                                        f"{len(want)}", "Wrap each block; do not add or drop parameters.")
        missing = [i for i, g in enumerate(grads) if g is None]
        expect(not missing, f"rank {r}: {len(missing)} of the {len(want)} parameters got no gradient (the first: "
                            f"parameter {missing[0] if missing else ''})",
               "Reentrant checkpointing (use_reentrant=True) only propagates gradients when a block's input requires "
               "grad, and the model's input does not: the blocks' parameters are cut off. Use "
               "torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).")
        for i, (got, ref) in enumerate(zip(grads, want)):
            ok = got.shape == ref.shape and bool(((got - ref).abs() <= ATOL + RTOL * ref.abs()).all())
            expect(ok, f"rank {r}: the gradient of parameter {i} differs from the plain model's on the same batch",
                   "Checkpointing must not change the computation: wrap each block as it is and run it with "
                   "torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).")


def _added(result) -> tuple[list[int], str]:
    """(bytes each rank's step added above its own resident memory when the step began, how it was measured)."""
    if result.peak_resident:
        return [max(0, p - s) for p, s in zip(result.peak_resident, result.start_rss)], "VmHWM, reset before the step"
    return ([max(0, p - s) for p, s in zip(result.peak_rss, result.start_rss)],
            "polled every 20 ms (VmHWM not resettable here)")


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _measure(m):
    ws, t = m.world_size, m.trial.thresholds
    step = _inputs(m.trial)
    want = _plain_gradients(step)
    sources = m.reference_sources()
    learner = m.learner_job(env=ALLOCATOR)
    m.ready(learner)
    warm = {**step, "x": step["x"][:8], "y": step["y"][:8], "wrap": True}   # autograd's first use loads code
    m.run(learner, "efficiency.checkpointing", [warm] * ws)
    mine = m.run(learner, "efficiency.checkpointing", [{**step, "wrap": True}] * ws, measure_memory=True)
    _judge_gradients(mine.outcomes, want)
    m.close(learner)
    reference = m.reference_job(sources if sources is not None else {MODULE: m.plan.path.read_text()},
                                module=MODULE, env=ALLOCATOR)
    m.ready(reference)
    m.run(reference, "efficiency.checkpointing", [warm] * ws)
    plain = m.run(reference, "efficiency.checkpointing", [{**step, "wrap": False}] * ws, measure_memory=True)
    plain_added, how = _added(plain)
    if sources is not None:
        ref = m.run(reference, "efficiency.checkpointing", [{**step, "wrap": True}] * ws, measure_memory=True)
        ref_added, _ = _added(ref)
    else:   # the student pack: no reference, a self-check against the plain model alone
        ref_added = [0] * ws
    mine_added, _ = _added(mine)
    share = t.share if sources is not None else PACK_SHARE
    lines = [r + share * (pl - r) for r, pl in zip(ref_added, plain_added)]
    details = {"memory": {"ranks": list(range(ws)), "unit": "MiB", "how": how,
                          "bytes": {"plain": plain_added, "yours": mine_added, "reference": ref_added},
                          "held_before": {"yours": mine.start_private, "reference": plain.start_private},
                          "title": "memory each rank's step added (forward + backward)"}}
    gain = min(pl - r for r, pl in zip(ref_added, plain_added))
    if gain < t.min_gain_mib * 2**20:
        raise Inconclusive(f"same gradients as the plain model; memory undecided: checkpointing saved only "
                           f"{_mib(gain)} in the course's own runs ({how})",
                           "Run the check again on a quieter machine.", details)
    for r in range(ws):
        extra = mine.start_private[r] - plain.start_private[r]
        expect(extra <= gain / 2, f"rank {r} held {_mib(extra)} more memory than the course's job when the step "
                                  f"began: memory held before a step can hide the step's own peak",
               "Allocate nothing at import or in checkpoint_blocks that outlives it (no caches, no preallocated "
               "buffers, no allocator settings): the check measures what the step itself needs.")
    worst = max(range(ws), key=lambda r: mine_added[r] - lines[r])
    if mine_added[worst] > lines[worst]:
        raise CheckFailed(f"same gradients, but rank {worst}'s step added {_mib(mine_added[worst])}: the plain "
                          f"model's adds {_mib(plain_added[worst])}, checkpointed every block "
                          f"{_mib(ref_added[worst])} (pass line {_mib(lines[worst])}; {how})",
                          "Nothing (or too little) is checkpointed: wrap every top-level block (each child of the "
                          "model, in order) so that its forward runs under torch.utils.checkpoint.checkpoint and "
                          "keeps no inner activations.", details)
    return (f"same gradients as the plain model on every rank; the step added {_mib(max(mine_added))} per rank "
            f"against the plain model's {_mib(max(plain_added))} (checkpointed reference "
            f"{_mib(max(ref_added))}; {how})"), details


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "NotImplementedError" in text:
        return "Write checkpoint_blocks: the cell still raises NotImplementedError."
    if "does not require grad and does not have a grad_fn" in text:   # every block reentrant-checkpointed
        return ("Nothing the loss depends on requires grad: reentrant checkpointing (use_reentrant=True) cuts the "
                "graph when a block's input does not require grad, and the model's input does not. Use "
                "torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).")
    if "use_reentrant" in text:
        return "Pass use_reentrant=False to torch.utils.checkpoint.checkpoint."
    return None


CHECK = Check(id="efficiency.checkpointing", functions=("checkpoint_blocks",), measure=_measure, explain=_explain,
              thresholds=CheckpointingThresholds,
              defaults={"seed": 0, "width": 128, "hidden": 2048, "blocks": 8, "batch": 512})
