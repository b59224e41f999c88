"""DIGITS's notes on the pages (PUT /jobs/<id> job_notes, shown and
editable there) and the DIGITS route list in the OpenAPI document."""
from __future__ import annotations

import re

BOGUS = 'layer { name: "hidden" type: "BogusCode" bottom: "data" top: "output" }'


def _csrf(client, url: str) -> str:
    html = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_notes_are_shown_and_editable_on_the_pages(app, client):
    r = client.post("/models/images/classification.json",
                    data={"model_name": "bogus", "dataset": "sample-digits", "custom_network": BOGUS})
    job_id = r.get_json()["id"]
    assert r.get_json()["status"] == "Error"           # DIGITS: the job exists, ended in error
    assert client.put(f"/jobs/{job_id}", data={"job_notes": "from a script"}).status_code == 200
    assert "from a script" in client.get(f"/models/{job_id}").get_data(as_text=True)
    r = client.post(f"/jobs/{job_id}/notes", data={"csrf_token": _csrf(client, f"/jobs/{job_id}"),
                                                   "notes": "from the page"})
    assert r.status_code == 303
    assert client.get(f"/models/{job_id}.json").get_json()["notes"] == "from the page"
    # A browser signed in by its session cookie needs the CSRF token (a bearer token does not).
    from pathlib import Path
    creds = dict(line.split(": ", 1) for line in
                 (Path(app.instance_path) / "initial-credentials.txt").read_text().splitlines())
    web = app.test_client()
    login = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', web.get("/login").get_data(as_text=True))
    assert web.post("/login", data={"csrf_token": login.group(1), "username": "admin",
                                    "password": creds["password"]}).status_code == 303
    assert web.post(f"/jobs/{job_id}/notes", data={"notes": "no token"}).status_code == 400   # CSRF

    app.extensions["store"].upsert_dataset("mine", name="mine", owner="admin", status="done", info={})
    r = client.post("/datasets/mine/notes", data={"csrf_token": _csrf(client, "/datasets/mine"), "notes": "ds notes"})
    assert r.status_code == 303 and "ds notes" in client.get("/datasets/mine").get_data(as_text=True)
    assert client.get("/datasets/mine.json").get_json()["notes"] == "ds notes"
    # A built-in dataset is nobody's to annotate.
    assert client.put("/jobs/sample-digits", data={"job_notes": "x"}).status_code == 403


def test_openapi_lists_the_digits_routes(client):
    routes = client.get("/api/v1/openapi.json").get_json()["x-digits-routes"]
    assert "POST /models/images/classification/classify_many.json" in routes
    assert "PUT /jobs/<job_id>" in routes and "GET /completed_jobs.json" in routes
