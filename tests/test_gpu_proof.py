"""`course gpu-proof`, rehearsed on CPU: its plan covers the course (dry run), and a short run on the cpu profile
writes a summary whose bookkeeping matches what ran (a solution that passes, a mistake that fails with its hint)."""
import json

import pytest

from autograder import gpuproof, gpuproof_steps
from autograder.cli import main
from autograder.course import load_course


@pytest.mark.parametrize("gpus, profile", [(4, "gpu"), (2, "gpu"), (1, "gpu"), (0, "cpu")])
def test_the_plan_checks_every_exercise_and_runs_every_notebook(gpus, profile):
    steps = gpuproof.plan(gpus, profile=profile)
    assert gpuproof.check_plan(steps, gpus) == []
    own = [(s.args["world_size"], s.profile) for s in steps if s.kind == "check" and s.args["exercises"] == ["tp.two_d"]]
    assert own == [(4, "gpu" if gpus >= 4 else "cpu")]   # its 2 x 2 mesh, on GPUs where there are four
    checked = {(s.args["world_size"], s.profile) for s in steps if s.kind == "check" and "tp.two_d" not in s.args[
        "exercises"]}
    if gpus >= 2:
        assert checked == {(gpus, "gpu"), (2, "gpu")}
    elif gpus == 1:   # one rank on the GPU, the multi-rank checks on the CPUs
        assert checked == {(1, "gpu"), (2, "cpu")}
        assert all(s.profile == "cpu" for s in steps if s.kind in ("mistake", "measure"))
    mistakes = {s.args["assignment"] for s in steps if s.kind == "mistake"}
    assert mistakes == {a.id for a in load_course().assignments if a.graded}


def test_the_bookkeeping_sees_what_the_plan_leaves_out():
    steps = gpuproof.plan(2, profile="gpu")
    without_ddp = [s for s in steps if not (s.kind == "check" and s.args["assignment"] == "04_ddp")
                   and not (s.kind == "measure" and s.args["assignment"] == "04_ddp")]
    assert any("ddp.init" in p for p in gpuproof.check_plan(without_ddp, 2))
    no_notebook = [s for s in steps if not (s.kind == "notebook" and s.args["assignment"] == "05_pipeline")]
    assert any("05_pipeline" in p for p in gpuproof.check_plan(no_notebook, 2))
    unknown = steps + [gpuproof.Step("bad", "mistake", "gpu", 1, {"assignment": "05_pipeline",
                       "exercise": "pipeline.step", "mistake": "pipeline.step-no_such_row"})]
    assert any("no row 'pipeline.step-no_such_row'" in p for p in gpuproof.check_plan(unknown, 2))
    one_gpu = steps + [gpuproof.Step("x", "check", "gpu", 1, {"assignment": "04_ddp", "exercises": ["ddp.init"],
                                                              "world_size": 2})]
    assert any("one GPU" in p for p in gpuproof.check_plan(one_gpu, 1))


def test_a_row_the_solution_cannot_take_is_reported(monkeypatch):
    from autograder import controls

    stale = controls.Mistake(exercise="pipeline.step", name="stale", words=["x"],
                             edits={"pipeline_parts.py": [["no such line", "x"]]}, gpu_proof=True)
    monkeypatch.setattr(gpuproof, "mistakes", lambda: [*controls.mistakes(), stale])
    steps = gpuproof.plan(2, profile="gpu") + [gpuproof.Step("stale", "mistake", "gpu", 1, {
        "assignment": "05_pipeline", "exercise": "pipeline.step", "mistake": stale.id})]
    assert any("pipeline_parts.py has no 'no such line' to edit" in p for p in gpuproof.check_plan(steps, 2))


def test_a_dry_run_writes_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(["gpu-proof", "--dry-run", "--gpus", "2", "--profile", "gpu", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] and {s["status"] for s in summary["steps"]} == {"planned"}
    assert not (tmp_path / "logs").exists()
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.slow
def test_a_short_cpu_run_passes_the_solution_and_fails_the_mistake(tmp_path, capsys):
    code = main(["gpu-proof", "--quick", "--profile", "cpu", "--gpus", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_kind = {s["kind"]: s for s in summary["steps"]}
    assert by_kind["check"]["status"] == "passed", by_kind["check"]
    assert by_kind["mistake"]["status"] == "passed", by_kind["mistake"]      # it failed, with its hint
    assert "LOCAL_RANK" in (tmp_path / by_kind["mistake"]["log"]).read_text() or \
        "divide by the world size" in (tmp_path / by_kind["mistake"]["log"]).read_text()
    assert by_kind["notebook"]["status"] == "passed", by_kind["notebook"]
    assert (tmp_path / "notebooks" / "00_start_here.ipynb").is_file()
    assert all((tmp_path / s["log"]).is_file() for s in summary["steps"] if s["kind"] != "environment")
    assert code == 0 and summary["passed"], out
    assert "PASSED" in out


def test_the_data_step_reports_the_figures_of_the_dataset_it_prepared(tmp_path):
    """It reads what `course data` writes (eurosat.data.MANIFEST): name, source and number of images."""
    step = gpuproof.Step("data", "data", "cpu", 300, {"source": "synthetic", "images_per_class": 20})
    outcome = gpuproof_steps._data(step, tmp_path)
    assert outcome.status == "passed", outcome
    assert outcome.figures["images"] == 200 and outcome.figures["dataset"] and outcome.figures["source"], outcome
