"""Pipeline timelines: when each rank runs forward and backward for each microbatch, and the bubble left over.

`Recorder` wraps, for as long as it is active in this process, the methods every
torch.distributed.pipelining stage and schedule go through:

- `forward_one_chunk` / `backward_one_chunk` of the stage classes: one event per
  microbatch, ("F" or "B", microbatch, start, end). Receiving activations and
  gradients happens before these calls, so an event is the compute alone: time a
  rank spends waiting for its neighbour shows up as a gap (the bubble);
- `step` of the schedule classes: one `StepRecord` per call, with the stage, the
  number of microbatches, which arguments this rank passed (inputs, target, losses)
  and the events inside the call.

Nothing in the learner's code has to cooperate, so the checks can time and inspect
any pipeline built with torch.distributed.pipelining. Times come from
`time.perf_counter()` measured from the recorder's `t0`; ranks align their t0 with a
barrier (`sync`) before the steps that are drawn.

The measured bubble fraction of one step is the share of rank-time left idle:
1 - (sum of all ranks' F and B time) / (ranks x the step's span). The formula for
GPipe and 1F1B with equal stages is (p - 1) / (m + p - 1); the measured value is
higher when stages are unequal or communication is slow, which the picture shows.

Run as a script (under torchrun) it draws a small pipeline's timeline into JSON:

    torchrun --standalone --nproc-per-node 2 -m autograder.timeline --microbatches 8 --out timeline.json
    torchrun ... -m autograder.timeline --parts pipeline_parts.py   # with your build_stage
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def bubble_formula(n_stages: int, n_microbatches: int) -> float:
    """Idle share of a GPipe or 1F1B step with equal stages: (p - 1) / (m + p - 1)."""
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


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

    # -------------------------------------------------------------- alignment
    def sync(self) -> None:
        """Barrier, then restart this rank's clock: all ranks' times count from (nearly) the same instant."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
        self.t0 = self.clock()


# ------------------------------------------------------------------ reference pipeline pieces

def reference_stage(model, example_microbatch, device):
    """The course's reference split (tracer frontend): one stage per rank, cut at block boundaries."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import SplitPoint, pipeline

    rank, world_size = dist.get_rank(), dist.get_world_size()
    names = [name for name, _ in model.named_children()]
    units = names[:-1] if world_size < len(names) else names   # the tiny head joins the last block's stage
    if world_size > len(units):
        raise ValueError(f"{world_size} stages, but the model has only {len(names)} blocks")
    split_spec = {units[s * len(units) // world_size]: SplitPoint.BEGINNING for s in range(1, world_size)}
    pipe = pipeline(model, mb_args=(example_microbatch,), split_spec=split_spec)
    return pipe.build_stage(rank, torch.device(device))


def drive(schedule, inputs, labels) -> list:
    """One schedule.step the way the contract says: inputs on the first rank, target on the last; the losses."""
    import torch.distributed as dist

    rank, world_size = dist.get_rank(), dist.get_world_size()
    args = (inputs,) if rank == 0 else ()
    losses: list = []
    if rank == world_size - 1:
        schedule.step(*args, target=labels, losses=losses)
    else:
        schedule.step(*args)
    return losses


SCHEDULES = {"GPipe": "ScheduleGPipe", "1F1B": "Schedule1F1B"}


def record_schedules(stage, inputs, labels, n_microbatches: int, *, steps: int = 2,
                     names: tuple[str, ...] = ("GPipe", "1F1B")) -> dict:
    """Run each schedule on `stage` for `steps` steps and gather the last step's events from every rank.

    Returns details["timeline"] (see autograder/figures.py) on every rank:
    {"schedules": {name: [[rank, kind, mb, start, end], ...]}, "bubble": {name: {"measured", "formula"}},
     "seconds": {name: step seconds}, "n_microbatches": m, "n_stages": p}.
    1F1B needs at least as many microbatches as stages; with fewer it is left out.
    Every rank must call this (it runs collectives).
    """
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.pipelining import schedules

    rank, world_size = dist.get_rank(), dist.get_world_size()
    out: dict = {"schedules": {}, "bubble": {}, "seconds": {}, "n_microbatches": n_microbatches,
                 "n_stages": world_size}
    for name in names:
        if name == "1F1B" and n_microbatches < world_size:
            continue
        schedule = getattr(schedules, SCHEDULES[name])(stage, n_microbatches=n_microbatches, loss_fn=F.cross_entropy)
        with Recorder(cuda_sync=True) as rec:
            for i in range(steps):
                if i == steps - 1:
                    rec.sync()
                drive(schedule, inputs, labels)
        last = rec.steps[-1]
        mine = [[rank, kind, mb, start, end] for kind, mb, start, end, _ in last.events]
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, {"events": mine, "seconds": last.seconds})
        events = [e for g in gathered for e in g["events"]]
        out["schedules"][name] = events
        out["bubble"][name] = {"measured": measured_bubble(events, world_size),
                               "formula": bubble_formula(world_size, n_microbatches)}
        out["seconds"][name] = max(g["seconds"] for g in gathered)
    return out


# ------------------------------------------------------------------ script

def _load_parts(path: str | None):
    """build_stage from the learner's pipeline_parts.py, or the reference one."""
    if not path:
        return reference_stage
    from .worker import import_learner_module

    return import_learner_module(Path(path)).build_stage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Record a small pipeline's timeline (GPipe and 1F1B) as JSON")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=0, help="default: 16 images per microbatch")
    p.add_argument("--parts", help="a pipeline_parts.py whose build_stage splits the model (default: reference)")
    p.add_argument("--steps", type=int, default=2, help="steps per schedule; the last one is recorded")
    p.add_argument("--out", default="timeline.json")
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist

    from eurosat.model import EuroSATNet

    device = torch.device("cpu")
    if torch.cuda.is_available():
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        m = args.microbatches
        batch = args.batch_size or 16 * m
        if batch % m:
            raise SystemExit(f"--batch-size {batch} does not split into {m} microbatches")
        g = torch.Generator().manual_seed(0)
        inputs = torch.rand(batch, 3, 64, 64, generator=g).to(device)
        labels = torch.randint(0, 10, (batch,), generator=g).to(device)
        torch.manual_seed(0)
        model = EuroSATNet().to(device)
        stage = _load_parts(args.parts)(model, inputs[: batch // m], device)
        timeline = record_schedules(stage, inputs, labels, m, steps=args.steps)
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps(timeline))
            parts = [f"{name}: bubble {b['measured']:.0%} measured, {b['formula']:.0%} formula, "
                     f"step {timeline['seconds'][name]:.2f} s" for name, b in timeline["bubble"].items()]
            print(f"{dist.get_world_size()} stages x {m} microbatches of {batch // m}: " + "; ".join(parts)
                  + f". Written to {args.out}", flush=True)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
