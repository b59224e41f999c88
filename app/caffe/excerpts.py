"""Source excerpts for error details: the line an error names, two lines of
context either side and a caret at the column, the way a Python traceback
shows it. Pure text: the sandboxed validator uses ``user_position`` and the
service ``excerpt``/``annotate``.
"""
from __future__ import annotations

import re
import traceback
from pathlib import Path

CONTEXT = 2          # lines shown before and after the named one
MAX_WIDTH = 240      # longer lines are cut (a minified line would flood the page)


def user_position(tb, filename: str) -> tuple[int | None, int | None]:
    """(line, 1-based column) of the innermost traceback frame in the file
    named ``filename``; the column is None where Python does not know it."""
    line = column = None
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename).name == filename:
            line = frame.lineno
            colno = getattr(frame, "colno", None)   # Python 3.11+: 0-based
            column = colno + 1 if isinstance(colno, int) else None
    return line, column


def excerpt(text: str, line: int, column: int | None = None, context: int = CONTEXT) -> str | None:
    """``line`` of ``text`` (1-based) with ``context`` lines around it, each
    numbered, the named one marked with ``>``, and a ``^`` under ``column``
    (1-based; the line's first non-blank character when None). None when
    the line is not in the text."""
    # Python's own line ends (not str.splitlines's form feeds and U+2028).
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()
    if not isinstance(line, int) or isinstance(line, bool) or not 1 <= line <= len(lines):
        return None
    lo, hi = max(1, line - context), min(len(lines), line + context)
    width = len(str(hi))
    out = []
    for n in range(lo, hi + 1):
        shown = lines[n - 1].expandtabs(8)
        cut = shown[:MAX_WIDTH] + (" …" if len(shown) > MAX_WIDTH else "")
        out.append(f"{'>' if n == line else ' '} {n:>{width}} | {cut}".rstrip())
        if n == line:
            raw = lines[n - 1]
            if isinstance(column, int) and not isinstance(column, bool) and 1 <= column <= len(raw) + 1:
                at = len(raw[:column - 1].expandtabs(8))
            else:
                at = len(shown) - len(shown.lstrip())
            if at <= MAX_WIDTH:
                out.append(" " * (width + 5 + at) + "^")
    return "\n".join(out)


def annotate(details: list[dict], files: dict[tuple[str, str], str]) -> None:
    """Give every detail that names a line of one of ``files`` its
    ``excerpt``. ``files`` maps (field, file name) to the text: a detail's
    ``field`` ("network" or "python_layer") says which upload it is about."""
    for d in details:
        if not isinstance(d, dict) or d.get("excerpt") or not isinstance(d.get("line"), int):
            continue
        text = files.get((d.get("field") or "network", d.get("file")))
        shown = excerpt(text, d["line"], d.get("column")) if text is not None else None
        if shown:
            d["excerpt"] = shown
