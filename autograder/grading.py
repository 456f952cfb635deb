"""`course grade`: collect submissions (folder or LMS zip), grade each in its own job, write feedback and grades.csv.

Each (student, assignment) is graded by a separate `python -m autograder.grading one`
process in a scratch nbgrader course root of its own (its own gradebook), pinned to its
own cores (and GPUs). Its result is one JSON record written atomically under
OUT/records/, so an interrupted run loses nothing recorded and a re-run skips what is
graded. A submission that breaks the grader becomes a "needs manual grading" record.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import machine, nbglue
from .config import Assignment, ConfigError, Course, course_root
from .course import load_course
from .launch import sweep

GRADING_TOKEN = "COURSE_GRADING_TOKEN"
SUBMISSION_TIME_LIMIT = 40 * 60   # a whole notebook's autograde + re-verification, seconds
MANUAL = "needs manual grading"


@dataclass(frozen=True)
class Submission:
    student: str
    assignment: str
    notebook: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.notebook.read_bytes()).hexdigest()


@dataclass
class Record:
    student: str
    assignment: str
    sha256: str
    status: str                                            # "graded" or MANUAL
    points: dict[str, float] = field(default_factory=dict)  # grade_id -> final (the lower of cell and re-check)
    cell_points: dict[str, float] = field(default_factory=dict)
    verified_points: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def load(cls, path: Path) -> "Record | None":
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)  # atomic: a record is there whole or not at all


# ------------------------------------------------------------------ collecting

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


# ------------------------------------------------------------------ one submission (child process)

def _template(out: Path, assignment: Assignment) -> Path:
    """A scratch nbgrader root with this assignment generated once; each submission copies it."""
    root = out / ".template" / assignment.id
    if (root / "gradebook.db").exists() and (root / "release").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "source" / assignment.id).mkdir(parents=True)
    shutil.copy(nbglue.NBGRADER_CONFIG, root / "nbgrader_config.py")
    shutil.copy(course_root() / "source" / assignment.id / assignment.notebook,
                root / "source" / assignment.id / assignment.notebook)
    nbglue.run_nbgrader(root, "generate_assignment", assignment.id, "--force")
    return root


def _feedback_note(record: Record, failures: dict[str, list[str]]) -> str:
    import html

    lines = [f"<li>{html.escape(flag)}</li>" for flag in record.flags]
    for grade_id, texts in failures.items():
        for text in texts:
            lines.append(f"<li><b>{html.escape(grade_id)}</b>: <pre>{html.escape(text[:3000])}</pre></li>")
    return ("<div style='border:2px solid #b42318;padding:8px;margin:8px'><h3>Re-verification outside the "
            "notebook</h3><ul>" + "".join(lines) + "</ul></div>") if lines else ""


def _reason(output: str) -> str:
    """The line of nbgrader's output that says what went wrong (its last exception line)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return (errors or lines or ["no output"])[-1][:300]


def grade_one(out: Path, student: str, assignment_id: str, notebook: Path) -> Record:
    """Grade one submission: re-verify out of the kernel, autograde with nbgrader, compare, record."""
    from nbgrader.api import Gradebook

    from .reverify import reverify
    from .trusted import TRUSTED_ENV

    course = load_course()
    a = course.assignment(assignment_id)
    start = time.monotonic()
    record = Record(student, a.id, hashlib.sha256(notebook.read_bytes()).hexdigest(), "graded")
    try:
        submitted = json.loads(notebook.read_text())
        if not isinstance(submitted, dict) or not isinstance(submitted.get("cells"), list):
            raise ValueError("not a notebook (no cell list)")
    except (OSError, ValueError) as exc:
        record.status, record.flags = MANUAL, [f"{MANUAL}: the submitted file is not a readable notebook ({exc})"]
        return record
    template = _template(out, a)  # the parent's snapshot of the source notebook, hidden tests included
    source = json.loads((template / "source" / a.id / a.notebook).read_text())
    checked = reverify(submitted, source, a)

    work = out / "work" / f"{student}--{a.id}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    target = work / "submitted" / student / a.id
    target.mkdir(parents=True)
    shutil.copy(notebook, target / a.notebook)
    trusted = work / "trusted-verdicts.json"
    checked.write(trusted)
    env = {TRUSTED_ENV: str(trusted)}
    try:
        nbglue.run_nbgrader(work, "autograde", a.id, "--create", "--force", f"--student={student}", env=env)
        nbglue.run_nbgrader(work, "generate_feedback", a.id, "--force", f"--student={student}")
        with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as gb:
            stem = Path(a.notebook).stem
            cells = {e.grade_id: float(gb.find_grade(e.grade_id, stem, a.id, student).score or 0)
                     for e in a.exercises}
    except Exception as exc:  # nbgrader could not grade it: a person must look
        record.status = MANUAL
        record.flags.append(f"{MANUAL}: nbgrader failed: {_reason(str(exc))}")
        cells = {}
    record.verified_points = {g: r.points for g, r in checked.exercises.items()}
    record.cell_points = cells
    if record.status == "graded":
        for e in a.exercises:
            cell, verified = cells[e.grade_id], record.verified_points[e.grade_id]
            record.points[e.grade_id] = min(cell, verified)
            if cell != verified:
                record.flags.append(f"{e.id}: the notebook cell gave {cell:g} but re-verification outside the "
                                    f"kernel gave {verified:g}; the lower score stands")
    failures = {g: r.failures for g, r in checked.exercises.items() if r.failures}
    feedback = work / "feedback" / student / a.id / a.notebook.replace(".ipynb", ".html")
    dest = out / "feedback" / student / a.id
    dest.mkdir(parents=True, exist_ok=True)
    page = feedback.read_text() if feedback.exists() else "<html><body><h2>No notebook feedback</h2></body></html>"
    page = re.sub(r"(<body[^>]*>)", lambda m: m[1] + _feedback_note(record, failures), page, count=1)
    (dest / feedback.name if feedback.exists() else dest / "feedback.html").write_text(page)
    shutil.rmtree(work, ignore_errors=True)
    record.seconds = round(time.monotonic() - start, 1)
    return record


# ------------------------------------------------------------------ many submissions (parent)

class _Guard:
    """Files no submission may change: source notebooks, the nbgrader templates, other students' records.

    Student code runs as the grader's user, so it can write anywhere the grader can; the
    parent keeps a copy, puts back whatever changed when a job ends, and flags the
    submissions that were running then. (Preventing the write needs an OS sandbox.)
    """

    def __init__(self, roots: list[Path]):
        self.roots = roots
        self.saved: dict[Path, bytes] = {}
        for path in self._files():
            self.accept(path)

    def _files(self) -> list[Path]:
        return [p for root in self.roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]

    def accept(self, path: Path) -> None:
        self.saved[path] = path.read_bytes()

    def restore_changes(self, ignore: set[Path]) -> list[str]:
        """Put back every changed file except `ignore` (the records of the jobs still writing them)."""
        changed = []
        for path in set(self._files()) | set(self.saved):
            if path in ignore:
                continue
            old = self.saved.get(path)
            try:
                new = path.read_bytes()
            except OSError:
                new = None
            if new == old:
                continue
            changed.append(path.name)
            if old is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(old)
        return sorted(changed)


def _record_path(out: Path, sub: Submission) -> Path:
    return out / "records" / sub.student / f"{sub.assignment}.json"


def _start(sub: Submission, out: Path, cpus: set[int], gpus: str | None, lock: Path) -> tuple:
    token = uuid.uuid4().hex
    log = open(out / "logs" / f"{sub.student}--{sub.assignment}.log", "wb")
    env = {**os.environ, GRADING_TOKEN: token, machine.LOCK_ENV: str(lock),
           "OMP_NUM_THREADS": str(max(1, len(cpus) // 2))}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    cmd = [sys.executable, "-m", "autograder.grading", "one", str(out), sub.student, sub.assignment,
           str(sub.notebook)]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return proc, token, log, time.monotonic()


def _stop(proc, token: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    sweep(token, GRADING_TOKEN)
    proc.wait()


def _job_record(out: Path, sub: Submission, late: bool) -> Record:
    """The record a finished job wrote, or a "needs manual grading" one that says why there is none."""
    record = None if late else Record.load(_record_path(out, sub))
    if record is None:
        reason = (f"grading took longer than {SUBMISSION_TIME_LIMIT // 60} min" if late
                  else f"the grader crashed: {_tail(out / 'logs' / f'{sub.student}--{sub.assignment}.log')}")
        record = Record(sub.student, sub.assignment, sub.sha256, MANUAL, flags=[f"{MANUAL}: {reason}"])
    return record


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


@contextlib.contextmanager
def _stopping_signals_interrupt():
    """SIGTERM (`kill`, a batch system) and SIGHUP (a closed terminal) stop grading the way Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its signals keep their default
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def grade(submissions: str | Path, *, out: str | Path = "grading", assignments: list[str] | None = None,
          jobs: int = 1, progress: bool = True) -> Path:
    """Grade every submission (skipping those already recorded); returns the path of grades.csv."""
    from tqdm.auto import tqdm

    course = load_course()
    chosen = [course.assignment(i) for i in assignments] if assignments else [a for a in course.assignments if a.graded]
    out = Path(out).resolve()
    for sub in ("records", "logs", "feedback"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    subs = collect(Path(submissions), chosen, out)
    todo = [s for s in subs if (r := Record.load(_record_path(out, s))) is None or r.sha256 != s.sha256]
    for a in {s.assignment for s in todo}:
        _template(out, course.assignment(a))  # generated once, before jobs start copying it
    slots = machine.split_cpus(jobs)
    gpu_slots = machine.split_gpus(len(slots), _gpu_count()) if _gpu_count() else [None] * len(slots)
    lock = out / ".machine.lock"
    guard = _Guard([course_root() / "source" / a.id / a.notebook for a in chosen]
                   + [out / ".template", out / "records"])
    suspects: dict[tuple[str, str], set[str]] = {}
    running: dict[int, tuple] = {}
    bar = tqdm(total=len(subs), initial=len(subs) - len(todo), desc="grading", unit="submission",
               disable=not progress)
    with _stopping_signals_interrupt():
        try:
            while todo or running:
                for slot in range(len(slots)):
                    if slot not in running and todo:
                        sub = todo.pop(0)
                        running[slot] = (sub, *_start(sub, out, slots[slot], gpu_slots[slot], lock))
                time.sleep(0.2)
                for slot, (sub, proc, token, log, started) in list(running.items()):
                    late = time.monotonic() - started > SUBMISSION_TIME_LIMIT
                    if proc.poll() is None and not late:
                        continue
                    _stop(proc, token)
                    log.close()
                    own = _record_path(out, sub)
                    tampered = guard.restore_changes(ignore={_record_path(out, r[0]) for r in running.values()})
                    del running[slot]
                    for s in [sub] + [r[0] for r in running.values()]:
                        suspects.setdefault((s.student, s.assignment), set()).update(tampered)
                    record = _job_record(out, sub, late)
                    if suspects.get((sub.student, sub.assignment)):
                        record.flags.append("files outside the submission were changed while it was graded "
                                            "(put back): " + ", ".join(sorted(suspects[(sub.student, sub.assignment)])))
                    record.save(own)
                    guard.accept(own)
                    bar.update(1)
                    write_csv(out, course)
        except KeyboardInterrupt:
            for sub, proc, token, log, _ in running.values():
                _stop(proc, token)
            write_csv(out, course)
            print(f"\ninterrupted: every recorded grade is kept in {out / 'records'}; "
                  "run the same command to go on.", file=sys.stderr)
            raise
        finally:
            bar.close()
    path = write_csv(out, course)
    print(f"graded {len(subs)} submission(s): {path}; feedback in {out / 'feedback'}")
    return path


def _gpu_count() -> int:
    try:
        from .policy import visible_gpu_count

        return visible_gpu_count()
    except Exception:
        return 0


def write_csv(out: Path, course: Course) -> Path:
    """grades.csv from the records: one row per student, per-exercise points, total, max, flags."""
    records = [r for p in sorted((out / "records").glob("*/*.json")) if (r := Record.load(p))]
    graded = [a for a in course.assignments if a.graded]
    columns = [e.grade_id for a in graded for e in a.exercises]
    by_student: dict[str, list[Record]] = {}
    for r in records:
        by_student.setdefault(r.student, []).append(r)
    path = out / "grades.csv"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", *columns, "total", "max", "flags"])
        for student, rs in sorted(by_student.items()):
            points = {g: p for r in rs for g, p in r.points.items()}
            done = {r.assignment for r in rs}
            maximum = sum(a.points for a in graded if a.id in done)
            flags = [f"{r.assignment}: {flag}" for r in rs for flag in r.flags]
            w.writerow([student, *(points.get(c, "") for c in columns), sum(points.values()), maximum,
                        " | ".join(flags)])
    tmp.replace(path)
    return path


def _one(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m autograder.grading one")
    p.add_argument("out")
    p.add_argument("student")
    p.add_argument("assignment")
    p.add_argument("notebook")
    args = p.parse_args(argv)
    out = Path(args.out)
    record = grade_one(out, args.student, args.assignment, Path(args.notebook))
    record.save(out / "records" / args.student / f"{args.assignment}.json")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        sys.exit(_one(sys.argv[2:]))
    sys.exit("usage: python -m autograder.grading one OUT STUDENT ASSIGNMENT NOTEBOOK")
