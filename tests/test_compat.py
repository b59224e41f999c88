"""DIGITS-compatible routes, driven the way a DIGITS 6 script drives them."""
from __future__ import annotations

import io

from helpers import LENET_SEED, SEED_LAYER, client_for, wait_for


def _digits_form(**extra) -> dict:
    data = {"model_name": "digits script", "dataset": "sample-digits", "method": "custom",
            "custom_network": LENET_SEED, "python_layer_from_client": "true",
            "python_layer_client_file": (io.BytesIO(SEED_LAYER.encode()), "layers.py"),
            "train_epochs": "1", "learning_rate": "0.01", "solver_type": "SGD", "batch_size": "32",
            "lr_policy": "step", "lr_step_size": "50", "lr_step_gamma": "0.5", "select_gpu": "next"}
    data.update(extra)
    return data


def test_digits_script_round_trip(app, client, worker):
    resp = client.post("/models/images/classification.json", data=_digits_form(),
                       content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    # DIGITS answers the whole model JSON (docs/API.md), not only {id, name, status}.
    assert {"id", "name", "status", "digits version", "snapshot file"} <= set(body) and body["name"] == "digits script"
    assert body["snapshot file"] == "no snapshots" and body["username"] == "admin"
    model = wait_for(client, body["id"], {"done", "error"})
    assert model["status"] == "done", model["error"]
    m = client.get(f"/models/{body['id']}.json").get_json()
    assert m["framework"] == "caffe" and m["python_layer"]["original_filename"] == "layers.py"
    assert m["snapshots"] and m["max_iter"] == 43   # ceil(1347 / 32)
    from pathlib import Path
    text = (Path(app.config["JOBS_DIR"]) / body["id"] / "input" / "solver.prototxt").read_text()
    assert 'lr_policy: "step"' in text and "stepsize: 22" in text and "gamma: 0.5" in text
    index = client.get("/index.json").get_json()
    assert [x["id"] for x in index["models"]] == [body["id"]]
    assert any(d["id"] == "sample-digits" for d in index["datasets"])
    with client.get(f"/models/{body['id']}/download.tar.gz") as dl:
        assert dl.status_code == 200 and dl.mimetype == "application/gzip"
    assert client.post(f"/models/{body['id']}/abort").status_code == 403   # DIGITS: ended
    assert client.delete(f"/models/{body['id']}").status_code == 200
    assert client.get(f"/models/{body['id']}.json").status_code == 404


def test_standard_network_and_abort(client, worker):
    resp = client.post("/models/images/classification.json",
                       data={"model_name": "std", "dataset": "sample-digits", "method": "standard",
                             "standard_networks": "lenet", "train_epochs": "300"})
    jid = resp.get_json()["id"]
    wait_for(client, jid, {"running"})
    assert client.post(f"/models/{jid}/abort").status_code == 200
    assert wait_for(client, jid, {"aborted"})["status"] == "aborted"


def test_bad_layer_is_an_error_job_and_server_paths_400(client):
    # DIGITS creates the job, which ends Error with the reason; never queued.
    bad = SEED_LAYER.replace("def forward", "def forward(")
    resp = client.post("/models/images/classification.json",
                       data=_digits_form(python_layer_client_file=(io.BytesIO(bad.encode()), "l.py")),
                       content_type="multipart/form-data")
    assert resp.status_code == 200 and resp.get_json()["status"] == "Error"
    err = client.get(f"/api/v1/jobs/{resp.get_json()['id']}").get_json()["error"]
    assert err["file"] == "digits_python_layers.py" and err["line"]
    resp = client.post("/models/images/classification.json",
                       data={**_digits_form(), "python_layer_server_file": "/etc/passwd"},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and resp.get_json()["errors"][0]["field"] == "python_layer_server_file"
    assert [j["status"] for j in client.get("/api/v1/jobs").get_json()["jobs"]] == ["error"]


def test_auth_and_ownership(app, client):
    assert app.test_client().get("/index.json").status_code == 401
    jid = client.post("/models/images/classification.json", data=_digits_form(),
                      content_type="multipart/form-data").get_json()["id"]
    other = client_for(app, "mallory")
    assert other.get(f"/models/{jid}.json").status_code == 404
    assert other.delete(f"/models/{jid}").status_code == 404
    assert other.get("/index.json").get_json()["models"] == []
