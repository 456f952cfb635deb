"""Pipeline timelines for the notebook: the bubble formulas, and a script that records a small pipeline's timeline.

The recording itself (`Recorder`, which runs inside the ranks) lives in autograder/rank/timeline.py,
the part of the package the checks' ranks may import; the names are re-exported here.

Run as a script (under torchrun) it draws a small pipeline's timeline into JSON, with the
build_stage of your pipeline_parts.py:

    torchrun --standalone --nproc-per-node 2 -m autograder.timeline --microbatches 8 --out timeline.json
    torchrun ... -m autograder.timeline --parts path/to/pipeline_parts.py
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .rank.timeline import (Recorder, StepRecord, bubble_formula, drive, ideal_speedup, measured_bubble,  # noqa: F401
                            merge_timelines, record_schedules)


def _load_build_stage(path: str):
    """build_stage from the learner's pipeline_parts.py (its folder first on sys.path, as torchrun would run it)."""
    file = Path(path).resolve()
    if not file.is_file():
        raise SystemExit(f"{path} does not exist: run the %%writefile cell that creates it, or pass --parts PATH")
    sys.path.insert(0, str(file.parent))
    build = getattr(importlib.import_module(file.stem), "build_stage", None)
    if build is None:
        raise SystemExit(f"{path} defines no build_stage")
    return build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Record a small pipeline's timeline (GPipe and 1F1B) as JSON")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=0, help="default: 16 images per microbatch")
    p.add_argument("--parts", default="pipeline_parts.py",
                   help="the pipeline_parts.py whose build_stage splits the model")
    p.add_argument("--steps", type=int, default=2, help="steps per schedule; the last one is recorded")
    p.add_argument("--out", default="timeline.json")
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist

    from eurosat.model import EuroSATNet

    build_stage = _load_build_stage(args.parts)
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
        stage = build_stage(model, inputs[: batch // m], device)
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
