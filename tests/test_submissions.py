"""Collection: who a submission belongs to comes only from the top-level folder or the LMS file name; anything nested
deeper, duplicated, not a regular file, or a link is refused (never graded in anyone's name), with a reason naming it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from autograder.config import Assignment, Exercise
from autograder.submissions import collect

A = Assignment(id="02_torchrun", notebook="02_torchrun.ipynb", graded=True,
               exercises=(Exercise(id="torchrun.env", assignment="02_torchrun", module="torchrun_basics.py", points=2,
                                        world_size=None, time_limit=60),))
NB = "02_torchrun.ipynb"


def _write(path: Path, text: str = '{"cells": []}') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _by_student(subs) -> dict:
    return {s.student: s for s in subs}


def test_the_usual_shapes_are_graded_in_their_top_level_name(tmp_path):
    _write(tmp_path / "alice" / A.id / NB)
    _write(tmp_path / "bob_4411_assignsubmission_file_" / NB)
    _write(tmp_path / "carol_123_456_02_torchrun.ipynb")
    found = _by_student(collect(tmp_path, [A], tmp_path / "out"))
    assert set(found) == {"alice", "bob", "carol"} and not any(s.problem for s in found.values())
    assert all(len(s.sha256) == 64 for s in found.values())


def test_a_copy_nested_under_a_classmates_name_is_refused_and_the_classmate_keeps_their_own(tmp_path):
    victim = _write(tmp_path / "victim" / A.id / NB, "victim's")
    _write(tmp_path / "attacker" / A.id / NB, "attacker's")
    _write(tmp_path / "attacker" / "victim" / A.id / NB, "forged, sorts after the victim's")
    found = _by_student(collect(tmp_path, [A], tmp_path / "out"))
    assert found["victim"].notebook == victim and not found["victim"].problem
    assert "attacker/victim/02_torchrun/02_torchrun.ipynb is not where a submission goes" in found["attacker"].problem


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_link_is_refused(tmp_path, kind):
    classmate = _write(tmp_path / "subs" / "classmate" / A.id / NB)
    if kind == "file":
        (tmp_path / "subs" / "linker" / A.id).mkdir(parents=True)
        (tmp_path / "subs" / "linker" / A.id / NB).symlink_to(classmate)
    else:
        (tmp_path / "subs" / "linker").mkdir()
        (tmp_path / "subs" / "linker" / A.id).symlink_to(classmate.parent, target_is_directory=True)
    found = _by_student(collect(tmp_path / "subs", [A], tmp_path / "out"))
    assert "is a symbolic link" in found["linker"].problem and not found["linker"].sha256
    assert not found["classmate"].problem


def test_a_file_that_is_not_regular_is_refused_without_being_read(tmp_path):
    (tmp_path / "fifo" / A.id).mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo" / A.id / NB)       # reading it would block grading forever
    found = _by_student(collect(tmp_path, [A], tmp_path / "out"))
    assert "is not a regular file" in found["fifo"].problem


def test_two_notebooks_for_one_assignment_are_the_instructors_decision(tmp_path):
    _write(tmp_path / "dave_1_02_torchrun.ipynb")
    _write(tmp_path / "dave_2_02_torchrun-1.ipynb")
    [dave] = collect(tmp_path, [A], tmp_path / "out")
    assert dave.student == "dave" and "2 notebooks for 02_torchrun" in dave.problem
