"""Feedback pages are harmless whatever the submission holds: no script runs, no link leads to script, no hidden test
is shown (unit tests of feedback.py; the class grade in test_grading.py attacks the same through `course grade`)."""
from __future__ import annotations

import re

import pytest

from autograder import feedback


def _notebook(*cells) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _addresses(page: str) -> list[str]:
    return re.findall(r"""(?:href|src)\s*=\s*("[^"]*"|'[^']*')""", page)


@pytest.mark.parametrize("link", [
    "[a](javascript:alert(1))",
    "[a](JaVaScRiPt:alert(1))",
    "[a](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[a](vbscript:msgbox(1))",
    "<a href='java&#x73;cript:alert(1)'>a</a>",
    "<a href=' javascript:alert(1)' onclick='alert(1)'>a</a>",
    "![i](https://tracker.invalid/pixel.png)",
])
def test_no_address_in_a_page_leads_to_script_or_elsewhere_for_an_image(link):
    page = feedback.render("student: mini", "<p>summary</p>", _notebook(_markdown(f"Look: {link}")))
    lowered = page.lower()
    for address in _addresses(page):
        assert not re.search(r"(javascript|vbscript|data:text|tracker)", address.lower()), address
    assert "onclick" not in lowered and "<script" not in lowered
    assert f'content="{feedback.CSP}"' in page


def test_safe_addresses_stay():
    assert feedback.safe_address("https://pytorch.org/docs") and feedback.safe_address("#section")
    assert feedback.safe_address("notes.html") and feedback.safe_address("mailto:ta@example.org")
    assert feedback.safe_address("data:image/png;base64,iVBORw0KGgo=", image=True)
    assert not feedback.safe_address("java\tscript:alert(1)") and not feedback.safe_address("jav&#x61;script:x")
    assert not feedback.safe_address("data:image/svg+xml;base64,PHN2Zz4=", image=True)
    assert not feedback.safe_address("http://tracker.invalid/p.png", image=True)


def test_hidden_tests_are_not_shown_but_said_to_have_run():
    meta = {"nbgrader": {"grade": True, "grade_id": "torchrun_env", "locked": True}}
    released = _notebook({"cell_type": "code", "metadata": meta, "source": 'check("torchrun.env")\n',
                          "outputs": [], "execution_count": None})
    failed = {"output_type": "error", "ename": "AssertionError", "evalue": "FAIL torchrun.env [3 ranks, cpu]: ...",
              "traceback": ['----> 2 check("torchrun.env", world_size=3, seed=4)']}   # IPython quotes the line
    graded = _notebook({"cell_type": "code", "metadata": meta, "outputs": [failed], "execution_count": 3,
                        "source": 'check("torchrun.env")\ncheck("torchrun.env", world_size=3, seed=4)\n'})
    shown = feedback.without_hidden_tests(graded, released, {"torchrun_env": 2.0})
    source = shown["cells"][0]["source"]
    assert "world_size=3" not in source and source.startswith('check("torchrun.env")')
    assert "world_size=3" not in str(shown["cells"][0]["outputs"]) and "FAIL torchrun.env" in str(shown["cells"][0])
    assert "Hidden tests of the instructor also ran in this cell" in source and "included: 2" in source
    same = feedback.without_hidden_tests(released, released, {"torchrun_env": 2.0})
    assert "Hidden tests" not in same["cells"][0]["source"]   # nothing hidden ran: nothing to say
