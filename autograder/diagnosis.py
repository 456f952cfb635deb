"""Turning a job's result into a verdict: the judge's verdict when every rank replied, else what went wrong, in
plain words (a time-out with each stuck rank's line, an exception with the learner's line, a rank that died, a
tampered connection), with each rank's log and stack."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .checks import Check, Run, Trial
from .outcome import TaskResult
from .session import Job
from .verdict import CheckFailed, Verdict

LOG_TAIL = 4000
# torchrun's summary names the first rank that failed: "Root Cause ... rank : 1 (local_rank: 1) exitcode : 3"
ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(?P<rank>\d+).*?exitcode\s*:\s*(?P<code>-?\d+)", re.S)
PEER_FAILURE = re.compile(r"Connection closed by peer|Connection reset|Broken pipe|NCCL communicator was aborted"
                          r"|Socket Timeout|timed out|recvBytes|Read error", re.I)


def _stuck_line(stack: str, module: str) -> str:
    """The learner's innermost line in a faulthandler stack, e.g. 'my.py line 7 in global_mean'."""
    for line in stack.splitlines():
        found = re.search(r'File "([^"]+)", line (\d+) in (\S+)', line)
        if found and module and Path(found[1]).name == Path(module).name:
            return f"{Path(found[1]).name} line {found[2]} in {found[3]}"
    return ""


def _readable_stack(text: str) -> str:
    """faulthandler prints innermost first; keep the main thread, without the driver's own frames."""
    threads = text.split("\n\n")
    main = next((t for t in threads if "autograder/rank/__main__.py" in t), threads[0])
    if "in receive" in main and "parts/" not in main:
        return "finished its part and was waiting for the harness (not in any collective)"
    own = ("autograder/rank/__main__.py", "autograder/rank/wire.py", "<frozen runpy>", "c10d_logger.py")
    return "\n".join(ln for ln in main.splitlines() if not any(h in ln for h in own))


def _explain_error(check: Check, error: dict) -> str:
    hint = check.explain(error)
    if hint:
        return hint
    text = f"{error['type']}: {error['message']}"
    if error["type"] == "MemoryError" or "can't allocate memory" in text:
        return ("The rank ran out of its memory limit: look for a tensor or list that grows without bound "
                "(e.g. keeping every batch's loss tensor with its graph).")
    if error["type"] == "NotImplementedError":
        return "A function you call still raises NotImplementedError: fill in its '# YOUR CODE HERE'."
    if "ProcessGroupNCCL" in text or "NCCL" in text and "GPU" in text:
        return "NCCL needs GPUs; on a CPU-only machine the backend must be gloo (choose it from the device)."
    if "Default process group has not been initialized" in text:
        return "A collective ran before init_process_group(); this exercise expects the process group to exist."
    if PEER_FAILURE.search(text):
        return "Another rank stopped or skipped a collective, so this rank's collective had no partner."
    return "Read the traceback in this rank's output below: the last line in your file is where it failed."


def failure_verdict(job: Job, result: TaskResult, check: Check, limit: float, base: dict) -> Verdict:
    """The verdict for a task that did not complete on every rank: raised, hung, died, flooded, tampered."""
    ws = job.world_size
    logs = {f"rank {r}": text for r, text in job.logs().items()}
    stacks = {f"rank {r}": _readable_stack(s) for r, s in job.stacks().items()} if result.timed_out else {}
    base = {**base, "logs": logs}
    if result.problem:
        return Verdict(passed=False, status="fail", message=result.problem,
                       hint="The rank driver's connection is for the harness alone; do not open the course's "
                            "socket from your code.", **base)
    flooded = job.flooded()
    if flooded:
        return Verdict(passed=False, status="fail",
                       message=f"rank(s) {', '.join(map(str, flooded))} printed more than the output limit "
                               f"({job.output_limit // 2**20} MiB) and were stopped",
                       hint="Print less: a print inside a loop floods the log. Print on rank 0, every N steps.",
                       **base)
    row = result.outcomes
    failed = [o for o in row if o is not None and not o.ok]
    if failed:
        # The first failure that is not just a peer noticing another rank's exit explains the most.
        primary = next((o for o in failed if not PEER_FAILURE.search(o.error["message"])), failed[0])
        err = primary.error
        where = f" at {err['where']}" if err.get("where") else ""
        phase = " while importing your module" if primary.phase == "import" else ""
        message = f"rank {primary.rank} raised {err['line']}{where}{phase}"
        if ws == 1 and check.local:
            message = f"your module raised {err['line']}{where}{phase}"
        key = f"rank {primary.rank}"
        logs[key] = (logs.get(key, "") + "\n" + err["traceback"]).strip()
        return Verdict(passed=False, status="fail", message=message, hint=_explain_error(check, err), **base)
    done = [r for r, o in enumerate(row) if o is not None]
    if result.timed_out and result.unread:
        return Verdict(passed=False, status="timeout", stacks=stacks,
                       message=f"time limit of {limit:.0f} s reached; rank(s) {', '.join(map(str, result.unread))} "
                               f"did not take their inputs from the harness in time",
                       hint="Each rank receives its own inputs from the course's connection, and the time runs from "
                            "the first byte sent: do not block or bypass that connection from your code.", **base)
    if result.timed_out:
        stuck = [r for r in range(ws) if r not in done]
        places = [f"rank {r}: {_stuck_line(job.stacks().get(r, ''), job.module or '') or 'see its stack'}"
                  for r in stuck]
        message = (f"time limit of {limit:.0f} s reached; rank(s) {', '.join(map(str, stuck)) or 'all'} never "
                   f"finished" + (f" while rank(s) {', '.join(map(str, done))} had" if done else "")
                   + (" (" + "; ".join(places) + ")" if places else ""))
        hint = ("A rank is waiting in a collective that another rank never called: every rank must make the "
                "same collective calls in the same order (no collective inside `if rank == ...`)."
                if done else "Every rank is stuck or too slow: look at where each one was when time ran out.")
        return Verdict(passed=False, status="timeout", message=message, hint=hint, stacks=stacks, **base)
    missing = [r for r in range(ws) if r not in done]
    agent = job.agent_log()
    logs["torchrun"] = agent[-LOG_TAIL:]
    root = ROOT_CAUSE.search(agent)
    if root and int(root["rank"]) in missing:
        message = (f"rank {root['rank']} ended without a result (exit code {root['code']}); "
                   f"torchrun then stopped the other ranks")
    else:
        message = f"rank(s) {', '.join(map(str, missing))} ended without a result"
    return Verdict(passed=False, status="error", message=message,
                   hint="The process died before finishing: look for os._exit/sys.exit, a crash, or output "
                        "beyond the size limit in the output below.", **base)


def judge_verdict(check: Check, trial: Trial, inputs: list, expected: Any, result: TaskResult, base: dict) -> Verdict:
    run = Run.of(trial, inputs, expected, result)
    try:
        summary = check.judge(run)
    except CheckFailed as failure:
        return Verdict(passed=False, status=failure.status, message=failure.message, hint=failure.hint,
                       details=failure.details, **base)
    details = {}
    if isinstance(summary, tuple):
        summary, details = summary
    return Verdict(passed=True, message=summary, details=details, **base)
