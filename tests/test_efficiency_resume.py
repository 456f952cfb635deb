"""09_efficiency: efficiency.resume (gloo, CPU ranks): a training state saved sharded at 2 ranks by the notebook's
reference resumes at 3 and at 1, and one saved at 3 resumes at 2, exactly where uninterrupted training would be;
each control fails with a hint naming its mistake."""
from __future__ import annotations

import pytest

from autograder import run_check
from conftest import stub


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"load_ranks": 1, "seed": 1}, {"save_ranks": 3, "load_ranks": 2, "seed": 2}])
def test_reference_resumes_at_another_world_size(graded_assignment, overrides):
    """The source notebook's calls (2 -> 3 ranks, 2 -> 1, 3 -> 2), from the session's graded notebook (conftest)."""
    v = graded_assignment("09_efficiency").verdict("efficiency.resume", **overrides)
    assert v.passed, v.to_text()
    resume = v.details["resume"]
    saving = overrides.get("save_ranks", 2)
    assert (resume["save_ranks"], resume["load_ranks"]) == (saving, overrides.get("load_ranks", 3)), resume
    assert sum(n.endswith(".distcp") for n in resume["files"]) == saving, resume["files"]   # one per saving rank
    assert resume["save_bytes"] < 0.2 * resume["state_bytes"], resume   # measured 0.04x (float64): DCP's plans only


@pytest.mark.slow
def test_blank_stub_is_not_implemented():
    v = run_check("efficiency.resume", module=stub("09_efficiency", "efficiency_parts.py"))
    assert not v.passed and "NotImplementedError" in v.message + " " + v.hint, v.to_text()


@pytest.mark.parametrize("found,words", [
    ({"kind": "missing"}, ["wrote nothing"]),
    ({"kind": "file"}, ["one file, not a folder of shards"]),
    ({"kind": "folder", "files": {"model.pt": b"x" * 100}}, ["without DCP's .metadata"]),
    ({"kind": "folder", "files": {".metadata": b"m", "../__0_0.distcp": b"x"}}, ["not plain file names"]),
    ({"kind": "folder", "files": {".metadata": b"m", "__0_0.distcp": b"x" * 100}}, ["not sharded", "ranks [0]"]),
    ({"kind": "folder", "files": {".metadata": b"m", "__0_0.distcp": b"x" * 90, "__1_0.distcp": b"x" * 10}},
     ["not sharded", "the largest 90%"]),
])
def test_a_checkpoint_folder_not_written_by_every_rank_is_named(found, words):
    """The layout read on its own (the launched controls fail on bytes first where the sandbox measures them)."""
    from autograder.checks.efficiency.resume import ResumeThresholds, _checkpoint_files
    from autograder.verdict import CheckFailed

    with pytest.raises(CheckFailed) as failed:
        _checkpoint_files(found, 2, ResumeThresholds(max_file_share=0.75, max_gathered=0.5))
    assert all(w in failed.value.message for w in words), failed.value.message


def test_a_sharded_folder_passes_the_layout():
    from autograder.checks.efficiency.resume import ResumeThresholds, _checkpoint_files

    files = {".metadata": b"m", "__0_0.distcp": b"x" * 52, "__1_0.distcp": b"x" * 48}
    _, layout = _checkpoint_files({"kind": "folder", "files": files}, 2, ResumeThresholds(0.75, 0.5))
    assert "ranks [0, 1], the largest 52%" in layout
