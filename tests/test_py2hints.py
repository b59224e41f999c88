"""Python 2 → 3 help: validation failures on a Python 2 idiom carry a hint
next to file and line (real pycaffe in the real sandbox), and the mechanical
conversion is offered as a download, never applied.

The DIGITS tutorial's BlankSquareLayer (tests/data/digits/blank_square_layer.py,
verbatim; source and licence in tests/data/digits/README.md) is the case
from the wild: `height/2` as a slice bound."""
from __future__ import annotations

import io

import pytest

from app.caffe import py2hints
from helpers import BLANK_SQUARE, LENET_SEED, SEED_LAYER, change_settings, lenet_with_blank_square, line_of, post

LAYER = "digits_python_layers.py"


def _convert(client, text: str):
    return client.post("/api/v1/python-layers/convert", content_type="multipart/form-data",
                       data={"python_layer": (io.BytesIO(text.encode()), "layers.py")})


@pytest.mark.slow
def test_digits_tutorial_blank_square_layer(client):
    net = lenet_with_blank_square()
    report = post(client, "/api/v1/validate", network=net, layer=BLANK_SQUARE).get_json()
    assert report["ok"] is False
    d = report["errors"][0]
    assert (d["file"], d["layer"], d["stage"]) == (LAYER, "blank_square", "train")
    assert d["line"] == line_of(BLANK_SQUARE, "top[0].data[...,")
    assert "slice indices must be integers" in d["message"]
    assert "`/` is true division" in d["hint"] and "`//`" in d["hint"]
    # The two `/` of the statement, on the lines after the one Python names.
    assert "lines 24, 25" in d["hint"]
    assert f"> {d['line']} |         top[0].data[...," in d["excerpt"]
    idioms = report["python2"]
    assert [f["line"] for f in idioms["findings"]] == [21, 22, 24, 25]
    assert idioms["convert"] == "/api/v1/python-layers/convert"

    resp = _convert(client, BLANK_SQUARE)
    assert resp.status_code == 200 and resp.mimetype == "text/x-python"
    assert "attachment" in resp.headers["Content-Disposition"]
    fixed = resp.get_data(as_text=True)
    assert fixed == BLANK_SQUARE.replace("/2", "//2")
    # Offered, not applied: the converted file validates with real Caffe.
    again = post(client, "/api/v1/validate", network=net, layer=fixed).get_json()
    assert again["ok"] is True, again["errors"]
    assert "python2" not in again


def _in_setup(code: str) -> str:
    anchor = "        self.top_k = params.get('top_k', 1)\n"
    return SEED_LAYER.replace(anchor, anchor + code)


def _at_import(code: str) -> str:
    # Module level: the import fails before any net is built (a fast check).
    return SEED_LAYER.replace("import json\n", "import json\nimport string\n" + code, 1)


# (idiom, layer file, text on the idiom's line, words of the hint)
IDIOMS = [
    ("print", _in_setup("        print 'top_k', self.top_k\n"), "print 'top_k'", "print is a function"),
    ("except_comma", _at_import("try:\n    pass\nexcept ValueError, e:\n    pass\n"), "except ValueError, e",
     "except E as e"),
    ("iteritems", _at_import("for k, v in {}.iteritems():\n    pass\n"), "iteritems()", "use .items()"),
    ("true_division", _at_import("HALF = list(range(10))[:3 * 3 / 2]\n"), "* 3 / 2", "`/` is true division"),
    ("xrange", _at_import("for i in xrange(2):\n    pass\n"), "xrange(2)", "use range"),
    ("basestring", _at_import("assert not isinstance('a', basestring)\n"), "basestring", "use str"),
    ("string_constant", _at_import("NAMES = string.letters[:3]\n"), "string.letters", "string.ascii_letters"),
    ("has_key", _at_import("if {}.has_key('top_k'):\n    pass\n"), "has_key", "`k in d`"),
    # (Said only of a file that is Python 2 elsewhere: here backward's iteritems.)
    ("implicit_relative_import", _at_import("from layer_utils import helper\n").replace(
        "    def backward(self, top, propagate_down, bottom):\n",
        "    def backward(self, top, propagate_down, bottom):\n        for k, v in {}.iteritems(): pass\n"),
     "from layer_utils", "no implicit relative imports"),
]


@pytest.mark.slow
def test_each_python2_idiom_gets_its_hint(client):
    for idiom, layer, needle, words in IDIOMS:
        report = post(client, "/api/v1/validate", layer=layer).get_json()
        assert report["ok"] is False, idiom
        d = report["errors"][0]
        assert d["file"] == LAYER and d["line"] == line_of(layer, needle), (idiom, d)
        assert words in d["hint"], (idiom, d)
        assert f"> {d['line']} |" in d["excerpt"], (idiom, d)
        if idiom != "implicit_relative_import":     # known from the exception only
            assert idiom in {f["idiom"] for f in report["python2"]["findings"]}, idiom


@pytest.mark.parametrize("source,converted", [
    ("print 'a', b\n", "print('a', b)\n"),
    ("print\n", "print()\n"),
    ("print x,\n", "print(x, end=' ')\n"),
    ("print >>sys.stderr, 'x'\n", "print('x', file=sys.stderr)\n"),
    ("if a: print a\n", "if a: print(a)\n"),
    ("try:\n    f()\nexcept (A, B), e:\n    pass\n", "try:\n    f()\nexcept (A, B) as e:\n    pass\n"),
    ("raise ValueError, 'bad'\n", "raise ValueError('bad')\n"),
    ("for i in xrange(n / 2): pass\n", "for i in range(n // 2): pass\n"),
    ("y = a[h / 2:(h + w / 2)]\n", "y = a[h // 2:(h + w // 2)]\n"),
    ("ratio = a / b\n", "ratio = a / b\n"),                        # a true division stays one
    ("z = np.zeros((n / 2, 3))\n", "z = np.zeros((n // 2, 3))\n"),
    ("for k, v in d.iteritems(): pass\n", "for k, v in d.items(): pass\n"),
    ("v = list(d.itervalues()) + list(d.iterkeys())\n", "v = list(d.values()) + list(d.keys())\n"),
    ("ok = self.d.has_key(k) == True\n", "ok = (k in self.d) == True\n"),
    ("if isinstance(s, basestring) or isinstance(s, unicode): pass\n",
     "if isinstance(s, str) or isinstance(s, str): pass\n"),
    ("n = long(x) + 10L\n", "n = int(x) + 10\n"),
    ("long = 3\nx = long\n", "long = 3\nx = long\n"),              # the file's own name: left alone
    ("s = raw_input()\n", "s = input()\n"),
    ("import string\nl = string.letters\n", "import string\nl = string.ascii_letters\n"),
    ("import cPickle, os\n", "import pickle as cPickle, os\n"),
    ("from StringIO import StringIO\n", "from io import StringIO\n"),
    ("k = d.keys()[0]\n", "k = list(d.keys())[0]\n"),
    ("m = map(f, xs)[0]\n", "m = list(map(f, xs))[0]\n"),
    ("if a <> b: pass\n", "if a != b: pass\n"),
    ("s = `x`\n", "s = repr(x)\n"),
    ("mode = 0755\n", "mode = 0o755\n"),
    ("if x:\n\ty = 1\n        z = 2\n", "if x:\n        y = 1\n        z = 2\n"),
])
def test_conversion_of_each_idiom(source, converted):
    out = py2hints.convert(source)
    assert out == converted
    compile(out, "x.py", "exec")     # Python 3 accepts what the download offers


def test_python3_code_is_left_alone():
    assert py2hints.findings(SEED_LAYER) == []
    assert py2hints.convert(SEED_LAYER) == SEED_LAYER


def test_hint_from_the_message_alone():
    # No static finding on the line (the float came from elsewhere): the
    # exception's own words still say which idiom it is.
    text = "x = 1\n"
    assert "`//`" in py2hints.hint_for({"line": 1, "message": "TypeError in forward(): 'float' object "
                                        "cannot be interpreted as an integer"}, text)
    assert "use range" in py2hints.hint_for({"line": 1, "message": "NameError: name 'xrange' is not defined"},
                                            text)
    assert "import pickle" in py2hints.hint_for({"message": "ModuleNotFoundError: No module named 'cPickle'"},
                                                text)
    assert py2hints.hint_for({"line": 1, "message": "ValueError in setup(): broken"}, text) is None
    # A missing package in Python 3 code is not called a relative import.
    assert py2hints.hint_for({"line": 1, "message": "ModuleNotFoundError: No module named 'cv2'"}, text) is None


def test_convert_route_checks_its_input(client):
    assert _convert(client, "").status_code == 400
    resp = client.post("/api/v1/python-layers/convert", content_type="multipart/form-data",
                       data={"python_layer": (io.BytesIO(b"\xff\xfe"), "layers.py")})
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_request"
    # (A small limit: the test client spools bodies over 500 KiB to a file it never closes.)
    change_settings(client.application, MAX_LAYER_FILE_KB=1)
    assert _convert(client, "x = 1\n" * 200).status_code == 413
    # Nothing is stored: the route is stateless and never runs the file.
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_form_offers_the_converted_file(app, client):
    import re
    html = client.get("/jobs/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    layer = _at_import("for i in xrange(2):\n    pass\n")

    def form() -> dict:
        return {"csrf_token": token, "action": "validate", "dataset": "sample-digits", "device": "cpu",
                "network": (io.BytesIO(LENET_SEED.encode()), "lenet.prototxt"),
                "python_layer": (io.BytesIO(layer.encode()), "old_layers.py")}
    report = client.post("/jobs/new", data=form(), content_type="multipart/form-data",
                         headers={"X-Requested-With": "fetch"}).get_data(as_text=True)
    assert "Python 2 → 3: xrange is gone in Python 3: use range" in report
    # The report's button posts the form (its chosen file) to the page route.
    button = re.search(r'<button[^>]*id="download-py3"[^>]*>', report, re.S).group(0)
    assert 'form="job-form"' in button and 'formaction="/python-layers/convert"' in button
    resp = client.post("/python-layers/convert", data=form(), content_type="multipart/form-data")
    assert resp.status_code == 200 and "attachment" in resp.headers["Content-Disposition"]
    assert resp.get_data(as_text=True) == layer.replace("xrange(2)", "range(2)")
    data = form()
    del data["csrf_token"]
    # A browser signed in by its session cookie needs the CSRF token (a bearer token does not).
    from helpers import client_for
    client_for(app, "browser", password="pw-browser-1")
    web = app.test_client()
    login = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', web.get("/login").get_data(as_text=True))
    web.post("/login", data={"csrf_token": login.group(1), "username": "browser", "password": "pw-browser-1"})
    assert web.post("/python-layers/convert", data=data, content_type="multipart/form-data").status_code == 400
