"""Python 2 layer files converted with Python 2's meaning kept: what the
DIGITS routes (and ``/api/v1`` with ``python2=convert``) apply to an
uploaded layer file before it is validated.

DIGITS's Python layers were written for Python 2, where ``height/2`` of two
ints is an int. ``py2hints.convert`` fixes the syntax (print statements,
``except X, e``, ``xrange``, ``iteritems``, ``basestring``, …); this module
adds the one fix that needs the running values: every true-division ``/``
(and ``/=``) becomes ``old_div(a, b)``, a small helper inlined at the top of
the converted file (after the module docstring and any ``from __future__``
lines), so that the file stands alone: downloadable, and importing nothing
of this service inside the sandbox. ``old_div`` is ``past.utils.old_div``'s
rule: floor division when both operands are integers at run time
(``numbers.Integral``, numpy integer scalars included), true division
otherwise, so float code keeps its meaning; numpy arrays of an integer dtype
floor (``np.floor_divide`` through ``//``), as Python 2's numpy did.

**When a file is treated as Python 2** (``why_python2``): it does not
compile as Python 3, or ``py2hints`` finds a Python 2-only idiom in it, or
it has a true-division ``/`` and no ``from __future__ import division`` (a
Python 2 file's ``/`` floors on ints; the DIGITS routes take scripts from
DIGITS's Python 2 era). A file that is none of these (clean Python 3 without
``/``, or with the ``__future__`` import) is left byte for byte as sent.

How: the tokenizer-based fixes of ``py2hints`` first (Python 2 source does
not parse as Python 3; lib2to3 is deprecated and gone from 3.13), then the
division rewrite on the Python 3 AST of the result: each ``BinOp(Div)`` and
``AugAssign(Div)`` is replaced by its operands' own source text (found by
the AST's positions, so precedence, parentheses, comments and formatting
inside them are kept; nested divisions are rewritten inside out). ``x /= y``
becomes ``x = old_div(x, y)``: the target is evaluated twice, which only
matters for a target with side effects (``a[f()] /= 2``). The helper itself
uses ``operator.truediv``, never ``/``, so a converted file is not
converted again. Pure text processing: nothing here runs the upload.
"""
from __future__ import annotations

import ast
import difflib
import re
import warnings
from dataclasses import dataclass, field

from app.caffe import py2hints

HELPER = '''\
# Added by Layerbench's Python 2 conversion: Python 2's `/` (as
# past.utils.old_div): floor division when both operands are integers (numpy
# integer scalars and integer arrays too, as Python 2's numpy did), true
# division otherwise.
import numbers as _py2_numbers
import operator as _py2_operator


def old_div(a, b):
    def integral(x):
        kind = getattr(getattr(x, "dtype", None), "kind", None)
        return isinstance(x, _py2_numbers.Integral) or kind in ("i", "u")
    if integral(a) and integral(b):
        return _py2_operator.floordiv(a, b)
    return _py2_operator.truediv(a, b)
'''
REDUCE_IMPORT = "from functools import reduce  # added: reduce was a builtin in Python 2\n"

# Short words for the job's list of what changed, by py2hints idiom.
_LABELS = {
    "print": "print statement → print(...)", "except_comma": "except E, e → except E as e",
    "raise_comma": "raise E, msg → raise E(msg)", "xrange": "xrange → range", "basestring": "basestring → str",
    "unicode": "unicode → str", "long": "long → int", "unichr": "unichr → chr", "raw_input": "raw_input → input",
    "reduce": "reduce → from functools import reduce", "iteritems": ".iteritems() → .items()",
    "itervalues": ".itervalues() → .values()", "iterkeys": ".iterkeys() → .keys()",
    "has_key": "d.has_key(k) → k in d", "string_constant": "string.letters etc. → string.ascii_*",
    "view_index": "list(...) around an indexed view or iterator", "not_equal": "<> → !=",
    "backticks": "`x` → repr(x)", "octal": "0777 → 0o777", "long_suffix": "10L → 10",
    "renamed_module": "renamed module", "tabs": "tabs in indentation → spaces",
}
MAX_CHANGES = 20


@dataclass
class Conversion:
    """The outcome for one file: ``text`` (the original when nothing was
    converted), whether it was, why the file counts as Python 2, and a short
    list of what changed (one line per kind of change, with its lines)."""

    text: str
    converted: bool
    why: str | None = None
    changes: list[str] = field(default_factory=list)


def _quiet(fn, *args):
    # A SyntaxWarning (an invalid escape like "\d") is not an error in the
    # file; under `-W error` it would be raised as one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _parse(text: str) -> ast.Module | None:
    try:
        return _quiet(ast.parse, text)
    except (SyntaxError, ValueError):
        return None


def _future_division(tree: ast.Module | None, text: str) -> bool:
    if tree is not None:
        return any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                   and any(a.name == "division" for a in n.names) for n in tree.body)
    return re.search(r"^from\s+__future__\s+import\s+[^#\n]*\bdivision\b", text, re.M) is not None


def _divisions(tree: ast.Module) -> list[ast.AST]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
            or isinstance(n, ast.AugAssign) and isinstance(n.op, ast.Div)]


def _has_slash(text: str) -> bool:
    """A `/` operator token (for text that does not parse as Python 3)."""
    import io
    import tokenize
    try:
        return any(t.type == tokenize.OP and t.string in ("/", "/=")
                   for t in tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return "/" in re.sub(r"#.*|'[^'\n]*'|\"[^\"\n]*\"", "", text)


def why_python2(text: str) -> str | None:
    """Why ``text`` counts as a Python 2 file on the DIGITS routes (the rule
    of the module docstring), or None for a Python 3 file to leave alone."""
    try:
        _quiet(compile, text, "<layer>", "exec", 0, True)
    except (SyntaxError, ValueError) as exc:
        return f"it does not compile as Python 3 ({type(exc).__name__}: {getattr(exc, 'msg', exc)})"
    found = [f for f in py2hints.findings(text) if f.idiom != "true_division"]
    if found:
        return f"it uses Python 2 idioms ({', '.join(dict.fromkeys(f.idiom for f in found))})"
    tree = _parse(text)
    if not _future_division(tree, text) and (_divisions(tree) if tree is not None else _has_slash(text)):
        return "it divides with `/` without `from __future__ import division` (Python 2's `/` floors on ints)"
    return None


class _Source:
    """The converted text as UTF-8 bytes, addressed by the AST's (line,
    byte column) positions."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self.starts = [0]
        for line in self.data.split(b"\n"):
            self.starts.append(self.starts[-1] + len(line) + 1)

    def at(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def begin(self, node: ast.AST) -> int:
        return self.at(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.at(node.end_lineno, node.end_col_offset)

    def operator(self, after: int, op: bytes) -> int:
        """Offset of the operator ``op`` that follows the left operand
        ending at ``after`` (past closing parentheses, blanks, line
        continuations and comments)."""
        k = after
        while k < len(self.data):
            ch = self.data[k:k + 1]
            if self.data.startswith(op, k) and (op == b"/=" or self.data[k + 1:k + 2] not in (b"/", b"=")):
                return k
            if ch == b"#":
                k = self.data.index(b"\n", k)
            elif ch in b") \t\r\n\\\f":
                k += 1
            else:
                break
        raise ValueError(f"no {op!r} after offset {after}")


@dataclass
class _Rewrite:
    start: int
    end: int
    parts: tuple[tuple[int, int], tuple[int, int]]
    augmented: bool
    line: int


_EDGES = re.compile(rb"^(?:\s|\\\n)+|(?:\s|\\\n)+$")


def _rewrite_divisions(text: str, tree: ast.Module) -> tuple[str, list[int]]:
    """``text`` with every `/` and `/=` of ``tree`` (its AST) as old_div;
    the lines they were on."""
    src = _Source(text)
    rewrites = []
    for n in _divisions(tree):
        if isinstance(n, ast.BinOp):
            op = src.operator(src.end(n.left), b"/")
            parts = ((src.begin(n), op), (op + 1, src.end(n)))
        else:
            op = src.operator(src.end(n.target), b"/=")
            parts = ((src.begin(n), op), (op + 2, src.end(n)))
        rewrites.append(_Rewrite(src.begin(n), src.end(n), parts, isinstance(n, ast.AugAssign), n.lineno))
    rewrites.sort(key=lambda r: (r.start, -r.end))

    def render(lo: int, hi: int, inside: list[_Rewrite]) -> bytes:
        out, pos = [], lo
        for r in inside:
            if r.start < pos:
                continue        # nested in one already rendered
            nested = [m for m in inside if m is not r and r.start <= m.start and m.end <= r.end]
            a, b = (_EDGES.sub(b"", render(p, q, [m for m in nested if p <= m.start and m.end <= q]))
                    for p, q in r.parts)
            out += [src.data[pos:r.start],
                    (a + b" = " if r.augmented else b"") + b"old_div(" + a + b", " + b + b")"]
            pos = r.end
        out.append(src.data[pos:hi])
        return b"".join(out)

    return render(0, len(src.data), rewrites).decode("utf-8"), sorted({r.line for r in rewrites})


def _header_line(text: str, tree: ast.Module | None) -> int:
    """0-based line before which added lines go: after the module docstring
    and the `from __future__` imports, else after a leading comment block
    (a shebang, an encoding line)."""
    end = 0
    body = tree.body if tree is not None else []
    for k, n in enumerate(body):
        is_doc = k == 0 and isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) \
            and isinstance(n.value.value, str)
        if is_doc or isinstance(n, ast.ImportFrom) and n.module == "__future__":
            end = n.end_lineno
        else:
            break
    if end:
        return end
    lines = text.split("\n")
    while end < len(lines) and lines[end].startswith("#"):
        end += 1
    return end


def _insert(text: str, at: int, block: str) -> str:
    lines = text.split("\n")
    head, tail = "\n".join(lines[:at]), "\n".join(lines[at:])
    return (head + "\n" if at else "") + block + ("\n" if tail.strip() else "") + tail


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:12]) + (", …" if len(numbers) > 12 else "")
    return f"line{'s' if len(numbers) > 1 else ''} {shown}"


def convert_python2(text: str) -> Conversion:
    """``text`` converted when it counts as Python 2 (``why_python2``), with
    what changed; the original, unconverted, otherwise (or when the fixes
    change nothing)."""
    why = why_python2(text)
    if why is None:
        return Conversion(text, False)
    found = [f for f in py2hints.findings(text) if f.idiom != "true_division"]
    fixed = py2hints.convert(text, index_division=False)
    tree = _parse(fixed)
    changes = [f"{_LABELS.get(idiom, idiom)} ({_lines(sorted({f.line for f in found if f.idiom == idiom}))})"
               for idiom in dict.fromkeys(f.idiom for f in found)]
    division_lines: list[int] = []
    if tree is not None and not _future_division(tree, fixed) and _divisions(tree):
        fixed, division_lines = _rewrite_divisions(fixed, tree)
        tree = _parse(fixed)
    header = ""
    if any(f.idiom == "reduce" for f in found):
        header += REDUCE_IMPORT
    if division_lines:
        header += HELPER
        changes.append(f"a / b → old_div(a, b), Python 2's division ({_lines(division_lines)})")
    if header:
        fixed = _insert(fixed, _header_line(fixed, tree), header)
    if fixed == text:
        return Conversion(text, False, why)
    if len(changes) > MAX_CHANGES:
        changes = changes[:MAX_CHANGES] + [f"… and {len(changes) - MAX_CHANGES} more kinds of change"]
    return Conversion(fixed, True, why, changes)


def unified_diff(original: str, converted: str, name: str) -> str:
    """The unified diff of ``original`` → ``converted`` (what the job page
    shows for a converted layer file)."""
    return "".join(difflib.unified_diff(original.splitlines(keepends=True), converted.splitlines(keepends=True),
                                        f"{name} (as uploaded, Python 2)", f"{name} (converted)"))
