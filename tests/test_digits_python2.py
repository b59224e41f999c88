"""Issue 23, item 5: Python 2 layer files on the DIGITS routes are converted
before validation (app.caffe.py2convert), with Python 2's `/` kept.

DIGITS's own tutorial layer (examples/python-layer: BlankSquareLayer,
verbatim in tests/data/digits/; source and licence in its README.md) sent
through DIGITS's create route trains to Done; the job says what changed
(JSON, a diff on its page), keeps the upload as sent for download, and
classify_one's visualization shows the square it blanks. /api/v1 refuses
such a file by default (the hints, as before) and converts it on request;
a clean Python 3 file is stored as sent. One app and worker for the module
(real sandbox, real Caffe)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from app.core.workspace import LAYER_FILE, LAYER_PY2_ORIGINAL
from digits_http import png
from helpers import (BLANK_SQUARE, LENET_SEED, SEED_LAYER, Workers, client_for, lenet_with_blank_square, make_app,
                     post, wait_for)

NET = lenet_with_blank_square()
SIDE, HALF = 28, 14     # sample-digits' images; the layer blanks a HALF x HALF square


@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_datasets):
    """(app, client) with a worker, for the whole module."""
    app = make_app(tmp_path_factory.mktemp("py2"), sample_datasets)
    workers = Workers(app)
    workers.start()
    try:
        yield app, client_for(app, "admin")
    finally:
        for w in workers.procs:
            w.stop()
        from app.services.inference import warm_pool
        warm_pool.retire_all()
        app.extensions["store"].engine.dispose()


def _digits_create(client, layer: str, **extra):
    form = {"model_name": "blank square", "dataset": "sample-digits", "method": "custom", "custom_network": NET,
            "python_layer_from_client": "true", "framework": "caffe", "train_epochs": "1", "batch_size": "64",
            "random_seed": "7", "python_layer_client_file": (io.BytesIO(layer.encode()), "digits_python_layers.py"),
            **extra}
    return client.post("/models/images/classification.json", data=form, content_type="multipart/form-data")


def _inked_image() -> np.ndarray:
    """A sample digit with ink in every HALF x HALF window the layer may
    blank (each holds the centre pixel): in it, a uniform window can only
    be the layer's doing."""
    from app.caffe.datasets import sample_digits_arrays
    images, _ = sample_digits_arrays()
    for im in images[:, 0]:
        if all(np.ptp(im[r:r + HALF, c:c + HALF]) > 100 for r in range(HALF) for c in range(HALF)):
            return im
    raise AssertionError("no sample digit has ink in every window")


def _uniform_windows(picture: np.ndarray) -> list[tuple[int, int]]:
    return [(r, c) for r in range(HALF) for c in range(HALF) if np.ptp(picture[r:r + HALF, c:c + HALF]) == 0]


def test_blank_square_layer_verbatim_trains_on_the_digits_route(served):
    app, client = served
    r = _digits_create(client, BLANK_SQUARE)
    assert r.status_code == 200, r.get_json()
    created = r.get_json()
    assert created["python2_converted"] is True
    job = wait_for(client, created["id"], {"done", "error"}, timeout=300)
    assert job["status"] == "done", job["error"]
    assert job["python2_converted"] is True
    assert job["python2_changes"] == ["a / b → old_div(a, b), Python 2's division (lines 21, 22, 24, 25)"]
    model = client.get(f"/models/{created['id']}.json").get_json()
    assert model["python2_converted"] is True and model["python2_original"] == job["python2_original"]

    # The original as uploaded, byte for byte; the converted file beside it.
    original = client.get(job["python2_original"])
    assert original.status_code == 200 and original.data == BLANK_SQUARE.encode()
    assert job["python2_original"] == f"/models/{created['id']}/files/{LAYER_PY2_ORIGINAL}"
    stored = client.get(f"/models/{created['id']}/files/{LAYER_FILE}").get_data(as_text=True)
    assert "random.randrange(old_div(height, 2))" in stored and "def old_div(a, b):" in stored

    page = client.get(f"/jobs/{created['id']}").get_data(as_text=True)
    assert '<details id="python2-diff"' in page and "converted from Python 2" in page
    assert "-        h_offset = random.randrange(height/2)" in page
    assert "+        h_offset = random.randrange(old_div(height, 2))" in page
    assert f'href="{job["python2_original"]}"' in page

    # DIGITS's tutorial: test one image with visualizations; the layer's
    # output (LeNet's "scaled", in place) has a blank square.
    image = _inked_image()
    assert _uniform_windows(image) == []
    r = client.post(f"/models/images/classification/classify_one.json?job_id={created['id']}",
                    data={"image_file": (io.BytesIO(png(image)), "digit.png"), "show_visualizations": "y"},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.get_data(as_text=True)[:2000]
    vis = {(v["name"], v["type"]): v for v in r.get_json()["visualizations"]}
    scaled = vis[("scaled", "Activation")]
    assert scaled["shape"] == [1, SIDE, SIDE]
    from PIL import Image
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(scaled["image"].split(",", 1)[1]))))
    step = picture.shape[0] // (SIDE + 1)          # one map drawn in a (SIDE + 1)-square tile, scaled up
    activation = picture[::step, ::step][:SIDE, :SIDE]
    assert _uniform_windows(activation), "no blank square in the layer's output"
    assert np.ptp(activation) > 0


def test_api_refuses_python2_by_default_and_converts_on_request(served):
    _, client = served
    r = post(client, "/api/v1/jobs", network=NET, layer=BLANK_SQUARE)
    assert r.status_code == 400
    d = r.get_json()["details"][0]
    assert "slice indices must be integers" in d["message"] and "`/` is true division" in d["hint"]
    assert post(client, "/api/v1/jobs", network=NET, layer=BLANK_SQUARE, python2="maybe").status_code == 400

    r = post(client, "/api/v1/jobs", network=NET, layer=BLANK_SQUARE, python2="convert", max_iter=1)
    assert r.status_code == 201, r.get_json()
    job = r.get_json()
    assert job["python2_converted"] is True and job["python2_changes"]
    assert client.get(job["python2_original"]).data == BLANK_SQUARE.encode()
    # Several files: conversion is refused when one of them is Python 2.
    r = client.post("/api/v1/validate", content_type="multipart/form-data", data={
        "network": (io.BytesIO(NET.encode()), "net.prototxt"), "dataset": "sample-digits", "python2": "convert",
        "python_layer": [(io.BytesIO(BLANK_SQUARE.encode()), "digits_python_layers.py"),
                         (io.BytesIO(b"HALF = 1\n"), "tools.py")]})
    d = r.get_json()["errors"][0]
    assert (d["field"], d["file"]) == ("python2", "digits_python_layers.py") and "single layer file" in d["message"]
    # The new-job page offers the choice, refuse first.
    page = client.get("/jobs/new").get_data(as_text=True)
    assert 'name="python2"' in page and page.index('value="refuse"') < page.index('value="convert"')
    # A form's "refuse" on the DIGITS route keeps today's behaviour: an Error job.
    r = _digits_create(client, BLANK_SQUARE, python2="refuse")
    assert r.status_code == 200 and r.get_json()["status"] == "Error"
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code in (200, 204)


def test_clean_python3_layer_is_stored_as_sent(served):
    _, client = served
    # The seed layer divides a float (num_correct = 0.0): counted as Python 2
    # by the rule (a `/` without the __future__ import), its meaning kept.
    clean = SEED_LAYER.replace("num_correct / len(ground_truth)", "num_correct * len(ground_truth) ** -1")
    assert "/" not in clean
    for layer in (clean, "from __future__ import division\n" + SEED_LAYER):
        r = client.post("/models/images/classification.json", data={
            "model_name": "clean", "dataset": "sample-digits", "method": "custom",
            "custom_network": LENET_SEED, "train_epochs": "1", "max_iter": "1",
            "python_layer_client_file": (io.BytesIO(layer.encode()), "layers.py")},
            content_type="multipart/form-data")
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["python2_converted"] is False and "python2_original" not in body
        assert client.get(f"/models/{body['id']}/files/{LAYER_FILE}").data == layer.encode()
        assert client.get(f"/models/{body['id']}/files/{LAYER_PY2_ORIGINAL}").status_code == 404
        assert client.get(f"/api/v1/jobs/{body['id']}").get_json()["python2_converted"] is False
        assert client.delete(f"/api/v1/jobs/{body['id']}").status_code in (200, 204)
