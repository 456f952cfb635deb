"""Forgery against a self-timed baseline: the notebook's script (reference_train.py, written next to this file
by the test) that sleeps three times its run time when it runs on one rank (stretching its own baseline 4x)
and once its run time on several ranks (about as slow as one rank: no real speed-up).

With the learner's own 1-rank runs as the baseline this would show a 3-4x "speed-up". The
check times the reference script's 1-rank runs instead, so it gets about 0.9x and must not pass.
"""
import os
import time

import reference_train


def parse_args(argv=None):
    return reference_train.parse_args(argv)


def load_data(args):
    return reference_train.load_data(args)


def main(argv=None):
    start = time.perf_counter()
    metrics = reference_train.main(argv)
    elapsed = time.perf_counter() - start
    time.sleep(3 * elapsed if os.environ["WORLD_SIZE"] == "1" else elapsed)
    return metrics
