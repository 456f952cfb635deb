"""Feedback pages the grader writes: the trusted verdicts on top, then the student's notebook, made harmless.

Everything from the submission is untrusted: outputs keep only plain text and PNG images
(no HTML, JavaScript, SVG or widgets), each cut to a size; markdown is cleaned to a short
list of tags and attributes (no script, no event handlers, no iframes); the rendered page is
cleaned again (markdown's own link syntax becomes HTML only when nbconvert renders it): no
script element, no event handler, and every link or image address is relative, http(s),
mailto or (images) an inline PNG; the page carries a Content-Security-Policy that runs no
script and loads nothing from elsewhere; the whole page is capped. The verdicts render
themselves escaped (verdict.Verdict.to_html).
"""
from __future__ import annotations

import base64
import copy
import html
import json
import re

TEXT_BYTES = 20_000          # per text output
IMAGE_BYTES = 400_000        # per PNG (base64)
PAGE_BYTES = 4 * 2**20       # the whole page
TAGS = ["a", "abbr", "b", "blockquote", "br", "code", "del", "details", "div", "em", "h1", "h2", "h3", "h4", "h5",
        "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "span", "strong", "sub", "summary", "sup", "table",
        "tbody", "td", "th", "thead", "tr", "ul"]
ATTRIBUTES = {"a": ["href", "title"], "img": ["src", "alt", "title", "width", "height"], "*": ["class", "align"]}
PROTOCOLS = ["http", "https", "mailto"]
# No script runs, nothing loads from elsewhere (images are inline PNGs), no form posts, no <base> redirects links.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
_SCRIPT = re.compile(r"<script\b.*?(</script\s*>|$)", re.I | re.S)
_HANDLER = re.compile(r"""\son[a-z]+\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", re.I)
_ADDRESS = re.compile(r"""(\s(?:href|src|action|formaction|xlink:href|poster|background)\s*=\s*)("[^"]*"|'[^']*'|[^\s>]+)""",
                      re.I)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit:,} more characters cut]"


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _clean_output(output: dict) -> dict | None:
    kind = output.get("output_type")
    if kind == "stream":
        return {"output_type": "stream", "name": "stderr" if output.get("name") == "stderr" else "stdout",
                "text": _cut(_text(output.get("text", "")), TEXT_BYTES)}
    if kind == "error":
        return {"output_type": "error", "ename": _cut(str(output.get("ename", "")), 200),
                "evalue": _cut(str(output.get("evalue", "")), 2000),
                "traceback": [_cut(_text(t), 4000) for t in (output.get("traceback") or [])[:50]]}
    if kind in ("display_data", "execute_result"):
        data = output.get("data") or {}
        kept = {}
        png = _text(data.get("image/png", ""))
        if png and len(png) <= IMAGE_BYTES and re.fullmatch(r"[A-Za-z0-9+/=\s]+", png):
            try:
                base64.b64decode(png, validate=False)
                kept["image/png"] = png
            except ValueError:
                pass
        if "text/plain" in data:
            kept["text/plain"] = _cut(_text(data["text/plain"]), TEXT_BYTES)
        if not kept:
            return None
        out = {"output_type": kind, "data": kept, "metadata": {}}
        if kind == "execute_result":
            out["execution_count"] = output.get("execution_count")
        return out
    return None


def _grade_id(cell) -> str | None:
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    return nbgrader.get("grade_id") if isinstance(nbgrader, dict) and nbgrader.get("grade") else None


def without_hidden_tests(notebook: dict, released: dict, points: dict[str, float]) -> dict:
    """A copy whose test cells read as released: the instructor's hidden tests that ran in them are not shown; a
    line says they ran, with the exercise's score (hidden tests included)."""
    shown = {g: _text(c.get("source", "")) for c in released.get("cells", []) if (g := _grade_id(c))}
    nb = copy.deepcopy(notebook)
    for cell in nb.get("cells", []) if isinstance(nb.get("cells"), list) else []:
        grade_id = _grade_id(cell)
        if grade_id is None:
            continue
        source = shown.get(grade_id, "")
        if _text(cell.get("source", "")).strip() != source.strip():
            source += (f"\n# Hidden tests of the instructor also ran in this cell (not shown); the exercise's "
                       f"score, hidden tests included: {points.get(grade_id, 0):g}.")
            for output in cell.get("outputs") or []:
                if isinstance(output, dict) and output.get("output_type") == "error":
                    # Its frames quote the cell's lines, hidden ones included: keep what the check said.
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        cell["source"] = source
    return nb


def sanitize(notebook: dict) -> dict:
    """A copy of the notebook that renders without any markup or script the student wrote."""
    import bleach

    nb = copy.deepcopy(notebook)
    cells = []
    for cell in nb.get("cells", []) if isinstance(nb.get("cells"), list) else []:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        source = _cut(_text(cell.get("source", "")), 100_000)
        if kind == "markdown":
            cells.append({"cell_type": "markdown", "metadata": {}, "source":
                          bleach.clean(source, tags=TAGS, attributes=ATTRIBUTES, protocols=PROTOCOLS, strip=False)})
        elif kind == "code":
            outputs = [o for o in (_clean_output(x) for x in cell.get("outputs") or [] if isinstance(x, dict)) if o]
            cells.append({"cell_type": "code", "metadata": {}, "source": source, "outputs": outputs,
                          "execution_count": cell.get("execution_count") if isinstance(cell.get("execution_count"),
                                                                                       int) else None})
        else:
            cells.append({"cell_type": "raw", "metadata": {}, "source": source})
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"},
                                         "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def safe_address(value: str, *, image: bool = False) -> bool:
    """Whether a link or image address (as written in an attribute, entities and all) is harmless: relative,
    http(s), mailto, or an inline PNG for an image. Browsers ignore whitespace and control characters in a scheme
    and decode entities first, and so does this."""
    plain = re.sub(r"[\x00-\x20\x7f]", "", html.unescape(value)).lower()
    scheme = re.match(r"([a-z][a-z0-9+.\-]*):", plain)
    if scheme is None:
        return True                                     # relative: #anchor, page.html, /path
    if image:
        return plain.startswith("data:image/png;base64,")
    return scheme[1] in PROTOCOLS


def clean_page(page: str) -> str:
    """The rendered page without scripts, event handlers and unsafe addresses, with the CSP as its first head tag."""
    page = _SCRIPT.sub("", page)
    page = _HANDLER.sub("", page)

    def address(found: re.Match) -> str:
        value = found[2].strip("\"'")
        keep = safe_address(value, image="src" in found[1].lower())
        return found[0] if keep else f'{found[1]}"#removed-unsafe-address"'

    page = _ADDRESS.sub(address, page)
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    head = re.search(r"<head[^>]*>", page, re.I)
    return page[:head.end()] + meta + page[head.end():] if head else meta + page


def render(title: str, summary_html: str, notebook: dict | None) -> str:
    """The page: a summary (already escaped by its makers) and the sanitised notebook, capped at PAGE_BYTES."""
    import nbformat
    from nbconvert import HTMLExporter

    body = ""
    if notebook is not None:
        try:
            nb = nbformat.from_dict(sanitize(notebook))
            body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
        except Exception as exc:   # noqa: a notebook nbconvert cannot render still gets its verdicts
            body = f"<p>The notebook could not be rendered ({html.escape(type(exc).__name__)}).</p>"
    head = (f"<div style='border:2px solid #444;padding:8px;margin:8px;font-family:sans-serif'>"
            f"<h2>{html.escape(title)}</h2>{summary_html}</div>")
    if not body:
        page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>" \
               f"<body>{head}<p>No notebook to show.</p></body></html>"
    else:
        page = re.sub(r"(<body[^>]*>)", lambda m: m[1] + head, body, count=1)
    page = clean_page(page)
    if len(page.encode()) > PAGE_BYTES:
        page = clean_page(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                          f"</head><body>{head}<p>The notebook's rendering was over {PAGE_BYTES // 2**20} MiB and is "
                          f"not shown: its outputs are too large.</p></body></html>")
    return page


def summary(record, verdicts: dict[str, list]) -> str:
    """Points per exercise, flags, and each trusted verdict (a Verdict, escaped) of the re-verification."""
    rows = "".join(f"<tr><td>{html.escape(g)}</td><td>{p:g}</td></tr>" for g, p in record.points.items())
    parts = [f"<p><b>Total: {sum(record.points.values()):g}</b></p>",
             f"<table><tr><th>exercise</th><th>points</th></tr>{rows}</table>"]
    if record.flags:
        parts.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in record.flags) + "</ul>")
    for grade_id, found in verdicts.items():
        for verdict in found:
            parts.append(verdict.to_html(figure=False))
    return "\n".join(parts)


def dumps(obj) -> str:
    return json.dumps(obj)
