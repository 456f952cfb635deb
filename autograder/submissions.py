"""Finding submissions: a folder STUDENT/ASSIGNMENT/NOTEBOOK.ipynb, or the zip an LMS exports."""
from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import Assignment, ConfigError


@dataclass(frozen=True)
class Submission:
    student: str
    assignment: str
    notebook: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.notebook.read_bytes()).hexdigest()


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _student_id(text: str) -> str:
    return _SAFE.sub("-", text).strip("-.") or "unknown"


def _match_notebook(name: str, assignments: list[Assignment]) -> Assignment | None:
    """Which assignment a file belongs to: its name ends with the notebook's (LMS may add '-1' copies)."""
    for a in assignments:
        stem = Path(a.notebook).stem
        if re.search(rf"{re.escape(stem)}(-\d+)?\.ipynb$", name):
            return a
    return None


def collect(submissions: Path, assignments: list[Assignment], into: Path) -> list[Submission]:
    """Find submissions in a folder (STUDENT/ASSIGNMENT/NOTEBOOK) or an LMS zip (nested or flat STUDENT_..._NOTEBOOK)."""
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        target = into / "unzipped"
        shutil.rmtree(target, ignore_errors=True)
        with zipfile.ZipFile(submissions) as z:
            for member in z.namelist():
                if member.endswith(".ipynb") and "__MACOSX" not in member and not Path(member).is_absolute() \
                        and ".." not in Path(member).parts:
                    z.extract(member, target)
        submissions = target
    if not submissions.is_dir():
        raise ConfigError(f"{submissions}: not a folder or zip of submissions")
    found: dict[tuple[str, str], Submission] = {}
    for path in sorted(submissions.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        a = _match_notebook(path.name, assignments)
        if a is None:
            continue
        parts = path.relative_to(submissions).parts
        if len(parts) >= 3 and parts[-2] == a.id:       # STUDENT/ASSIGNMENT/NOTEBOOK
            student = parts[-3]
        elif len(parts) >= 2:                           # STUDENT_.../NOTEBOOK (e.g. Moodle folders)
            student = parts[-2].split("_")[0]
        else:                                           # STUDENT_..._NOTEBOOK (e.g. Canvas)
            student = path.name.split("_")[0]
        key = (_student_id(student), a.id)
        found[key] = Submission(key[0], a.id, path)     # a later copy ("-1") wins
    if not found:
        raise ConfigError(f"{submissions}: no submissions found; expected STUDENT/ASSIGNMENT/NOTEBOOK.ipynb "
                          f"or an LMS zip with files named STUDENT_..._NOTEBOOK.ipynb")
    return list(found.values())


def solved(source: Path) -> str:
    """The source notebook as a student who solved everything hands it in: the solutions kept, the hidden tests
    gone (released test cells do not have them: grading would flag the difference as tampering)."""
    import json

    from .reverify import HIDDEN

    nb = json.loads(source.read_text())
    for cell in nb["cells"]:
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if HIDDEN.search(text):
            cell["source"] = HIDDEN.sub("", text).rstrip("\n").splitlines(keepends=True)
    return json.dumps(nb, indent=1)
