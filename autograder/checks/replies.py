"""What the ranks sent back, read as untrusted: a rank's result was made in the learner's process, so every field is
checked for its type (and tensors for the names asked) before a judge uses it; a malformed one fails the call and
says that something in the learner's files changed the course's reply."""
from __future__ import annotations

import functools
from typing import Any, Callable

from ..verdict import CheckFailed

TAMPERED_HINT = ("The course's rank driver sends back what your functions returned; something in your files "
                 "changed it. Do not patch the course's own modules (autograder.*) from your code.")


def reply(outcome) -> dict:
    """A rank's result, which the rank parts always send as a dict."""
    if not isinstance(outcome.result, dict):
        raise CheckFailed(f"rank {outcome.rank} sent back a {type(outcome.result).__name__}, not the rank part's "
                          "result", TAMPERED_HINT)
    return outcome.result


def field(outcome, key: str, kind: type | tuple) -> Any:
    value = reply(outcome).get(key)
    if not isinstance(value, kind):
        raise CheckFailed(f"rank {outcome.rank} sent back a malformed result ({key!r} is a "
                          f"{type(value).__name__})", TAMPERED_HINT)
    return value


def tensors(outcome, key: str, names) -> dict:
    """{name: tensor} for exactly the parameter names the model has (else CheckFailed)."""
    import torch

    value = field(outcome, key, dict)
    if set(value) != set(names) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckFailed(f"rank {outcome.rank}: {key} does not list the model's parameters (got "
                          f"{sorted(value)[:3]}...)", TAMPERED_HINT)
    return value


def reads_rank_results(judge: Callable) -> Callable:
    """For a judge of what the ranks sent: a result it cannot read (a missing key, a wrong type: the rank part was
    replaced or the reply forged) fails the learner's check instead of breaking the harness."""
    @functools.wraps(judge)
    def judging(*args, **kwargs):
        try:
            return judge(*args, **kwargs)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError, RuntimeError) as exc:
            raise CheckFailed(f"the ranks sent results the check cannot read ({type(exc).__name__}: {exc})"[:300],
                              "Something in your files changed what the ranks send back (the course's code in "
                              "autograder.rank): leave it alone and let the check call your functions.") from exc
    return judging

