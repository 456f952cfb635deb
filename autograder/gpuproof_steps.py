"""The steps of `course gpu-proof`, each run in a child process of its own by gpuproof.py (which plans them and
kills a step with everything it started when its budget runs out):

    python -m autograder.gpuproof_steps --step STEP_JSON --result RESULT_JSON --out OUT
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from .gpuproof import Outcome, Step, solution_folder


def _environment(step: Step, out: Path) -> Outcome:
    code = ("import json, torch; d = {'torch': torch.__version__, 'cuda': torch.version.cuda, "
            "'available': torch.cuda.is_available(), 'gpus': torch.cuda.device_count(), "
            "'names': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}\n"
            "try:\n    d['nccl'] = '.'.join(map(str, torch.cuda.nccl.version()))\nexcept Exception as e:\n"
            "    d['nccl'] = f'unavailable ({type(e).__name__})'\nprint(json.dumps(d))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=step.budget)
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20) \
        if _which("nvidia-smi") else None
    figures = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    figures["nvidia-smi"] = smi.stdout.strip() if smi else "not installed"
    ok = done.returncode == 0 and (step.profile == "cpu" or figures.get("available"))
    return Outcome(step.name, step.kind, step.profile, "passed" if ok else "failed",
                   message="" if ok else (done.stderr[-500:] or "torch sees no CUDA device"), figures=figures)


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def _data(step: Step, out: Path) -> Outcome:
    target = out / ("data-real" if step.args["source"] == "auto" else "data")
    env = {**os.environ, "COURSE_DATA_DIR": str(target)}
    size = ["--images-per-class", str(step.args["images_per_class"])] if "images_per_class" in step.args else []
    done = subprocess.run([sys.executable, "-m", "autograder.cli", "data", "--source", step.args["source"], *size],
                          capture_output=True, text=True, timeout=step.budget, env=env)
    from eurosat.data import MANIFEST

    manifest = target / MANIFEST   # what `course data` writes last, once the dataset is complete
    written = json.loads(manifest.read_text()) if manifest.exists() else {}
    real = step.args["source"] == "auto"
    status = "passed" if done.returncode == 0 else ("skipped" if real else "failed")
    message = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    figures = {"dataset": written.get("name"), "source": written.get("source"), "images": written.get("n_images")}
    return Outcome(step.name, step.kind, step.profile, status, message=message[0][:300],
                   figures={k: v for k, v in figures.items() if v is not None})


def _checks(step: Step, out: Path) -> Outcome:
    from .harness import VerdictCache, run_check

    folder = solution_folder(step.args["assignment"], out)
    from .course import load_course

    course = load_course()
    cache, failed, texts = VerdictCache(), [], []
    for exercise in step.args["exercises"]:
        module = folder / course.exercise(exercise).module
        v = run_check(exercise, module=module, world_size=step.args["world_size"], profile=step.profile, cache=cache)
        texts.append(v.to_text(verbose=not v.passed))
        if not v.passed:
            failed.append(f"{exercise}: {v.status}: {v.message[:200]}")
    status = "timed out" if any("TIME-OUT" in t for t in texts) else ("failed" if failed else "passed")
    return Outcome(step.name, step.kind, step.profile, status, message="; ".join(failed), log="\n\n".join(texts))


def _mistake(step: Step, out: Path) -> Outcome:
    from .controls import mistakes
    from .harness import run_check

    mistake = next(m for m in mistakes() if m.id == step.args["mistake"])
    module = mistake.module(out / "mistakes" / f"{abs(hash(step.name)):x}")   # an edited solution: a folder of its own
    v = run_check(mistake.exercise, module=module, **{**mistake.overrides, "profile": step.profile})
    missed = mistake.missed(v)
    return Outcome(step.name, step.kind, step.profile, "failed" if missed else "passed",
                   message=f"expected a fail naming {mistake.words}: {missed}; got: {v.headline[:200]}" if missed else "",
                   log=v.to_text(verbose=True))


def _measure(step: Step, out: Path) -> Outcome:
    from .course import load_course
    from .harness import run_check

    module = solution_folder(step.args["assignment"], out) / load_course().exercise(step.args["exercise"]).module
    v = run_check(step.args["exercise"], module=module, profile=step.profile)
    figures = {k: v.details[k] for k in ("speedup", "memory") if k in v.details}
    status = "passed" if v.passed else ("skipped" if v.status == "inconclusive" else "failed")
    return Outcome(step.name, step.kind, step.profile, status, message=v.message[:300], figures=figures,
                   log=v.to_text(verbose=True))


def _notebook(step: Step, out: Path) -> Outcome:
    from .nbexecute import run_notebook, source_notebook

    run = run_notebook(source_notebook(step.args["assignment"]), cell_timeout=step.budget, save_to=out / "notebooks")
    undecided = "".join(f"; undecided: {u}" for u in run.undecided)   # a busy machine, not the notebook
    return Outcome(step.name, step.kind, step.profile, run.status, message=(run.message + undecided)[:600])


RUNNERS = {"environment": _environment, "data": _data, "check": _checks, "mistake": _mistake, "measure": _measure,
           "notebook": _notebook}


def _step_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--step", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    step = Step(**json.loads(args.step))
    try:
        outcome = RUNNERS[step.kind](step, Path(args.out))
    except Exception as exc:  # noqa: a step that breaks is a failed step, with the reason
        outcome = Outcome(step.name, step.kind, step.profile, "failed", message=f"{type(exc).__name__}: {exc}"[:500])
    print(outcome.log or outcome.message, flush=True)   # the step's log file: the verdicts in full
    Path(args.result).write_text(json.dumps(asdict(outcome)))
    return 0


if __name__ == "__main__":
    sys.exit(_step_main(sys.argv[1:]))
