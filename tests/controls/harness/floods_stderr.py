import os
import sys


def dist_env():
    line = "x" * 1023 + "\n"
    while True:  # far more than any log should hold
        sys.stderr.write(line)
