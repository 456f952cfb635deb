"""One result object per check, rendered as CLI text, widget HTML and JSON; nothing downstream recomputes it."""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class CheckFailed(Exception):
    """Raised by a check's comparison: what is wrong (message) and what to try (hint)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


def expect(condition: bool, message: str, hint: str = "") -> None:
    """Fail the check with message and hint unless condition holds."""
    if not condition:
        raise CheckFailed(message, hint)


@dataclass
class Verdict:
    exercise: str
    passed: bool
    message: str                       # one line: what was established, or what is wrong
    hint: str = ""                     # what to try, naming the likely mistake
    status: str = ""                   # pass | fail | timeout | error | not-implemented
    profile: str = ""
    world_size: int = 0
    seconds: float = 0.0
    logs: dict[str, str] = field(default_factory=dict)    # "rank 0" -> captured output (tail)
    stacks: dict[str, str] = field(default_factory=dict)  # "rank 1" -> Python stack at time-out
    details: dict[str, Any] = field(default_factory=dict) # numbers for plots (speed-up, memory, timeline)

    def __post_init__(self):
        if not self.status:
            self.status = "pass" if self.passed else "fail"

    # ------------------------------------------------------------ renderings
    @property
    def headline(self) -> str:
        mark = "PASS" if self.passed else {"timeout": "TIME-OUT", "error": "ERROR"}.get(self.status, "FAIL")
        where = f" [{self.world_size} ranks, {self.profile}]" if self.world_size else ""
        return f"{mark} {self.exercise}{where}: {self.message}"

    def to_text(self, *, verbose: bool = False) -> str:
        lines = [self.headline]
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        if not self.passed or verbose:
            for who, stack in self.stacks.items():
                lines += [f"--- where {who} was when time ran out ---", stack.rstrip()]
            for who, log in self.logs.items():
                if log.strip():
                    lines += [f"--- output of {who} ---", log.rstrip()]
        return "\n".join(lines)

    def to_html(self) -> str:
        color = "#1a7f37" if self.passed else "#b42318"
        parts = [f'<div class="course-verdict" data-status="{self.status}">',
                 f'<b style="color:{color}">{html.escape(self.headline)}</b>']
        if self.hint:
            parts.append(f"<div><b>Hint:</b> {html.escape(self.hint)}</div>")
        sections = [(f"Where {who} was when time ran out", s) for who, s in self.stacks.items()]
        sections += [(f"Output of {who}", log) for who, log in self.logs.items() if log.strip()]
        for title, text in sections:
            parts.append(f"<details><summary>{html.escape(title)}</summary>"
                         f"<pre>{html.escape(text)}</pre></details>")
        parts.append("</div>")
        return "\n".join(parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        return cls(**json.loads(text))
