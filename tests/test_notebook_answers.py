"""The notebooks must not dictate their graded answers: how many answer lines already stand in the given text.

For every solution block of a source notebook (the code between `### BEGIN SOLUTION` and
`### END SOLUTION`, or a whole solution cell without markers), count its non-trivial lines and
how many of them appear verbatim (whitespace aside) in what the student reads before writing
it: the given cells and text of that notebook and of every notebook before it in the course
(00 comes before 03: a demo in 00 that runs 03's answer counts against 03). Hidden tests and
other solution blocks are not part of that text.

Non-trivial: a line with at least MIN_TOKENS Python tokens, comments aside. Shorter lines are
calls without arguments or bare names (`dist.barrier()`, `optimizer.step()`, `losses = []`,
`return gathered`): idioms that decide nothing by themselves.

Bounds, and why:

- BLOCK_BOUND = 1/2: at most half of any one answer block may be on display. The graded
  functions reuse the vocabulary their notebook teaches (`if dist.get_rank() == 0:`,
  `torch.cuda.set_device(device)`), so a block may share a line or two with the text; once
  most of it is there, the exercise is a copy. Notebook 00 used to run 03's complete
  bubble_fraction as its self-check demo: that block stood at 100%.
- NOTEBOOK_BOUND = 1/3: over all its blocks, at least two thirds of a notebook's graded lines
  must be the student's own. Measured when the test was written: 02 0%, 03 0%
  (15% before 00's demo changed), 04 20%, 05 21%, 06 33%, 07 3%; every line found was such
  vocabulary.

Each notebook's shares are printed (`pytest -s` shows them) whether it passes or not.
"""
from __future__ import annotations

import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from autograder.config import course_root

MIN_TOKENS = 6
BLOCK_BOUND = 1 / 2
NOTEBOOK_BOUND = 1 / 3

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


@dataclass
class Notebook:
    name: str
    blocks: list[list[str]]     # each solution block's lines
    given: list[str]            # every line the student reads: text and given code, no answers, no hidden tests


def read_notebook(path: Path) -> Notebook:
    nb = nbformat.read(path, as_version=4)
    blocks, given = [], []
    for cell in nb.cells:
        lines = cell.source.splitlines()
        if cell.metadata.get("nbgrader", {}).get("solution"):
            if cell.cell_type != "code":
                continue                               # a written answer: neither code nor given text
            if not any(BEGIN_SOLUTION in line for line in lines):
                blocks.append(lines)                   # nbgrader blanks the whole cell
                continue
            block = None
            for line in lines:
                if BEGIN_SOLUTION in line:
                    block = []
                elif END_SOLUTION in line:
                    blocks.append(block)
                    block = None
                elif block is not None:
                    block.append(line)
                else:
                    given.append(line)
            continue
        hidden = False
        for line in lines:
            if BEGIN_HIDDEN in line or END_HIDDEN in line:
                hidden = BEGIN_HIDDEN in line
            elif not hidden:
                given.append(line)
    return Notebook(path.parent.name, blocks, given)


def non_trivial_lines(block: list[str]) -> list[str]:
    """The block's lines with at least MIN_TOKENS code tokens, without their comments."""
    source = textwrap.dedent("\n".join(block)) + "\n"
    per_line: dict[int, list[tokenize.TokenInfo]] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in SKIP:
            per_line.setdefault(token.start[0], []).append(token)
    text = source.splitlines()
    lines = []
    for number, tokens in sorted(per_line.items()):
        if len(tokens) < MIN_TOKENS or all(t.type == tokenize.STRING for t in tokens):
            continue
        end = max(t.end[1] for t in tokens if t.end[0] == number)
        lines.append(text[number - 1][:end].strip())
    return lines


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@dataclass
class Share:
    blocks: list[tuple[int, int, list[str]]]    # per block: (lines shown, non-trivial lines, the lines shown)

    @property
    def shown(self) -> int:
        return sum(s for s, _, _ in self.blocks)

    @property
    def total(self) -> int:
        return sum(t for _, t, _ in self.blocks)

    @property
    def fraction(self) -> float:
        return self.shown / self.total if self.total else 0.0


def answer_share(notebook: Notebook, read_before: list[Notebook]) -> Share:
    """How many of each block's non-trivial lines stand verbatim in the text read up to this notebook."""
    text = [_squash(line) for nb in [*read_before, notebook] for line in nb.given]
    blocks = []
    for block in notebook.blocks:
        lines = non_trivial_lines(block)
        shown = [line for line in lines if any(_squash(line) in given for given in text)]
        blocks.append((len(shown), len(lines), shown))
    return Share(blocks)


def _course_notebooks() -> list[Notebook]:
    paths = sorted((course_root() / "source").glob("*/*.ipynb"), key=lambda p: p.parent.name)
    return [read_notebook(p) for p in paths if p.stem == p.parent.name]


NOTEBOOKS = _course_notebooks()
WITH_ANSWERS = [nb.name for nb in NOTEBOOKS if nb.blocks]


def test_every_graded_notebook_is_measured():
    assert {"02_torchrun", "03_concepts"} <= set(WITH_ANSWERS), WITH_ANSWERS


@pytest.mark.parametrize("name", WITH_ANSWERS)
def test_answers_are_not_in_the_text_read_before_them(name, capsys):
    index = [nb.name for nb in NOTEBOOKS].index(name)
    share = answer_share(NOTEBOOKS[index], NOTEBOOKS[:index])
    per_block = ", ".join(f"{s}/{t}" for s, t, _ in share.blocks if t)
    with capsys.disabled():
        print(f"\n  {name}: {share.shown}/{share.total} non-trivial answer lines already in the text "
              f"({share.fraction:.0%}; per block {per_block})")
    shown = [f"  {line}" for _, _, lines in share.blocks for line in lines]
    assert share.total > 0, f"{name}: solution blocks without a non-trivial line"
    assert share.fraction <= NOTEBOOK_BOUND, (
        f"{name}: {share.fraction:.0%} of the answer lines stand in the text read before them "
        f"(bound {NOTEBOOK_BOUND:.0%}):\n" + "\n".join(shown))
    for s, t, lines in share.blocks:
        assert not t or s / t <= BLOCK_BOUND, (
            f"{name}: a solution block has {s} of its {t} non-trivial lines in the text read before it "
            f"(bound {BLOCK_BOUND:.0%}):\n" + "\n".join(f"  {line}" for line in lines))


def _notebook(tmp_path: Path, name: str, cells: list) -> Notebook:
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / name / f"{name}.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return read_notebook(path)


def test_the_measure_finds_an_answer_shown_in_an_earlier_notebook(tmp_path):
    """The case of 00 and 03: a demo that runs the graded answer, in a notebook read before it."""
    solution = nbformat.v4.new_code_cell(
        "%%writefile concepts.py\ndef bubble_fraction(p, m):\n    ### BEGIN SOLUTION\n"
        "    if p < 1 or m < 1:\n        raise ValueError(p, m)  # a stage and a microbatch at least\n"
        "    return (p - 1) / (m + p - 1)  # fill and drain\n    ### END SOLUTION\n",
        metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "concepts", "locked": False,
                               "schema_version": 3}})
    hidden = nbformat.v4.new_code_cell("check('x')\n### BEGIN HIDDEN TESTS\nreturn (p - 1) / (m + p - 1)\n"
                                       "### END HIDDEN TESTS\n")
    exercise = _notebook(tmp_path, "03_x", [nbformat.v4.new_markdown_cell("Write it."), solution, hidden])
    assert non_trivial_lines(exercise.blocks[0]) == [
        "if p < 1 or m < 1:", "raise ValueError(p, m)", "return (p - 1) / (m + p - 1)"]
    assert answer_share(exercise, []).fraction == 0     # hidden tests and the answer itself don't count

    demo = _notebook(tmp_path, "00_x", [nbformat.v4.new_code_cell("def f(p, m):\n    return (p-1)/(m+p-1)\n")])
    share = answer_share(exercise, [demo])
    assert (share.shown, share.total) == (1, 3) and share.blocks[0][2] == ["return (p - 1) / (m + p - 1)"]
    text = _notebook(tmp_path, "01_x", [nbformat.v4.new_markdown_cell(
        "Guard it: `if p < 1 or m < 1:` then `raise ValueError(p, m)`.")])
    assert answer_share(exercise, [demo, text]).fraction == 1
