"""The job flow through HTTP with the real worker process and real Caffe."""
from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import time
from pathlib import Path

import numpy as np

from helpers import LENET_SEED, post, wait_for


def _create(client, **fields) -> dict:
    resp = post(client, "/api/v1/jobs", **fields)
    assert resp.status_code == 201, resp.get_json()
    assert resp.headers["Location"] == f"/api/v1/jobs/{resp.get_json()['id']}"
    return resp.get_json()


def test_seed_layer_lenet_trains_to_done(app, client, worker, tmp_path):
    job = _create(client, train_epochs=2, name="lenet seed")
    assert job["status"] == "queued"
    assert job["python_layer"] == {"module": "digits_python_layers", "original_filename": "my_layers.py",
                                   "classes": ["AccuracyLayer"]}
    job_dir = Path(app.config["JOBS_DIR"]) / job["id"]
    assert (job_dir / "input" / "digits_python_layers.py").read_bytes() == \
        (Path(__file__).parent / "data" / "seed_accuracy_layer.py").read_bytes()
    assert not (job_dir / "input" / "my_layers.py").exists()

    done = wait_for(client, job["id"], {"done", "error"})
    assert done["status"] == "done", done["error"]
    assert done["iteration"] == done["max_iter"] == 44   # 2 * ceil(1347 / 64): whole iterations per epoch, as DIGITS
    assert done["progress"] == 1.0 and done["epoch"] == 2.0   # whole iterations per epoch: exactly 2
    assert done["started_at"] and done["finished_at"]

    m = client.get(f"/api/v1/jobs/{job['id']}/metrics").get_json()
    assert {"iteration", "epoch", "loss"} <= set(m["train"][0])
    assert m["train"][-1]["loss"] < m["train"][0]["loss"]
    # accuracy comes from the seed's Python layer in the val net
    acc = [p["accuracy"] for p in m["val"]]
    assert len(acc) >= 2 and acc[-1] > 0.6, acc      # chance is 0.1
    assert done["metrics"]["val"]["accuracy"] == acc[-1]
    assert all("lr" in p and "iteration" in p for p in m["lr"])
    assert [s["iteration"] for s in done["snapshots"]] == [22, 44]   # one per epoch, 22 iterations each

    log = client.get(f"/api/v1/jobs/{job['id']}/log")
    assert log.status_code == 200 and int(log.headers["X-Log-Size"]) > 0
    tail = client.get(f"/api/v1/jobs/{job['id']}/log?offset={int(log.headers['X-Log-Size']) - 10}")
    assert len(tail.data) == 10

    with client.get(f"/api/v1/jobs/{job['id']}/download") as resp:
        assert resp.status_code == 200 and resp.mimetype == "application/gzip"
        data = resp.data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        assert {"network.prototxt", "train_val.prototxt", "deploy.prototxt", "solver.prototxt",
                "digits_python_layers.py", "snapshot_iter_44.caffemodel", "labels.txt",
                "mean.binaryproto", "info.json"} <= names
        assert all(m.isfile() and "/" not in m.name for m in tar.getmembers())
        tar.extractall(tmp_path / "model")
    info = json.loads((tmp_path / "model" / "info.json").read_text())
    assert info["id"] == job["id"] and info["status"] == "done"
    import caffe
    net = caffe.Net(str(tmp_path / "model" / "deploy.prototxt"),
                    str(tmp_path / "model" / "snapshot_iter_44.caffemodel"), caffe.TEST)
    assert net.blobs["data"].data.shape == (1, 1, 28, 28)
    out = net.forward()
    assert out["softmax"].shape == (1, 10)
    assert np.isclose(out["softmax"].sum(), 1.0, atol=1e-4)


def test_job_list_and_status_filter(client, worker):
    job = _create(client, max_iter=5)
    wait_for(client, job["id"], {"done"})
    assert [j["id"] for j in client.get("/api/v1/jobs").get_json()["jobs"]] == [job["id"]]
    assert client.get("/api/v1/jobs?status=running").get_json()["jobs"] == []
    assert client.get("/api/v1/jobs?status=bogus").status_code == 400
    assert client.get("/api/v1/jobs").headers["Cache-Control"] == "no-store"


def test_abort_snapshots_and_ends_aborted_then_resume(client, worker):
    job = _create(client, max_iter=4000, snapshot_interval=100)
    running = wait_for(client, job["id"], {"running"})
    deadline = time.monotonic() + 60
    while running["iteration"] < 5 and time.monotonic() < deadline:
        running = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    resp = client.post(f"/api/v1/jobs/{job['id']}/abort")
    assert resp.status_code == 202
    ended = wait_for(client, job["id"], {"aborted", "error", "done"})
    assert ended["status"] == "aborted"
    assert ended["snapshots"] and ended["snapshots"][-1]["iteration"] == ended["iteration"] < 4000
    assert client.post(f"/api/v1/jobs/{job['id']}/abort").status_code == 409

    last = ended["snapshots"][-1]["iteration"]
    resp = client.post(f"/api/v1/jobs/{job['id']}/resume")
    assert resp.status_code == 202 and resp.get_json()["status"] == "queued"
    again = wait_for(client, job["id"], {"running"})
    deadline = time.monotonic() + 60
    while again["iteration"] <= last + 2 and time.monotonic() < deadline:
        again = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert again["iteration"] > last   # continued from the solverstate, not from 0
    client.post(f"/api/v1/jobs/{job['id']}/abort")
    wait_for(client, job["id"], {"aborted"})


def test_clone_keeps_inputs_and_overrides_fields(client, worker):
    job = _create(client, max_iter=5, learning_rate=0.02, solver_type="ADAM")
    resp = client.post(f"/api/v1/jobs/{job['id']}/clone", data={"max_iter": "7"})
    assert resp.status_code == 201
    clone = resp.get_json()
    assert clone["id"] != job["id"] and clone["max_iter"] == 7
    assert clone["python_layer"]["classes"] == ["AccuracyLayer"]
    assert clone["python_layer"]["original_filename"] == "my_layers.py"
    assert clone["dataset"] == "sample-digits"
    assert wait_for(client, clone["id"], {"done", "error"})["status"] == "done"


def test_delete_removes_files_and_record(app, client, worker):
    job = _create(client, max_iter=3000)
    wait_for(client, job["id"], {"running"})
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert not (Path(app.config["JOBS_DIR"]) / job["id"]).exists()


def test_killed_worker_leaves_job_interrupted_not_running(app, client, worker_process):
    worker = worker_process
    job = _create(client, max_iter=5000, snapshot_interval=50)
    running = wait_for(client, job["id"], {"running"})
    deadline = time.monotonic() + 60
    while running["iteration"] < 3 and time.monotonic() < deadline:
        running = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    # SIGKILL: no cleanup at all. bwrap --die-with-parent takes the runner down.
    db = app.config["DATABASE_URL"].removeprefix("sqlite:///")
    live = [w for w in worker.procs if w.proc.poll() is None]
    assert len(live) == 1
    live[0].kill()   # returns once the worker is dead
    # Reading the job changes nothing: recovery is the next worker's.
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["status"] == "running"
    # A fresh worker recovers it; with LAYERBENCH_AUTO_RESUME=0 (the old
    # behaviour, test_auto_resume.py covers the default) it waits for a person.
    worker.start(LAYERBENCH_AUTO_RESUME="0")
    ended = wait_for(client, job["id"], {"interrupted"}, timeout=30)
    assert "worker" in ended["error"]["message"]
    with sqlite3.connect(db) as conn:
        statuses = [r[0] for r in conn.execute("select status from job_events where job_id=?", (job["id"],))]
    assert statuses == ["queued", "running", "interrupted"]


def test_nan_loss_ends_in_error(client, worker):
    job = _create(client, max_iter=200, learning_rate=1e6)
    ended = wait_for(client, job["id"], {"done", "error"})
    assert ended["status"] == "error"
    assert "diverged" in ended["error"]["message"]


def test_python_exception_during_training_names_file_and_line(client, worker):
    from helpers import SEED_LAYER, line_of
    bad = SEED_LAYER.replace("        num_correct = 0.0\n",
                             "        num_correct = 0.0\n        if self.phase == 1 and getattr(self, 'n', 0) > 10:\n"
                             "            raise ArithmeticError('late failure')\n"
                             "        self.n = getattr(self, 'n', 0) + 1\n")
    job = _create(client, layer=bad, max_iter=100, val_interval=0.05)
    ended = wait_for(client, job["id"], {"done", "error"})
    assert ended["status"] == "error"
    assert ended["error"]["file"] == "digits_python_layers.py"
    assert ended["error"]["line"] == line_of(bad, "raise ArithmeticError")
    assert "late failure" in ended["error"]["message"]


def test_network_that_brings_no_dataset_needs_max_iter(client):
    resp = post(client, "/api/v1/jobs", dataset="", network=LENET_SEED)
    assert resp.status_code == 400
    assert resp.get_json()["details"][0]["field"] == "dataset"


def test_unknown_job_is_404_in_error_shape(client):
    resp = client.get("/api/v1/jobs/20990101-000000-deadbeef")
    assert resp.status_code == 404
    assert resp.get_json() == {"error": "not_found", "message": "No such job.", "details": []}


def test_json_body_is_415(client):
    resp = client.post("/api/v1/jobs", json={"network": "x"})
    assert resp.status_code == 415 and resp.get_json()["error"] == "unsupported_media_type"


def test_openapi_describes_every_api_route(app, client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi":
            path = rule.rule.replace("<", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method) in documented, (path, method)
