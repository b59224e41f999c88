"""The ``dataset`` field of a new job is checked before any job record is
stored (issue 22, item 3): a well-formed id of a dataset this user may see,
or a 400 that reads exactly like an unknown id. Before, a DIGITS create that
failed validation stored the field as sent: with another user's dataset id
the error record's download carried that user's labels.txt and mean, and the
owner could no longer delete their dataset (409 naming a job they cannot
see); ``../../etc`` made the record's download and clone answer 500."""
from __future__ import annotations

import io
import shutil

import pytest

from helpers import LENET_SEED, SEED_LAYER, client_for, post

from app.core.workspace import LAYER_FILE, NETWORK_FILE, snapshot_name
from app.store import new_job_id

BROKEN_NETWORK = 'layer { name: "data" type: '   # does not parse: DIGITS keeps an error record
UNKNOWN = "20200101-000000-0badf00d"               # well-formed, no such dataset


def _bobs_dataset(app) -> str:
    """A built dataset owned by bob (a copy of sample-digits, labels and mean included)."""
    store, ws = app.extensions["store"], app.extensions["ctx"].ws
    ds_id = new_job_id()
    shutil.copytree(ws.dataset_dir("sample-digits"), ws.dataset_dir(ds_id))
    info = store.get_dataset("sample-digits")["info"]
    store.upsert_dataset(ds_id, name="bob's digits", owner="bob", status="done", info=info)
    return ds_id


def _digits(client, dataset: str, network: str = BROKEN_NETWORK, url="/models/images/classification.json",
            **extra):
    data = {"model_name": "m", "dataset": dataset, "method": "custom", "custom_network": network,
            "python_layer_client_file": (io.BytesIO(SEED_LAYER.encode()), "layers.py"), **extra}
    return client.post(url, data=data, content_type="multipart/form-data")


def _no_job_anywhere(app) -> None:
    store, root = app.extensions["store"], app.extensions["ctx"].ws.root
    assert store.page_jobs(limit=50)[0] == []
    assert sorted(p.name for p in root.iterdir() if p.name not in ("datasets", ".scratch")) == []


def _same_answer(resp, unknown, sent: str) -> None:
    """``resp`` answers as ``unknown`` did (status, error, message, details)."""
    got, want = resp.get_json(), unknown.get_json()
    assert resp.status_code == unknown.status_code == 400, (got, want)
    assert got["error"] == want["error"] == "invalid_request"
    assert got["message"].replace(sent, UNKNOWN) == want["message"], (got, want)
    # DIGITS's routes say "errors", the API "details" (API.md "Error shape").
    key = "errors" if "errors" in want else "details"
    assert got[key] == want[key] == [{"field": "dataset", "message": "unknown dataset"}]


def _without_csrf(html: str) -> str:
    import re
    return re.sub(r'(name="csrf_token"[^>]*value=|<meta name="csrf-token" content=)"[^"]*"', r'\1""', html)


def test_another_users_dataset_answers_as_an_unknown_one_and_stores_nothing(app):
    bobs = _bobs_dataset(app)
    alice, bob = client_for(app, "alice"), client_for(app, "bob")
    unknown = _digits(alice, UNKNOWN)
    # The DIGITS create that fails validation (the leak), one that would
    # validate, and a sweep: each refused before anything is made.
    _same_answer(_digits(alice, bobs), unknown, bobs)
    _same_answer(_digits(alice, bobs, LENET_SEED), unknown, bobs)
    _same_answer(_digits(alice, bobs, learning_rate="[0.01, 0.02]"), unknown, bobs)
    # The API (and so the pages and clone, which share the service) too.
    api_unknown = post(alice, "/api/v1/jobs", max_iter=1, dataset=UNKNOWN)
    _same_answer(post(alice, "/api/v1/jobs", max_iter=1, dataset=bobs), api_unknown, bobs)
    _same_answer(post(alice, "/api/v1/jobs", max_iter=1, dataset=bobs, learning_rate="0.01,0.02"),
                 api_unknown, bobs)
    # DIGITS's HTML form: the same 400 alert for both.
    form_unknown = _digits(alice, UNKNOWN, url="/models/images/classification")
    form = _digits(alice, bobs, url="/models/images/classification")
    assert form.status_code == form_unknown.status_code == 400
    # (each page carries a fresh CSRF token, timestamped to the second: not part of the answer)
    assert _without_csrf(form.get_data(as_text=True).replace(bobs, UNKNOWN)) == \
        _without_csrf(form_unknown.get_data(as_text=True))
    _no_job_anywhere(app)
    # Bob's dataset is his to delete: no job of anyone else holds it.
    assert bob.delete(f"/api/v1/datasets/{bobs}").status_code == 204
    # What DIGITS does with a dataset of one's own is unchanged: an error record.
    own = _digits(alice, "sample-digits")
    assert own.status_code == 200 and own.get_json()["status"] == "Error", own.get_json()


@pytest.mark.parametrize("sent", ["../../etc", "..", "datasets", "a/b", "/etc", ".scratch", "sample-digits/../x"])
def test_a_path_as_dataset_is_refused_and_stores_nothing(app, sent):
    alice = client_for(app, "alice")
    unknown = _digits(alice, UNKNOWN)
    _same_answer(_digits(alice, sent), unknown, sent)
    _same_answer(post(alice, "/api/v1/jobs", max_iter=1, dataset=sent),
                 post(alice, "/api/v1/jobs", max_iter=1, dataset=UNKNOWN), sent)
    _no_job_anywhere(app)


def test_a_dataset_carried_over_from_a_previous_job_is_checked_too(app):
    # A job of alice's that names bob's dataset (as the unchecked DIGITS
    # create stored them): fine-tuning from it carries that dataset over
    # only if alice may see it.
    bobs = _bobs_dataset(app)
    store, ws = app.extensions["store"], app.extensions["ctx"].ws
    prev = store.insert_job(name="old", owner="alice", dataset=bobs, device="cpu", params={}, max_iter=4,
                            status="done")
    ws.create_job(prev["id"])
    (ws.input_dir(prev["id"]) / NETWORK_FILE).write_text(LENET_SEED)
    (ws.input_dir(prev["id"]) / LAYER_FILE).write_text(SEED_LAYER)
    ws.output_dir(prev["id"]).mkdir(exist_ok=True)
    for suffix in (".caffemodel", ".solverstate"):
        (ws.output_dir(prev["id"]) / snapshot_name(4, suffix)).write_bytes(b"x")
    alice = client_for(app, "alice")
    resp = alice.post("/api/v1/jobs", data={"previous_job": prev["id"], "max_iter": "1"},
                      content_type="multipart/form-data")
    _same_answer(resp, post(alice, "/api/v1/jobs", max_iter=1, dataset=UNKNOWN), bobs)
    assert [j["id"] for j in store.page_jobs(limit=50)[0]] == [prev["id"]]
