"""The rank driver as torchrun starts it in a check's job: forked from torchrun's own process.

    torchrun --run-path --start-method fork .../autograder/rank/forked.py JOB_DIR [--tmp B --shm B --keep P ...]

torchrun has imported torch already, so a forked rank starts in a fraction of the time (and CPU) a fresh
interpreter needs to import it again: on two cores that was most of every check's start. Nothing of the
learner's has run in torchrun's process, and torchrun never touches a GPU, so a forked rank is as clean as a
new one. With --tmp, the rank first gets a /tmp (and with --shm a /dev/shm) of its own (owntmp.py).
"""
import argparse
import os
import sys
import traceback
from pathlib import Path


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="autograder/rank/forked.py")
    parser.add_argument("job_dir")
    parser.add_argument("--tmp", type=int, default=0, help="bytes of a /tmp of the rank's own (0: the job's)")
    parser.add_argument("--shm", type=int, default=0, help="bytes of a /dev/shm of the rank's own (0: the job's)")
    parser.add_argument("--keep", action="append", default=[], help="a folder or file under /tmp to bind again")
    return parser.parse_args(argv)


def _start(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the package this harness is (python -I)
    from autograder.rank import owntmp

    if args.tmp:
        owntmp.own_tmp(tmp_bytes=args.tmp, shm_bytes=args.shm, keep=args.keep)


if __name__ == "__main__":
    arguments = _arguments(sys.argv[1:])
    try:
        _start(arguments)
    except BaseException:   # before the rank has a log: torchrun's output is where the harness looks
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    from autograder.rank.__main__ import main

    main(arguments.job_dir)
