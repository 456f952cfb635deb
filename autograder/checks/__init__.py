"""The checks, one module per exercise: `autograder/checks/<assignment>/<exercise>.py` defines CHECK.

Every check lives on the trusted side. For each call the harness draws a fresh secret
and asks the check for

- `inputs(trial) -> [inputs of rank 0, inputs of rank 1, ...]`: each rank receives only its own;
- `expected(trial, inputs) -> value`: what a correct implementation returns, computed here by
  the assignment's reference module (never sent to a rank);
- then runs the rank part (autograder/rank/parts/<assignment>.py) in every rank, and
- `judge(run) -> summary | (summary, details)`: compares what the ranks returned with the
  expected value; raises CheckFailed(message, hint) naming the mistake.

Checks that measure speed or memory orchestrate several jobs themselves (`measure`).
`params["seed"]` only selects a variant of a scenario; the data always come from the secret.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import random
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..config import ConfigError
from ..verdict import CheckFailed, Inconclusive, expect

GROUPS = ("harness", "learner", "none")   # who creates the process group before the rank part runs


@dataclass(frozen=True)
class Trial:
    """One call of a check, as the trusted side sees it: its parameters and its secret."""
    exercise: str
    params: dict[str, Any]
    world_size: int
    profile: str
    thresholds: Any            # the check's typed thresholds for this profile (thresholds_for), or None
    secret: bytes
    nnodes: int = 1

    @classmethod
    def fresh(cls, **fields) -> "Trial":
        return cls(secret=secrets.token_bytes(16), **fields)

    @property
    def rng(self) -> random.Random:
        """A new RNG seeded by the secret (the same sequence each time it is asked for)."""
        return random.Random(self.secret)

    @property
    def seed(self) -> int:
        """A 62-bit number derived from the secret, for torch generators."""
        return int.from_bytes(self.secret[:8], "big") >> 2

    def generator(self, salt: int = 0):
        import torch

        return torch.Generator().manual_seed((self.seed + 7919 * salt) % 2**62)


@dataclass(frozen=True)
class Run:
    """Everything a judge sees: what each rank returned, the trusted inputs and expected value, the thresholds."""
    exercise: str
    world_size: int
    params: dict[str, Any]
    ranks: tuple             # outcome.RankOutcome per rank (untrusted results)
    thresholds: Any
    profile: str
    inputs: list = field(default_factory=list)
    expected: Any = None
    seconds: float = 0.0     # the task's time, taken by the harness from outside (inputs sent -> last reply)
    sent_bytes: int | None = None   # bytes on the job's loopback over the task, from outside (None: not measured)

    @classmethod
    def of(cls, trial: Trial, inputs: list, expected: Any, result) -> "Run":
        """What the judge sees of a finished task (result: an outcome.TaskResult) of this trial."""
        return cls(exercise=trial.exercise, world_size=trial.world_size, params=trial.params,
                   ranks=tuple(result.outcomes), thresholds=trial.thresholds, profile=trial.profile,
                   inputs=inputs, expected=expected, seconds=result.seconds,
                   sent_bytes=result.sent_bytes)

    def results(self) -> list[Any]:
        return [r.result for r in self.ranks]


@dataclass(frozen=True)
class Check:
    id: str
    functions: tuple[str, ...]                         # the learner's module must define these (read, not run)
    judge: Callable[[Run], Any] | None = None          # -> summary or (summary, details); raises CheckFailed
    inputs: Callable[[Trial], list] | None = None      # per-rank inputs
    expected: Callable[[Trial, list], Any] | None = None   # the reference's values (trusted side only)
    part: str = ""                                     # rank part; default: the exercise id
    group: str = "harness"
    local: bool = False                                # one plain process, no torchrun (numeric exercises)
    explain: Callable[[dict], str | None] = lambda error: None   # learner exception -> hint
    defaults: dict[str, Any] = field(default_factory=dict)
    measure: Callable[[Any], Any] | None = None        # speed/memory: runs its own jobs (checks/measured.py)
    measures_speed: bool = False                       # needs the machine alone (no shared launch)
    unmeasured: dict[str, Any] = field(default_factory=dict)   # overrides for correctness only (smoke configuration)
    by_hand: bool = False     # the notebook asks for the mechanism built by hand: delegating to the library fails
    avoid: dict[str, tuple[str, str]] = field(default_factory=dict)   # dotted API -> (why, hint): read, not run
    thresholds: type | None = None   # a frozen dataclass of its pass lines, filled from course.yaml per profile

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"{self.id}: group must be one of {GROUPS}")
        if self.measure is None and (self.judge is None or self.inputs is None):
            raise ValueError(f"{self.id}: a check needs inputs and a judge (or a measure)")
        if self.measures_speed and not self.unmeasured:
            raise ValueError(f"{self.id}: a check that times a speed-up says how to run it untimed (unmeasured=...)")

    @property
    def rank_part(self) -> str:
        return self.part or self.id


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block: the harness shares the cores with the ranks it waits for, and torch's
    thread pool on an oversubscribed machine runs several times slower than one thread (measured: 10 s vs 1.5 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def secret_statistics(state: dict, generator) -> dict:
    """`state` with BatchNorm statistics drawn from `generator`: values a fresh model would not have, so that an old
    copy of the model (not the one sent) cannot match them."""
    import torch

    drawn = dict(state)
    for name, value in state.items():
        if name.endswith("running_mean"):
            drawn[name] = torch.randn(value.shape, generator=generator)
        elif name.endswith("running_var"):
            drawn[name] = 0.5 + torch.rand(value.shape, generator=generator)
        elif name.endswith("num_batches_tracked"):
            drawn[name] = torch.randint(1, 1000, (), generator=generator)
    return drawn


def thresholds_for(check: Check, exercise, profile: str):
    """The exercise's thresholds under `profile` (course.yaml), as the check's typed object; None for a check that
    has none. Every field without a default must be given, and no other key: a ConfigError names the key."""
    given = dict(exercise.thresholds.get(profile, {}))
    where = f"course.yaml: exercise {exercise.id!r}, thresholds.{profile}"
    if check.thresholds is None:
        if given:
            raise ConfigError(f"{where}: {check.id} reads no thresholds, yet {', '.join(sorted(given))} given")
        return None
    fields = {f.name: f for f in dataclasses.fields(check.thresholds)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a threshold of {check.id} (it has: {', '.join(fields)})")
    missing = [n for n, f in fields.items() if n not in given
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is missing (a number: see the comments in course.yaml)")
    return check.thresholds(**{k: float(v) for k, v in given.items()})


def _module_name(exercise_id: str) -> str:
    assignment, _, exercise = exercise_id.partition(".")
    return f"{__name__}.{assignment}.{exercise}"


def get(exercise_id: str) -> Check:
    """The check of an exercise (its module is imported on first use)."""
    try:
        module = importlib.import_module(_module_name(exercise_id))
    except ModuleNotFoundError as exc:
        if exc.name and _module_name(exercise_id).startswith(exc.name):
            raise KeyError(f"no check implements exercise {exercise_id!r}") from None
        raise
    check = getattr(module, "CHECK", None)
    if not isinstance(check, Check) or check.id != exercise_id:
        raise KeyError(f"{module.__name__} defines no CHECK for {exercise_id!r}")
    return check


def implemented() -> set[str]:
    """Every exercise id that has a check module (without importing the modules)."""
    found = set()
    for package in pkgutil.iter_modules(__path__):
        if not package.ispkg:
            continue
        sub = importlib.import_module(f"{__name__}.{package.name}")
        for info in pkgutil.iter_modules(sub.__path__):
            if not info.ispkg and not info.name.startswith("_") and info.name not in ("reference", "shared"):
                found.add(f"{package.name}.{info.name}")
    return found


__all__ = ["Check", "CheckFailed", "Inconclusive", "Run", "Trial", "expect", "get", "implemented", "one_thread",
           "secret_statistics", "thresholds_for"]
