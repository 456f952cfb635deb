"""Finding submissions: a folder STUDENT/ASSIGNMENT/NOTEBOOK.ipynb, or the zip an LMS exports."""
from __future__ import annotations

import hashlib
import os
import re
import stat
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
    sha256: str = ""        # of the notebook's bytes ("" when refused)
    problem: str = ""       # why it is refused (never graded): nested, duplicated, a link, not a regular file


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


def _owner(parts: tuple[str, ...], a: Assignment) -> tuple[str, str]:
    """(student, problem) from a notebook's path inside the submissions folder: the identity comes only from the
    top level (the student's folder, or the LMS file name), never from deeper folders."""
    if len(parts) == 1:                                  # STUDENT_..._NOTEBOOK (e.g. Canvas)
        return parts[0].split("_")[0], ""
    if len(parts) == 2:                                  # STUDENT_.../NOTEBOOK (e.g. Moodle folders)
        return parts[0].split("_")[0], ""
    if len(parts) == 3 and parts[1] == a.id:             # STUDENT/ASSIGNMENT/NOTEBOOK
        return parts[0], ""
    return parts[0], (f"{'/'.join(parts)} is not where a submission goes ({parts[0]}/{a.id}/{a.notebook}); "
                      f"it is graded in no one's name")


def _found(submissions: Path, assignments: list[Assignment]):
    """(assignment, relative parts, problem) for every notebook-like entry, without following any link."""
    for folder, dirs, files in os.walk(submissions):     # followlinks=False: a linked folder is not entered
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in (".ipynb_checkpoints", "__MACOSX"))
        for name in sorted(files) + [d for d in dirs if (here / d).is_symlink()]:
            path = here / name
            parts = path.relative_to(submissions).parts
            a = _match_notebook(name, assignments) or next((x for x in assignments if x.id == name), None)
            if a is None:
                continue
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                yield a, parts, f"{'/'.join(parts)} is a symbolic link, not a submitted file: refused"
            elif not stat.S_ISREG(mode):
                yield a, parts, f"{'/'.join(parts)} is not a regular file: refused"
            else:
                yield a, parts, ""


def collect(submissions: Path, assignments: list[Assignment], into: Path) -> list[Submission]:
    """Find submissions in a folder (STUDENT/ASSIGNMENT/NOTEBOOK) or an LMS zip (nested or flat STUDENT_..._NOTEBOOK).

    One notebook per student and assignment, a regular file where a submission goes. A student whose folder holds
    anything else for an assignment (a link, a notebook nested deeper, a second copy) gets a refused submission
    naming it ("needs manual grading"): nothing is graded in anyone's name but the top-level folder's or file's.
    """
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
    entries: dict[tuple[str, str], list[tuple[Path, str]]] = {}
    for a, parts, problem in _found(submissions, assignments):
        student, nested = _owner(parts, a)
        entries.setdefault((_student_id(student), a.id), []).append((submissions.joinpath(*parts), problem or nested))
    if not entries:
        raise ConfigError(f"{submissions}: no submissions found; expected STUDENT/ASSIGNMENT/NOTEBOOK.ipynb "
                          f"or an LMS zip with files named STUDENT_..._NOTEBOOK.ipynb")
    found = []
    for (student, assignment), items in sorted(entries.items()):
        problems = [p for _, p in items if p]
        if len(items) > 1:
            names = ", ".join(str(path.relative_to(submissions)) for path, _ in items)
            problems.append(f"{len(items)} notebooks for {assignment} ({names}): which one counts is the "
                            f"instructor's decision")
        path = items[0][0]
        if problems:
            found.append(Submission(student, assignment, path, problem="; ".join(problems)))
        else:
            found.append(Submission(student, assignment, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


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
