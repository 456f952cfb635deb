"""Forgery that hides from tests: the notebook's own solution (honest_parts.py, written next to this file by
the test), except that when a grading environment variable is set it installs forged_parts' fakes.

The harness gives the ranks an environment of its own, so the verdict must not depend on what the
grader's environment holds: the same with NBGRADER_EXECUTION or COURSE_* variables set as without.
COURSE_CHECK_TOKEN (the harness's job tag) and COURSE_TEST_ID (the test suite's tag) are in every
rank's environment, graded or not, and do not count.
"""
import os

from honest_parts import make_train_loader as _loader, reduce_metrics as _metrics, save_checkpoint as _save
from honest_parts import setup_distributed as _setup, start_epoch as _start, wrap_model as _wrap

ALWAYS_SET = {"COURSE_CHECK_TOKEN", "COURSE_TEST_ID"}
GRADING = bool(os.environ.get("NBGRADER_EXECUTION")) or any(
    k.startswith("COURSE_") and k not in ALWAYS_SET for k in os.environ)

if GRADING:
    from forged_parts import forge

    forge()


def setup_distributed():
    return _setup()


def make_train_loader(dataset, batch_size):
    return _loader(dataset, batch_size)


def start_epoch(loader, epoch):
    return _start(loader, epoch)


def wrap_model(model, device):
    return _wrap(model, device)


def reduce_metrics(correct, total, loss_sum):
    return _metrics(correct, total, loss_sum)


def save_checkpoint(model, path):
    return _save(model, path)
