"""Planning a check: the calls one job runs (Call, Plan), the verdicts already known (VerdictCache), and each
call's secret inputs and expected values (prepare), computed on the trusted side or, in the student pack, read
from its data."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks, config, public
from .checks import Check, Trial
from .verdict import Verdict


@dataclass(frozen=True)
class Call:
    """One exercise to run in a job: what the harness needs to make, run and judge its task."""
    exercise: config.Exercise
    check: Check
    params: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """One job: the learner's module, its world, and the exercises to run in it (first: the requested one)."""
    path: Path
    profile: config.Profile
    world_size: int
    nnodes: int
    calls: tuple[Call, ...]
    time_limit: float | None

    @property
    def local(self) -> bool:
        return self.calls[0].check.local

    def limit(self, call: Call) -> float:
        return float(self.time_limit or call.exercise.time_limit)

    def base(self, call: Call, **more: Any) -> dict[str, Any]:
        """The Verdict fields every verdict of `call` in this plan carries (plus `more`: seconds, logs, hidden)."""
        return dict(exercise=call.exercise.id, profile=self.profile.name, world_size=0 if self.local else self.world_size,
                    max_points=call.exercise.points, **more)


class VerdictCache:
    """Verdicts of exercises that shared a launch, keyed by everything that could change them.

    The key holds the content of every .py file next to the learner's module, so editing
    and re-running the %%writefile cell invalidates it.
    """

    def __init__(self):
        self._verdicts: dict[tuple, Verdict] = {}

    @staticmethod
    def key(exercise_id: str, path: Path, settings: tuple, params: dict) -> tuple:
        digest = hashlib.sha256()
        for f in sorted(path.parent.glob("*.py")):
            digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        return exercise_id, str(path), digest.hexdigest(), settings, json.dumps(params, sort_keys=True)

    def get(self, key: tuple) -> Verdict | None:
        return self._verdicts.get(key)

    def put(self, key: tuple, verdict: Verdict) -> None:
        self._verdicts[key] = verdict


class NoExpectedValues(Exception):
    """The student pack has no expected values for this call (only for the public variants)."""


def prepare(plan: Plan, call: Call) -> tuple[Trial, list, Any]:
    """(trial, every rank's inputs, the expected value): computed here, or in the student pack read from its data."""
    if public.student_copy():
        entry = public.lookup(call.exercise.id, plan.world_size, call.params, plan.nnodes)
        if entry is None:
            shipped = public.available(call.exercise.id)
            raise NoExpectedValues(f"this copy of the course has expected values for {call.exercise.id} only with "
                                   f"{'; '.join(shipped) or 'no variant'} (other variants are checked when your "
                                   f"notebook is graded)")
        trial = Trial(exercise=call.exercise.id, params=call.params, world_size=plan.world_size,
                      profile=plan.profile.name, thresholds=checks.thresholds_for(call.check, call.exercise,
                                                                                  plan.profile.name),
                      secret=entry["secret"], nnodes=plan.nnodes)
        return trial, entry["inputs"], entry["expected"]
    trial = trial_for(plan, call)
    inputs = call.check.inputs(trial)
    return trial, inputs, call.check.expected(trial, inputs) if call.check.expected else None


def trial_for(plan: Plan, call: Call) -> Trial:
    return Trial.fresh(exercise=call.exercise.id, params=call.params, world_size=plan.world_size,
                       profile=plan.profile.name,
                       thresholds=checks.thresholds_for(call.check, call.exercise, plan.profile.name), nnodes=plan.nnodes)
