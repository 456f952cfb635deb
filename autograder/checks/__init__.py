"""Registry of checks: one module per assignment, each exercise's whole story in one place.

A DistributedCheck has a per-rank `scenario(ctx, learner) -> dict` (runs inside every
torchrun rank) and a `judge(run) -> str` (runs in the harness: returns the success
summary or raises CheckFailed with a hint). A LocalCheck runs in one process, without
torchrun (numeric exercises).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from ..verdict import CheckFailed


@dataclass(frozen=True)
class RankOutcome:
    rank: int
    ok: bool
    result: Any = None           # what the scenario returned
    error: dict | None = None    # describe_exception() of what the learner's code raised
    phase: str = ""
    calls: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """Everything the judge sees: per-rank outcomes, the parameters and the thresholds in force."""
    exercise: str
    world_size: int
    params: dict[str, Any]
    ranks: tuple[RankOutcome, ...]
    thresholds: dict[str, float]
    profile: str

    def results(self) -> list[Any]:
        return [r.result for r in self.ranks]


@dataclass(frozen=True)
class DistributedCheck:
    id: str
    functions: tuple[str, ...]                       # names the learner's module must define
    scenario: Callable[[Any, Any], Any]              # (RankContext, learner module) -> JSON-able result
    judge: Callable[[Run], str]                      # -> success summary; raises CheckFailed
    init_group: bool = True                          # the harness creates the process group first
    explain: Callable[[dict], str | None] = lambda error: None  # exception -> hint, check-specific
    defaults: dict[str, Any] = field(default_factory=dict)      # scenario parameters
    measures_speed: bool = False  # times itself: runs alone (no shared launch; exclusive machine when grading)


@dataclass(frozen=True)
class LocalCheck:
    id: str
    functions: tuple[str, ...]
    run: Callable[[Any, dict[str, Any]], str]        # (learner module, params) -> summary; raises CheckFailed
    defaults: dict[str, Any] = field(default_factory=dict)
    measures_speed: bool = False


Check = DistributedCheck | LocalCheck


@contextmanager
def environment(values: dict[str, str | None]):
    """Set (or, for None, remove) environment variables for the duration of the block (scenarios, benchmarks)."""
    saved = {k: os.environ.get(k) for k in values}

    def apply(items):
        for k, v in items.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    try:
        yield
    finally:
        apply(saved)


_REGISTRY: dict[str, Check] = {}


def register(check: Check) -> Check:
    if check.id in _REGISTRY:
        raise ValueError(f"check {check.id!r} registered twice")
    _REGISTRY[check.id] = check
    return check


def _load_all() -> None:
    """Import every module in this package: each registers its assignment's checks."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def get(exercise_id: str) -> Check:
    _load_all()
    try:
        return _REGISTRY[exercise_id]
    except KeyError:
        raise KeyError(f"no check implements exercise {exercise_id!r}") from None


def implemented() -> set[str]:
    _load_all()
    return set(_REGISTRY)


__all__ = ["CheckFailed", "DistributedCheck", "LocalCheck", "Run", "RankOutcome", "environment", "get",
           "implemented", "register"]
