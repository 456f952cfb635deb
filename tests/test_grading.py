"""Instructor grading at class scale: an adversarial corpus, each submission recorded, nothing leaks or outlives.

One small assignment (torchrun_basics: env, mean, gather; tests/grading_course.py) is
released through nbgrader and a corpus of hostile or broken submissions is graded once
with two jobs; each test then reads its student's row, record and feedback.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
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

pytestmark = pytest.mark.slow

SOLUTION = "\n".join(ln for ln in gc.SOLUTION_CELL.split("\n")[1:] if "### " not in ln)
SPAWN = "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)\n"


def _replace(old: str, new: str) -> str:
    assert old in SOLUTION
    return SOLUTION.replace(old, new)


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


ENV_LINE = '    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])'
CORPUS = {
    "honest": dict(module=SOLUTION),
    "blank": dict(),
    "hang": dict(module=_replace("    dist.all_reduce(total)\n",
                                 "    if dist.get_rank() != 0:\n        dist.all_reduce(total)\n")),
    # rank 1 dies in dist_env; global_mean allocates without bound (the memory cap stops it)
    "crash-and-memory": dict(module=_replace(ENV_LINE, '    if os.environ["RANK"] == "1":\n        raise SystemExit(3)\n'
                                                       + ENV_LINE).replace(
        "    total = t.clone()\n", "    hoard = [torch.empty(2**24) for _ in iter(int, 1)]\n    total = t.clone()\n")),
    "import-loop": dict(module="while True:\n    pass\n" + SOLUTION),
    "flood": dict(module=_replace(ENV_LINE, "    import sys\n    while True:\n        sys.stderr.write('x' * 4096)\n"),
                  extra_cells=["for i in range(20):\n    print('spam ' * 200_000)"]),
    "orphans": dict(module=_replace(ENV_LINE, "    " + SPAWN.replace("\n", "\n    ") + "\n" + ENV_LINE),
                    extra_cells=[SPAWN]),
    "monkeypatch": dict(extra_cells=["import autograder, autograder.harness\n"
                                     "autograder.check = autograder.harness.check = lambda *a, **k: print('PASS')"]),
    "tampered-tests": dict(edit=_tamper_with_tests),   # nbgrader puts the locked test cells back
    "gradebook-writer": dict(module=SOLUTION, extra_cells=["open('../../../gradebook.db', 'wb').write(b'0' * 100)"]),
    "source-writer": dict(module=SOLUTION, extra_cells=[
        "from autograder.config import course_root\n(course_root() / 'source/mini/mini.ipynb').write_text('{}')\n"
        "import glob\nfor f in glob.glob('../../../../../records/*/*.json'):\n    open(f, 'w').write('{}')"]),
}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The mini course released through nbgrader and the corpus written as submissions; COURSE_ROOT set."""
    tmp = tmp_path_factory.mktemp("grading")
    root = gc.build(tmp / "course")
    tag = uuid.uuid4().hex
    saved = {k: os.environ.get(k) for k in ("COURSE_ROOT", "COURSE_TEST_ID")}
    os.environ.update(COURSE_ROOT=str(root), COURSE_TEST_ID=tag)
    try:
        from autograder import nbglue

        nbglue.release()
        release_nb = root / "release" / gc.ASSIGNMENT / f"{gc.ASSIGNMENT}.ipynb"
        subs = tmp / "submissions"
        for student, case in CORPUS.items():
            folder = subs / student / gc.ASSIGNMENT
            folder.mkdir(parents=True)
            nb = gc.submission(release_nb, case.get("module"), case.get("extra_cells", []), case.get("edit"))
            (folder / f"{gc.ASSIGNMENT}.ipynb").write_text(json.dumps(nb))
        yield dict(root=root, subs=subs, tmp=tmp, tag=tag)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def graded(mini):
    """The whole corpus graded once with --jobs 2."""
    from autograder import grading

    source_sha = hashlib.sha256((mini["root"] / "source/mini/mini.ipynb").read_bytes()).hexdigest()
    start = time.monotonic()
    csv_path = grading.grade(mini["subs"], out=mini["tmp"] / "out", jobs=2, progress=False)
    seconds = time.monotonic() - start
    time.sleep(1)
    rows = {r["student"]: r for r in csv.DictReader(open(csv_path))}
    return dict(mini, rows=rows, out=mini["tmp"] / "out", seconds=seconds, source_sha=source_sha,
                leftovers=processes_with_env("COURSE_TEST_ID", mini["tag"]))


def points(row) -> tuple[float, float, float]:
    return tuple(float(row[g] or 0) for g in ("torchrun_env", "torchrun_mean", "torchrun_gather"))


def test_every_submission_has_a_row_and_no_process_outlives_grading(graded):
    assert set(graded["rows"]) == set(CORPUS)
    assert graded["leftovers"] == []
    print(f"corpus of {len(CORPUS)} graded in {graded['seconds']:.0f} s with --jobs 2")


@pytest.mark.parametrize("student, expected", [
    ("honest", (1, 1, 1)),
    ("blank", (0, 0, 0)),
    ("hang", (1, 0, 1)),            # mean hangs (rank 0 skips all_reduce): time-out, the rest still graded
    ("crash-and-memory", (0, 0, 1)),
    ("import-loop", (0, 0, 0)),
    ("flood", (0, 1, 1)),
    ("orphans", (1, 1, 1)),
    ("monkeypatch", (0, 0, 0)),
    ("tampered-tests", (0, 0, 0)),  # edited, deleted and retyped test cells are put back and run
    ("source-writer", (1, 1, 1)),   # its own work is right; the tampering is flagged below
])
def test_scores(graded, student, expected):
    row = graded["rows"][student]
    assert points(row) == expected, row
    assert float(row["total"]) == sum(expected) and float(row["max"]) == 3


def test_monkeypatching_check_in_the_kernel_is_flagged_and_the_lower_score_stands(graded):
    flags = graded["rows"]["monkeypatch"]["flags"]
    assert flags.count("the lower score stands") == 3
    page = next((graded["out"] / "feedback" / "monkeypatch").rglob("*.html")).read_text()
    assert "Re-verification outside the notebook" in page and "NotImplementedError" in page


def test_honest_and_blank_rows_carry_no_flags(graded):
    assert graded["rows"]["honest"]["flags"] == "" or "changed while it was graded" in graded["rows"]["honest"]["flags"]
    assert graded["rows"]["blank"]["flags"] == "" or "changed while it was graded" in graded["rows"]["blank"]["flags"]


def test_writing_to_the_gradebook_is_recorded_not_lost(graded):
    row = graded["rows"]["gradebook-writer"]
    assert "needs manual grading" in row["flags"] or points(row) == (1, 1, 1), row


def test_writing_to_source_and_records_is_put_back_and_flagged(graded):
    assert "changed while it was graded" in graded["rows"]["source-writer"]["flags"]
    sha = hashlib.sha256((graded["root"] / "source/mini/mini.ipynb").read_bytes()).hexdigest()
    assert sha == graded["source_sha"]
    for record in (graded["out"] / "records").glob("*/*.json"):
        assert json.loads(record.read_text())["student"]  # no record was left emptied


def test_hang_verdict_reaches_the_feedback(graded):
    page = next((graded["out"] / "feedback" / "hang").rglob("*.html")).read_text()
    assert "TIME-OUT torchrun.mean" in page


def test_rerun_skips_what_is_graded(graded):
    from autograder import grading

    records = sorted((graded["out"] / "records").glob("*/*.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    start = time.monotonic()
    grading.grade(graded["subs"], out=graded["out"], jobs=2, progress=False)
    assert time.monotonic() - start < 30
    assert {p: p.stat().st_mtime_ns for p in records} == before


def test_lms_zip_is_collected_per_student(mini, tmp_path):
    from autograder import grading
    from autograder.config import load

    zpath = tmp_path / "lms.zip"
    src = mini["subs"]
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(src / "honest/mini/mini.ipynb", "honest_1234_5678_mini.ipynb")           # Canvas-style flat
        z.write(src / "blank/mini/mini.ipynb", "Blank Student_99_assignsubmission_file_/mini-1.ipynb")  # Moodle
    subs = grading.collect(zpath, list(load().assignments), tmp_path)
    assert sorted((s.student, s.assignment) for s in subs) == [("Blank-Student", "mini"), ("honest", "mini")]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupt_keeps_recorded_grades(mini, tmp_path, stop):
    """Ctrl-C or `kill` in the middle: what was recorded stays, the CSV has it, and no job is left running
    (the autouse fixture checks that no process outlives the test)."""
    subs = tmp_path / "subs"
    for student in ("blank", "honest"):
        (subs / student / "mini").mkdir(parents=True)
        (subs / student / "mini" / "mini.ipynb").write_bytes((mini["subs"] / student / "mini/mini.ipynb").read_bytes())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autograder.cli", "grade", str(subs), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "records" / "blank" / "mini.json"
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists()
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "every recorded grade is kept" in err
    assert not (out / "records" / "honest" / "mini.json").exists()
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert set(rows) == {"blank"}
