"""Pages: health check, the upload form (CSRF, validate, create) and the job page."""
from __future__ import annotations

import io
import re

from helpers import SEED_LAYER, change_settings, wait_for


def test_healthz_reports_caffe_containment_and_store(client):
    resp = client.get("/healthz")      # the admin's token: every detail
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["ok"] is True and body["status"] == "ok"
    assert body["caffe"]["python_layer"] is True
    assert body["caffe"]["version"] == "1.0.0"
    assert body["store"] == {"ok": True, "backend": "sqlite"}
    assert body["containment"] == "bwrap"
    assert resp.headers["Cache-Control"] == "no-store"


DETAILS = {"containment", "containment_degraded", "cgroups", "disk", "workers", "gpus", "caffe", "selftest",
           "store", "queue", "broker_ok"}


def test_healthz_tells_anyone_only_ok_and_the_details_to_admins_and_monitoring(app):
    # Issue 22, item 9: containment, cgroups, disk and workers map the host
    # for an attacker; a probe needs only the status.
    from helpers import client_for
    anon = app.test_client()
    resp = anon.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}
    assert resp.headers["Cache-Control"] == "no-store"
    user = client_for(app, "alice")                                   # not an admin
    assert user.get("/healthz").get_json() == {"status": "ok"}
    for header in ("Bearer lb_not-a-real-token", "Bearer ", "Basic YWRtaW46eA=="):
        resp = anon.get("/healthz", headers={"Authorization": header})
        assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}, header
    # The monitoring token, once configured, sees everything; before, it is nothing.
    monitor = "mon-" + "x" * 40
    assert anon.get("/healthz", headers={"Authorization": f"Bearer {monitor}"}).get_json() == {"status": "ok"}
    change_settings(app, MONITOR_TOKEN=monitor)
    body = anon.get("/healthz", headers={"Authorization": f"Bearer {monitor}"}).get_json()
    assert DETAILS <= set(body) and body["status"] == "ok", body
    assert anon.get("/healthz", headers={"Authorization": f"Bearer {monitor}x"}).get_json() == {"status": "ok"}
    # An admin's token, and an admin's browser session.
    assert DETAILS <= set(client_for(app, "root2", admin=True).get("/healthz").get_json())
    client_for(app, "boss", admin=True, password="pw-boss-1")
    web = app.test_client()
    page = web.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    assert web.post("/login", data={"csrf_token": token, "username": "boss", "password": "pw-boss-1"}
                    ).status_code == 303
    assert DETAILS <= set(web.get("/healthz").get_json())


def test_unknown_api_route_gets_error_shape(client):
    resp = client.get("/api/v1/nope")
    assert resp.status_code == 404
    assert resp.get_json()["error"] == "not_found"


from helpers import csrf_token_of as _csrf, new_job_form as _form  # noqa: E402


def test_form_lists_standard_networks_and_sample_dataset(client):
    html = client.get("/jobs/new").get_data(as_text=True)
    assert 'value="lenet"' in html and 'selected value="sample-digits"' in html
    assert client.get("/networks/lenet.prototxt").get_data(as_text=True).startswith("# LeNet")
    assert client.get("/networks/nope.prototxt").status_code == 404


def test_form_validate_shows_report_without_creating_a_job(client):
    resp = client.post("/jobs/new", data=_form(_csrf(client, "/jobs/new"), "validate"),
                       content_type="multipart/form-data")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "Valid: every layer built and ran." in html
    assert "AccuracyLayer" in html and "Forward ms" in html
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_form_validate_shows_errors_inline(client):
    bad = SEED_LAYER.replace("    def forward(self, bottom, top):\n",
                             "    def forward(self, bottom, top):\n        1 / 0\n")
    data = _form(_csrf(client, "/jobs/new"), "validate",
                 python_layer=(io.BytesIO(bad.encode()), "x.py"))
    html = client.post("/jobs/new", data=data, content_type="multipart/form-data").get_data(as_text=True)
    assert "ZeroDivisionError" in html and "digits_python_layers.py:16" in html
    assert "layer <code>accuracy</code>" in html


def test_form_without_csrf_token_is_refused(app, client):
    # A browser: signed in by the session cookie (a bearer token needs no
    # CSRF token: tests/test_auth_hardening.py).
    from helpers import client_for
    client_for(app, "browser", password="pw-browser-1")
    web = app.test_client()
    web.post("/login", data={"csrf_token": _csrf(web, "/login"), "username": "browser", "password": "pw-browser-1"})
    data = _form("", "create")
    del data["csrf_token"]
    resp = web.post("/jobs/new", data=data, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_form_create_redirects_to_live_job_page(client, worker):
    resp = client.post("/jobs/new", data=_form(_csrf(client, "/jobs/new"), "create", name="from the form"),
                       content_type="multipart/form-data")
    assert resp.status_code == 303
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    job = wait_for(client, job_id, {"done", "error"})
    assert job["status"] == "done" and job["name"] == "from the form"
    assert job["python_layer"]["original_filename"] == "accuracy_layer.py"
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    for needle in ("from the form", "chart-outputs", "chart-lr", "Download model", "Clone", "Delete",
                   "Status history", "AccuracyLayer", "vendor/chart-4.6.1.umd.min.js"):
        assert needle in page
    index = client.get("/").get_data(as_text=True)
    assert "from the form" in index and "sample-digits" in index

    token = _csrf(client, f"/jobs/{job_id}")
    resp = client.post(f"/jobs/{job_id}/clone", data={"csrf_token": token})
    assert resp.status_code == 303
    clone_id = resp.headers["Location"].rsplit("/", 1)[1]
    assert clone_id != job_id
    wait_for(client, clone_id, {"done", "error"})
    resp = client.post(f"/jobs/{clone_id}/delete", data={"csrf_token": token})
    assert resp.status_code == 303
    assert client.get(f"/jobs/{clone_id}").status_code == 404


def test_sse_stream_replays_and_ends(client, worker):
    from helpers import post
    job = post(client, "/api/v1/jobs", max_iter=6).get_json()
    wait_for(client, job["id"], {"done"})
    with client.get(f"/api/v1/jobs/{job['id']}/events") as resp:
        body = resp.get_data(as_text=True)
    assert resp.mimetype == "text/event-stream"
    events = re.findall(r"^event: (\w+)$", body, flags=re.M)
    assert events[0] == "status" and "metrics" in events and "log" in events and events[-1] == "end"


def test_unsupported_queue_is_refused_at_start(tmp_path):
    import pytest
    from app.web import create_app
    with pytest.raises(RuntimeError, match="not supported"):
        create_app({"INSTANCE_DIR": str(tmp_path / "i"), "JOBS_DIR": str(tmp_path / "j"), "QUEUE": "rabbit"})
