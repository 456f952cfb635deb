"""What a notebook's %%writefile cells write, byte for byte as IPython would (without running anything)."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

WRITEFILE = re.compile(r"^%%writefile(?P<append>\s+(-a|--append))?\s+(?P<name>\S+)\s*$")


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def writefile_cells(notebook: dict) -> dict[str, str]:
    """{file name: content} as the notebook's %%writefile code cells would leave them (in order).

    Byte for byte what IPython writes: it drops a cell's leading blank lines and ends
    every cell with a newline before the magic sees the body.
    """
    files: dict[str, str] = {}
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        text = cell_source(cell)
        text = "".join(itertools.dropwhile(str.isspace, text.splitlines(keepends=True)))
        first, _, body = (text if text.endswith("\n") else text + "\n").partition("\n")
        found = WRITEFILE.match(first.strip())
        if not found or not body:
            continue  # not a %%writefile cell, or one IPython refuses (an empty body)
        name = Path(found["name"].strip("'\"")).name  # never outside the folder it is verified in
        files[name] = (files.get(name, "") if found["append"] else "") + body
    return files


def notebook_files(kind: str, assignment: str) -> dict[str, str] | None:
    """{file name: content} that `kind`/<assignment>'s notebook writes ("source": the course's solutions,
    "release": the blank stubs); None where that notebook is absent (the student pack has no source/)."""
    import json

    from .config import course_root
    from .course import load_course

    notebook = course_root() / kind / assignment / load_course().assignment(assignment).notebook
    if not notebook.is_file():
        return None
    return writefile_cells(json.loads(notebook.read_text()))


def write_notebook_files(kind: str, assignment: str, folder: Path) -> Path:
    """The notebook's %%writefile files written into `folder` (made if needed); `folder`."""
    files = notebook_files(kind, assignment)
    if files is None:
        raise FileNotFoundError(f"{kind}/{assignment}: no notebook here")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder
