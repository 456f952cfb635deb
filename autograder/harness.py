"""run_check(): from an exercise id to a Verdict (preflight, launch, collect, judge); check() for notebooks."""
from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from . import checks, config, launch, policy
from .checks import DistributedCheck, LocalCheck, RankOutcome, Run
from .verdict import CheckFailed, Verdict
from .worker import OUTPUT_LIMIT_BYTES

LOG_TAIL = 4000
PEER_FAILURE = re.compile(r"Connection closed by peer|Connection reset|Broken pipe|NCCL communicator was aborted"
                          r"|Socket Timeout|timed out|recvBytes|Read error", re.I)


def load_course() -> config.Course:
    """course.yaml, also checked against the registry: every exercise must have a check."""
    course = config.load()
    missing = sorted(e.id for e in course.exercises if e.id not in checks.implemented())
    if missing:
        raise config.ConfigError(f"{course.path}: exercise {missing[0]!r} has no check in autograder/checks")
    return course


# ------------------------------------------------------------------ preflight

def _is_stub(fn: ast.FunctionDef) -> bool:
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return (len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc is not None
            and "NotImplementedError" in ast.unparse(body[0].exc))


def preflight(path: Path, functions: tuple[str, ...]) -> tuple[str, str, str] | None:
    """Read the learner's file without running it: (status, message, hint) when it cannot pass yet."""
    if not path.is_file():
        return ("error", f"{path.name} does not exist yet in {path.parent}",
                "Run the %%writefile cell that creates it (or pass --module with its path).")
    try:
        tree = ast.parse(path.read_text(), filename=path.name)
    except SyntaxError as exc:
        return ("fail", f"{path.name} has a syntax error on line {exc.lineno}: {exc.msg}",
                "Fix the line shown, run the %%writefile cell again, then re-check.")
    defined = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for name in functions:
        if name not in defined:
            return ("fail", f"{path.name} does not define {name}()",
                    f"Keep the function name {name} from the exercise cell; the checks call it by name.")
    stubs = [name for name in functions if _is_stub(defined[name])]
    if stubs:
        return ("not-implemented", f"{', '.join(n + '()' for n in stubs)} still raise NotImplementedError",
                "Replace '# YOUR CODE HERE' and the raise line with your code, run the cell, then re-check.")
    return None


# ------------------------------------------------------------------ collecting

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _collect(job_dir: Path, world_size: int) -> tuple[list[RankOutcome | None], dict[str, str], dict[str, str]]:
    outcomes, logs, stacks = [], {}, {}
    for r in range(world_size):
        raw = _read_json(job_dir / f"rank{r}.json")
        outcomes.append(None if raw is None else RankOutcome(
            rank=r, ok=raw["ok"], result=raw.get("result"), error=raw.get("error"),
            phase=raw.get("phase", ""), calls=raw.get("calls", {})))
        logs[f"rank {r}"] = launch._tail(job_dir / f"rank{r}.log", LOG_TAIL)
        stack = (job_dir / f"rank{r}.stack")
        if stack.exists() and stack.stat().st_size:
            stacks[f"rank {r}"] = _readable_stack(stack.read_text())
    return outcomes, logs, stacks


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _readable_stack(text: str) -> str:
    """faulthandler prints innermost first; keep the main thread, without the harness's own frames."""
    threads = text.split("\n\n")
    main = next((t for t in threads if "worker.py" in t), threads[0])
    if "_wait_for_peers" in main:
        return "finished its part and was waiting for the other ranks (not in any collective)"
    harness = ("autograder/worker.py", "autograder/launch.py", "<frozen runpy>", "c10d_logger.py")
    return "\n".join(ln for ln in main.splitlines() if not any(h in ln for h in harness))


def _where_stuck(stack: str, module: str) -> str:
    """The learner's innermost line in a faulthandler stack, e.g. 'my.py line 7 in global_mean'."""
    for line in stack.splitlines():
        found = re.search(r'File "([^"]+)", line (\d+) in (\S+)', line)
        if found and module and Path(found[1]).name == Path(module).name:
            return f"{Path(found[1]).name} line {found[2]} in {found[3]}"
    return ""


def _explain_error(check, error: dict) -> str:
    hint = check.explain(error) if isinstance(check, DistributedCheck) else None
    if hint:
        return hint
    text = f"{error['type']}: {error['message']}"
    if error["type"] == "NotImplementedError":
        return "A function you call still raises NotImplementedError: fill in its '# YOUR CODE HERE'."
    if "ProcessGroupNCCL" in text or "NCCL" in text and "GPU" in text:
        return "NCCL needs GPUs; on a CPU-only machine the backend must be gloo (choose it from the device)."
    if "Default process group has not been initialized" in text:
        return "A collective ran before init_process_group(); this exercise expects the process group to exist."
    if PEER_FAILURE.search(text):
        return "Another rank stopped or skipped a collective, so this rank's collective had no partner."
    return "Read the traceback in this rank's output below: the last line in your file is where it failed."


# ------------------------------------------------------------------ the check

def run_check(exercise_id: str, *, module: str | Path | None = None, world_size: int | None = None,
              profile: str | None = None, time_limit: float | None = None, nnodes: int = 1,
              cwd: str | Path | None = None, **params: Any) -> Verdict:
    """Run one exercise's check and return its Verdict (never raises for the learner's mistakes)."""
    course = load_course()
    exercise = course.exercise(exercise_id)
    check = checks.get(exercise_id)
    prof = policy.choose_profile(course, profile)
    cwd = Path(cwd or Path.cwd())
    path = (cwd / (module or exercise.module)).resolve()
    limit = float(time_limit or exercise.time_limit)
    params = {**check.defaults, **params}
    local = isinstance(check, LocalCheck)
    ws = 1 if local else int(world_size or exercise.world_size or policy.ranks_for(prof))
    base = dict(exercise=exercise_id, profile=prof.name, world_size=0 if local else ws)

    problem = preflight(path, check.functions)
    if problem:
        status, message, hint = problem
        return Verdict(passed=False, status=status, message=message, hint=hint, **base)
    if ws < 1 or nnodes < 1 or ws % nnodes:
        return Verdict(passed=False, status="error", message=f"cannot split {ws} ranks over {nnodes} nodes",
                       hint="Use a world size that divides by the number of nodes.", **base)

    job_dir = Path(tempfile.mkdtemp(prefix=f"course-{exercise_id}-"))
    try:
        (job_dir / "job.json").write_text(json.dumps(
            {"exercise": exercise_id, "module": str(path), "params": params, "time_limit": limit}))
        worker = ["-m", "autograder.worker", str(job_dir)]
        if local:
            commands = [[sys.executable] + worker]
            env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
        else:
            endpoint, run_id = f"127.0.0.1:{launch.free_port()}", uuid.uuid4().hex[:8]
            commands = [launch.torchrun_command(ws // nnodes, worker, nnodes=nnodes, node_rank=n,
                                                endpoint=endpoint, run_id=run_id) for n in range(nnodes)]
            env = policy.rank_env(prof)
        result = launch.run_job(commands, job_dir, limit, env, cwd=path.parent)
        outcomes, logs, stacks = _collect(job_dir, ws)
        flooded = [r for r in range(ws) if _size(job_dir / f"rank{r}.log") >= OUTPUT_LIMIT_BYTES]
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)

    base.update(seconds=round(result.seconds, 2), logs=logs)
    if flooded:
        return Verdict(passed=False, status="fail",
                       message=f"rank(s) {', '.join(map(str, flooded))} printed more than the output limit "
                               f"({OUTPUT_LIMIT_BYTES // 2**20} MiB) and were stopped",
                       hint="Print less: a print inside a loop floods the log. Print on rank 0, every N steps.",
                       stacks=stacks, **base)
    if result.timed_out:
        done = [o.rank for o in outcomes if o is not None]
        stuck = [r for r in range(ws) if r not in done]
        places = [f"rank {r}: {_where_stuck(stacks.get(f'rank {r}', ''), str(path)) or 'see its stack'}"
                  for r in stuck]
        message = (f"time limit of {limit:.0f} s reached; rank(s) {', '.join(map(str, stuck)) or 'all'} never "
                   f"finished" + (f" while rank(s) {', '.join(map(str, done))} had" if done else "")
                   + (" (" + "; ".join(places) + ")" if places else ""))
        hint = ("A rank is waiting in a collective that another rank never called: every rank must make the "
                "same collective calls in the same order (no collective inside `if rank == ...`)."
                if done else "Every rank is stuck or too slow: look at where each one was when time ran out.")
        return Verdict(passed=False, status="timeout", message=message, hint=hint, stacks=stacks, **base)

    failed = [o for o in outcomes if o is not None and not o.ok]
    if failed:
        # The first failure that is not just a peer noticing another rank's exit explains the most.
        primary = next((o for o in failed if not PEER_FAILURE.search(o.error["message"])), failed[0])
        err = primary.error
        where = f" at {err['where']}" if err.get("where") else ""
        phase = "while importing your module" if primary.phase == "import" else ""
        message = f"rank {primary.rank} raised {err['type']}{where} {phase}: {err['message'].splitlines()[0][:300]}"
        logs[f"rank {primary.rank}"] = (logs.get(f"rank {primary.rank}", "") + "\n" + err["traceback"]).strip()
        return Verdict(passed=False, status="fail", message=re.sub(r"\s+:", ":", message),
                       hint=_explain_error(check, err), **base)

    missing = [r for r, o in enumerate(outcomes) if o is None]
    if missing:
        logs["torchrun"] = result.agent_log[-LOG_TAIL:]
        return Verdict(passed=False, status="error",
                       message=f"rank(s) {', '.join(map(str, missing))} ended without a result "
                               f"(torchrun exit code {result.returncode})",
                       hint="The process died before finishing: look for os._exit/sys.exit, a crash, or output "
                            "beyond the size limit in the output below.", **base)

    run = Run(exercise=exercise_id, world_size=ws, params=params, ranks=tuple(outcomes),
              thresholds=dict(exercise.thresholds.get(prof.name, {})), profile=prof.name)
    try:
        summary = check.judge(run) if not local else _local_summary(outcomes[0])
    except CheckFailed as failure:
        return Verdict(passed=False, message=failure.message, hint=failure.hint,
                       details=getattr(failure, "details", {}), **base)
    details = {}
    if isinstance(summary, tuple):
        summary, details = summary
    return Verdict(passed=True, message=summary, details=details, **base)


def _local_summary(outcome: RankOutcome) -> str:
    result = outcome.result
    if "failed" in result:
        raise CheckFailed(result["failed"], result.get("hint", ""))
    return result["summary"]


def check(exercise_id: str, **overrides: Any) -> None:
    """Notebook/test entry: print one success line, or raise AssertionError with the message and hint."""
    try:
        verdict = run_check(exercise_id, **overrides)
    except config.ConfigError as exc:
        raise AssertionError(f"course configuration problem: {exc}") from None
    if not verdict.passed:
        raise AssertionError("\n" + verdict.to_text())
    print(verdict.headline)
