"""The DIGITS routes' Python 2 conversion (app.caffe.py2convert): which files
count as Python 2, the `/` → old_div rewrite with each operand's full
sub-expression, and that the converted code computes what Python 2 did
(each converted snippet is executed; the expected values are Python 2's)."""
from __future__ import annotations

import numpy as np
import pytest

from app.caffe import py2convert
from helpers import BLANK_SQUARE



def _run(source: str, **env) -> dict:
    converted = py2convert.convert_python2(source)
    assert converted.converted, source
    scope = dict(env)
    exec(compile(converted.text, "<converted>", "exec"), scope)
    return scope


def _body(source: str) -> str:
    """The converted text after the inlined helper."""
    text = py2convert.convert_python2(source).text
    return text.split("return _py2_operator.truediv(a, b)\n", 1)[1].strip()


@pytest.mark.parametrize("source, expected", [
    ("r = a + b / c * d", "r = a + old_div(b, c) * d"),
    ("r = x[h/2:]", "r = x[old_div(h, 2):]"),
    ("r = (a+b)/2", "r = old_div((a+b), 2)"),
    ("r = -a/b", "r = old_div(-a, b)"),
    ("r = a/b/c", "r = old_div(old_div(a, b), c)"),
    ("r = self.h/2", "r = old_div(self.h, 2)"),
    ("r = f(x)/g(y)[0]", "r = old_div(f(x), g(y)[0])"),
    ("r = a**2/b**3", "r = old_div(a**2, b**3)"),
    ("r = a/b**2", "r = old_div(a, b**2)"),
    ("r = a / (b / c)", "r = old_div(a, (old_div(b, c)))"),
    ("x /= 2", "x = old_div(x, 2)"),
    ("x[a/2] /= 3", "x[old_div(a, 2)] = old_div(x[old_div(a, 2)], 3)"),
    ("r = f(a/2, b // 2, c/d)", "r = f(old_div(a, 2), b // 2, old_div(c, d))"),
    ("r = (a +  # half of it\n     b) / 2", "r = old_div((a +  # half of it\n     b), 2)"),
    ("r = a / \\\n    b", "r = old_div(a, b)"),
    ("r = [v/2 for v in xs if v/3 > 1]", "r = [old_div(v, 2) for v in xs if old_div(v, 3) > 1]"),
    ("r = lambda n: n/2", "r = lambda n: old_div(n, 2)"),
    ("r = 'a/b'  # a/b", "r = 'a/b'  # a/b"),   # no `/` operator: left alone (see test_clean_python3)
])
def test_division_rewrite(source, expected):
    if expected == source:
        assert py2convert.convert_python2(source + "\n").converted is False
        return
    assert _body(source + "\n") == expected


def test_converted_code_computes_python2_results():
    # (expression, Python 2's value)
    cases = {"7/2": 3, "-7/2": -4, "7.0/2": 3.5, "7/2.0": 3.5, "1/2*4": 0, "(3+4)/2": 3, "2**5/3": 10,
             "7/2/2": 1, "10/4.0/2": 1.25, "-(7/2)": -3, "True/1": 1}
    source = "".join(f"r{k} = {expr}\n" for k, expr in enumerate(cases))
    scope = _run(source)
    for k, (expr, want) in enumerate(cases.items()):
        got = scope[f"r{k}"]
        assert got == want and type(got) is type(want), (expr, got)
    scope = _run("x = 9\nx /= 2\ny = 9.0\ny /= 2\n")
    assert (scope["x"], scope["y"]) == (4, 4.5)


def test_numpy_operands_keep_python2_numpy_meaning():
    scope = _run("a = ints / 2\nb = ints / 2.0\nc = floats / 2\nd = np.int64(7) / 2\ne = np.int32(7) / np.float32(2)\n"
                 "f = ints / ints2\ng = 7 / np.arange(1, 3)\n", np=np, ints=np.array([7, -7, 4]),
                 ints2=np.array([2, 2, 3]), floats=np.array([7.0, -7.0]))
    assert scope["a"].tolist() == [3, -4, 2] and scope["a"].dtype.kind == "i"
    assert scope["b"].tolist() == [3.5, -3.5, 2.0]
    assert scope["c"].tolist() == [3.5, -3.5]
    assert scope["d"] == 3 and isinstance(scope["d"], np.integer)
    assert scope["e"] == pytest.approx(3.5)
    assert scope["f"].tolist() == [3, -4, 1]
    assert scope["g"].tolist() == [7, 3]


def test_other_idioms_are_fixed_too():
    source = ("import cPickle\n"
              "def f(d, n):\n"
              "    print 'n is', n\n"
              "    for k, v in d.iteritems():\n"
              "        pass\n"
              "    try:\n"
              "        pass\n"
              "    except ValueError, e:\n"
              "        pass\n"
              "    return [i / 2 for i in xrange(n)], isinstance('s', basestring), reduce(max, [n, 1])\n")
    result = py2convert.convert_python2(source)
    assert result.converted
    text = result.text
    assert "print('n is', n)" in text and "d.items()" in text and "except ValueError as e:" in text
    assert "range(n)" in text and "isinstance('s', str)" in text and "import pickle as cPickle" in text
    assert "from functools import reduce" in text and "old_div(i, 2)" in text
    changes = "\n".join(result.changes)
    assert "print statement" in changes and "line 3" in changes and "old_div" in changes and "line 10" in changes
    scope = {}
    exec(compile(text, "<converted>", "exec"), scope)
    assert scope["f"]({1: 2}, 5) == ([0, 0, 1, 1, 2], True, 5)


def test_helper_goes_after_docstring_and_future_imports():
    source = '#!/usr/bin/env python\n"""Doc."""\nfrom __future__ import print_function\nimport os\nx = 3/2\n'
    text = py2convert.convert_python2(source).text
    lines = text.splitlines()
    assert lines[:3] == ['#!/usr/bin/env python', '"""Doc."""', 'from __future__ import print_function']
    assert text.index("def old_div") < text.index("import os")
    assert text.rstrip().endswith("x = old_div(3, 2)")
    scope = {}
    exec(compile(text, "<converted>", "exec"), scope)
    assert scope["x"] == 1


@pytest.mark.parametrize("source", [
    "import numpy as np\n\ndef f(a, b):\n    return a // b + np.sum(a)  # halves / quarters\n",
    "from __future__ import division\nx = 1 / 2\n",
    "s = 'a/b'\n",
])
def test_clean_python3_is_left_byte_identical(source):
    assert py2convert.why_python2(source) is None
    result = py2convert.convert_python2(source)
    assert result.converted is False and result.text == source and result.changes == []


def test_conversion_is_stable():
    once = py2convert.convert_python2(BLANK_SQUARE)
    assert once.converted and "division" in once.why
    assert py2convert.why_python2(once.text) is None       # the helper divides without `/`
    again = py2convert.convert_python2(once.text)
    assert again.converted is False and again.text == once.text


def test_blank_square_layer_converted():
    result = py2convert.convert_python2(BLANK_SQUARE)
    assert "h_offset = random.randrange(old_div(height, 2))" in result.text
    assert "h_offset:(h_offset + old_div(height, 2))," in result.text
    assert result.changes == ["a / b → old_div(a, b), Python 2's division (lines 21, 22, 24, 25)"]
    diff = py2convert.unified_diff(BLANK_SQUARE, result.text, "digits_python_layers.py")
    assert "-        h_offset = random.randrange(height/2)" in diff
    assert "+        h_offset = random.randrange(old_div(height, 2))" in diff


def test_unparsable_python2_gets_the_mechanical_fixes():
    # `exec "code"` has no mechanical fix: the rest is converted, the
    # validator then names what is left.
    source = "print 'x'\nexec 'y = 1'\n"
    result = py2convert.convert_python2(source)
    assert result.converted and result.text.startswith("print('x')\n")
    assert "does not compile" in result.why
