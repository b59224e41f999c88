"""Accounts: tokens, sessions, CSRF, ownership (404 for others), the CLI,
first-start credentials and security headers."""
from __future__ import annotations

import re
from pathlib import Path

from helpers import client_for, post, wait_for


def test_no_token_and_bad_token_are_401_json(app):
    anon = app.test_client()
    for method, url in (("get", "/api/v1/jobs"), ("post", "/api/v1/jobs"), ("get", "/api/v1/jobs/x"),
                        ("post", "/api/v1/validate")):
        resp = getattr(anon, method)(url)
        assert resp.status_code == 401, url
        assert resp.get_json()["error"] == "unauthorized"
    bad = app.test_client()
    resp = bad.get("/api/v1/jobs", headers={"Authorization": "Bearer lb_not-a-real-token"})
    assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    assert anon.get("/healthz").status_code == 200   # the health check stays public


def test_pages_redirect_to_login(app):
    resp = app.test_client().get("/jobs/new")
    assert resp.status_code == 302 and "/login?next=/jobs/new" in resp.headers["Location"]


def test_other_users_jobs_are_404_and_admin_sees_all(app, client):
    alice, bob = client_for(app, "alice"), client_for(app, "bob")
    job = post(alice, "/api/v1/jobs", max_iter=3).get_json()
    jid = job["id"]
    assert job["owner"] == "alice"
    for method, url in (("get", f"/api/v1/jobs/{jid}"), ("get", f"/api/v1/jobs/{jid}/metrics"),
                        ("get", f"/api/v1/jobs/{jid}/log"), ("get", f"/api/v1/jobs/{jid}/events"),
                        ("get", f"/api/v1/jobs/{jid}/download"), ("post", f"/api/v1/jobs/{jid}/abort"),
                        ("post", f"/api/v1/jobs/{jid}/clone"), ("post", f"/api/v1/jobs/{jid}/resume"),
                        ("delete", f"/api/v1/jobs/{jid}"), ("get", f"/jobs/{jid}")):
        resp = getattr(bob, method)(url)
        assert resp.status_code == 404, (method, url)
    assert bob.get("/api/v1/jobs").get_json()["jobs"] == []
    assert [j["id"] for j in alice.get("/api/v1/jobs").get_json()["jobs"]] == [jid]
    assert [j["id"] for j in client.get("/api/v1/jobs").get_json()["jobs"]] == [jid]   # admin
    assert client.get(f"/api/v1/jobs/{jid}").status_code == 200
    assert jid not in bob.get("/").get_data(as_text=True)


def test_session_login_csrf_and_logout(app):
    client_for(app, "carol", password="correct horse")
    web = app.test_client()
    page = web.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    resp = web.post("/login", data={"csrf_token": token, "username": "carol", "password": "wrong"})
    assert resp.status_code == 401 and "Wrong username or password" in resp.get_data(as_text=True)
    assert web.post("/login", data={"username": "carol", "password": "correct horse"}).status_code == 400
    resp = web.post("/login?next=//evil.example/x", data={"csrf_token": token, "username": "carol",
                                                           "password": "correct horse"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"   # no open redirect
    assert web.get("/").status_code == 200
    assert web.get("/api/v1/jobs").status_code == 200        # session reads the API
    resp = post(web, "/api/v1/jobs", max_iter=3)
    assert resp.status_code == 400                            # but writes need the CSRF token (or a bearer token)
    set_cookie = " ".join(resp.headers.getlist("Set-Cookie")) + " ".join(
        web.get("/").headers.getlist("Set-Cookie"))
    assert "javascript" not in set_cookie.lower()
    web.post("/logout", data={"csrf_token": token})
    assert web.get("/").status_code == 302


def test_session_cookie_flags(app):
    client_for(app, "dave", password="pw-dave-1")
    web = app.test_client()
    page = web.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    resp = web.post("/login", data={"csrf_token": token, "username": "dave", "password": "pw-dave-1"})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_security_headers(client):
    for url in ("/", "/jobs/new", "/api/v1/jobs", "/healthz"):
        h = client.get(url).headers
        assert "script-src 'self'" in h["Content-Security-Policy"]
        assert "unsafe-inline" not in h["Content-Security-Policy"]
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"


def test_no_inline_scripts_or_styles_in_pages(client):
    for url in ("/", "/jobs/new", "/login"):
        html = client.get(url).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), url
        assert " style=" not in html and "<style" not in html and "onclick" not in html.lower()


def test_cli_users_create_and_token(app):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["users", "create", "erin"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("password: ") and lines[1].startswith("token: ")
    token = lines[1].split(": ", 1)[1]
    api = app.test_client()
    resp = api.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    again = runner.invoke(args=["users", "token", "erin"])
    assert again.exit_code == 0 and again.output.startswith("token: ")
    assert again.output.split(": ", 1)[1].strip() != token
    assert runner.invoke(args=["users", "create", "erin"]).exit_code != 0
    admin = runner.invoke(args=["users", "create", "frank", "--admin", "--password", "s3cret-pass"])
    assert admin.output.startswith("password: s3cret-pass\n")


def test_first_start_credentials_file(tmp_path):
    from app.web import create_app
    app = create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(tmp_path / "jobs"), "TESTING": True})
    path = Path(app.instance_path) / "initial-credentials.txt"
    assert path.stat().st_mode & 0o777 == 0o600
    creds = dict(line.split(": ", 1) for line in path.read_text().splitlines())
    assert creds["user"] == "admin"
    resp = app.test_client().get("/api/v1/jobs", headers={"Authorization": f"Bearer {creds['token']}"})
    assert resp.status_code == 200
    again = create_app({"INSTANCE_DIR": app.config["INSTANCE_DIR"], "JOBS_DIR": app.config["JOBS_DIR"]})
    assert path.read_text().count("token:") == 1   # not recreated on the next start
    again.extensions["store"].engine.dispose()
    app.extensions["store"].engine.dispose()


def test_owner_of_finished_job_can_use_it(app, worker):
    alice = client_for(app, "alice")
    job = post(alice, "/api/v1/jobs", max_iter=4).get_json()
    assert wait_for(alice, job["id"], {"done"})["owner"] == "alice"
