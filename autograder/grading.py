"""`course grade`: collect submissions (folder or LMS zip), grade each in its own job, write feedback and grades.csv.

Each (student, assignment) is graded by a `python -m autograder.gradejob` process (trusted:
it runs no student code itself), on this machine pinned to its own cores (and GPUs), or on a
Slurm node as a task of one job array (gradepool.py); student code runs only in sandboxes it
starts. The job sends its result (record and feedback page) back on its output;
this process, the only writer, validates it and writes OUT/records/<student>/<assignment>.json,
OUT/feedback/<student>/<assignment>/ and OUT/grades.csv. An interrupted run loses nothing
recorded, a re-run skips what is graded, and a submission that breaks the grader becomes a
"needs manual grading" row.

Before starting and before each record, the grader's own files are compared with the
install record (install.py); without a sandbox, grading refuses to start unless
--unsafe-no-sandbox is given, and then says so in every row.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from . import install, nbglue, sandbox, slurm
from .config import Assignment, Refused, course_root
from .course import load_course
from .gradejob import RESULT_MARK
from .gradepool import LocalPool, SlurmPool, log_path
from .guard import FileGuard
from .records import MANUAL, Record, record_path, verdicts_path, write_csv
from .submissions import Submission, collect

SUBMISSION_TIME_LIMIT = 40 * 60   # a whole submission: re-verification and the notebook, seconds
RESULT_BYTES = 16 * 2**20         # a job's output read back (its last line is the result)


class GradingRefused(Refused):
    """Grading cannot start safely here; the message says why and what to do."""


# ------------------------------------------------------------------ one job per submission

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


def _result(out: Path, sub: Submission, failure: str | None, assignment: Assignment) -> tuple[Record, str | None, dict]:
    """The record, feedback page and trusted verdicts the job sent, validated; or a "needs manual grading" record
    saying why not (`failure`: the pool's reason why the job left no result)."""
    log = log_path(out, sub)
    reason = failure or ""
    if not failure:
        try:
            with open(log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - RESULT_BYTES))
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.startswith(RESULT_MARK)]
            raw = json.loads(lines[-1][len(RESULT_MARK):])
            record = Record.from_dict(raw["record"], max_points={e.grade_id: e.points for e in assignment.exercises})
            if (record.student, record.assignment, record.sha256) != (sub.student, sub.assignment, sub.sha256):
                raise ValueError("the result is for another submission")
            verdicts = raw.get("verdicts", {})
            if not isinstance(verdicts, dict) or not all(isinstance(v, dict) for v in verdicts.values()):
                raise ValueError("the verdicts are not a mapping of verdicts")
            return record, str(raw["feedback"]), verdicts
        except (OSError, IndexError, KeyError, TypeError, ValueError) as exc:
            reason = f"the grader crashed ({type(exc).__name__}): {_tail(log)}"
    return Record(sub.student, sub.assignment, sub.sha256, MANUAL, flags=[f"{MANUAL}: {reason}"]), None, {}


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _write_feedback(out: Path, sub: Submission, page: str | None) -> None:
    from .feedback import PAGE_BYTES, render

    dest = out / "feedback" / sub.student / sub.assignment
    dest.mkdir(parents=True, exist_ok=True)
    if page is None or len(page.encode()) > PAGE_BYTES + 65536:
        page = render(f"{sub.student}: {sub.assignment}", "<p>No feedback page could be made.</p>", None)
    tmp = dest / ".feedback.tmp"
    tmp.write_text(page)
    tmp.replace(dest / f"{sub.assignment}.html")


# ------------------------------------------------------------------ many submissions

class _StopRequest:
    """Ctrl-C (SIGINT), `kill` (SIGTERM) and a closed terminal (SIGHUP) ask grading to stop.

    The handler only sets a flag: the loop stops at its next turn (within a fraction of a second), so no
    signal lands in the middle of starting a job or writing a record, and every running job is then
    stopped with all it started before grading returns.
    """
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.name: str | None = None
        self.raising = False

    def __bool__(self) -> bool:
        return self.name is not None

    @contextlib.contextmanager
    def interrupting(self):
        """Within it, a signal interrupts at once (KeyboardInterrupt): for work that starts no job (nbgrader making
        a template), which would otherwise finish first."""
        self.raising = True
        try:
            if self:
                raise KeyboardInterrupt(self.name)
            yield
        finally:
            self.raising = False

    def __enter__(self) -> "_StopRequest":
        self.previous = {}
        if threading.current_thread() is threading.main_thread():   # only the main thread may set handlers
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, _frame) -> None:
        self.name = signal.Signals(signum).name
        if self.raising:
            raise KeyboardInterrupt(self.name)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _sandbox_problem() -> str | None:
    if sandbox.mode() == "off":
        return f"{sandbox.MODE_ENV}=off is set"
    return sandbox.problem()


def _check_can_grade(unsafe: bool) -> None:
    why = _sandbox_problem()
    if why and not unsafe:
        raise GradingRefused(f"no sandbox can be made on this machine: {why}. Grading would run student code with "
                             f"your rights (it could read every submission and change the grader). Fix that, or "
                             f"pass --unsafe-no-sandbox to grade anyway (every row will say so).")
    try:
        install.verify()
    except install.InstallChanged as exc:
        raise GradingRefused(f"refusing to grade: {exc}") from None


def grade(submissions: str | Path, *, out: str | Path = "grading", assignments: list[str] | None = None,
          jobs: int = 1, progress: bool = True, unsafe_no_sandbox: bool = False,
          slurm_options: slurm.SlurmOptions | None = None) -> Path:
    """Grade every submission (skipping those already graded) on this machine, or as Slurm array tasks when
    `slurm_options` is given; returns the path of grades.csv."""
    from tqdm.auto import tqdm

    if slurm_options is not None:
        slurm.require()
        if unsafe_no_sandbox:
            raise GradingRefused("--slurm grades only in a sandbox (every node checks that it can make one); "
                                 "leave out --unsafe-no-sandbox")
    _check_can_grade(unsafe_no_sandbox)
    course = load_course()
    chosen = [course.assignment(i) for i in assignments] if assignments else [a for a in course.assignments if a.graded]
    out, submissions = Path(out).resolve(), Path(submissions).resolve()   # jobs and sandboxes run elsewhere
    for sub in ("records", "verdicts", "logs", "feedback"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    subs = collect(submissions, chosen, out)
    for sub in (s for s in subs if s.problem):   # refused: graded in no one's name, the instructor decides
        refused, path = Record(sub.student, sub.assignment, "", MANUAL, flags=[f"{MANUAL}: {sub.problem}"]), \
            record_path(out, sub.student, sub.assignment)
        if Record.load(path) != refused:   # a re-run changes nothing that is recorded
            refused.save(path)
            _write_feedback(out, sub, None)
    todo = [s for s in subs if not s.problem and ((r := Record.load(record_path(out, s.student, s.assignment)))
                                                  is None or r.sha256 != s.sha256 or r.status != "graded")]
    safe = _sandbox_problem() is None and not unsafe_no_sandbox
    if not safe and jobs > 1:
        print("without a sandbox submissions are graded one at a time (so a changed file names its student)",
              file=sys.stderr)
        jobs = 1
    hide = os.pathsep.join(str(p) for p in (out, submissions, course_root()))
    assignments_by_id = {a.id: a for a in chosen}
    with _StopRequest() as stop:
        try:
            with stop.interrupting():
                for a in {s.assignment for s in todo}:
                    _template(out, course.assignment(a))  # generated once, before jobs start copying it
        except KeyboardInterrupt:
            pass   # nbgrader and what it started are gone (run_nbgrader); no job has started
        if slurm_options is not None:
            pool = SlurmPool(out, slurm_options, hide, SUBMISSION_TIME_LIMIT,
                             exclusive=_measures_speed({s.assignment for s in todo}, assignments_by_id))
        else:
            pool = LocalPool(out, jobs, hide, safe, SUBMISSION_TIME_LIMIT, gpus=_gpu_count())
        guard = None if safe else FileGuard([course_root() / "source" / a.id / a.notebook for a in chosen]
                                            + [out / ".template", out / "records", out / "verdicts", out / "feedback"])
        bar = tqdm(total=len(subs), initial=len(subs) - len(todo), desc="grading", unit="submission",
                   disable=not progress)
        try:
            if not stop:
                pool.add(todo)
            while pool.busy and not stop:
                time.sleep(0.2)
                for done in pool.poll():
                    sub = done.sub
                    record, page, verdicts = _result(out, sub, done.failure, assignments_by_id[sub.assignment])
                    if guard is not None:
                        changed = guard.restore_changes()
                        if changed:
                            record.flags.append(f"while {sub.student}'s {sub.assignment} was graded (no sandbox), "
                                                f"these files outside the submission changed and were put back: "
                                                + ", ".join(changed))
                    install.verify()   # a submission must not have changed the grader (InstallChanged stops here)
                    record.save(record_path(out, sub.student, sub.assignment))
                    _write_feedback(out, sub, page)
                    _write_json(verdicts_path(out, sub.student, sub.assignment), verdicts)
                    if guard is not None:
                        guard.accept_all()
                    bar.update(1)
                    write_csv(out, course)
        except install.InstallChanged as exc:
            raise GradingRefused(f"stopped grading: {exc}") from None
        finally:   # whatever ended the loop: no job outlives it, and the CSV has every record
            pool.stop()
            bar.close()
            write_csv(out, course)
    if stop:
        print(f"\ninterrupted ({stop.name}): every recorded grade is kept in {out / 'records'}; "
              "run the same command to go on.", file=sys.stderr)
        raise KeyboardInterrupt(stop.name)
    path = write_csv(out, course)
    print(f"graded {len(subs)} submission(s): {path}; feedback in {out / 'feedback'}")
    return path


def _measures_speed(assignment_ids: set[str], assignments: dict[str, Assignment]) -> bool:
    """Whether any of these assignments has a check that times a speed-up (it needs a machine to itself)."""
    from . import checks

    return any(checks.get(e.id).measures_speed for a in assignment_ids for e in assignments[a].exercises)


def _gpu_count() -> int:
    try:
        from .policy import visible_gpu_count

        return visible_gpu_count()
    except Exception:
        return 0


