"""One result object per check call, rendered as CLI text, widget/feedback HTML and JSON.

A Verdict carries its points and whether it came from a hidden test: the widget, the
notebook's check(), re-verification and grades.csv all read them from here and nothing
downstream recomputes them.
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FIGURE_KEYS = ("speedup", "timeline", "memory", "overlap")   # pictures a verdict can carry in `details` (figures.py)


class CheckFailed(Exception):
    """Raised by a check's comparison: what is wrong (message) and what to try (hint)."""

    status = "fail"

    def __init__(self, message: str, hint: str = "", details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or {}


class Inconclusive(CheckFailed):
    """The measurement could not decide (the reference itself missed the line here): re-run, never a fail."""

    status = "inconclusive"


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
    status: str = ""                   # pass | fail | timeout | error | not-implemented | inconclusive
    profile: str = ""
    world_size: int = 0
    seconds: float = 0.0
    points: float = 0.0                # earned: max_points on a pass, else 0
    max_points: float = 0.0
    hidden: bool = False               # from a hidden test (graded, never shown before the deadline)
    logs: dict[str, str] = field(default_factory=dict)    # "rank 0" -> captured output (tail)
    stacks: dict[str, str] = field(default_factory=dict)  # "rank 1" -> Python stack at time-out
    details: dict[str, Any] = field(default_factory=dict) # numbers for pictures (speed-up, memory, timeline)

    def __post_init__(self):
        if not self.status:
            self.status = "pass" if self.passed else "fail"
        self.points = self.max_points if self.passed else 0.0

    # ------------------------------------------------------------ renderings
    @property
    def headline(self) -> str:
        mark = "PASS" if self.passed else {"timeout": "TIME-OUT", "error": "ERROR",
                                           "inconclusive": "INCONCLUSIVE"}.get(self.status, "FAIL")
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

    def figure_png(self) -> str | None:
        """The verdict's picture as base64 PNG (None when its details hold nothing to draw)."""
        if not any(k in self.details for k in FIGURE_KEYS):
            return None
        from .figures import png_base64

        return png_base64(self.details)

    def to_html(self, *, figure: bool = True) -> str:
        """Escaped HTML: nothing the learner's code printed can become markup or script."""
        color = {"pass": "#1a7f37", "inconclusive": "#9a6700"}.get(self.status, "#b42318")
        parts = [f'<div class="course-verdict" data-status="{html.escape(self.status)}">',
                 f'<b style="color:{color}">{html.escape(self.headline)}</b>']
        if self.hint:
            parts.append(f"<div><b>Hint:</b> {html.escape(self.hint)}</div>")
        png = self.figure_png() if figure else None
        if png:
            parts.append(f'<img alt="{html.escape(self.exercise)} figure" src="data:image/png;base64,{png}"/>')
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
    def from_dict(cls, raw: dict) -> "Verdict":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        return cls.from_dict(json.loads(text))
