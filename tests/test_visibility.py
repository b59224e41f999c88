"""One visibility rule (app.services.access) behind every listing, page and
route: a user never sees another user's jobs or datasets.

Two leaks this guards: the new-job form listed every user's datasets, and
DIGITS's /index.json listed every dataset.
"""
from __future__ import annotations

import shutil

import pytest

from app.core.status import JobStatus
from helpers import client_for, post

PRIVATE = "alice-private-digits"


@pytest.fixture
def two_users(app):
    """(alice, bob): alice owns a ready dataset (a copy of sample-digits) and a job."""
    store, ws = app.extensions["store"], app.extensions["ctx"].ws
    shutil.copytree(ws.dataset_dir("sample-digits"), ws.dataset_dir(PRIVATE))
    info = dict(store.get_dataset("sample-digits")["info"], name="alice's secret digits")
    store.upsert_dataset(PRIVATE, name="alice's secret digits", owner="alice", status="done", info=info)
    alice, bob = client_for(app, "alice"), client_for(app, "bob")
    resp = post(alice, "/api/v1/jobs", dataset=PRIVATE, max_iter=1, name="alice's secret job")
    assert resp.status_code == 201, resp.get_json()
    return alice, bob, resp.get_json()["id"]


def _text(client, url: str) -> str:
    resp = client.get(url)
    assert resp.status_code == 200, url
    return resp.get_data(as_text=True)


def test_new_job_form_lists_only_visible_datasets(two_users):
    alice, bob, _ = two_users
    assert PRIVATE in _text(alice, "/jobs/new")
    html = _text(bob, "/jobs/new")
    assert PRIVATE not in html and "secret" not in html
    assert "sample-digits" in html          # built-in datasets are everyone's


def test_digits_index_json_lists_only_visible_models_and_datasets(two_users):
    alice, bob, job_id = two_users
    mine = alice.get("/index.json").get_json()
    assert PRIVATE in {d["id"] for d in mine["datasets"]} and job_id in {m["id"] for m in mine["models"]}
    theirs = bob.get("/index.json").get_json()
    assert PRIVATE not in {d["id"] for d in theirs["datasets"]}
    assert "sample-digits" in {d["id"] for d in theirs["datasets"]}
    assert job_id not in {m["id"] for m in theirs["models"]}


def test_every_listing_and_route_hides_the_other_users_work(two_users):
    alice, bob, job_id = two_users
    assert PRIVATE not in _text(bob, "/")
    assert job_id not in _text(bob, "/") and "secret" not in _text(bob, "/")
    assert PRIVATE not in {d["id"] for d in bob.get("/api/v1/datasets").get_json()["datasets"]}
    assert job_id not in {j["id"] for j in bob.get("/api/v1/jobs").get_json()["jobs"]}
    for url in (f"/api/v1/datasets/{PRIVATE}", f"/datasets/{PRIVATE}", f"/datasets/{PRIVATE}/files/mean.png",
                f"/api/v1/jobs/{job_id}", f"/jobs/{job_id}", f"/models/{job_id}.json",
                f"/api/v1/jobs/{job_id}/log", f"/api/v1/jobs/{job_id}/metrics",
                f"/api/v1/jobs/{job_id}/download", f"/models/{job_id}/download.tar.gz",
                f"/jobs/{job_id}/network.svg"):
        assert bob.get(url).status_code == 404, url
    assert bob.delete(f"/api/v1/datasets/{PRIVATE}").status_code == 404
    assert bob.delete(f"/api/v1/jobs/{job_id}").status_code == 404
    # Training on it is refused as if it did not exist.
    resp = post(bob, "/api/v1/jobs", dataset=PRIVATE, max_iter=1)
    assert resp.status_code == 400 and resp.get_json()["details"][0]["field"] == "dataset"
    # The owner still has all of it.
    assert alice.get(f"/api/v1/datasets/{PRIVATE}").status_code == 200
    assert alice.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_admins_see_everything(app, two_users):
    alice, bob, job_id = two_users
    admin = client_for(app, "root-admin", admin=True)
    assert PRIVATE in {d["id"] for d in admin.get("/api/v1/datasets").get_json()["datasets"]}
    assert admin.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_reading_a_job_never_changes_it(app, two_users):
    # A GET used to run crash recovery (and could declare a live job dead):
    # recovery is the worker side's; reads only read.
    alice, bob, job_id = two_users
    store = app.extensions["store"]
    store.update_job(job_id, status=JobStatus.RUNNING.value, heartbeat_at=0.0)   # looks long dead
    for _ in range(3):
        assert alice.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "running"
    assert store.get_job(job_id)["status"] == "running"
