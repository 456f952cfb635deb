"""Shared fixtures: every test proves that no process it started outlives it."""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from autograder.launch import processes_with_env

CONTROLS = Path(__file__).parent / "controls"
TEST_TAG = "COURSE_TEST_ID"


@pytest.fixture(autouse=True)
def no_process_outlives_the_test():
    """Tag this test's environment; afterwards no process carrying the tag may be alive."""
    tag = uuid.uuid4().hex
    os.environ[TEST_TAG] = tag
    yield
    del os.environ[TEST_TAG]
    deadline = time.monotonic() + 3  # processes that are exiting right now get a moment
    while (left := processes_with_env(TEST_TAG, tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"


def control(area: str, name: str) -> Path:
    """Path of a negative-control (or reference) module under tests/controls/<area>/."""
    path = CONTROLS / area / f"{name}.py"
    assert path.is_file(), path
    return path


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is as fast, and tests run two at a time (pytest -n 2)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
