"""course.yaml validation: each mistake is one clear message naming the file and the key, never a traceback."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from autograder import config
from autograder.config import ConfigError
from autograder.course import load_course, missing_checks, require_checks

REAL = yaml.safe_load((config.REPO_ROOT / "course.yaml").read_text())


def _first_graded(raw):
    return next(a for a in raw["assignments"] if a.get("exercises"))


def test_the_course_yaml_loads_and_every_exercise_has_a_check():
    course = load_course()
    assert course.exercise("torchrun.env").module == "torchrun_basics.py"
    assert {"cpu", "gpu"} <= set(course.profiles)
    assert course.profiles["cpu"].threads_per_rank == 1 and course.profiles["cpu"].backend == "gloo"


def _mutations():
    def unknown_key(raw):
        _first_graded(raw)["exercises"][0]["pointz"] = 3

    def missing_notebook(raw):
        _first_graded(raw)["notebook"] = "nope.ipynb"

    def negative_time_limit(raw):
        _first_graded(raw)["exercises"][0]["time_limit"] = -5

    def unknown_profile_threshold(raw):
        _first_graded(raw)["exercises"][0]["thresholds"] = {"tpu": {"min_speedup": 1.5}}

    def bad_backend(raw):
        raw["profiles"]["cpu"]["backend"] = "mpi"

    def duplicate_exercise(raw):
        ex = _first_graded(raw)["exercises"]
        ex.append(copy.deepcopy(ex[0]))

    return [
        (unknown_key, "unknown key 'pointz'"),
        (missing_notebook, "notebook not found"),
        (negative_time_limit, "time_limit: must be positive, got -5"),
        (unknown_profile_threshold, "unknown profile 'tpu'"),
        (bad_backend, "profiles.cpu.backend: must be gloo or nccl"),
        (duplicate_exercise, "defined twice"),
    ]


@pytest.mark.parametrize("mutate, words", _mutations(), ids=lambda x: getattr(x, "__name__", ""))
def test_config_mistakes_name_the_key_and_the_file(mutate, words):
    raw = copy.deepcopy(REAL)
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        config.parse(raw, config.REPO_ROOT / "course.yaml", config.REPO_ROOT)
    assert words in str(info.value) and "course.yaml" in str(info.value)


def _write_course(tmp_path, raw):
    (tmp_path / "course.yaml").write_text(yaml.safe_dump(raw))
    for a in raw["assignments"]:
        (tmp_path / "source" / a["id"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "source" / a["id"] / a["notebook"]).write_text("{}")


def test_exercise_without_a_check_is_named(tmp_path, monkeypatch):
    raw = copy.deepcopy(REAL)
    _first_graded(raw)["exercises"][0]["id"] = "torchrun.teleport"
    _write_course(tmp_path, raw)
    monkeypatch.setenv("COURSE_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="'torchrun.teleport' has no check in autograder/checks/torchrun/teleport.py"):
        require_checks(load_course())


def test_every_exercise_of_the_course_has_a_check():
    assert missing_checks(load_course()) == []


def test_cli_reports_config_mistakes_in_one_line_with_exit_2(tmp_path):
    raw = copy.deepcopy(REAL)
    _first_graded(raw)["exercises"][0]["time_limit"] = -1
    _write_course(tmp_path, raw)
    proc = subprocess.run([sys.executable, "-m", "autograder.cli", "check", "torchrun.env"], cwd=tmp_path,
                          env={**__import__("os").environ, "COURSE_ROOT": str(tmp_path)},
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "course.yaml" in proc.stderr and "time_limit" in proc.stderr


@pytest.mark.parametrize("edit, words", [
    (lambda t: t["cpu"].pop("pace_share"), "thresholds.cpu: pace_share is missing"),
    (lambda t: t["cpu"].update(pace_shar=0.8), "thresholds.cpu.pace_shar: not a threshold of ddp.train"),
])
def test_thresholds_are_typed_per_check_and_a_wrong_key_is_named(edit, words):
    """Each check declares its thresholds (a dataclass); course.yaml must give each field, and no other key, under
    every profile: `course release` and the student pack refuse otherwise (course.require_checks)."""
    import dataclasses

    from autograder import checks
    from autograder.config import load
    from autograder.course import require_checks

    course = load()
    require_checks(course)   # the course as shipped fits its checks
    exercise = course.exercise("ddp.train")
    thresholds = {p: dict(v) for p, v in exercise.thresholds.items()}
    edit(thresholds)
    with pytest.raises(ConfigError, match=re.escape(words)):
        checks.thresholds_for(checks.get("ddp.train"), dataclasses.replace(exercise, thresholds=thresholds), "cpu")


def test_no_check_keeps_a_default_of_its_own_for_a_threshold():
    """A check reads its pass lines only from the typed object (no `.get(name, default)` that could disagree with
    course.yaml, as bucketed's min_gain once did: 0.1 in the check, 0.06 in course.yaml)."""
    from autograder.config import REPO_ROOT

    checks = REPO_ROOT / "autograder" / "checks"
    for path in sorted(checks.rglob("*.py")):
        if path == checks / "__init__.py":   # thresholds_for: the one place that reads course.yaml's mapping
            continue
        text = path.read_text()
        assert "thresholds.get(" not in text and "thresholds[" not in text, path
