"""Expected values shipped as data: what the student pack's self-checks compare with (it has no references).

`course student-pack` runs each public check call (the release notebooks' visible test
calls, with the default parameters, at the world sizes a student's machine uses) once with
a fixed secret, and stores the inputs and expected values in autograder/public/<id>-<N>.bin
(rank/wire.py format: no pickle). In a copy without references (the student pack) the
harness takes a call's inputs and expected values from there; a call that has none is
explained, not guessed. Hidden variants and the references stay with the instructor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .rank import wire

FOLDER = Path(__file__).parent / "public"
WORLD_SIZES = (1, 2, 3, 4)   # cpu profile: 2; a GPU host: one rank per GPU, up to 4


def student_copy() -> bool:
    """True in the student pack: the shipped data replace the references."""
    return FOLDER.is_dir() and not any(Path(__file__).parent.glob("checks/*/reference.py"))


def _path(exercise: str, world_size: int) -> Path:
    return FOLDER / f"{exercise}-{world_size}.bin"


def key(params: dict[str, Any], nnodes: int) -> str:
    return json.dumps({"params": params, "nnodes": nnodes}, sort_keys=True)


def save(folder: Path, exercise: str, world_size: int, entry: dict) -> None:
    """entry: {"key", "secret", "inputs", "expected"} for one call."""
    path = folder / _path(exercise, world_size).name
    entries = wire.decode(path.read_bytes())["entries"] if path.exists() else []
    entries.append(entry)
    path.write_bytes(wire.encode({"entries": entries}))


def lookup(exercise: str, world_size: int, params: dict[str, Any], nnodes: int) -> dict | None:
    path = _path(exercise, world_size)
    if not path.exists():
        return None
    wanted = key(params, nnodes)
    return next((e for e in wire.decode(path.read_bytes())["entries"] if e["key"] == wanted), None)


def available(exercise: str) -> list[str]:
    """Human-readable list of the shipped variants of an exercise (for the message when a call has none)."""
    out = []
    for path in sorted(FOLDER.glob(f"{exercise}-*.bin")):
        for e in wire.decode(path.read_bytes())["entries"]:
            out.append(f"{path.stem.rsplit('-', 1)[1]} rank(s) with {json.loads(e['key'])['params']}")
    return out
