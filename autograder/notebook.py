"""Helpers the notebooks call: set-up in their first code cell, and the report of a "predict, then measure" cell."""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from . import config, launch, policy


def grading() -> bool:
    """True while nbgrader executes the notebook (autograde or validate)."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


# A shell line that launches torchrun: `!torchrun ...`, `!VAR=1 torchrun ...`, `!python -m torch.distributed.run ...`.
TORCHRUN_LINE = re.compile(r"^(\s*)!(\s*\w+=\S+\s+)*(torchrun|\S+\s+-m\s+torch\.distributed\.run)\b")


def skip_launches_while_grading(lines: list[str]) -> list[str]:
    """IPython input transformer: demo launches are not graded, so nbgrader does not pay for them.

    Graded test cells run their own checks; a class of 100 would otherwise repeat every
    demo launch 100 times.
    """
    out = []
    for line in lines:
        found = TORCHRUN_LINE.match(line)
        if found:
            command = line.strip()[1:].replace("\\", "\\\\").replace('"', '\\"')
            line = f'{found[1]}print("[not run while grading] {command}")\n'
        out.append(line)
    return out


# What a smoke run (config.smoke) trains on in a `!torchrun` launch: every cell runs, briefly.
SMOKE_LIMIT, SMOKE_EPOCHS = 256, 1
_SIZE_FLAG = re.compile(r"--(limit|epochs)(\s+|=)(\d+)")


def shorten_launches(lines: list[str]) -> list[str]:
    """IPython input transformer for the smoke configuration: `!torchrun` lines train on at most SMOKE_LIMIT images
    for SMOKE_EPOCHS epoch(s); nothing else changes."""
    def smaller(found: re.Match) -> str:
        cap = SMOKE_LIMIT if found[1] == "limit" else SMOKE_EPOCHS
        return f"--{found[1]}{found[2]}{min(int(found[3]), cap)}"

    return [_SIZE_FLAG.sub(smaller, line) if TORCHRUN_LINE.match(line) else line for line in lines]


# A torchrun line whose script can run in a rank forked from torchrun (not `-m module`, `--no-python` or already so).
_SCRIPT = re.compile(r"(?<=\s)(\S+\.py)(?=\s|$)")
_NOT_FORKABLE = re.compile(r"\s(-m|--module|--no-python|--no_python|--run-path|--run_path)\s")
AS_SCRIPT = Path(__file__).parent / "rank" / "as_script.py"


def fork_launches(lines: list[str]) -> list[str]:
    """IPython input transformer for the smoke configuration: a `!torchrun ... script.py` line runs its ranks forked
    from torchrun (rank/as_script.py), which has imported torch already, instead of a fresh interpreter that imports
    it again: about 1.7 s of CPU less per rank. Forked ranks also skip the interpreter's shutdown, where torch 2.14's
    gloo can abort a rank ("terminate called without an active exception": a gloo worker thread releases the last
    collective's tensors while the interpreter is finalising, 1 run in 5-15 of 07's zero1 demo on a loaded machine).
    What the notebook's reader runs is unchanged."""
    out = []
    for line in lines:
        found = TORCHRUN_LINE.match(line)
        if (found and found[3] == "torchrun" and not _NOT_FORKABLE.search(line + " ") and _SCRIPT.search(line)
                and launch.forks_ranks()):
            head, tail = line[:found.end()], line[found.end():]
            tail = _SCRIPT.sub(lambda m: f"{shlex.quote(str(AS_SCRIPT))} {m[1]}", tail, count=1)
            line = f"{head} --run-path --start-method=fork{tail}"
        out.append(line)
    return out


def short_run() -> bool:
    """Whether training cells should train briefly: while nbgrader grades, or in the smoke configuration."""
    return grading() or config.smoke()


def setup() -> int:
    """Prepare this kernel for torchrun cells and say which profile is active; returns the rank count.

    - puts this Python's scripts (torchrun, course) first on PATH, so `!torchrun` is the right one;
    - exports the profile's per-rank environment (OMP_NUM_THREADS=1 on the cpu profile), which
      every `!torchrun` launched from the notebook inherits;
    - while nbgrader grades, turns `!torchrun` demo lines into a printed note (not graded);
    - in the smoke configuration ($COURSE_SMOKE=1, the test suite), makes `!torchrun` training launches short and
      forks their ranks from torchrun (fork_launches).
    """
    transformers = ([skip_launches_while_grading] if grading() and config.grading_shortcuts() else []) + (
        [shorten_launches, fork_launches] if config.smoke() and not grading() else [])
    if transformers:
        from IPython import get_ipython

        shell = get_ipython()
        for transform in transformers if shell is not None else []:
            if transform not in shell.input_transformers_cleanup:
                shell.input_transformers_cleanup.append(transform)
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    course = config.load()
    profile = policy.choose_profile(course)
    nproc = policy.ranks_for(profile)
    os.environ.update(policy.rank_env(profile))
    threads = profile.threads_per_rank or "default"
    print(f"Profile: {profile.name} ({profile.backend}, {nproc} ranks, {threads} thread(s) per rank). "
          f"Use NPROC={nproc} in torchrun cells.")
    if config.smoke() and not grading():
        print(f"Smoke configuration ({config.SMOKE_ENV}=1): launches train on at most {SMOKE_LIMIT} images for "
              f"{SMOKE_EPOCHS} epoch; self-checks judge correctness, not speed.")
    return nproc


def prediction_report(prediction, value: float, how: str, *, what: str = "measured", unit: str = "",
                      rel_tolerance: float = 0.02) -> str:
    """What a "predict, then measure" cell prints: the value it measured or counted, how (the arithmetic, with this
    case's numbers), and the learner's prediction next to it. Ungraded; `None` means no prediction was typed.

    A prediction within rel_tolerance of the value counts as right (0.33 for 1/3), so that rounding is not a miss.
    """
    lines = [f"{what + ':':11} {value:.4g}{unit}   = {how}"]
    if prediction is None:
        lines.append("prediction: none typed. Put a number in `my_prediction` above, then run both cells again.")
        return "\n".join(lines)
    try:
        guess = float(prediction)
    except (TypeError, ValueError):
        lines.append(f"prediction: {prediction!r} is not a number: type one, such as 0.4 or 24.")
        return "\n".join(lines)
    off = guess - value
    if abs(off) <= rel_tolerance * abs(value) or off == 0:
        verdict = "right"
    else:
        verdict = f"off by {off:+.3g}{unit}" + (f" ({off / value:+.0%})" if value else "")
    lines.append(f"prediction: {guess:g}{unit}   {verdict}")
    return "\n".join(lines)
