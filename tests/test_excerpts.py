"""Errors readable at a glance: every detail naming a line of the layer
file or of the network carries `excerpt` (the line, two lines of context
and a caret at the column, like a Python traceback), in the API and on the
page; an exception without a message reads "<Type> in <method>() (no
message)". Real pycaffe in the real sandbox."""
from __future__ import annotations

import io
import re

from app.caffe.excerpts import excerpt
from helpers import LENET_SEED, SEED_LAYER, layer_line, line_of, post

LAYER = "digits_python_layers.py"
TEXT = "one\ntwo\n    three(x)\nfour\nfive\nsix\n"


def test_excerpt_shape():
    assert excerpt(TEXT, 3, 9) == ("  1 | one\n"
                                   "  2 | two\n"
                                   "> 3 |     three(x)\n"
                                   "              ^\n"
                                   "  4 | four\n"
                                   "  5 | five")
    # Without a column the caret marks the first non-blank character.
    assert excerpt(TEXT, 3).splitlines()[3] == " " * 10 + "^"
    assert excerpt(TEXT, 1).splitlines()[:2] == ["> 1 | one", "      ^"]
    assert excerpt(TEXT, 6).splitlines()[-2:] == ["> 6 | six", "      ^"]
    assert excerpt(TEXT, 7) is None and excerpt(TEXT, 0) is None
    # Tabs are shown expanded, and the caret stays under the column.
    tabbed = excerpt("a\n\tb = 1/0\n", 2, 6).splitlines()
    assert tabbed[1] == "> 2 |         b = 1/0" and tabbed[2].index("^") == tabbed[1].index("1/0")
    # Line numbers of different widths stay aligned.
    long = "\n".join(f"line {n}" for n in range(1, 12))
    lines = excerpt(long, 10, 1).splitlines()
    assert lines == ["   8 | line 8", "   9 | line 9", "> 10 | line 10", "       ^", "  11 | line 11"]


def test_empty_exception_message_and_excerpt_with_column(client):
    marker = "    def setup(self, bottom, top):\n"
    bad = SEED_LAYER.replace(marker, marker + "        raise Exception()\n")
    report = post(client, "/api/v1/validate", layer=bad).get_json()
    d = report["errors"][0]
    assert d["message"] == "Exception in setup() (no message)"
    line = line_of(bad, "raise Exception()")
    assert (d["file"], d["line"], d["column"]) == (LAYER, line, 9)
    shown = d["excerpt"].splitlines()
    assert shown[2] == f"> {line} |         raise Exception()"
    assert shown[3].index("^") == shown[2].index("raise")
    assert shown[1].endswith("def setup(self, bottom, top):") and len(shown) == 6


def test_syntax_error_excerpt_points_at_the_column(client):
    bad = SEED_LAYER.replace("        top[0].reshape(1)", "        top[0].reshape(1))")
    d = post(client, "/api/v1/validate", layer=bad).get_json()["errors"][0]
    assert d["message"].startswith("SyntaxError") and d["line"] == line_of(bad, "reshape(1))")
    code, caret = d["excerpt"].splitlines()[2:4]
    assert code[caret.index("^")] == ")" and caret.index("^") == code.rindex(")")


def test_network_errors_carry_excerpts(client):
    # A prototxt that does not parse: the caret sits at the column protobuf names.
    bad = LENET_SEED.replace('  name: "conv1"', '  nam: "conv1"', 1)
    body = post(client, "/api/v1/jobs", network=bad).get_json()
    d = body["details"][0]
    assert body["error"] == "invalid_network" and d["line"] == line_of(bad, 'nam: "conv1"')
    code, caret = d["excerpt"].splitlines()[2:4]
    assert code.endswith('nam: "conv1"') and code[caret.index("^"):].startswith('nam:')
    # Caffe aborts on a layer: the detail names that layer's line in the upload.
    net = LENET_SEED.replace('bottom: "pool2"', 'bottom: "no_such_blob"', 1)
    d = post(client, "/api/v1/jobs", network=net).get_json()["details"][0]
    line = layer_line(net, d["layer"])
    assert d["line"] == line and f"> {line} | layer {{" in d["excerpt"]
    # Caffe aborts the sandboxed validator on a CHECK: the report's detail too.
    net = LENET_SEED.replace("    num_output: 50\n    kernel_size: 5", "    num_output: 50\n    kernel_size: 40")
    d = post(client, "/api/v1/jobs", network=net).get_json()["details"][0]
    line = layer_line(net, "conv2")
    assert (d["layer"], d["line"]) == ("conv2", line) and f"> {line} | layer {{" in d["excerpt"]


def test_page_shows_excerpt(client):
    html = client.get("/jobs/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    bad = SEED_LAYER.replace("        top[0].reshape(1)", "        top[0].reshape(1) + undefined_name")
    data = {"csrf_token": token, "action": "validate", "dataset": "sample-digits", "device": "cpu",
            "network": (io.BytesIO(LENET_SEED.encode()), "lenet.prototxt"),
            "python_layer": (io.BytesIO(bad.encode()), "x.py")}
    page = client.post("/jobs/new", data=data, content_type="multipart/form-data",
                       headers={"X-Requested-With": "fetch"}).get_data(as_text=True)
    line = line_of(bad, "undefined_name")
    assert "NameError in reshape(): name &#39;undefined_name&#39; is not defined" in page
    pre = re.search(r'<pre class="excerpt">(.*?)</pre>', page, re.S).group(1)
    assert f"&gt; {line} |         top[0].reshape(1) + undefined_name" in pre


def test_training_error_of_a_job_shows_its_excerpt(app, client):
    # A job whose layer failed in training: the error record is the one the
    # runner writes (app.contained.train), stored as the worker stores it.
    job = post(client, "/api/v1/jobs", layer=SEED_LAYER).get_json()
    line = line_of(SEED_LAYER, "top[0].data[0] = num_correct / len(ground_truth)")
    app.extensions["store"].update_job(job["id"], status="error", error={
        "stage": "train", "message": "ValueError in forward(): broken", "file": LAYER, "line": line,
        "traceback": "Traceback (most recent call last):\n..."})
    err = client.get(f"/api/v1/jobs/{job['id']}").get_json()["error"]
    assert err["message"] == "ValueError in forward(): broken"
    assert f"> {line} |         top[0].data[0] = num_correct / len(ground_truth)" in err["excerpt"]
    html = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert f"&gt; {line} |         top[0].data[0]" in re.search(r'<pre class="excerpt" id="error-excerpt">(.*?)</pre>',
                                                                html, re.S).group(1)
