"""DIGITS's medical-imaging walkthrough, small enough for 2 cores: synthetic
feature/label pairs (bright discs and squares on textured noise) → a
segmentation dataset from the archive → a small FCN with a Python Dice layer
(tests/data/dice_layer.py) → the dice curve rises → masks of held-out images
match the curve's last value → the overlay page renders in real Chromium.
Real Caffe, the real sandbox, the real server and worker."""
from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.caffe import segmentation
from app.core.archives import ArchiveError
from helpers import DATA, ROOT, infer_server_pids
from helpers import browser_login as _login, wait_in_browser as _wait


SIZE = 32
FCN = (ROOT / "app" / "caffe" / "standard_networks" / "fcn.prototxt").read_text()
DICE_NET = FCN + """
layer {
  name: "dice"
  type: "Python"
  bottom: "score_map"
  bottom: "label"
  top: "dice"
  python_param { module: "digits_python_layers" layer: "Dice" }
  exclude { stage: "deploy" }
}
"""


def shapes_pair(rng, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A textured-noise image with 1-2 bright discs/squares; label 1 on them."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.kron(rng.uniform(0, 110, (size // 4, size // 4)), np.ones((4, 4))) + rng.normal(0, 20, (size, size))
    lab = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 3)):
        cx, cy = rng.integers(6, size - 6, 2)
        r = rng.integers(3, 7)
        disc = rng.random() < 0.5
        lab[((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) if disc else ((abs(xx - cx) <= r) & (abs(yy - cy) <= r))] = 1
    img = np.where(lab > 0, rng.uniform(170, 230) + rng.normal(0, 15, (size, size)), img)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def png(arr: np.ndarray, palette: bool = False) -> bytes:
    from PIL import Image
    im = Image.fromarray(arr, "P" if palette else None)
    if palette:
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def archive(pairs: list, extra: dict | None = None, classes: str | None = "background\nshape\n") -> bytes:
    """A zip in the layout users upload: shapes/images, shapes/labels, classes.txt."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (img, lab) in enumerate(pairs):
            zf.writestr(f"shapes/images/{i:04d}.png", png(img))
            zf.writestr(f"shapes/labels/{i:04d}.png", png(lab, palette=True))
        if classes is not None:
            zf.writestr("shapes/classes.txt", classes)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


PARAMS = {"image_width": SIZE, "image_height": SIZE, "channels": 1, "val_percent": 20, "name": "t",
          "max_files": 1000, "max_bytes": 64 << 20, "type": "segmentation"}


def build_error(tmp_path: Path, data: bytes) -> str:
    """The contained builder's own code on ``data``: the refusal's message."""
    from app.contained.build_dataset import build_segmentation
    (tmp_path / "a.zip").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(ArchiveError) as err:
        build_segmentation(str(tmp_path / "a.zip"), str(out), PARAMS)
    return str(err.value)


def _build(tmp_path: Path, data: bytes) -> dict:
    import shutil
    from app.contained.build_dataset import build_segmentation
    (tmp_path / "ok.zip").write_bytes(data)
    shutil.rmtree(tmp_path / "ok", ignore_errors=True)
    (tmp_path / "ok").mkdir()
    return build_segmentation(str(tmp_path / "ok.zip"), str(tmp_path / "ok"), PARAMS)


def test_bad_segmentation_archives_name_the_file(tmp_path):
    rng = np.random.default_rng(5)
    pairs = [shapes_pair(rng) for _ in range(4)]
    img, lab = pairs[0]
    # A label of another size than its image.
    msg = build_error(tmp_path, archive(pairs[1:], {"shapes/images/0100.png": png(img),
                                                    "shapes/labels/0100.png": png(lab[:20, :20], True)}))
    assert "shapes/labels/0100.png is 20x20" in msg and "shapes/images/0100.png is 32x32" in msg
    # A class beyond classes.txt (palette index 3 of 2 classes).
    bad = lab.copy()
    bad[0, 0] = 3
    msg = build_error(tmp_path, archive(pairs[1:], {"shapes/images/0100.png": png(img),
                                                    "shapes/labels/0100.png": png(bad, True)}))
    assert "shapes/labels/0100.png holds class 3" in msg and "2 classes" in msg
    # A missing pair, either way round.
    msg = build_error(tmp_path, archive(pairs[1:], {"shapes/images/0100.png": png(img)}))
    assert "shapes/images/0100.png has no label image" in msg
    msg = build_error(tmp_path, archive(pairs[1:], {"shapes/labels/0100.png": png(lab, True)}))
    assert "shapes/labels/0100.png has no feature image" in msg
    # Nothing but background anywhere.
    msg = build_error(tmp_path, archive([(i, np.zeros_like(lb)) for i, lb in pairs]))
    assert "all background" in msg and "shapes/labels/0000.png" in msg
    # 255 is "ignore" (VOC's borders), not a class beyond the list.
    edge = lab.copy()
    edge[0, :] = 255
    info = _build(tmp_path, archive(pairs[1:], {"shapes/images/0100.png": png(img),
                                                "shapes/labels/0100.png": png(edge, True)}))
    assert info["num_classes"] == 2
    # Grayscale indices and RGB pictures in classes.txt's colours read as the same classes.
    from PIL import Image
    assert (segmentation.label_indices(Image.fromarray(lab), "g.png", None) == lab).all()
    rgb = np.stack([lab * 200, lab * 10, lab * 0], axis=-1).astype(np.uint8)
    names, colours = segmentation.parse_classes("bg 0 0 0\nshape 200 10 0\n")
    assert (segmentation.label_indices(Image.fromarray(rgb), "c.png", colours) == lab).all()
    rgb[3, 4] = [1, 2, 3]
    with pytest.raises(ArchiveError, match=r"c.png: pixel \(4, 3\) has colour \(1, 2, 3\)"):
        segmentation.label_indices(Image.fromarray(rgb), "c.png", colours)
    # The good archive builds: two LMDBs per stage, classes, palette, samples.
    info = _build(tmp_path, archive(pairs))
    out = tmp_path / "ok"
    assert info["type"] == "segmentation" and info["labels"] == ["background", "shape"]
    assert info["palette"] == [[0, 0, 0], [255, 0, 0]] and info["train_count"] + info["val_count"] == 4
    assert all((out / d / k / "data.mdb").is_file() for d in ("train_db", "val_db") for k in ("features", "labels"))


def classifier_weights(tmp_path: Path) -> bytes:
    """A small classification net's .caffemodel whose conv1/conv2 have the
    FCN's shapes (its classifier `fc` has no counterpart there)."""
    import caffe
    (tmp_path / "cls.prototxt").write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 10 } }
""")
    caffe.set_random_seed(3)
    net = caffe.Net(str(tmp_path / "cls.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "cls.caffemodel"))
    return (tmp_path / "cls.caffemodel").read_bytes()


def _wait_json(fetch, done, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {value}")
        time.sleep(0.3)


@pytest.mark.slow
def test_segmentation_walkthrough_dice_curve_masks_and_overlay_page(server, browser, tmp_path):
    from helpers import api as http_api
    url, instance = server
    creds = dict(line.split(": ", 1) for line in (instance / "initial-credentials.txt").read_text().splitlines())

    def api(method: str, path: str, fields: dict | None = None):
        return http_api(url, creds["token"], method, path, fields)

    rng = np.random.default_rng(0)
    train = [shapes_pair(rng) for _ in range(240)]
    held_out = [shapes_pair(rng) for _ in range(16)]
    t0 = time.monotonic()
    common = {"type": (None, b"segmentation"), "image_width": (None, str(SIZE).encode()),
              "image_height": (None, str(SIZE).encode()), "channels": (None, b"1"), "val_percent": (None, b"20")}
    ds = api("POST", "/api/v1/datasets", dict(common, name=(None, b"shapes"), archive=("shapes.zip", archive(train))))
    # The same checks through the service: a missing pair is the build's error.
    broken = api("POST", "/api/v1/datasets", dict(common, name=(None, b"broken"), archive=(
        "b.zip", archive(train[:3], {"shapes/images/0999.png": png(train[0][0])}))))
    ds = _wait_json(lambda: api("GET", f"/api/v1/datasets/{ds['id']}"), lambda d: d["status"] in ("done", "error"), 60)
    assert ds["status"] == "done", ds
    assert ds["type"] == "segmentation" and ds["labels"] == ["background", "shape"] and ds["image_shape"] == [1, 32, 32]
    broken = _wait_json(lambda: api("GET", f"/api/v1/datasets/{broken['id']}"),
                        lambda d: d["status"] in ("done", "error"), 60)
    assert broken["status"] == "error" and "shapes/images/0999.png has no label image" in broken["error"]
    t_dataset = time.monotonic() - t0

    job = api("POST", "/api/v1/jobs", {
        # Starting weights from a classification net, copied by layer name (DIGITS's FCN-from-AlexNet).
        "weights": ("classifier.caffemodel", classifier_weights(tmp_path)),
        "network": ("fcn_dice.prototxt", DICE_NET.encode()), "python_layer": ("dice.py", (DATA / "dice_layer.py").read_bytes()),
        "dataset": (None, ds["id"].encode()), "train_epochs": (None, b"6"), "val_interval": (None, b"0.5"),
        "solver_type": (None, b"ADAM"), "learning_rate": (None, b"0.01"), "random_seed": (None, b"1"),
        "shuffle": (None, b"true")})
    t1 = time.monotonic()
    job = _wait_json(lambda: api("GET", f"/api/v1/jobs/{job['id']}"), lambda j: j["status"] in (
        "done", "error", "aborted", "interrupted"), 240)
    t_train = time.monotonic() - t1
    assert job["status"] == "done", job["error"]
    assert job["start_weights"]["kind"] == "upload", job["start_weights"]
    events = [json.loads(line) for line in (instance.parent / "jobs" / job["id"] / "output" / "metrics.jsonl")
              .read_text().splitlines()]
    loaded = next(e for e in events if e["type"] == "weights")
    assert loaded["copied"] == ["conv1", "conv2"] and "score" in loaded["fresh"], loaded
    metrics = api("GET", f"/api/v1/jobs/{job['id']}/metrics")
    curve = [p["dice"] for p in metrics["val"]]
    assert len(curve) >= 5 and all("dice" in p for p in metrics["train"])   # both nets chart the Python top
    first, last = curve[0], curve[-1]
    print(f"\nsegmentation: dataset {t_dataset:.1f}s, training {t_train:.1f}s ({job['max_iter']} iterations), "
          f"val dice {first:.3f} -> {last:.3f} ({', '.join(f'{v:.2f}' for v in curve)})")
    assert last > 0.8 and last - first > 0.1      # it rises, from an untrained net's level

    # Held-out images: masks from the API, Dice against their own labels.
    # In bulk: the held-out images as one archive.
    bulk = io.BytesIO()
    with zipfile.ZipFile(bulk, "w") as zf:
        for i, (img, _) in enumerate(held_out):
            zf.writestr(f"held/{i:02d}.png", png(img))
    result = _segment(url, creds["token"], job["id"], [("archive", "held.zip", bulk.getvalue())])
    assert [p["filename"] for p in result["predictions"]] == [f"{i:02d}.png" for i in range(len(held_out))]
    from PIL import Image
    import base64
    scores = []
    for (img, lab), pred in zip(held_out, result["predictions"]):
        with Image.open(io.BytesIO(base64.b64decode(pred["mask_png"]))) as mask:
            assert mask.mode == "P" and mask.size == (SIZE, SIZE)
            scores.append(segmentation.dice(np.asarray(mask), lab))
        shares = {c["label"]: c["share"] for c in pred["classes"]}
        assert abs(sum(shares.values()) - 1) < 1e-3 and 0 < shares["shape"] < 0.6
    held = float(np.mean(scores))
    print(f"segmentation: held-out dice {held:.3f} over {len(scores)} images (curve's last {last:.3f})")
    assert abs(held - last) < 0.05
    raw = _segment(url, creds["token"], job["id"], [("image", "one.png", png(held_out[0][0]))], "?format=png")
    assert raw.startswith(b"\x89PNG")

    # Warm (issue 24): the requests above were answered by one warm process,
    # still alive, which answers again; a cold run (INFER_WARM=0, the same
    # service function on the same files) gives the very same masks.
    # (One per gunicorn worker at most: serve runs two, each its own pool.)
    servers = infer_server_pids(instance.parent / "jobs" / job["id"])
    assert 1 <= len(servers) <= 2, servers
    again = _segment(url, creds["token"], job["id"], [("archive", "held.zip", bulk.getvalue())])
    after = infer_server_pids(instance.parent / "jobs" / job["id"])
    assert again == result and set(servers) <= set(after) and len(after) <= 2, (servers, after)
    from app.web import create_app
    from app.services.inference import segment as segment_service
    cold_app = create_app({"INSTANCE_DIR": str(instance), "JOBS_DIR": str(instance.parent / "jobs"),
                           "INFER_WARM": 0, "PRIVSEP": False})
    try:
        ctx = cold_app.extensions["ctx"]
        cold = segment_service.segment(ctx, ctx.store.get_job(job["id"]), [], None, archive=io.BytesIO(bulk.getvalue()))
    finally:
        cold_app.extensions["store"].engine.dispose()
    assert [(p["filename"], p["mask_png"], p["classes"]) for p in cold["predictions"]] == \
        [(p["filename"], base64.b64decode(p["mask_png"]), p["classes"]) for p in result["predictions"]]

    # The job page's form gives the overlay page in a real browser.
    from selenium.webdriver.common.by import By
    _login(browser, url, instance)
    # The dataset page shows image/label pairs; the job form's type switch.
    browser.get(f"{url}/datasets/{ds['id']}")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".samples figure.pair")) == 6
    assert "shape (1)" in browser.find_element(By.ID, "class-share").text
    browser.get(f"{url}/jobs/new")
    browser.find_element(By.CSS_SELECTOR, "#job-type input[value=segmentation]").click()
    visible = browser.execute_script("return Array.from(document.querySelectorAll('#standard_network option'))"
                                     ".filter(o => !o.disabled && o.value).map(o => o.value)")
    assert visible == ["fcn"]
    assert browser.find_element(By.ID, "dataset").get_attribute("value") == ds["id"]
    assert not browser.find_element(By.ID, "crop_size").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#job-type input[value=classification]").click()
    assert browser.find_element(By.ID, "dataset").get_attribute("value") == "sample-digits"
    browser.get(f"{url}/jobs/{job['id']}")
    (tmp_path / "held0.png").write_bytes(png(held_out[0][0]))
    _wait(lambda: browser.find_element(By.ID, "btn-infer").text == "Segment", timeout=30)
    browser.find_element(By.CSS_SELECTOR, "#infer-form input[type=file]").send_keys(str(tmp_path / "held0.png"))
    browser.find_element(By.ID, "btn-infer").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#segmentations img.overlay"), timeout=60)
    assert _wait(lambda: browser.execute_script(
        "var i = document.querySelector('#segmentations img.overlay'); return i.complete && i.naturalWidth"), 10) == SIZE
    text = browser.find_element(By.ID, "segmentations").text
    assert "held0.png" in text and "shape" in text and "%" in text
    # Dice as "the" metric of the job list.
    browser.get(f"{url}/?metric=val:dice")
    assert browser.find_element(By.ID, "metric-head").text == "val dice"
    shown = browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job["id"]}"] td.metric').text
    assert abs(float(shown) - last) < 1e-3


def _segment(url: str, token: str, job_id: str, fields: list, query: str = ""):
    import uuid
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n\r\n'
                    .encode() + data + b"\r\n" for field, name, data in fields) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/api/v1/jobs/{job_id}/segment{query}", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            data = resp.read()
    except urllib.error.HTTPError as err:
        raise AssertionError(err.read()[:2000]) from None
    return data if query else json.loads(data)


def test_python_layer_tops_are_charted_even_when_consumed(tmp_path, fresh_layer_module):
    """A metric layer's top that another layer reads is no net output, yet
    it is recorded (app.contained.train.metric_blobs)."""
    import sys
    import caffe
    from app.contained.train import metric_blobs
    sys.path.insert(0, str(DATA))
    (tmp_path / "n.prototxt").write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 4 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }
layer { name: "dice" type: "Python" bottom: "data" bottom: "label" top: "dice"
        python_param { module: "dice_layer" layer: "Dice" } }
layer { name: "quiet" type: "Silence" bottom: "dice" }
layer { name: "out" type: "Power" bottom: "data" top: "out" }
""")
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
    assert "dice" not in net.outputs
    assert metric_blobs(net) == ["out", "dice"]
    net.blobs["data"].data[:, 1] = 1.0          # predicts the object everywhere
    net.blobs["label"].data[...] = 0
    net.blobs["label"].data[:, :, :2] = 1       # half the pixels are the object
    net.forward()
    assert abs(float(net.blobs["dice"].data[0]) - 2 * 8 / (16 + 8)) < 1e-6


def test_fcn_validates_on_a_segmentation_dataset_and_crop_is_refused(app, client, tmp_path):
    """Two Data layers fed by top name (features / labels), Deconvolution +
    Crop, the Dice layer; a crop (which would cut images but not labels) is refused."""
    from helpers import post
    rng = np.random.default_rng(1)
    pairs = [shapes_pair(rng) for _ in range(8)]
    decoded = segmentation.decode_pairs(
        [(p, d) for p, d in _entries(archive(pairs))], PARAMS)
    dest = Path(app.config["JOBS_DIR"]) / "datasets" / "seg8"
    dest.mkdir(parents=True)
    info = segmentation.write_segmentation(dest, decoded, 25, "seg 8")
    app.extensions["store"].upsert_dataset("seg8", name="seg 8", owner=None, status="done", info=info)
    layer = (DATA / "dice_layer.py").read_text()
    report = post(client, "/api/v1/validate", network=DICE_NET, layer=layer, dataset="seg8", batch_size=2).get_json()
    assert report["ok"] is True, [e["message"] for e in report["errors"]]
    shapes = {lay["name"]: lay["top_shapes"] for lay in report["layers"]}
    assert shapes["train-label"] == [[2, 1, 32, 32]] and shapes["crop"] == [[2, 2, 32, 32]]
    assert shapes["dice"] == [[1]]
    bad = post(client, "/api/v1/validate", network=DICE_NET, layer=layer, dataset="seg8", crop_size=16)
    body = bad.get_json()
    assert body["ok"] is False and body["errors"][0]["field"] == "crop_size", body
    assert "not their labels" in body["errors"][0]["message"]


def _entries(data: bytes):
    from pathlib import PurePosixPath
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(PurePosixPath(n), zf.read(n)) for n in zf.namelist()]
