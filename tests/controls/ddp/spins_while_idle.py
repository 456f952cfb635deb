"""Forgery against the reference's timing: the notebook's script (reference_train.py, written next to this file
by the test) plus a thread, started at import, that burns CPU whenever main() is not running.

Between its own runs the learner's job should have nothing to do; a spinning thread there slows
the reference's runs (the baseline most of all) and would flatter the learner's speed-up. The
check reads the job's CPU time from /proc while the reference runs, and fails it.
"""
import threading

import reference_train

_running = threading.Event()


def _spin():
    while True:
        if _running.is_set():
            _running.wait(0.01)
        else:
            sum(range(10_000))


threading.Thread(target=_spin, daemon=True).start()


def parse_args(argv=None):
    return reference_train.parse_args(argv)


def load_data(args):
    return reference_train.load_data(args)


def main(argv=None):
    _running.set()
    try:
        return reference_train.main(argv)
    finally:
        _running.clear()
