"""course.yaml loaded into frozen, self-validating objects; the single source of truth."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def course_root() -> Path:
    """The folder that holds course.yaml, source/ and release/ (COURSE_ROOT overrides)."""
    return Path(os.environ.get("COURSE_ROOT", REPO_ROOT)).resolve()


SHORTCUTS_ENV = "COURSE_GRADING_SHORTCUTS"
SMOKE_ENV = "COURSE_SMOKE"


def grading_shortcuts() -> bool:
    """Whether grading takes its shortcuts (default: yes; $COURSE_GRADING_SHORTCUTS=off turns them off).

    The shortcuts: exercises written in one module share one launch during re-verification,
    and the notebook's torchrun demo lines are not run. Without them every check call
    launches on its own and every demo runs: the baseline `course bench grading` compares with.
    """
    return os.environ.get(SHORTCUTS_ENV, "on").lower() not in ("off", "0", "no", "false")


def smoke() -> bool:
    """The smoke configuration ($COURSE_SMOKE=1, what `make test` runs the notebooks in): every cell runs, with less
    data and one epoch, and the notebook's self-checks judge correctness without timing (the full-marks grading
    tests time them). Never while grading: the grading job's kernel does not receive the variable."""
    return os.environ.get(SMOKE_ENV, "").lower() in ("1", "on", "yes", "true")


class ConfigError(Exception):
    """A mistake in course.yaml; the message names the file and the key."""


class Refused(ConfigError):
    """Not a mistake in course.yaml: this machine cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class Profile:
    name: str
    backend: str                  # "gloo" or "nccl"
    ranks: int | None             # None: one rank per visible GPU, up to max_ranks
    max_ranks: int
    threads_per_rank: int | None  # OMP_NUM_THREADS for every rank; None leaves torch's default
    hide_gpus: bool               # run ranks with CUDA_VISIBLE_DEVICES="" (the CPU profile on a GPU host)
    memory_limit_gb: float | None = None  # address-space cap per rank (CPU only: CUDA reserves huge ranges)


@dataclass(frozen=True)
class Exercise:
    id: str
    assignment: str
    module: str                   # file the learner writes with %%writefile
    points: float
    world_size: int | None        # None: the profile's rank count
    time_limit: float             # seconds for the whole torchrun job (or local check)
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def grade_id(self) -> str:
        """nbgrader grade id of the exercise's test cell (dots are awkward in HTML ids)."""
        return self.id.replace(".", "_")


@dataclass(frozen=True)
class Assignment:
    id: str
    notebook: str
    graded: bool
    exercises: tuple[Exercise, ...]

    @property
    def points(self) -> float:
        return sum(e.points for e in self.exercises)


@dataclass(frozen=True)
class Course:
    path: Path
    title: str
    profiles: Mapping[str, Profile]
    assignments: tuple[Assignment, ...]

    def exercise(self, exercise_id: str) -> Exercise:
        for a in self.assignments:
            for e in a.exercises:
                if e.id == exercise_id:
                    return e
        known = ", ".join(e.id for a in self.assignments for e in a.exercises)
        raise ConfigError(f"unknown exercise {exercise_id!r}; course.yaml defines: {known}")

    def assignment(self, assignment_id: str) -> Assignment:
        for a in self.assignments:
            if a.id == assignment_id:
                return a
        raise ConfigError(
            f"unknown assignment {assignment_id!r}; course.yaml defines: "
            + ", ".join(a.id for a in self.assignments)
        )

    @property
    def exercises(self) -> tuple[Exercise, ...]:
        return tuple(e for a in self.assignments for e in a.exercises)


# ---------------------------------------------------------------- validation

_TOP_KEYS = {"title", "profiles", "assignments"}
_PROFILE_KEYS = {"backend", "ranks", "max_ranks", "threads_per_rank", "hide_gpus", "memory_limit_gb"}
_ASSIGNMENT_KEYS = {"id", "notebook", "graded", "exercises"}
_EXERCISE_KEYS = {"id", "module", "points", "world_size", "time_limit", "thresholds"}


class _Reader:
    """Helpers that turn a YAML mapping into typed values, naming file and key on error."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {what}")

    def mapping(self, value: Any, where: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.error(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(value))
        if missing:
            raise self.error(where, f"missing key {missing[0]!r}")
        return value

    def number(self, value: Any, where: str, *, positive: bool = True, integer: bool = False):
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            raise self.error(where, f"expected a {'whole ' if integer else ''}number, got {value!r}")
        if positive and value <= 0:
            raise self.error(where, f"must be positive, got {value!r}")
        if not positive and value < 0:
            raise self.error(where, f"must not be negative, got {value!r}")
        return value


def _profile(r: _Reader, name: str, raw: Any) -> Profile:
    where = f"profiles.{name}"
    raw = r.mapping(raw, where, _PROFILE_KEYS, {"backend", "ranks"})
    if raw["backend"] not in ("gloo", "nccl"):
        raise r.error(f"{where}.backend", f"must be gloo or nccl, got {raw['backend']!r}")
    ranks = raw["ranks"]
    if ranks != "auto":
        ranks = r.number(ranks, f"{where}.ranks", integer=True)
    threads = raw.get("threads_per_rank")
    if threads is not None:
        threads = r.number(threads, f"{where}.threads_per_rank", integer=True)
    memory = raw.get("memory_limit_gb")
    if memory is not None:
        memory = float(r.number(memory, f"{where}.memory_limit_gb"))
        if raw["backend"] == "nccl":
            raise r.error(f"{where}.memory_limit_gb", "cannot be used with nccl: CUDA reserves address space")
    return Profile(
        memory_limit_gb=memory,
        name=name,
        backend=raw["backend"],
        ranks=None if ranks == "auto" else ranks,
        max_ranks=r.number(raw.get("max_ranks", 4), f"{where}.max_ranks", integer=True),
        threads_per_rank=threads,
        hide_gpus=bool(raw.get("hide_gpus", False)),
    )


def _exercise(r: _Reader, assignment: str, index: int, raw: Any, profiles: set[str]) -> Exercise:
    where = f"assignments.{assignment}.exercises[{index}]"
    raw = r.mapping(raw, where, _EXERCISE_KEYS, {"id", "module", "points", "time_limit"})
    where = f"exercise {raw['id']!r}"
    thresholds = raw.get("thresholds", {}) or {}
    if not isinstance(thresholds, dict):
        raise r.error(f"{where}.thresholds", "expected a mapping of profile -> {name: value}")
    for prof, values in thresholds.items():
        if prof not in profiles:
            raise r.error(f"{where}.thresholds", f"unknown profile {prof!r} (profiles: {', '.join(sorted(profiles))})")
        if not isinstance(values, dict):
            raise r.error(f"{where}.thresholds.{prof}", "expected a mapping of threshold name -> number")
        for key, value in values.items():
            r.number(value, f"{where}.thresholds.{prof}.{key}", positive=False)
    world_size = raw.get("world_size")
    if world_size is not None:
        world_size = r.number(world_size, f"{where}.world_size", integer=True)
    return Exercise(
        id=str(raw["id"]),
        assignment=assignment,
        module=str(raw["module"]),
        points=float(r.number(raw["points"], f"{where}.points", positive=False)),
        world_size=world_size,
        time_limit=float(r.number(raw["time_limit"], f"{where}.time_limit")),
        thresholds={p: dict(v) for p, v in thresholds.items()},
    )


def parse(raw: Any, path: Path, root: Path) -> Course:
    """Validate a loaded course.yaml; every mistake is one ConfigError naming file and key."""
    r = _Reader(path)
    raw = r.mapping(raw, "top level", _TOP_KEYS, {"profiles", "assignments"})
    if not isinstance(raw["profiles"], dict) or not raw["profiles"]:
        raise r.error("profiles", "expected a non-empty mapping of profile name -> settings")
    profiles = {name: _profile(r, name, value) for name, value in raw["profiles"].items()}
    if not isinstance(raw["assignments"], list):
        raise r.error("assignments", "expected a list")
    assignments, seen = [], set()
    for i, a in enumerate(raw["assignments"]):
        a = r.mapping(a, f"assignments[{i}]", _ASSIGNMENT_KEYS, {"id", "notebook"})
        aid = str(a["id"])
        # The instructor's copy has source/; a student's copy (and the grading sandbox) only release/.
        notebook = root / ("source" if (root / "source").is_dir() else "release") / aid / str(a["notebook"])
        if not notebook.is_file():
            raise r.error(f"assignments.{aid}.notebook", f"notebook not found: {notebook}")
        exercises = tuple(
            _exercise(r, aid, j, e, set(profiles)) for j, e in enumerate(a.get("exercises") or [])
        )
        for e in exercises:
            if e.id in seen:
                raise r.error(f"exercise {e.id!r}", "defined twice")
            seen.add(e.id)
        assignments.append(Assignment(aid, str(a["notebook"]), bool(a.get("graded", bool(exercises))), exercises))
    return Course(path=path, title=str(raw.get("title", "")), profiles=profiles, assignments=tuple(assignments))


def load(path: str | Path | None = None) -> Course:
    """Read and validate course.yaml (default: the one next to source/ and release/)."""
    path = Path(path) if path else course_root() / "course.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (set COURSE_ROOT to the course folder)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse(raw, path, path.parent)
