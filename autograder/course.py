"""The one course loader: course.yaml as frozen, validated objects, and the check that every exercise has a check."""
from __future__ import annotations

from . import checks, config


def load_course() -> config.Course:
    """course.yaml, validated (config.py). Checks are imported one by one, when an exercise is run."""
    return config.load()


def missing_checks(course: config.Course) -> list[str]:
    """Exercises of course.yaml without a check module (`course release` refuses such a course)."""
    return sorted(e.id for e in course.exercises if e.id not in checks.implemented())


def require_checks(course: config.Course) -> None:
    missing = missing_checks(course)
    if missing:
        raise config.ConfigError(f"{course.path}: exercise {missing[0]!r} has no check in "
                                 f"autograder/checks/{missing[0].replace('.', '/')}.py")
