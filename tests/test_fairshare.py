"""Fair share between users (issue 27): one user's queue no longer blocks
everyone; per-user limits answer 429 naming the setting; the job JSON says
where a queued job stands."""
from __future__ import annotations

import time

from app.services.jobs import fairshare
from helpers import Workers, client_for, make_app, post, wait_for


def _job(i: int, owner: str, **params) -> dict:
    return {"id": f"j{i:02d}", "owner": owner, "created_at": f"2026-01-01T00:00:{i:02d}Z", "params": params}


def test_order_puts_a_waiting_user_before_a_busy_one():
    queued = [_job(i, "a") for i in range(8)] + [_job(8, "b")]
    never = {"a": (0, ""), "b": (0, "")}
    assert [j["id"] for j in fairshare.order(queued, never)][:2] == ["j00", "j08"]
    # a runs one already: b's job goes first.
    assert fairshare.order(queued, {"a": (1, "2026-01-01T01:00:00Z"), "b": (0, "")})[0]["id"] == "j08"
    # A sweep never starves a single job: b's second job is third at worst.
    queued.append(_job(9, "b"))
    ids = [j["id"] for j in fairshare.order(queued, never)]
    assert ids.index("j09") <= 3
    # Priority ranks first; a user at USER_MAX_RUNNING waits behind everyone.
    queued.append(_job(10, "a", priority="high"))
    assert fairshare.order(queued, never)[0]["id"] == "j10"
    held = fairshare.order(queued, {"a": (2, "x"), "b": (0, "")}, max_running=2)
    assert {j["owner"] for j in held[:2]} == {"b"}


def test_second_user_starts_second_with_a_real_worker(app, client):
    a, b = client_for(app, "alice"), client_for(app, "bob")
    mine = [post(a, "/api/v1/jobs", max_iter=5, name=f"a{i}").get_json()["id"] for i in range(8)]
    theirs = post(b, "/api/v1/jobs", max_iter=5, name="b").get_json()["id"]
    queued = b.get(f"/api/v1/jobs/{theirs}").get_json()["queue"]
    assert queued["position"] == 2 and queued["ahead"] == 1, queued
    assert a.get(f"/api/v1/jobs/{mine[-1]}").get_json()["queue"]["position"] == 9
    page = client.get(f"/jobs/{theirs}").get_data(as_text=True)
    assert "Queued: position 2, waiting for 1 job(s) ahead of it" in page
    workers = Workers(app)
    workers.start()
    try:
        wait_for(b, theirs, {"done"}, timeout=180)
        rows = [client.get(f"/api/v1/jobs/{j}").get_json() for j in mine + [theirs]]
        started = sorted((r["started_at"], r["id"]) for r in rows if r.get("started_at"))
        assert theirs in [j for _, j in started[:2]], started
    finally:
        for j in mine:
            a.post(f"/api/v1/jobs/{j}/abort")
        for j in mine:
            wait_for(a, j, {"done", "aborted", "error"}, timeout=120)
        for w in workers.procs:
            w.stop()
    assert b.get(f"/api/v1/jobs/{theirs}").get_json()["queue"] is None


def test_queue_limit_per_user_is_a_429_naming_the_setting(tmp_path, sample_datasets):
    app = make_app(tmp_path, sample_datasets, USER_MAX_QUEUED=1)
    try:
        c = client_for(app, "carol")
        assert post(c, "/api/v1/jobs", max_iter=5).status_code in (201, 202)
        t0 = time.monotonic()
        resp = post(c, "/api/v1/jobs", max_iter=5)
        assert resp.status_code == 429, resp.get_json()
        assert "LAYERBENCH_USER_MAX_QUEUED" in resp.get_json()["message"]
        assert time.monotonic() - t0 < 5      # refused before any validation ran
        # Another user is not affected.
        assert post(client_for(app, "dave"), "/api/v1/jobs", max_iter=5).status_code in (201, 202)
    finally:
        app.extensions["store"].engine.dispose()


def test_high_priority_is_for_admins(app, client):
    user = client_for(app, "erin")
    resp = post(user, "/api/v1/jobs", max_iter=5, priority="high")
    assert resp.status_code == 403 and resp.get_json()["details"][0]["field"] == "priority"
    assert post(user, "/api/v1/jobs", max_iter=5, priority="urgent").status_code == 400
    job = post(client_for(app, "root-admin", admin=True), "/api/v1/jobs", max_iter=5, priority="high").get_json()
    assert job["status"] == "queued"
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["queue"]["position"] == 1
