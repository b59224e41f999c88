"""The gradient check of Python layers' backward and the look at what a layer
does (app/contained/gradcheck.py, layerview.py), through the real validation:
real pycaffe in the real sandbox, LeNet on sample-digits, layers from
tests/data/gradcheck_layers.py."""
from __future__ import annotations

import base64
import io
import re

from helpers import DATA, LENET_SEED, SEED_LAYER, line_of, post

# The seed's AccuracyLayer stays in the nets: the layer file must define it.
LAYERS = SEED_LAYER + "\n\n" + (DATA / "gradcheck_layers.py").read_text()
LOSS = '  include { stage: "train" }\n  loss_weight: 1\n'
NO_DEPLOY = '  exclude { stage: "deploy" }\n'   # reads the labels


def _python(name: str, cls: str, bottoms: list[str], tops: list[str], extra: str = "") -> str:
    b = "".join(f'  bottom: "{x}"\n' for x in bottoms)
    t = "".join(f'  top: "{x}"\n' for x in tops)
    return (f'layer {{\n  name: "{name}"\n  type: "Python"\n{b}{t}{extra}'
            f'  python_param {{ module: "digits_python_layers" layer: "{cls}" }}\n}}\n')


# A second 10-wide head beside ip2, so that two-bottom losses have a pair.
IP2B = ('layer {\n  name: "ip2b"\n  type: "InnerProduct"\n  bottom: "ip2"\n  top: "ip2b"\n'
        '  inner_product_param { num_output: 10 weight_filler { type: "xavier" } }\n}\n')


def _net(extra: str, occlude: bool = False, relu: bool = False) -> str:
    """LeNet + the seed layer, with ``extra`` layers before the accuracy layer;
    optionally BlankSquare on the scaled images and PyReLU after Caffe's ReLU."""
    net = LENET_SEED.replace('layer {\n    name: "accuracy"', extra + 'layer {\n    name: "accuracy"')
    if occlude:
        net = net.replace('  bottom: "scaled"\n  top: "conv1"', '  bottom: "occluded"\n  top: "conv1"')
        net = net.replace('layer {\n  name: "conv1"',
                          _python("blank", "BlankSquare", ["scaled"], ["occluded"]) + 'layer {\n  name: "conv1"')
    if relu:
        net = net.replace('  bottom: "ip1"\n  top: "ip2"', '  bottom: "ip1r"\n  top: "ip2"')
        net = net.replace('layer {\n  name: "ip2"',
                          _python("pyrelu", "PyReLU", ["ip1"], ["ip1r"]) + 'layer {\n  name: "ip2"')
    return net


def _by_blob(report: dict) -> dict:
    return {(g["layer"], g["blob"]): g for g in report["gradient_check"]}


def _validate(client, network: str, **fields) -> dict:
    resp = post(client, "/api/v1/validate", network=network, layer=LAYERS, **fields)
    assert resp.status_code == 200
    report = resp.get_json()
    assert report["ok"] is True, report["errors"]
    return report


def test_correct_layers_pass_kinks_do_not_false_alarm_and_image_layers_are_shown(client):
    net = _net(IP2B + _python("eucl", "EuclideanLossLayer", ["ip2", "ip2b"], ["eucl"], LOSS)
               + _python("pyscale", "ScaleLayer", ["ip2"], ["ip2s"])
               + _python("shift", "ShiftByLabel", ["ip2s", "label"], ["ip2l"], NO_DEPLOY)
               + _python("center", "CenterRows", ["ip2l"], ["ip2c"], NO_DEPLOY)
               + _python("eucl2", "EuclideanLossLayer", ["ip2c", "ip2b"], ["eucl2"], LOSS),
               occlude=True, relu=True)
    report = _validate(client, net)
    got = _by_blob(report)
    for key in (("eucl", "ip2"), ("eucl", "ip2b"), ("pyscale", "ip2"), ("pyscale", "blobs[0]"),
                ("shift", "ip2s"), ("center", "ip2l"), ("eucl2", "ip2c"), ("eucl2", "ip2b"), ("pyrelu", "ip1")):
        g = got[key]
        assert g["verdict"] == "ok", g
        assert g["checked"] > 0 and g["max_rel_error"] < 1e-3, g
    assert got[("pyscale", "blobs[0]")]["kind"] == "param" and got[("pyscale", "blobs[0]")]["elements"] == 10
    # PyReLU's bottom comes out of Caffe's ReLU: many values sit exactly on
    # its kink, where central differences disagree with any backward.
    assert got[("pyrelu", "ip1")]["kinks"] > 0
    assert got[("shift", "label")]["verdict"] == "skipped"
    assert got[("shift", "label")]["reason"].startswith("integer values (labels)")
    # Nothing below the images learns: Caffe asks BlankSquare for no gradient.
    assert got[("blank", "scaled")]["verdict"] == "skipped"
    assert "nothing below it learns" in got[("blank", "scaled")]["reason"]
    assert got[("accuracy", None)]["verdict"] == "skipped"
    assert not [w for w in report["warnings"] if w.get("stage") == "gradient_check"]

    views = {v["layer"]: v for v in report["layer_views"]}
    blank = views["blank"]
    assert blank["image"] is True and blank["stage"] == "train"
    (bottom,), (top,) = [[b for b in blank["blobs"] if b["role"] == role] for role in ("bottom", "top")]
    assert bottom["shape"] == top["shape"] == [64, 1, 28, 28]
    assert len(bottom["images"]) == len(top["images"]) == 3 and len(top["channels"]) == 1
    import numpy as np
    from PIL import Image
    before, after = (np.asarray(Image.open(io.BytesIO(base64.b64decode(b["images"][0].split(",", 1)[1]))))
                     for b in (bottom, top))
    assert before.shape == after.shape == (28, 28)
    # The blank square: one flat grey where the digit had strokes.
    assert len(np.unique(after[7:14, 7:14])) == 1 < len(np.unique(before[7:14, 7:14]))
    eucl = views["eucl"]
    assert eucl["image"] is False
    loss = next(b for b in eucl["blobs"] if b["role"] == "top")
    assert loss["shape"] == [1] and loss["nan"] == loss["inf"] == 0 and loss["min"] == loss["max"] > 0
    assert "images" not in loss


def test_wrong_and_missing_backwards_are_caught(client):
    net = _net(IP2B + _python("flip", "FlippedEuclideanLoss", ["ip2", "ip2b"], ["flip"], LOSS)
               + _python("nohalf", "SquaredLossNoHalf", ["ip2", "ip2b"], ["nohalf"], LOSS)
               + _python("axis", "CenterRowsWrongAxis", ["ip2"], ["ip2c"])
               + _python("eucl2", "EuclideanLossLayer", ["ip2c", "ip2b"], ["eucl2"], LOSS)
               + _python("double", "Double", ["ip2b"], ["ip2d"])
               + _python("eucl3", "EuclideanLossLayer", ["ip2d", "ip2"], ["eucl3"], LOSS)
               + _python("accum", "AccumulatingDouble", ["ip2b"], ["ip2a"])
               + _python("eucl4", "EuclideanLossLayer", ["ip2a", "ip2"], ["eucl4"], LOSS))
    report = _validate(client, net)
    got = _by_blob(report)
    for blob in ("ip2", "ip2b"):
        assert got[("flip", blob)]["verdict"] == "wrong" and "sign is flipped" in got[("flip", blob)]["reason"], \
            got[("flip", blob)]
        assert got[("nohalf", blob)]["verdict"] == "wrong" and "0.5 times" in got[("nohalf", blob)]["reason"], \
            got[("nohalf", blob)]
    assert got[("axis", "ip2")]["verdict"] == "wrong"
    assert "points elsewhere" in got[("axis", "ip2")]["reason"]
    assert got[("double", "ip2b")]["verdict"] == "not_implemented"
    # Right on a zeroed diff, wrong from the second iteration on.
    assert got[("accum", "ip2b")]["verdict"] == "wrong" and "(+=)" in got[("accum", "ip2b")]["reason"]
    for key in (("eucl2", "ip2c"), ("eucl3", "ip2d"), ("eucl3", "ip2"), ("eucl4", "ip2a")):
        assert got[key]["verdict"] == "ok", got[key]
    assert got[("flip", "ip2")]["line"] == line_of(LAYERS, "class FlippedEuclideanLoss") + 3
    # A warning per bad blob by default; the upload stays valid.
    warned = {(w["layer"], w["blob"]) for w in report["warnings"] if w.get("stage") == "gradient_check"}
    assert warned == {("flip", "ip2"), ("flip", "ip2b"), ("nohalf", "ip2"), ("nohalf", "ip2b"),
                      ("axis", "ip2"), ("double", "ip2b"), ("accum", "ip2b")}


FLIP_NET = _net(IP2B + _python("flip", "FlippedEuclideanLoss", ["ip2", "ip2b"], ["flip"], LOSS), occlude=True)


def test_error_switch_refuses_the_upload_naming_layer_and_blob(client):
    resp = post(client, "/api/v1/jobs", network=FLIP_NET, layer=LAYERS, gradient_check="error")
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["error"] == "invalid_python_layer"
    named = {(d["layer"], d["blob"]) for d in body["details"]}
    assert named == {("flip", "ip2"), ("flip", "ip2b")}
    d = body["details"][0]
    assert d["file"] == "digits_python_layers.py" and d["stage"] == "gradient_check"
    assert "flip" in d["message"] and "ip2" in d["message"] and "is wrong" in d["message"]
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []
    bad = post(client, "/api/v1/validate", network=FLIP_NET, layer=LAYERS, gradient_check="sometimes")
    # /validate answers 200 with the report, valid or not (API.md).
    assert bad.status_code == 200 and bad.get_json()["ok"] is False
    assert bad.get_json()["errors"][0]["field"] == "gradient_check"
    assert post(client, "/api/v1/jobs", network=FLIP_NET, layer=LAYERS, gradient_check="x").status_code == 400


def test_page_shows_verdicts_and_pictures(client):
    html = client.get("/jobs/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    assert 'name="gradient_check"' in html
    data = {"csrf_token": token, "action": "validate", "dataset": "sample-digits", "train_epochs": "1",
            "solver_type": "SGD", "lr_policy": "fixed", "learning_rate": "0.01", "device": "cpu",
            "gradient_check": "warn",
            "network": (io.BytesIO(FLIP_NET.encode()), "flip.prototxt"),
            "python_layer": (io.BytesIO(LAYERS.encode()), "layers.py")}
    resp = client.post("/jobs/new", data=data, content_type="multipart/form-data")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Valid: every layer built and ran." in html
    section = html[html.index('id="gradient-check"'):]
    rows = re.findall(r'<tr data-verdict="(\w+)"><td><code>(\w+)</code>', section)
    assert ("wrong", "flip") in rows and ("skipped", "blank") in rows and ("skipped", "accuracy") in rows
    assert "the sign is flipped" in section
    view = section[section.index('data-layer="blank"'):]
    assert view.count('<img src="data:image/png;base64,') == 6   # 3 examples, bottom and top


def test_seed_layer_is_skipped_cheaply(client):
    report = post(client, "/api/v1/validate").get_json()
    assert report["ok"] is True
    assert report["gradient_check"] == [{
        "layer": "accuracy", "blob": None, "max_rel_error": None, "verdict": "skipped",
        "reason": "not in the train net (only val): training never runs its backward"}]
    # No extra pass: the val net's blobs still hold the validator's last batch.
    assert report["layer_check_ms"] < 100
    (view,) = report["layer_views"]
    assert view["layer"] == "accuracy" and view["stage"] == "val" and view["image"] is False
    acc = next(b for b in view["blobs"] if b["role"] == "top")
    assert acc["shape"] == [1] and 0 <= acc["min"] <= 1
    labels = next(b for b in view["blobs"] if b["blob"] == "label")
    assert labels["shape"] == [32] and labels["nan"] == 0
