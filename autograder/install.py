"""The grader's own files as installed: recorded by `make setup`, verified before and during grading.

A submission graded without a sandbox (or a self-check run on the grader's machine) could
rewrite the installed package so that later submissions pass; `course grade` refuses to
grade when any file of the package, the data package or nbgrader_config.py differs from
the record, and names the files. (course.yaml and the notebooks are the course's content,
not the grader: the sandbox hides them from student code.)
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .config import REPO_ROOT

MANIFEST_ENV = "COURSE_INSTALL_RECORD"   # another place for the record (tests; several installs side by side)


def manifest_path() -> Path:
    return Path(os.environ.get(MANIFEST_ENV) or Path(sys.prefix) / "course-install.json")


class InstallChanged(RuntimeError):
    """The grader's files differ from the recorded install; the message lists them."""


def _files() -> dict[str, Path]:
    import importlib.util

    files = {}
    for package in ("autograder", "eurosat"):
        folder = Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)))
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[f"{package}/{path.relative_to(folder)}"] = path
    if (REPO_ROOT / "nbgrader_config.py").is_file():
        files["nbgrader_config.py"] = REPO_ROOT / "nbgrader_config.py"
    return files


def digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in _files().items()}


def record(path: Path | None = None) -> Path:
    """Write the manifest (run by `make setup`, and by an instructor after changing the grader on purpose)."""
    path = path or manifest_path()
    path.write_text(json.dumps(digests(), indent=1, sort_keys=True))
    return path


def changes(path: Path | None = None) -> list[str]:
    """Files added, removed or changed since the manifest was written."""
    path = path or manifest_path()
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return [f"no install record at {path}"]
    now = digests()
    return sorted({*recorded, *now} - {k for k in recorded if now.get(k) == recorded[k]})


def verify(path: Path | None = None) -> None:
    changed = changes(path)
    if changed:
        raise InstallChanged(
            "the grader's files differ from what was installed: " + ", ".join(changed[:10])
            + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
            + ". If you changed them yourself, record the new state with `course verify-install --record`; "
              "otherwise reinstall (make setup) before grading: a submission may have modified the grader.")


if __name__ == "__main__":
    print(record())
