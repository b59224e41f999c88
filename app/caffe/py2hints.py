"""Python 2 idioms in an uploaded layer file: where they are, what to do
about them, and a mechanical conversion offered for download.

Layers from DIGITS-era tutorials and forums are Python 2; Python 3 rejects
them with messages that do not say "this is Python 2". ``scan`` finds the
idioms with the tokenizer (never ``ast``: Python 2 source does not parse as
Python 3, and lib2to3 is gone from Python 3.13); ``hint_for`` picks the hint
for one validation error from its file line and exception message;
``convert`` applies the mechanical fixes. Pure text processing: the web and
the sandbox can both use it, and it never executes the upload.
"""
from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass

HINTS = {
    "print": "in Python 3 print is a function: write print(...) (print x, → print(x, end=' '); "
             "print >>f, x → print(x, file=f))",
    "except_comma": "in Python 3 write `except E as e:` (not `except E, e:`)",
    "raise_comma": "in Python 3 write `raise E(message)` (not `raise E, message`)",
    "true_division": "in Python 3 `/` is true division (it gives a float); use `//` for an index, "
                     "slice bound or size",
    "xrange": "xrange is gone in Python 3: use range (it is lazy now)",
    "basestring": "basestring is gone in Python 3: use str",
    "unicode": "unicode is gone in Python 3: use str",
    "long": "long is gone in Python 3: use int",
    "unichr": "unichr is gone in Python 3: use chr",
    "raw_input": "raw_input is gone in Python 3: use input",
    "reduce": "reduce is no longer a builtin in Python 3: add `from functools import reduce`",
    "iteritems": "dict.iteritems() is gone in Python 3: use .items() (a view, already lazy)",
    "itervalues": "dict.itervalues() is gone in Python 3: use .values()",
    "iterkeys": "dict.iterkeys() is gone in Python 3: use .keys()",
    "has_key": "dict.has_key(k) is gone in Python 3: use `k in d`",
    "string_constant": "string.letters/lowercase/uppercase are gone in Python 3: use "
                       "string.ascii_letters/ascii_lowercase/ascii_uppercase",
    "view_index": "in Python 3 keys()/values()/items()/map()/zip()/filter() return views or iterators: "
                  "wrap them in list(...) before indexing",
    "not_equal": "`<>` is gone in Python 3: use `!=`",
    "backticks": "backticks are gone in Python 3: use repr(x)",
    "octal": "in Python 3 octal literals are written 0o777 (not 0777)",
    "long_suffix": "in Python 3 integers have no L suffix: write 10 (not 10L)",
    "renamed_module": "this module was renamed in Python 3: {new}",
    "implicit_relative_import": "if '{name}' is a module of your own: Python 3 has no implicit relative "
                                "imports — inside a package write `from . import {name}`; a module beside "
                                "digits_python_layers.py must be uploaded with it",
    "tabs": "Python 3 rejects indentation that mixes tabs and spaces: indent with spaces only",
}

# Python 2 module -> Python 3 module (an `import X` becomes `import new as X`).
RENAMED_MODULES = {"cPickle": "pickle", "Queue": "queue", "ConfigParser": "configparser",
                   "StringIO": "io", "cStringIO": "io", "__builtin__": "builtins",
                   "urllib2": "urllib.request", "HTMLParser": "html.parser", "httplib": "http.client",
                   "copy_reg": "copyreg", "SocketServer": "socketserver", "Tkinter": "tkinter",
                   "commands": "subprocess", "repr": "reprlib", "itertools.izip": "zip"}
_RENAMED_NAMES = {"xrange": "range", "basestring": "str", "unicode": "str", "long": "int",
                  "unichr": "chr", "raw_input": "input", "reduce": None}
_DICT_METHODS = {"iteritems": "items", "itervalues": "values", "iterkeys": "keys"}
_STRING_CONSTANTS = {"letters": "ascii_letters", "lowercase": "ascii_lowercase", "uppercase": "ascii_uppercase"}
# Calls whose arguments are sizes or counts: a float there fails in Python 3.
_INT_ARGS = {"range", "xrange", "randrange", "randint", "reshape", "resize", "islice", "Blob", "crop"}
_SHAPE_FIRST = {"zeros", "ones", "empty", "full"}
# `np.reshape(a, shape)`: called on a module, the first argument is the array.
_ARRAY_MODULES = {"np", "numpy", "xp", "cupy", "jnp", "torch"}
_SIZE_KEYWORDS = {"size", "shape", "k", "reps", "repeats", "newshape"}
_SIZED = {"choice", "sample", "normal", "uniform", "permutation", "tile", "repeat"}   # size= only
_SYNTAX = {"print", "except_comma", "raise_comma", "not_equal", "backticks", "octal", "long_suffix", "tabs"}

# What Python 3 says when it trips over each idiom (matched against the
# error's message; SyntaxErrors match every syntax-level idiom on the line).
_MESSAGES = {
    "print": r"Missing parentheses in call to 'print'",
    "except_comma": r"multiple exception types must be parenthesized",
    "true_division": r"slice indices must be integers|cannot be interpreted as an integer|indices must be "
                     r"integers|only integers, slices|integer argument expected, got float|"
                     r"'float' object|float.* as an? (index|integer)|must be int\b",
    "iteritems": r"has no attribute 'iteritems'", "itervalues": r"has no attribute 'itervalues'",
    "iterkeys": r"has no attribute 'iterkeys'", "has_key": r"has no attribute 'has_key'",
    "string_constant": r"module 'string' has no attribute '(letters|lowercase|uppercase)'",
    "view_index": r"'(dict_keys|dict_values|dict_items|map|zip|filter)' object is not subscriptable",
    "tabs": r"TabError|inconsistent use of tabs",
    "octal": r"leading zeros in decimal integer literals",
    **{name: rf"name '{name}' is not defined" for name in _RENAMED_NAMES},
}
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


@dataclass(frozen=True)
class Finding:
    """One Python 2 idiom: where (1-based line and column; the statement it
    belongs to spans ``first_line``..``last_line``) and the hint."""

    line: int
    column: int
    idiom: str
    hint: str
    first_line: int
    last_line: int

    def as_dict(self) -> dict:
        """The API's form: line, column, idiom, hint."""
        return {"line": self.line, "column": self.column, "idiom": self.idiom, "hint": self.hint}


@dataclass
class _Scan:
    findings: list[Finding]
    edits: list[tuple[int, int, str]]     # (start, end, replacement) in absolute offsets
    # `/` → `//` where the result is an index or size: kept apart so that a
    # conversion with Python 2's own division (app.caffe.py2convert) can
    # leave these `/` to its old_div rewrite.
    division_edits: list[tuple[int, int, str]]


class _Lines:
    """(row, col) of tokenize → absolute offsets in the text."""

    def __init__(self, text: str) -> None:
        # Lines end at "\n" only: what tokenize's readline sees.
        self.starts = [0]
        for line in text.split("\n"):
            self.starts.append(self.starts[-1] + len(line) + 1)

    def at(self, pos: tuple[int, int]) -> int:
        return self.starts[pos[0] - 1] + pos[1]


def _logical_lines(text: str) -> list[list[tokenize.TokenInfo]]:
    """Significant tokens grouped by logical line; tolerant of what Python 3
    cannot tokenize (the scan stops there)."""
    out, cur = [], []
    skip = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                if cur:
                    out.append(cur)
                cur = []
            elif tok.type not in skip and not (tok.type == tokenize.ERRORTOKEN and not tok.string.strip()):
                cur.append(tok)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    if cur:
        out.append(cur)
    return out


def _match_brackets(toks: list[tokenize.TokenInfo]) -> tuple[dict[int, int], list[int | None]]:
    """Matching bracket indices both ways, and each token's innermost opener."""
    pairs: dict[int, int] = {}
    inner: list[int | None] = []
    stack: list[int] = []
    for i, t in enumerate(toks):
        inner.append(stack[-1] if stack else None)
        if t.type == tokenize.OP and t.string in "([{":
            stack.append(i)
        elif t.type == tokenize.OP and t.string in ")]}" and stack:
            j = stack.pop()
            pairs[i], pairs[j] = j, i
    return pairs, inner


def _is(tok: tokenize.TokenInfo | None, *strings: str) -> bool:
    return tok is not None and tok.string in strings and tok.type in (tokenize.OP, tokenize.NAME)


def _primary_start(toks, pairs, i: int) -> int:
    """Index of the first token of the primary expression ending at ``i``
    (a name with attributes, calls and subscripts: ``self.d[k].x``)."""
    j = i
    while j >= 0:
        t = toks[j]
        if t.type == tokenize.OP and t.string in ")]" and j in pairs:
            j = pairs[j]
            if j > 0 and (toks[j - 1].type == tokenize.NAME or toks[j - 1].string in ")]"):
                j -= 1
                continue
            return j
        if t.type in (tokenize.NAME, tokenize.STRING, tokenize.NUMBER):
            if j > 0 and _is(toks[j - 1], "."):
                j -= 2
                continue
            return j
        return j + 1
    return 0


def _assigned_names(lines) -> set[str]:
    """Names the file defines itself (never renamed: `long = 3` is theirs)."""
    names = set()
    for toks in lines:
        if toks[0].string == "def" and len(toks) > 2 and toks[2].string == "(":
            # Parameters: `def f(self, long, reduce=None)`.
            names.update(t.string for k, t in enumerate(toks[3:], 3) if t.type == tokenize.NAME
                         and _is(toks[k - 1], "(", ",", "*", "**"))
        if toks[0].string in ("import", "from"):
            at = next((k for k, t in enumerate(toks) if t.string == "import"), len(toks))
            names.update(t.string for t in toks[at + 1:] if t.type == tokenize.NAME and t.string != "as")
        for i, t in enumerate(toks):
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            prev = toks[i - 1] if i else None
            if t.type == tokenize.NAME and (_is(nxt, "=") and not _is(prev, ".", ",", "(")
                                            or _is(prev, "def", "class", "as", "for")):
                names.add(t.string)
    return names


def scan(text: str) -> _Scan:
    """Every Python 2 idiom in ``text`` with the edits that convert it."""
    pos = _Lines(text)
    lines = _logical_lines(text)
    own = _assigned_names(lines)
    found: list[Finding] = []
    edits: list[tuple[int, int, str]] = []
    division_edits: list[tuple[int, int, str]] = []

    for toks in lines:
        first, last = toks[0].start[0], toks[-1].end[0]
        pairs, inner = _match_brackets(toks)

        def add(tok, idiom: str, hint: str | None = None) -> None:
            found.append(Finding(tok.start[0], tok.start[1] + 1, idiom, hint or HINTS[idiom], first, last))

        def edit(a, b, new: str) -> None:
            edits.append((pos.at(a), pos.at(b), new))

        def stmt_end(i: int) -> int:
            """Index of the last token of the simple statement from ``i``."""
            k = i
            while k + 1 < len(toks) and not (_is(toks[k + 1], ";") and inner[k + 1] is None):
                k += 1
            return k

        for i, t in enumerate(toks):
            prev = toks[i - 1] if i else None
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            at_stmt = prev is None or (_is(prev, ":", ";") and inner[i] is None)
            if t.type == tokenize.NAME and t.string == "print" and at_stmt and not _is(nxt, "(", "=", "."):
                _print(toks, i, stmt_end(i), add, edit)
            elif t.type == tokenize.NAME and t.string in ("except", "raise") and at_stmt:
                _comma_clause(toks, i, inner, add, edit, stmt_end(i))
            elif t.type == tokenize.NAME and t.string in _RENAMED_NAMES and t.string not in own \
                    and not _is(prev, ".", "def", "class", "import") and not _is(nxt, "=", ":"):
                add(t, t.string)
                if _RENAMED_NAMES[t.string]:
                    edit(t.start, t.end, _RENAMED_NAMES[t.string])
            elif t.type == tokenize.NAME and _is(prev, ".") and _is(nxt, "(") and t.string in _DICT_METHODS \
                    and t.string not in own and not (i >= 2 and toks[i - 2].string == "six"):
                add(t, t.string)
                edit(t.start, t.end, _DICT_METHODS[t.string])
            elif t.type == tokenize.NAME and t.string == "has_key" and _is(prev, ".") and _is(nxt, "(") \
                    and i + 1 in pairs:
                _has_key(toks, i, pairs, add, edit)
            elif t.type == tokenize.NAME and t.string == "string" and _is(nxt, ".") and i + 2 < len(toks) \
                    and toks[i + 2].string in _STRING_CONSTANTS and not _is(prev, "."):
                add(toks[i + 2], "string_constant")
                edit(toks[i + 2].start, toks[i + 2].end, _STRING_CONSTANTS[toks[i + 2].string])
            elif _is(t, "[") and i > 0 and _is(prev, ")") and i - 1 in pairs:
                _view_index(toks, i - 1, pairs, add, edit)
            elif t.type == tokenize.OP and t.string == "/" and _index_context(toks, i, inner):
                add(t, "true_division")
                division_edits.append((pos.at(t.start), pos.at(t.end), "//"))
            elif _is(t, "<") and _is(nxt, ">") and t.end == nxt.start:
                add(t, "not_equal")
                edit(t.start, nxt.end, "!=")
            elif t.type == tokenize.ERRORTOKEN and t.string == "`":
                _backticks(toks, i, add, edit)
            elif t.type == tokenize.NUMBER and nxt is not None and nxt.start == t.end and prev_not_number(prev, t):
                if t.string == "0" and nxt.type == tokenize.NUMBER and nxt.string.isdigit():
                    add(t, "octal")
                    edit(t.start, nxt.end, "0o" + nxt.string)
                elif nxt.type == tokenize.NAME and nxt.string in ("L", "l"):
                    add(t, "long_suffix")
                    edit(nxt.start, nxt.end, "")
            elif t.type == tokenize.NAME and t.string in ("import", "from") and at_stmt:
                _imports(toks, i, add, edit)
    _tabs(text, lines, found, edits, pos)
    # Backtick pairs are found from both ends: keep each finding once.
    unique = list(dict.fromkeys(found))
    unique.sort(key=lambda f: (f.line, f.column))
    return _Scan(unique, edits, division_edits)


def prev_not_number(prev, t) -> bool:
    """True unless ``t`` continues a number token right before it."""
    return not (prev is not None and prev.type == tokenize.NUMBER and prev.end == t.start)


def _ref(start: tuple[int, int], end: tuple[int, int]) -> str:
    """A placeholder for the source text between two positions (``convert``
    fills it in), so that moved text keeps what the user wrote."""
    return "\0{}:{}:{}:{}\0".format(*start, *end)


def _print(toks, i: int, end: int, add, edit) -> None:
    add(toks[i], "print")
    args = toks[i + 1:end + 1]
    if not args:
        edit(toks[i].start, toks[i].end, "print()")
        return
    file_part = ""
    if _is(args[0], ">>"):
        comma = next((k for k, a in enumerate(args) if _is(a, ",")), None)
        if comma is None or comma < 2:
            return      # `print >>f` alone: leave it to the person
        file_part = ", file=" + _ref(args[1].start, args[comma - 1].end)
        args = args[comma + 1:]
    trailing = bool(args) and _is(args[-1], ",")
    if not args or (trailing and len(args) == 1):
        return
    close = (", end=' '" if trailing else "") + file_part + ")"
    # From `print` to the first argument (`>>f, ` included) becomes `print(`.
    edit(toks[i].start, args[0].start, "print(")
    if trailing:
        edit(args[-1].start, args[-1].end, close)
    else:
        edit(args[-1].end, args[-1].end, close)


def _comma_clause(toks, i: int, inner, add, edit, end: int) -> None:
    """`except E, e:` and `raise E, msg`."""
    commas = [k for k in range(i + 1, end + 1) if _is(toks[k], ",") and inner[k] == inner[i]]
    stop = next((k for k in range(i + 1, end + 1) if _is(toks[k], ":") and inner[k] == inner[i]), end + 1)
    commas = [k for k in commas if k < stop]
    if not commas:
        return
    if commas[-1] + 1 >= len(toks):
        return      # a dangling comma: not an idiom, just broken
    if toks[i].string == "except":
        add(toks[commas[-1]], "except_comma")
        if len(commas) == 1:
            edit(toks[commas[0]].start, toks[commas[0] + 1].start, " as ")
    else:
        add(toks[commas[0]], "raise_comma")
        if len(commas) == 1:
            edit(toks[commas[0]].start, toks[commas[0] + 1].start, "(")
            edit(toks[stop - 1].end, toks[stop - 1].end, ")")


def _has_key(toks, i: int, pairs, add, edit) -> None:
    add(toks[i], "has_key")
    start = _primary_start(toks, pairs, i - 2)
    close = pairs[i + 1]
    if close == i + 2 or start > i - 2:
        return
    edit(toks[start].start, toks[start].start, f"({_ref(toks[i + 2].start, toks[close - 1].end)} in ")
    edit(toks[i - 1].start, toks[close].end, ")")


def _view_index(toks, close: int, pairs, add, edit) -> None:
    """`d.keys()[0]`, `map(f, xs)[0]`: views and iterators are not indexable."""
    opener = pairs[close]
    if opener == 0 or toks[opener - 1].type != tokenize.NAME:
        return
    name = toks[opener - 1]
    is_view = name.string in ("keys", "values", "items") and opener >= 2 and _is(toks[opener - 2], ".")
    is_iter = name.string in ("map", "zip", "filter") and not (opener >= 2 and _is(toks[opener - 2], "."))
    if not (is_view or is_iter):
        return
    add(name, "view_index")
    start = _primary_start(toks, pairs, opener - 3) if is_view else opener - 1
    edit(toks[start].start, toks[start].start, "list(")
    edit(toks[close].end, toks[close].end, ")")


def _index_context(toks, i: int, inner) -> bool:
    """Is the `/` at ``i`` inside a subscript or a size argument (through
    grouping parentheses and arithmetic)?"""
    nxt = toks[i + 1] if i + 1 < len(toks) else None
    if _is(nxt, ",", ")") or (i and _is(toks[i - 1], ",", "(")):
        return False        # `def f(a, /, b)`: the positional-only marker
    k, at = inner[i], i
    while k is not None:
        opener, before = toks[k], toks[k - 1] if k else None
        callee_like = before is not None and (before.type == tokenize.NAME and before.string not in
                                              ("in", "and", "or", "not", "return", "if", "else", "lambda")
                                              or _is(before, ")", "]"))
        if opener.string == "[" and callee_like:
            if before.string in ("c_", "r_"):
                return False        # np.c_[...] concatenates values
            # `a[x > n/3]` is a boolean mask, not an index.
            return not any(inner[j] == k and _is(toks[j], "<", ">", "<=", ">=", "==", "!=")
                           for j in range(k + 1, len(toks)))
        if opener.string == "(" and callee_like:
            return before.type == tokenize.NAME and not (k >= 2 and _is(toks[k - 2], "def")) \
                and _size_argument(toks, k, at, inner, before.string)
        if opener.string != "(":
            return False
        k, at = inner[k], k
    return False


def _size_argument(toks, opener: int, at: int, inner, callee: str) -> bool:
    """Is token ``at`` (inside the call opened at ``opener``) in an argument
    that must be an integer: any positional one of range-like calls, the
    first of shape-taking ones, or a size/shape keyword?"""
    args = [k for k in range(opener + 1, at) if inner[k] == opener and _is(toks[k], ",")]
    start = args[-1] + 1 if args else opener + 1
    if start + 1 < len(toks) and toks[start].type == tokenize.NAME and _is(toks[start + 1], "="):
        return toks[start].string in _SIZE_KEYWORDS and callee in _INT_ARGS | _SHAPE_FIRST | _SIZED
    if callee in ("reshape", "resize") and opener >= 3 and _is(toks[opener - 2], ".") \
            and toks[opener - 3].string in _ARRAY_MODULES:
        return bool(args)
    if callee in _INT_ARGS:
        return True
    return callee in _SHAPE_FIRST and not args


def _backticks(toks, i: int, add, edit) -> None:
    ticks = [k for k, t in enumerate(toks) if t.type == tokenize.ERRORTOKEN and t.string == "`"]
    pos = ticks.index(i)
    if pos % 2 == 0 and pos + 1 < len(ticks):
        add(toks[i], "backticks")
        edit(toks[i].start, toks[i].end, "repr(")
        edit(toks[ticks[pos + 1]].start, toks[ticks[pos + 1]].end, ")")


def _imports(toks, i: int, add, edit) -> None:
    if toks[i].string == "from":
        name, end = _dotted(toks, i + 1)
        if name in RENAMED_MODULES and "." not in RENAMED_MODULES[name]:
            add(toks[i + 1], "renamed_module", HINTS["renamed_module"].format(new=f"from {RENAMED_MODULES[name]} "
                                                                               "import ..."))
            edit(toks[i + 1].start, toks[end].end, RENAMED_MODULES[name])
        return
    k = i + 1
    while k < len(toks):
        name, end = _dotted(toks, k)
        aliased = end + 1 < len(toks) and _is(toks[end + 1], "as")
        if name in RENAMED_MODULES and "." not in name:
            new = RENAMED_MODULES[name]
            add(toks[k], "renamed_module", HINTS["renamed_module"].format(new=f"import {new}"))
            edit(toks[k].start, toks[end].end, new if aliased else f"{new} as {name}")
        k = end + (3 if aliased else 1)
        if k < len(toks) and _is(toks[k], ","):
            k += 1
        else:
            break


def _dotted(toks, k: int) -> tuple[str, int]:
    parts, end = [], k
    while end < len(toks) and toks[end].type == tokenize.NAME:
        parts.append(toks[end].string)
        if end + 2 < len(toks) and _is(toks[end + 1], "."):
            end += 2
        else:
            break
    return ".".join(parts), min(end, len(toks) - 1)


def _tabs(text: str, lines, found: list[Finding], edits, pos: _Lines) -> None:
    """Indentation whose meaning depends on the tab size (Python 3's
    TabError; Python 2 read a tab as 8 columns): tabs become 8 spaces."""
    rows = text.split("\n")
    indents = [(toks[0].start[0], rows[toks[0].start[0] - 1][:toks[0].start[1]]) for toks in lines]
    bad = next((n for (_, a), (n, b) in zip(indents, indents[1:])
                if _sign(len(b.expandtabs(8)) - len(a.expandtabs(8))) !=
                _sign(len(b.expandtabs(1)) - len(a.expandtabs(1)))), None)
    if bad is None:
        return
    found.append(Finding(bad, 1, "tabs", HINTS["tabs"], bad, bad))
    for n, ind in indents:
        if "\t" in ind:
            edits.append((pos.starts[n - 1], pos.starts[n - 1] + len(ind), ind.expandtabs(8)))


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def findings(text: str) -> list[Finding]:
    """The Python 2 idioms in ``text``, in file order."""
    return scan(text).findings


def convert(text: str, index_division: bool = True) -> str:
    """``text`` with every mechanical Python 2 → 3 fix applied (what the
    download offers; the upload itself is never changed). With
    ``index_division`` False, a `/` whose result is an index or a size is
    left as it is (app.caffe.py2convert rewrites every `/` instead)."""
    result = scan(text)
    lines = _Lines(text)
    edits = result.edits + (result.division_edits if index_division else [])

    def source(match: re.Match) -> str:
        r1, c1, r2, c2 = (int(x) for x in match.group(1).split(":"))
        return text[lines.at((r1, c1)):lines.at((r2, c2))]

    out, last = [], 0
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < last:
            continue        # inside a span another fix already rewrote
        new = re.sub("\0([0-9:]+)\0", source, new)
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    return "".join(out)


def hint_for(detail: dict, text: str, found: list[Finding] | None = None) -> str | None:
    """The Python 2 → 3 hint for one error detail about ``text`` (the
    uploaded layer file), or None when the error is not a Python 2 idiom:
    the idioms on the error's statement that fit its message first, then
    what the message alone says."""
    message = str(detail.get("message") or "")
    line = detail.get("line")
    found = findings(text) if found is None else found
    syntax = message.startswith(("SyntaxError", "TabError", "IndentationError"))
    if isinstance(line, int):
        here = [f for f in found if f.first_line <= line <= f.last_line]
        fits = [f for f in here if (f.idiom in _SYNTAX and syntax) or
                (f.idiom in _MESSAGES and re.search(_MESSAGES[f.idiom], message))]
        if fits:
            by_hint: dict[str, list[int]] = {}
            for f in fits:
                by_hint.setdefault(f.hint, []).append(f.line)
            return "; ".join(hint if set(lines) == {line} else
                             f"{hint} (line{'s' if len(set(lines)) > 1 else ''} "
                             f"{', '.join(str(n) for n in dict.fromkeys(lines))})"
                             for hint, lines in by_hint.items())
    for idiom, pattern in _MESSAGES.items():
        if re.search(pattern, message):
            return HINTS[idiom]
    missing = _NO_MODULE.search(message)
    if missing:
        name = missing.group(1)
        if name in RENAMED_MODULES:
            return HINTS["renamed_module"].format(new=f"import {RENAMED_MODULES[name]}")
        # Only in a file that is Python 2 elsewhere: in Python 3 code a
        # missing module is just a missing package.
        if "." not in name and found and ("ImportError" in message or "ModuleNotFoundError" in message):
            return HINTS["implicit_relative_import"].format(name=name)
    return None
