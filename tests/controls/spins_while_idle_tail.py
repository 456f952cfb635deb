"""Forgery against the reference's timing, appended to a training script (conftest.spinning_while_idle): a
thread, started at import, that burns CPU whenever main() is not running.

Between its own runs the learner's job should have nothing to do; a spinning thread there slows the
reference's timed runs (the baseline most of all) and would flatter the learner's speed-up. Every measured
check reads the job's CPU time from /proc while the reference runs, and fails it.
"""
import threading as _threading

_running, _main = _threading.Event(), main  # noqa: F821 (the script above defines main)


def _spin():
    while True:
        if _running.is_set():
            _running.wait(0.01)
        else:
            sum(range(10_000))


_threading.Thread(target=_spin, daemon=True).start()


def main(argv=None):
    _running.set()
    try:
        return _main(argv)
    finally:
        _running.clear()
