"""Grading records (one JSON file per student and assignment) and grades.csv; only the grading parent writes them."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import Course

MANUAL = "needs manual grading"
UNSAFE = "graded WITHOUT a sandbox (--unsafe-no-sandbox): student code could read and change other files"


@dataclass
class Record:
    student: str
    assignment: str
    sha256: str
    status: str                                                # "graded" or MANUAL
    points: dict[str, float] = field(default_factory=dict)     # grade_id -> points (the trusted verdicts')
    cell_points: dict[str, float] = field(default_factory=dict)  # what the notebook's test cells scored
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sandboxed: bool = True

    @classmethod
    def load(cls, path: Path) -> "Record | None":
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def from_dict(cls, raw: dict, *, max_points: dict[str, float] | None = None) -> "Record":
        """A record from untrusted JSON: every field typed and bounded (ValueError otherwise)."""
        if not isinstance(raw, dict):
            raise ValueError("not a record")

        def points(value) -> dict[str, float]:
            if not isinstance(value, dict):
                raise ValueError("points must be a mapping")
            out = {}
            for k, v in value.items():
                v = float(v)
                if not math.isfinite(v) or v < 0 or (max_points is not None and (k not in max_points
                                                                                 or v > max_points[k])):
                    raise ValueError(f"points out of range: {k}={v}")
                out[str(k)] = v
            return out

        flags = raw.get("flags", [])
        if not isinstance(flags, list):
            raise ValueError("flags must be a list")
        return cls(student=str(raw["student"]), assignment=str(raw["assignment"]), sha256=str(raw["sha256"]),
                   status=str(raw["status"]), points=points(raw.get("points", {})),
                   cell_points=points(raw.get("cell_points", {})) if max_points is None else
                   {str(k): float(v) for k, v in dict(raw.get("cell_points", {})).items()},
                   flags=[str(f)[:2000] for f in flags[:50]], seconds=float(raw.get("seconds", 0.0)),
                   sandboxed=bool(raw.get("sandboxed", True)))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)  # atomic: a record is there whole or not at all


def record_path(out: Path, student: str, assignment: str) -> Path:
    return out / "records" / student / f"{assignment}.json"


def verdicts_path(out: Path, student: str, assignment: str) -> Path:
    """The trusted verdicts behind a record (call key -> verdict as a dict, figures' data included): what each check
    call of the re-verification found, for an instructor who wants the measured figures."""
    return out / "verdicts" / student / f"{assignment}.json"


def write_csv(out: Path, course: Course) -> Path:
    """grades.csv from the records: one row per student, per-exercise points, total, max, flags."""
    records = [r for p in sorted((out / "records").glob("*/*.json")) if (r := Record.load(p))]
    graded = [a for a in course.assignments if a.graded]
    columns = [e.grade_id for a in graded for e in a.exercises]
    by_student: dict[str, list[Record]] = {}
    for r in records:
        by_student.setdefault(r.student, []).append(r)
    path = out / "grades.csv"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", *columns, "total", "max", "flags"])
        for student, rs in sorted(by_student.items()):
            points = {g: p for r in rs for g, p in r.points.items()}
            done = {r.assignment for r in rs}
            maximum = sum(a.points for a in graded if a.id in done)
            flags = [f"{r.assignment}: {flag}" for r in rs for flag in r.flags]
            flags += [f"{r.assignment}: {UNSAFE}" for r in rs if not r.sandboxed]
            w.writerow([student, *(points.get(c, "") for c in columns), sum(points.values()), maximum,
                        " | ".join(flags)])
    tmp.replace(path)
    return path
