"""Pipeline timelines, recorded inside the ranks: when each rank ran forward and backward for each microbatch.

`Recorder` wraps, for as long as it is active in this process, the methods every
torch.distributed.pipelining stage and schedule go through:

- `forward_one_chunk` / `backward_one_chunk` of the stage classes: one event per
  microbatch, ("F" or "B", microbatch, start, end). Receiving activations and
  gradients happens before these calls, so an event is the compute alone: time a
  rank spends waiting for its neighbour shows up as a gap (the bubble);
- `step` of the schedule classes: one `StepRecord` per call, with the stage, the
  number of microbatches, which arguments this rank passed (inputs, target, losses)
  and the events inside the call.

This module runs in the learner's processes (the checks' rank parts and `python -m
autograder.timeline` use it), so what it records is an observation: it explains a failure
and draws the picture, it never decides a verdict. Times are `time.perf_counter()`
(CLOCK_MONOTONIC on Linux: one clock for every process of the machine), counted from the
recorder's `t0`; `t0` itself is kept so that ranks' events can be put on one axis.

The measured bubble fraction of one step is the share of rank-time left idle:
1 - (sum of all ranks' F and B time) / (ranks x the step's span). The formula for
GPipe and 1F1B with equal stages is (p - 1) / (m + p - 1); the measured value is
higher when stages are unequal or communication is slow, which the picture shows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


def bubble_formula(n_stages: int, n_microbatches: int) -> float:
    """Idle share of a GPipe or 1F1B step with equal stages: what the ideal speed-up (below) leaves of p."""
    return 1 - ideal_speedup(n_stages, n_microbatches) / n_stages


def ideal_speedup(n_stages: int, n_microbatches: int) -> float:
    """Speed-up of m microbatches over one, if stages are equal and communication is free: p*m / (m + p - 1)."""
    return n_stages * n_microbatches / (n_microbatches + n_stages - 1)


def measured_bubble(events: list[list], n_ranks: int) -> float:
    """1 - busy / (n_ranks x span) over events [rank, kind, microbatch, start, end] of one step."""
    if not events:
        return float("nan")
    span = max(e[4] for e in events) - min(e[3] for e in events)
    busy = sum(e[4] - e[3] for e in events)
    return max(0.0, 1.0 - busy / (n_ranks * span)) if span > 0 else 0.0


@dataclass
class StepRecord:
    """One call of schedule.step (or eval) on this rank."""
    schedule: str                 # class name, e.g. "ScheduleGPipe"
    n_microbatches: int
    stage_index: int
    num_stages: int
    has_inputs: bool              # positional inputs passed (the first stage needs them)
    has_target: bool              # target= passed (the last stage needs it)
    has_losses: bool              # losses= list passed
    start: float = 0.0
    end: float = 0.0
    events: list = field(default_factory=list)   # [kind, microbatch, start, end, batch size or None]
    stage: Any = None             # the stage object (not serialised)
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)

    def to_json(self) -> dict:
        return {"schedule": self.schedule, "n_microbatches": self.n_microbatches, "stage_index": self.stage_index,
                "num_stages": self.num_stages, "has_inputs": self.has_inputs, "has_target": self.has_target,
                "has_losses": self.has_losses, "seconds": self.seconds, "forwards": self.count("F"),
                "backwards": self.count("B"), "input_batches": [e[4] for e in self.events if e[0] == "F"],
                "error": self.error}


def _leading_batch(value) -> int | None:
    """Batch size of the first tensor in a microbatch's arguments (None when there is none)."""
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() else None
    if isinstance(value, (tuple, list)) and value:
        return _leading_batch(value[0])
    return None


def _synchronize(stage) -> None:
    """Wait for the stage's GPU (no-op on CPU)."""
    device = getattr(stage, "device", None)
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


class Recorder:
    """Records pipeline steps and per-microbatch compute in this process while active (a context manager)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, *, cuda_sync: bool = False):
        self.clock = clock
        # CUDA runs kernels asynchronously: to time each microbatch, wait for the GPU around each
        # F and B (slower, for pictures). Steps are always timed after the GPU has finished.
        self.cuda_sync = cuda_sync
        self.t0 = clock()
        self.steps: list[StepRecord] = []
        self.loose_events: list = []       # F/B outside any step (should not happen with the built-in schedules)
        self._current: StepRecord | None = None
        self._saved: list[tuple[type, str, Any]] = []

    # -------------------------------------------------------------- patching
    def __enter__(self) -> "Recorder":
        from torch.distributed.pipelining import schedules, stage

        self._patch(stage._PipelineStageBase, "forward_one_chunk", self._wrap_compute("F"))
        self._patch(stage._PipelineStageBase, "backward_one_chunk", self._wrap_compute("B"))
        self._patch(schedules.PipelineScheduleSingle, "step", self._wrap_step)
        self._patch(schedules.PipelineScheduleMulti, "step", self._wrap_step)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _patch(self, owner: type, name: str, make: Callable) -> None:
        original = owner.__dict__[name]
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def _wrap_compute(self, kind: str):
        recorder = self

        def make(original):
            def wrapper(stage, chunk_id, *args, **kwargs):
                batch = None
                if kind == "F" and getattr(stage, "is_first", False):
                    batch = _leading_batch(args[0] if args else kwargs.get("args"))
                if recorder.cuda_sync:
                    _synchronize(stage)
                start = recorder.clock()
                try:
                    return original(stage, chunk_id, *args, **kwargs)
                finally:
                    if recorder.cuda_sync:
                        _synchronize(stage)
                    event = [kind, int(chunk_id), start - recorder.t0, recorder.clock() - recorder.t0, batch]
                    (recorder._current.events if recorder._current else recorder.loose_events).append(event)
            wrapper.__wrapped__ = original
            return wrapper
        return make

    def _wrap_step(self, original):
        recorder = self

        def step(schedule, *args, **kwargs):
            stage = getattr(schedule, "_stage", None) or (getattr(schedule, "_stages", None) or [None])[0]
            record = StepRecord(
                schedule=type(schedule).__name__, n_microbatches=int(getattr(schedule, "_n_microbatches", 0)),
                stage_index=int(getattr(stage, "stage_index", -1)), num_stages=int(getattr(stage, "num_stages", 0)),
                has_inputs=bool(args) or kwargs.get("arg_mbs") is not None,
                has_target=kwargs.get("target") is not None or kwargs.get("target_mbs") is not None,
                has_losses=kwargs.get("losses") is not None, stage=stage)
            outer, recorder._current = recorder._current, record
            record.start = recorder.clock() - recorder.t0
            try:
                return original(schedule, *args, **kwargs)
            except BaseException as exc:
                record.error = f"{type(exc).__name__}: {exc}"[:300]
                raise
            finally:
                _synchronize(stage)
                record.end = recorder.clock() - recorder.t0
                recorder._current = outer
                if outer is None:      # eval() calls step(): keep the outer record only
                    recorder.steps.append(record)
        step.__wrapped__ = original
        return step


# ------------------------------------------------------------------ driving a schedule

def drive(schedule, inputs, labels) -> list:
    """One schedule.step the way the contract says: inputs on the first rank, target on the last; the losses."""
    import torch.distributed as dist

    rank, world_size = dist.get_rank(), dist.get_world_size()
    losses: list = []
    first, last = rank == 0, rank == world_size - 1
    schedule.step(*((inputs,) if first else ()), **(dict(target=labels, losses=losses) if last else {}))
    return losses


SCHEDULES = {"GPipe": "ScheduleGPipe", "1F1B": "Schedule1F1B"}


def record_own_steps(stage, inputs, labels, n_microbatches: int, *, steps: int = 2,
                     names: tuple[str, ...] = ("GPipe", "1F1B")) -> dict:
    """Run each schedule on `stage` for `steps` steps; this rank's events of the last step, on the shared clock.

    Returns {name: {"events": [[kind, mb, start, end], ...], "seconds": step seconds}} with
    start/end in perf_counter seconds (comparable between the processes of one machine).
    1F1B needs at least as many microbatches as stages; with fewer it is left out.
    Every rank must call this (the schedules communicate; a barrier lines up the recorded step).
    """
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.pipelining import schedules

    out = {}
    for name in names:
        if name == "1F1B" and n_microbatches < dist.get_world_size():
            continue
        schedule = getattr(schedules, SCHEDULES[name])(stage, n_microbatches=n_microbatches, loss_fn=F.cross_entropy)
        with Recorder(cuda_sync=True) as rec:
            for i in range(steps):
                if i == steps - 1:
                    dist.barrier()   # every rank starts the drawn step together
                drive(schedule, inputs, labels)
        last = rec.steps[-1]
        out[name] = {"events": [[kind, mb, rec.t0 + start, rec.t0 + end] for kind, mb, start, end, _ in last.events],
                     "seconds": last.seconds}
    return out


def merge_timelines(per_rank: list[dict], n_microbatches: int) -> dict:
    """details["timeline"] (autograder/figures.py) from every rank's record_own_steps(), times from the step's start."""
    n_ranks = len(per_rank)
    out: dict = {"schedules": {}, "bubble": {}, "seconds": {}, "n_microbatches": n_microbatches, "n_stages": n_ranks}
    for name in per_rank[0] if per_rank else {}:
        if not all(isinstance(r, dict) and name in r for r in per_rank):
            continue
        events = [[rank, kind, mb, start, end] for rank, mine in enumerate(per_rank)
                  for kind, mb, start, end in mine[name]["events"]]
        t0 = min((e[3] for e in events), default=0.0)
        events = [[rank, kind, int(mb), float(start - t0), float(end - t0)] for rank, kind, mb, start, end in events]
        out["schedules"][name] = events
        out["bubble"][name] = {"measured": measured_bubble(events, n_ranks),
                               "formula": bubble_formula(n_ranks, n_microbatches)}
        out["seconds"][name] = max(float(r[name]["seconds"]) for r in per_rank)
    return out


def record_schedules(stage, inputs, labels, n_microbatches: int, *, steps: int = 2,
                     names: tuple[str, ...] = ("GPipe", "1F1B")) -> dict:
    """record_own_steps() on every rank, gathered: the whole details["timeline"] on every rank (a collective)."""
    import torch.distributed as dist

    mine = record_own_steps(stage, inputs, labels, n_microbatches, steps=steps, names=names)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return merge_timelines(gathered, n_microbatches)
