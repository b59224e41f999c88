"""Fine-tuning and DIGITS's solver/data options (issue 10), end to end with
real Caffe, the real sandbox and the real worker: a previous job's weights,
kept pretrained models, renamed layers for a new class count, sweeps, batch
accumulation, crop / mean / shuffle."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import LENET_SEED, SEED_LAYER, client_for, layer_line, post, wait_for

pytestmark = pytest.mark.slow


def _first_loss(app, job_id: str) -> float:
    path = Path(app.config["JOBS_DIR"]) / job_id / "output" / "metrics.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "train":
            return rec["loss"]
    raise AssertionError("no training record")


def _events(app, job_id: str) -> list[dict]:
    path = Path(app.config["JOBS_DIR"]) / job_id / "output" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _post_large(client, url: str, data: dict):
    """POST multipart through the test client, closing the temporary file
    werkzeug.test spools a body over 500 KB into (it never closes it)."""
    from werkzeug.test import EnvironBuilder
    builder = EnvironBuilder(path=url, method="POST", data=data, environ_base=client.environ_base)
    environ = builder.get_environ()
    try:
        return client.open(environ)
    finally:
        environ["wsgi.input"].close()
        builder.close()


@pytest.fixture
def five_digits(app) -> str:
    """A 5-class dataset (digits 0-4 of sample-digits), stored as the
    service stores one: a new class count for the same kind of image."""
    from app.caffe.datasets import sample_digits_arrays, write_dataset
    images, labels = sample_digits_arrays()
    keep = labels < 5
    dest = Path(app.config["JOBS_DIR"]) / "datasets" / "five"
    info = write_dataset(dest, images[keep], labels[keep], [str(i) for i in range(5)], 25, "five digits")
    app.extensions["store"].upsert_dataset("five", name="five digits", owner=None, status="done", info=info)
    return "five"


def test_fine_tuning_starts_where_the_previous_job_ended(app, client, worker, five_digits):
    # A trained job, then: a fresh start and a start from its last snapshot,
    # same data and seed. Fine-tuned, the first loss is far lower.
    base = post(client, "/api/v1/jobs", train_epochs=3, random_seed=1, learning_rate=0.05).get_json()
    base = wait_for(client, base["id"], {"done", "error"}, timeout=180)
    assert base["status"] == "done", base
    # The page's "Use as starting point" opens the form with this job chosen.
    page = client.get(f"/jobs/{base['id']}").get_data(as_text=True)
    assert f'href="/jobs/new?previous_job={base["id"]}"' in page and "Use as starting point" in page
    form = client.get(f"/jobs/new?previous_job={base['id']}").get_data(as_text=True)
    assert re.search(rf'id="previous_job"[^>]*value="{base["id"]}"', form), form[:200]
    fresh = post(client, "/api/v1/jobs", max_iter=3, random_seed=2).get_json()
    tuned = post(client, "/api/v1/jobs", network=None, layer=None, max_iter=3, random_seed=2,
                 previous_job=base["id"], previous_snapshot=-1).get_json()
    assert tuned["start_weights"]["kind"] == "previous" and tuned["start_weights"]["epoch"] == 3.0, tuned
    assert tuned["dataset"] == "sample-digits"
    # The previous job's Python layer came along (the network uses it).
    inp = Path(app.config["JOBS_DIR"]) / tuned["id"] / "input"
    assert (inp / "digits_python_layers.py").read_text() == SEED_LAYER
    for job in (fresh, tuned):
        assert wait_for(client, job["id"], {"done", "error"}, timeout=120)["status"] == "done"
    fresh_loss, tuned_loss = _first_loss(app, fresh["id"]), _first_loss(app, tuned["id"])
    print(f"first training loss: fresh {fresh_loss:.4f}, fine-tuned {tuned_loss:.4f}")
    assert tuned_loss < 0.5 * fresh_loss and fresh_loss > 1.5, (fresh_loss, tuned_loss)
    loaded = next(e for e in _events(app, tuned["id"]) if e["type"] == "weights")
    assert "conv1" in loaded["copied"] and "ip2" in loaded["copied"] and loaded["fresh"] == []

    # A snapshot by epoch, as DIGITS names them; an unknown one is a 400 listing them.
    bad = post(client, "/api/v1/jobs", network=None, layer=None, max_iter=3, previous_job=base["id"],
               previous_snapshot=7).get_json()
    assert bad["error"] == "invalid_request" and "1, 2, 3;" in bad["message"], bad

    # A new class count: the last InnerProduct keeps its name -> Caffe refuses
    # to copy it (the 400 names the layer and its line); renamed, it starts fresh.
    mismatch = post(client, "/api/v1/jobs", max_iter=3, dataset=five_digits, previous_job=base["id"]).get_json()
    detail = mismatch["details"][0]
    assert detail["layer"] == "ip2" and detail["line"] == layer_line(LENET_SEED, "ip2"), mismatch
    assert "shape mismatch" in detail["message"]
    renamed = LENET_SEED.replace('name: "ip2"', 'name: "ip2-five"')
    five = post(client, "/api/v1/jobs", network=renamed, max_iter=20, dataset=five_digits,
                previous_job=base["id"], learning_rate=0.02).get_json()
    five = wait_for(client, five["id"], {"done", "error"}, timeout=120)
    assert five["status"] == "done", five
    loaded = next(e for e in _events(app, five["id"]) if e["type"] == "weights")
    assert loaded["fresh"] == ["ip2-five"] and "conv1" in loaded["copied"]

    # Someone else's job is not a starting point (and not even named).
    other = client_for(app, "mallory")
    resp = post(other, "/api/v1/jobs", network=None, layer=None, max_iter=3, previous_job=base["id"])
    assert resp.status_code == 400 and "does not exist" in resp.get_json()["message"]

    # Kept as a pretrained model: upload the snapshot, start a job from it.
    model = (Path(app.config["JOBS_DIR"]) / base["id"] / "output").glob("snapshot_iter_*.caffemodel")
    blob = max(model, key=lambda p: int(p.stem.rsplit("_", 1)[1])).read_bytes()
    kept = _post_large(client, "/api/v1/pretrained", {"name": "lenet digits",
                                                      "weights": (io.BytesIO(blob), "lenet.caffemodel")})
    assert kept.status_code == 201, kept.get_json()
    kept = kept.get_json()
    assert {la["name"] for la in kept["layers"]} >= {"conv1", "conv2", "ip1", "ip2"}
    assert [m["id"] for m in client.get("/api/v1/pretrained").get_json()["pretrained"]] == [kept["id"]]
    assert other.get(f"/api/v1/pretrained/{kept['id']}").status_code == 404
    assert other.get("/api/v1/pretrained").get_json()["pretrained"] == []
    from_kept = post(client, "/api/v1/jobs", max_iter=2, pretrained_model=kept["id"]).get_json()
    assert from_kept["start_weights"]["kind"] == "pretrained", from_kept
    assert wait_for(client, from_kept["id"], {"done", "error"}, timeout=120)["status"] == "done"
    assert _first_loss(app, from_kept["id"]) < 0.5 * fresh_loss

    # Uploaded with the job directly; and garbage is refused, parsed in the sandbox.
    direct = _post_large(client, "/api/v1/jobs", {
        "network": (io.BytesIO(LENET_SEED.encode()), "n.prototxt"), "dataset": "sample-digits", "max_iter": "2",
        "python_layer": (io.BytesIO(SEED_LAYER.encode()), "l.py"),
        "weights": (io.BytesIO(blob), "w.caffemodel")})
    assert direct.status_code == 201 and direct.get_json()["start_weights"]["kind"] == "upload"
    junk = client.post("/api/v1/pretrained", data={"name": "junk", "weights": (io.BytesIO(b"\x0b" * 999), "x")},
                       content_type="multipart/form-data")
    assert junk.status_code == 400 and junk.get_json()["details"][0]["field"] == "weights"
    assert client.delete(f"/api/v1/pretrained/{kept['id']}").status_code == 204
    assert client.get(f"/api/v1/pretrained/{kept['id']}").status_code == 404


def test_sweep_makes_one_job_per_combination_grouped(app, client):
    resp = post(client, "/api/v1/jobs", max_iter=2, learning_rate="0.01,0.02", batch_size="[16, 32]",
                group_name="lr x batch")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert len(body["jobs"]) == 4 and body["group"]["name"] == "lr x batch"
    assert sorted((j["settings"]["learning_rate"], j["settings"]["batch_size"]) for j in body["jobs"]) == [
        (0.01, 16), (0.01, 32), (0.02, 16), (0.02, 32)]
    assert all(j["group"]["jobs"] == [x["id"] for x in body["jobs"]] for j in body["jobs"])
    listed = client.get("/api/v1/jobs?ids=" + ",".join(body["group"]["jobs"])).get_json()
    assert len(listed["jobs"]) == 4
    # All or nothing: one bad combination and none is queued.
    before = len(client.get("/api/v1/jobs").get_json()["jobs"])
    bad = post(client, "/api/v1/jobs", max_iter=2, learning_rate="0.01,abc")
    assert bad.status_code == 400 and bad.get_json()["details"][0]["field"] == "learning_rate"
    assert len(client.get("/api/v1/jobs").get_json()["jobs"]) == before
    jobs_dir = Path(app.config["JOBS_DIR"])
    assert {p.name for p in jobs_dir.iterdir() if p.name not in ("datasets", ".scratch")} == set(
        body["group"]["jobs"])


def test_accumulation_crop_mean_and_shuffle_train_and_infer(app, client, worker):
    resp = post(client, "/api/v1/jobs", train_epochs=1, batch_size=32, iter_size=2, crop_size=24,
                use_mean="pixel", shuffle="true", random_seed=3)
    job = resp.get_json()
    assert resp.status_code == 201, job
    assert job["settings"] | {"iter_size": 2, "crop_size": 24, "use_mean": "pixel", "shuffle": True} == \
        job["settings"]
    inp = Path(app.config["JOBS_DIR"]) / job["id"] / "input"
    from app.caffe.proto import caffe_pb2
    from google.protobuf import text_format
    sp = text_format.Parse((inp / "solver.prototxt").read_text(), caffe_pb2().SolverParameter())
    net = text_format.Parse((inp / "train_val.prototxt").read_text(), caffe_pb2().NetParameter())
    ds = app.extensions["store"].get_dataset("sample-digits")["info"]
    # Epochs count effective batches: 32 images x 2 accumulated per iteration.
    assert sp.iter_size == 2 and job["max_iter"] == int(np.ceil(ds["train_count"] / 64))
    data = [layer for layer in net.layer if layer.type == "Data"]
    assert all(layer.transform_param.crop_size == 24 and len(layer.transform_param.mean_value) == 1
               and not layer.transform_param.mean_file for layer in data)
    deploy = text_format.Parse((inp / "deploy.prototxt").read_text(), caffe_pb2().NetParameter())
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 1, 24, 24]
    job = wait_for(client, job["id"], {"done", "error"}, timeout=180)
    assert job["status"] == "done", job
    # Shuffle: the job trained on its own permutation of the train LMDB.
    import lmdb
    out = Path(app.config["JOBS_DIR"]) / job["id"] / "output" / "train_db_shuffled"
    src = Path(app.config["JOBS_DIR"]) / "datasets" / "sample-digits" / "train_db"

    def labels(path):
        env = lmdb.open(str(path), readonly=True, lock=False)
        with env.begin() as txn:
            got = [caffe_pb2().Datum.FromString(v).label for _, v in txn.cursor()]
        env.close()
        return got
    original, shuffled = labels(src), labels(out)
    assert sorted(original) == sorted(shuffled) and original != shuffled
    assert any(e["type"] == "shuffled" for e in _events(app, job["id"]))
    # Inference applies the same transform (centre crop, pixel mean) to a 28x28 image.
    from PIL import Image
    img = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(img, "PNG")
    img.seek(0)
    res = client.post(f"/api/v1/jobs/{job['id']}/infer", data={"image": (img, "zero.png")},
                      content_type="multipart/form-data")
    assert res.status_code == 200, res.get_json()


def test_bad_option_values_are_clear_errors(client):
    for fields, field in (({"use_mean": "median"}, "use_mean"), ({"shuffle": "maybe"}, "shuffle"),
                          ({"iter_size": "0"}, "iter_size"), ({"crop_size": "64"}, "crop_size")):
        resp = post(client, "/api/v1/validate" if field != "crop_size" else "/api/v1/jobs", **fields)
        body = resp.get_json()
        details = body.get("details") or body.get("errors")
        assert resp.status_code == 400 or body.get("ok") is False, body
        assert field in json.dumps(details), body


def test_sweep_from_the_form_lists_its_group(client):
    html = client.get("/jobs/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    resp = client.post("/jobs/new", data={
        "csrf_token": token, "action": "create", "dataset": "sample-digits", "max_iter": "2",
        "solver_type": "SGD", "lr_policy": "fixed", "learning_rate": "0.01, 0.05", "device": "cpu",
        "use_mean": "image", "group_name": "two rates", "previous_snapshot": "-1",
        "network": (io.BytesIO(LENET_SEED.encode()), "lenet.prototxt"),
        "python_layer": (io.BytesIO(SEED_LAYER.encode()), "accuracy_layer.py")}, content_type="multipart/form-data")
    assert resp.status_code == 303, resp.get_data(as_text=True)[-2000:]
    listing = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert listing.count("group: two rates") == 2 and "[lr=0.01]" in listing and "[lr=0.05]" in listing
