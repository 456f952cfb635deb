"""No notebook shows a graded answer above its blank: each solution region against every piece of code a student reads.

A solution region is the code between `### BEGIN SOLUTION` and `### END SOLUTION` of a source notebook, or a whole
solution cell without markers (nbgrader blanks it all). What the student reads: every code cell of the release
notebook (given code, the given parts of the solution cells; hidden tests are stripped), every fenced code block of
its markdown, and the inline code spans of each markdown cell in order; the same for every notebook before it in
the course (a demo in 00 that runs 03's answer counts against 03). All of it, above the blank or below: a student
can scroll. Neither the answers nor the hidden tests are part of it.

The measure (issue 22): a region is *shown* when 60% of its tokens stand, in order, in one stretch of one of those
pieces: the longest common subsequence (LCS) of the two normalised token sequences, divided by the region's
length. Regions under 20 tokens are not judged: a call like `save_checkpoint(model, args.checkpoint)` or
`loader.sampler.set_epoch(epoch)` is the vocabulary the notebook teaches, not a design.

Tokens: Python's tokenize, without comments and layout (NEWLINE, NL, INDENT, DEDENT): a copy does not hide behind
other line breaks. Every string is STR and every number NUM: `batch_size=25` against `batch_size=32` is the same
code. IPython lines (`%%writefile`, `!torchrun`) are not Python and are left out.

Names: a name that is an API stays as it is: keywords, attributes (`dist.all_reduce`, `.set_epoch`), keyword
arguments (`device_ids=`), builtins, and every name an import statement of the course binds (`DistributedSampler`,
`DDP`, `fully_shard`, `dist`, `setup_distributed`). Every other name is a local one and becomes a placeholder
numbered by its first occurrence within its statement (`v0`, `v1`, ...). A consistent renaming of the locals
leaves every statement's placeholders as they were, so a renamed copy scores as the copy itself, while an API
call does not match another API. Why per statement, not one class for all locals nor one numbering per region
(measured on the notebooks when this test was written):
- one class (`ID`) makes `a = f(a)` and `b = f(c)` the same, and unrelated code then matches by its shape alone:
  09's `mixed_precision_step` reaches 60% in 03's activation-memory demo (55% per statement), 09's
  `save_training_state` 72% in 01's training loop (62%);
- one numbering over a whole region or piece shifts every later placeholder as soon as one extra name comes first
  (a copy that starts after other code, one more local), and real copies slip under the bound: 05's evaluation
  loop against 01's falls from 82% to 59%, 09's `shard_model_mixed` against 06's bf16 demo from 71% to 59%.
What this gives up: `x = f(y)` against `return f(y)` numbers `y` differently (one token lost).

One stretch: the LCS is taken with every stretch of the piece as long as the region (all of a shorter piece), so
a copy interleaved with other code still counts while the other code stays under 2/3 of the region's length.
Without a bound a long piece shows almost any region, because the normalised tokens are a small alphabet: against
whole cells every judged region (37 then) reached 70-96%, 03's formulas included (`return (p - 1) /
(m + p - 1)` against 02's fault-tolerance script). A longer stretch (5/4 of the region) lifts unrelated code to
the bound: 09's `load_training_state` reaches 62% in 04's plotting cell (53% with the region's length).

Speed: the LCS is bit-parallel (Hyyro 2004: one addition and three logical operations per token of the piece on an
integer of one bit per region token). Stretches are searched coarse to fine: a block of consecutive stretches is
bounded by the LCS of their union, and a block, or a whole piece, that cannot beat the best found so far is
skipped (the count of the region's tokens a piece holds at all is the first bound). The whole course: about a
second.

Each region's best share and where it stands are printed (`pytest -s`), whether the notebook passes or not.
"""
from __future__ import annotations

import builtins
import io
import keyword
import math
import re
import textwrap
import tokenize
from collections import Counter
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import nbformat
import pytest

from autograder.config import course_root

MIN_TOKENS = 20          # shorter regions are vocabulary, not judged
BOUND = 0.6              # a region is shown when this share of it stands, in order, in one stretch of given text
STRETCH = 1.0            # the stretch: as long as the region

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n(.*?)^ {0,3}\1[`~]*[ \t]*$", re.M | re.S)
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
IMPORT = re.compile(r"^\s*(?:from\s+[\w.]+\s+)?import\s+(\([^)]*\)|[^\n#;]+)", re.M)


# --- tokens ------------------------------------------------------------------------------------------------------


def _statements(code: str) -> list[list[tuple[int, str, int]]]:
    """The code's tokens as (type, text, line), without comments and layout, one list per statement (logical
    line). An f-string is one STRING token, as before Python 3.12."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines()]   # IPython lines
    source = textwrap.dedent("\n".join(lines)) + "\n"
    try:
        return _split(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass   # a fragment (an unclosed bracket or string), or prose-like code in markdown: read it line by line
    statements = []
    for number, line in enumerate(source.splitlines(), start=1):
        try:
            statements += [[(kind, text, number) for kind, text, _ in s]
                           for s in _split(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))]
        except (tokenize.TokenError, IndentationError, SyntaxError):
            continue
    return statements


FSTRING_START, FSTRING_END = getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_END", -1)


def _split(generated) -> list[list[tuple[int, str, int]]]:
    statements: list[list[tuple[int, str, int]]] = [[]]
    fstring = 0
    for token in generated:
        if token.type == FSTRING_START:
            if not fstring:
                statements[-1].append((tokenize.STRING, token.string, token.start[0]))
            fstring += 1
        elif token.type == FSTRING_END:
            fstring -= 1
        elif fstring:
            continue
        elif token.type == tokenize.NEWLINE:
            statements.append([])
        elif token.type not in LAYOUT and token.string.strip():
            statements[-1].append((token.type, token.string, token.start[0]))
    return [s for s in statements if s]


@cache
def api_names() -> frozenset[str]:
    """Names that stay as they are: builtins and every name an import statement in the course binds."""
    names = set(dir(builtins))
    for path in (course_root() / "source").glob("*/*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for match in IMPORT.finditer(cell.source):
                for part in match.group(1).strip("()").split(","):
                    words = part.split()
                    if words:   # `a.b as c` binds c, `a.b` binds a, `from m import a` binds a
                        names.add(words[-1] if len(words) > 1 else words[0].split(".")[0])
    return frozenset(names)


@dataclass(frozen=True)
class Tokens:
    """A normalised token sequence and, for each token, the line (of the code it came from) where it starts."""
    seq: tuple[str, ...]
    lines: tuple[int, ...]


def tokens(code: str) -> Tokens:
    """Normalised tokens: literals as STR and NUM, local names as placeholders numbered within their statement."""
    api = api_names()
    seq, lines = [], []
    for statement in _statements(code):
        local: dict[str, str] = {}
        depth = 0
        for i, (kind, text, line) in enumerate(statement):
            if kind == tokenize.OP:
                depth += text in "([{"
                depth -= text in ")]}" and depth > 0
            if kind == tokenize.STRING:
                text = "STR"
            elif kind == tokenize.NUMBER:
                text = "NUM"
            elif kind == tokenize.NAME and not keyword.iskeyword(text):
                attribute = i > 0 and statement[i - 1][1] == "."
                keyword_argument = depth > 0 and i + 1 < len(statement) and statement[i + 1][1] == "="
                if not (attribute or keyword_argument or text in api):
                    text = local.setdefault(text, f"v{len(local)}")
            seq.append(text)
            lines.append(line)
    return Tokens(tuple(seq), tuple(lines))


# --- the longest common subsequence in one stretch ---------------------------------------------------------------


class Region:
    """A region's tokens, ready for bit-parallel LCS: one bit per token of the region."""

    def __init__(self, seq: tuple[str, ...]):
        self.length = len(seq)
        self.masks: dict[str, int] = {}
        for i, token in enumerate(seq):
            self.masks[token] = self.masks.get(token, 0) | 1 << i
        self.stretch = max(math.ceil(STRETCH * self.length), 1)

    def lcs(self, other: tuple[str, ...]) -> int:
        """Length of the longest common subsequence with `other` (Hyyro's bit-vector recurrence)."""
        full = (1 << self.length) - 1
        v = full
        masks = self.masks
        for token in other:
            u = v & masks.get(token, 0)
            v = ((v + u) | (v - u)) & full
        return self.length - v.bit_count()

    def shown_in(self, other: tuple[str, ...], beat: int = -1) -> tuple[int, int]:
        """(most region tokens one stretch of `other` shows in order, where that stretch starts); when no
        stretch shows more than `beat` tokens, (a number <= beat, -1)."""
        n, width = len(other), self.stretch
        if n <= width:
            found = self.lcs(other)
            return (found, 0) if found > beat else (found, -1)
        last = n - width                                   # the last window's start
        step = max(1, width // 4)
        blocks = [(self.lcs(other[b:min(b + step - 1, last) + width]), b) for b in range(0, last + 1, step)]
        best, where = beat, -1
        for bound, b in sorted(blocks, key=lambda x: (-x[0], x[1])):
            if bound <= best:
                break
            for start in range(b, min(b + step, last + 1)):
                found = self.lcs(other[start:start + width])
                if found > best:
                    best, where = found, start
        return best, where


# --- notebooks ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solution:
    notebook: str
    name: str             # "<grade_id>: <function>", numbered when one function holds several regions
    tokens: Tokens


@dataclass
class Given:
    notebook: str
    where: str            # "cells[9] (code: %%writefile ddp_hello.py)"
    text: str
    tokens: Tokens

    @cached_property
    def counts(self) -> Counter:
        return Counter(self.tokens.seq)


def solution_regions(path: Path) -> list[Solution]:
    """Every solution region of a source notebook, named by its exercise and the function around it."""
    regions: list[tuple[str, str]] = []
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("solution"):
            continue                                        # a written answer is neither code nor given text
        grade_id = meta.get("grade_id", "?")
        if BEGIN_SOLUTION not in cell.source:
            regions.append((f"{grade_id}: whole cell", cell.source))
            continue
        block, function = None, "module"
        for line in cell.source.splitlines():
            definition = re.match(r"\s*(?:async\s+)?(?:def|class)\s+(\w+)", line)
            if definition and block is None:
                function = definition.group(1)
            if BEGIN_SOLUTION in line:
                block = []
            elif END_SOLUTION in line:
                regions.append((f"{grade_id}: {function}", "\n".join(block)))
                block = None
            elif block is not None:
                block.append(line)
    counts: dict[str, int] = {}
    for name, _ in regions:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    named = []
    for name, code in regions:
        seen[name] = seen.get(name, 0) + 1
        named.append((f"{name} #{seen[name]}" if counts[name] > 1 else name, code))
    return [Solution(path.parent.name, name, tokens(code)) for name, code in named]


def _given_code(cell) -> str:
    """A code cell as the student gets it: no hidden tests, no solution regions (release/ has neither; a source
    cell's regions between markers are left out too)."""
    kept, hidden = [], False
    for line in cell.source.splitlines():
        if any(marker in line for marker in (BEGIN_HIDDEN, END_HIDDEN, BEGIN_SOLUTION, END_SOLUTION)):
            hidden = BEGIN_HIDDEN in line or BEGIN_SOLUTION in line
        elif not hidden:
            kept.append(line)
    return "\n".join(kept)


def _first_line(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= 60 else line[:57] + "..."


def given_text(path: Path) -> list[Given]:
    """What a student reads in a (release) notebook: code cells, fenced blocks, each markdown cell's inline spans."""
    pieces = []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            code = _given_code(cell)
            pieces.append((f"cells[{index}] (code: {_first_line(code)})", code))
        elif cell.cell_type == "markdown":
            for block in FENCE.finditer(cell.source):
                pieces.append((f"cells[{index}] (markdown block: {_first_line(block.group(2))})", block.group(2)))
            spans = [m.group(2).strip() for m in SPAN.finditer(FENCE.sub("", cell.source))]
            if spans:   # one statement each, in the order the text gives them
                pieces.append((f"cells[{index}] (markdown spans)", "\n".join(spans)))
    return [Given(path.parent.name, where, text, tokens(text)) for where, text in pieces]


@dataclass(frozen=True, repr=False)
class Finding:
    region: Solution
    shown: int                 # region tokens one stretch of `given` shows in order
    given: Given | None
    start: int                 # index of the stretch's first token in given.tokens

    @property
    def share(self) -> float:
        return self.shown / len(self.region.tokens.seq) if self.region.tokens.seq else 0.0

    @property
    def judged(self) -> bool:
        return len(self.region.tokens.seq) >= MIN_TOKENS

    @property
    def too_much(self) -> bool:
        return self.judged and self.share >= BOUND

    def __str__(self) -> str:
        where = "nowhere"
        if self.given is not None:
            line = self.given.tokens.lines[self.start]
            text = self.given.text.splitlines()
            shown = text[line - 1].strip() if line - 1 < len(text) else ""
            where = f"{self.given.notebook} {self.given.where}, from line {line}: {shown[:70]}"
        mark = "SHOWN" if self.too_much else "  ok " if self.judged else "short"
        return (f"{mark} {self.region.name:44} {len(self.region.tokens.seq):4} tokens {self.share:4.0%}  {where}")

    __repr__ = __str__         # pytest's report of a failed assertion shows the findings as they print


def best_finding(region: Solution, given: list[Given]) -> Finding:
    """Where the region is shown most: the largest LCS over every stretch of every given piece."""
    r = Region(region.tokens.seq)
    best = Finding(region, 0, None, 0)
    if not r.length:
        return best
    need = Counter(region.tokens.seq)
    # Bounds, cheapest first: the tokens a piece holds at all (counted), then the LCS with the whole piece.
    counted = sorted(((sum(min(k, g.counts[t]) for t, k in need.items()), i) for i, g in enumerate(given)),
                     key=lambda x: (-x[0], x[1]))
    for bound, i in counted:
        if bound <= best.shown:
            break
        if r.lcs(given[i].tokens.seq) <= best.shown:
            continue
        shown, start = r.shown_in(given[i].tokens.seq, beat=best.shown)
        if start >= 0:
            best = Finding(region, shown, given[i], start)
    return best


def _names() -> list[str]:
    """Course order: the notebooks' folders, sorted (00_start_here ... 09_efficiency)."""
    source = course_root() / "source"
    return sorted(p.parent.name for p in source.glob("*/*.ipynb") if p.stem == p.parent.name)


NAMES = _names()


@cache
def _given(name: str) -> tuple[Given, ...]:
    path = course_root() / "release" / name / f"{name}.ipynb"
    assert path.is_file(), f"{path} missing: run `course release` (the student reads release/)"
    return tuple(given_text(path))


def findings(name: str) -> list[Finding]:
    """Every region of a notebook, measured against the release text of that notebook and every one before it."""
    read = [g for earlier in NAMES[:NAMES.index(name) + 1] for g in _given(earlier)]
    return [best_finding(region, read) for region in solution_regions(course_root() / "source" / name / f"{name}.ipynb")]


WITH_ANSWERS = [name for name in NAMES if solution_regions(course_root() / "source" / name / f"{name}.ipynb")]


# --- tests -------------------------------------------------------------------------------------------------------


def test_every_graded_notebook_is_measured():
    assert {"02_torchrun", "03_concepts", "04_ddp"} <= set(WITH_ANSWERS), WITH_ANSWERS


@pytest.mark.parametrize("name", WITH_ANSWERS)
def test_no_answer_is_shown_in_the_text_read_before_it(name, capsys):
    found = findings(name)
    judged = [f for f in found if f.judged]
    shown = [f for f in found if f.too_much]
    with capsys.disabled():
        worst = max((f.share for f in judged), default=0.0)
        print(f"\n  {name}: {len(shown)} of {len(judged)} judged regions shown (bound {BOUND:.0%} of a region "
              f"of {MIN_TOKENS}+ tokens in one stretch; worst {worst:.0%})")
        for f in found:
            print(f"    {f}")
    assert judged, f"{name}: no solution region of {MIN_TOKENS} tokens or more"
    assert not shown, (
        f"{name}: {len(shown)} solution region(s) stand, {BOUND:.0%} or more of their tokens in order, in text the "
        f"student reads (a demo, given code, a span in the prose). Let a demo import the learner's module, show "
        f"another mechanism, or let the prose explain why and link the API docs:\n"
        + "\n".join(f"  {f}" for f in shown))


# --- the measure itself ------------------------------------------------------------------------------------------


def _lcs_table(a, b) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_the_bit_parallel_lcs_is_the_lcs():
    import random
    rng = random.Random(0)
    for _ in range(300):
        a = tuple(rng.choice("abcd") for _ in range(rng.randint(1, 70)))
        b = tuple(rng.choice("abcde") for _ in range(rng.randint(0, 90)))
        assert Region(a).lcs(b) == _lcs_table(a, b), (a, b)


def test_the_windows_are_searched_exhaustively():
    """The coarse-to-fine search finds what trying every stretch finds."""
    import random
    rng = random.Random(1)
    for _ in range(100):
        a = tuple(rng.choice("abcdef") for _ in range(rng.randint(1, 40)))
        b = tuple(rng.choice("abcdefg") for _ in range(rng.randint(0, 200)))
        r = Region(a)
        every = max((_lcs_table(a, b[s:s + r.stretch]) for s in range(max(len(b) - r.stretch, 0) + 1)), default=0)
        assert r.shown_in(b)[0] == every, (a, b)


ANSWER = '''
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device
'''


def _share(answer: str, given: str) -> float:
    region = Solution("x", "x", tokens(answer))
    return best_finding(region, [Given("y", "y", given, tokens(given))]).share


def test_a_renamed_copy_is_still_a_copy():
    renamed = re.sub(r"(?<![.\w])device\b", "dev", ANSWER.replace("local_rank", "lr"))
    assert "lr = int" in renamed and 'dev = torch.device("cuda", lr)' in renamed and "set_device(dev)" in renamed
    assert _share(ANSWER, renamed) == 1
    wrapped = "import os\nx = 1\nprint('setting up')\n" + textwrap.dedent(ANSWER).replace(
        "    torch.cuda.set_device(device)\n", "    torch.cuda.set_device(device)\n    print(device)\n")
    assert _share(ANSWER, wrapped) > 0.9          # other code around it and a line inside it


def test_api_names_count_and_literals_are_a_class():
    assert tokens('dist.all_reduce(t, op=dist.ReduceOp.SUM)').seq == (
        "dist", ".", "all_reduce", "(", "v0", ",", "op", "=", "dist", ".", "ReduceOp", ".", "SUM", ")")
    assert tokens("x = f(x, 'a', 2)").seq == ("v0", "=", "v1", "(", "v0", ",", "STR", ",", "NUM", ")")
    assert tokens("y = f(z, 'b', 3.5)").seq == (
        "v0", "=", "v1", "(", "v2", ",", "STR", ",", "NUM", ")")   # y = f(z) is not x = f(x)
    other_api = ANSWER.replace("init_process_group", "new_group").replace("set_device", "device_count") \
        .replace("is_available", "is_initialized").replace("os.environ", "os.getenv")
    assert _share(ANSWER, other_api) < 0.95


def test_a_region_scattered_through_a_long_cell_is_not_shown():
    """Over a long stretch any short region could be found: the stretch is bounded by the region's length."""
    answer = textwrap.dedent(ANSWER)
    filler = "".join(f"value_{i} = compute(value_{i - 1}, scale={i})\n" for i in range(1, 40))
    scattered = "\n".join(line + "\n" + filler for line in answer.splitlines())
    assert _share(ANSWER, answer) == 1
    assert _share(ANSWER, scattered) < BOUND


def _notebook(tmp_path: Path, name: str, cells: list) -> Path:
    path = tmp_path / name / f"{name}.ipynb"
    path.parent.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def test_hidden_tests_and_the_answer_itself_are_not_given_text_but_prose_spans_are(tmp_path):
    """The case of 00 and 03: a demo that runs the graded answer, in a notebook read before it; and the prose."""
    body = ("    if p < 1 or m < 1:\n        raise ValueError(p, m)  # a stage and a microbatch at least\n"
            "    return (p - 1) / (m + p - 1)  # fill and drain\n")
    solution = nbformat.v4.new_code_cell(
        f"%%writefile concepts.py\ndef bubble_fraction(p, m):\n    {BEGIN_SOLUTION}\n{body}    {END_SOLUTION}\n",
        metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "concepts", "locked": False,
                               "schema_version": 3}})
    hidden = nbformat.v4.new_code_cell(f"check('x')\n{BEGIN_HIDDEN}\n{body}{END_HIDDEN}\n")
    source = _notebook(tmp_path, "03_x", [nbformat.v4.new_markdown_cell("Write it."), solution, hidden])
    (region,) = solution_regions(source)
    assert region.name == "concepts: bubble_fraction" and len(region.tokens.seq) == 30
    assert best_finding(region, given_text(source)).share < BOUND   # hidden tests and the answer don't count

    demo = _notebook(tmp_path, "00_x", [nbformat.v4.new_code_cell(
        "def f(stages, microbatches):\n    if stages < 1 or microbatches < 1:\n        raise ValueError(stages, microbatches)\n"
        "    return (stages-1)/(microbatches+stages-1)\n")])
    found = best_finding(region, given_text(demo))
    assert found.share == 1 and found.given.where.startswith("cells[0] (code: def f(")
    prose = _notebook(tmp_path, "01_x", [nbformat.v4.new_markdown_cell(
        "Guard it: `if p < 1 or m < 1:` then `raise ValueError(p, m)`, and return\n\n"
        "```python\nreturn (p - 1) / (m + p - 1)\n```\n")])
    pieces = given_text(prose)
    assert [g.where for g in pieces] == ["cells[0] (markdown block: return (p - 1) / (m + p - 1))",
                                         "cells[0] (markdown spans)"]
    assert best_finding(region, pieces).share == pytest.approx(16 / 30)   # each piece alone: the spans
