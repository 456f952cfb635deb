"""In the notebook kernel while grading: the verdicts re-verification established, shown by the test cells.

The grader checks the submission's %%writefile files with the trusted harness first
(reverify.py) and hands the kernel those verdicts in a file named by $COURSE_TRUSTED_VERDICTS.
While grading, the kernel never runs a check itself (it runs in the sandbox, without the
checks' references): a test cell shows the trusted verdict of its call, and says so when the
files on disk are not the verified ones. The grade is the trusted verdicts' points.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .verdict import Verdict

TRUSTED_ENV = "COURSE_TRUSTED_VERDICTS"


def digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def call_key(exercise_id: str, overrides: dict[str, Any]) -> str:
    return json.dumps([exercise_id, overrides], sort_keys=True)


def grading() -> bool:
    """True in a kernel that nbgrader runs for `course grade` (the trusted verdicts are given)."""
    return bool(os.environ.get(TRUSTED_ENV))


def trusted_verdict(exercise_id: str, overrides: dict[str, Any], cwd: Path) -> tuple[Verdict | None, str]:
    """(the trusted verdict for this call, a note): the note says when the files on disk differ from the ones
    the verdict was established for (files that later cells write may be missing yet)."""
    try:
        trusted = json.loads(Path(os.environ[TRUSTED_ENV]).read_text())
        raw = trusted["verdicts"][call_key(exercise_id, overrides)]
    except (OSError, ValueError, KeyError):
        return None, f"no verdict was established for check({exercise_id!r}, {overrides}): the test cell differs " \
                     f"from the assignment's"
    differ = []
    for name, expected in trusted.get("files", {}).items():
        path = cwd / name
        if path.exists() and digest(path.read_bytes()) != expected:
            differ.append(name)
    note = (f"(graded from your %%writefile cells; {', '.join(differ)} on disk differ from them)" if differ else "")
    return Verdict.from_dict(raw), note
