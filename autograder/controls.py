"""The typical mistakes of every exercise, one table (tests/controls/mistakes.toml): each must fail its check
with a message or hint that names it. tests/test_mistakes.py runs every one; `course gpu-proof` runs those marked
gpu_proof on the GPU host. A mistake is a learner's file under tests/controls, or the source notebook's solution
with a few edits."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import REPO_ROOT

CONTROLS = REPO_ROOT / "tests" / "controls"
TABLE = CONTROLS / "mistakes.toml"


@dataclass
class Mistake:
    exercise: str
    words: list[str]                     # each must be in the failing verdict's message or hint
    control: str | None = None           # tests/controls/<control>.py
    name: str | None = None              # an edited solution's name
    edits: dict[str, list[list[str]]] = field(default_factory=dict)   # solution file -> [(old, new), ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    sandbox: bool = False                # judged on what only the sandbox measures (bytes on the job's network)
    gpu_proof: bool = False

    @property
    def id(self) -> str:
        extra = "".join(f"-{k}={v}" for k, v in self.overrides.items() if k != "profile")
        return f"{self.exercise}-{self.name or self.control.split('/')[-1]}{extra}"

    @property
    def assignment(self) -> str:
        from .course import load_course

        return load_course().exercise(self.exercise).assignment

    def problem(self) -> str | None:
        """What makes this entry unusable (a control file that is not there, an edit the solution cannot take)."""
        from .cells import notebook_files

        if self.control is not None:
            return None if (CONTROLS / f"{self.control}.py").is_file() else f"no control file {self.control}.py"
        files = notebook_files("source", self.assignment) or {}
        for name, edits in self.edits.items():
            missing = [old for old, _ in edits if old not in files.get(name, "")]
            if missing:
                return f"the solution's {name} has no {missing[0]!r} to edit"
        return None

    def module(self, folder: Path) -> Path:
        """The learner's file to check: the control itself, or the edited solution written into `folder`."""
        from .cells import write_notebook_files
        from .course import load_course

        if self.control is not None:
            return CONTROLS / f"{self.control}.py"
        problem = self.problem()
        if problem:
            raise ValueError(f"{TABLE.name}, {self.id}: {problem}")
        written = write_notebook_files("source", self.assignment, folder)
        for name, edits in self.edits.items():
            text = (written / name).read_text()
            for old, new in edits:
                text = text.replace(old, new)
            (written / name).write_text(text)
        return written / load_course().exercise(self.exercise).module

    def missed(self, verdict) -> str | None:
        """Why `verdict` is not this mistake's failure with its hint (None: it is)."""
        if verdict.passed or verdict.status != "fail":
            return f"expected a fail, got {verdict.status}"
        text = f"{verdict.message} {verdict.hint}"
        absent = [w for w in self.words if w not in text]
        return f"the verdict does not say {absent[0]!r}" if absent else None


def mistakes() -> list[Mistake]:
    """Every row of the table, in its order."""
    with open(TABLE, "rb") as f:
        return [Mistake(**row) for row in tomllib.load(f)["mistake"]]
