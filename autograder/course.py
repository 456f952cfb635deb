"""The one course loader: course.yaml as frozen, validated objects, and the check that every exercise has a check."""
from __future__ import annotations

from . import checks, config


def load_course() -> config.Course:
    """course.yaml, validated (config.py). Checks are imported one by one, when an exercise is run."""
    return config.load()


def missing_checks(course: config.Course, assignments: list[str] | None = None) -> list[str]:
    """Exercises of course.yaml (of these assignments) without a check module (`course release` refuses them)."""
    chosen = [a for a in course.assignments if assignments is None or a.id in assignments]
    return sorted(e.id for a in chosen for e in a.exercises if e.id not in checks.implemented())


def require_checks(course: config.Course, assignments: list[str] | None = None) -> None:
    """Every exercise has a check, and its thresholds in course.yaml fit that check, under every profile."""
    missing = missing_checks(course, assignments)
    if missing:
        raise config.ConfigError(f"{course.path}: exercise {missing[0]!r} has no check in "
                                 f"autograder/checks/{missing[0].replace('.', '/')}.py")
    for a in course.assignments:
        if assignments is None or a.id in assignments:
            for e in a.exercises:
                for profile in course.profiles:
                    checks.thresholds_for(checks.get(e.id), e, profile)
