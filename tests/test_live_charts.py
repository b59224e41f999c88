"""The job page's live charts (the /events stream and static/js/job.js) drop
superseded points exactly as /metrics (job_files.metrics) does: a lost run's
points after a `restarted` record, what followed a `resumed` snapshot, and a
superseded run's late writes. Real HTTP (the app on a threaded server) and
real Chromium; metrics.jsonl is appended to as the trainer and the heartbeat
write it, with no worker running, so each record arrives when the test says."""
from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from helpers import wait_in_browser
from app.core.workspace import METRICS_FILE
from app.services.jobs import files as job_files
from app.worker.heartbeat import _mark_restart
from helpers import client_for

# Reuse the browser tests' headless Chromium.
PASSWORD = "pw-for-live-charts"


@pytest.fixture
def live(app):
    """``app`` served over real HTTP (threads: an event stream holds one);
    (url, token of user "viewer", a running job of viewer's, its metrics.jsonl)."""
    from werkzeug.serving import make_server
    token = client_for(app, "viewer", password=PASSWORD).token
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job_id = store.insert_job(name="live", owner="viewer", device="cpu", params={}, max_iter=100)["id"]
    ctx.ws.create_job(job_id)
    assert store.claim_job(job_id, "w1@hostA", started_at="x", heartbeat_at=time.time()) == 1
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}", token, job_id, ctx.ws.output_dir(job_id) / METRICS_FILE
    # Ended, the job's streams end by themselves: none is left polling the
    # store for the rest of the session.
    store.update_job(job_id, status="aborted")
    time.sleep(1.0)
    srv.shutdown()
    thread.join(10)


def _emit(path, kind: str, run: int, **fields) -> None:
    """One record as app/contained/train.py's ``emit`` writes it."""
    with open(path, "a") as fh:
        fh.write(json.dumps({"type": kind, **fields, "run": run}) + "\n")


def _points(path, run: int, iterations, val=()) -> None:
    for it in iterations:
        _emit(path, "train", run, iteration=it, epoch=it / 10, loss=10.0 * run + it)
        _emit(path, "lr", run, iteration=it, epoch=it / 10, lr=0.01 * run)
        _emit(path, "clock", run, iteration=it, time=1.0 + it)
        if it in val:
            _emit(path, "val", run, iteration=it, epoch=it / 10, loss=5.0 * run + it, accuracy=0.1 * it)


def _fold(records: list[dict], state: dict) -> None:
    """What a client does with a `metrics` event (the rules README and the
    OpenAPI document give; static/js/job.js does the same)."""
    for rec in records:
        rec = dict(rec)
        kind = rec.pop("type", None)
        if kind == "restarted":
            for series in state.values():
                series.clear()
        elif kind == "resumed" and isinstance(rec.get("iteration"), int):
            for series in state.values():
                series[:] = [p for p in series if not (isinstance(p.get("iteration"), (int, float))
                                                       and p["iteration"] > rec["iteration"])]
        elif kind in state:
            state[kind].append(rec)


def test_event_stream_lets_a_client_chart_exactly_what_metrics_gives(app, live):
    url, token, job_id, path = live
    _points(path, 1, range(1, 4), val=(2,))
    _emit(path, "snapshot", 1, iteration=3, epoch=0.3)

    conn = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=30)
    conn.request("GET", f"/api/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    state: dict = {"train": [], "val": [], "lr": []}
    lock = threading.Lock()

    def read() -> None:
        name = None
        try:
            for line in resp:
                line = line.decode()
                if line.startswith("event: "):
                    name = line[7:].strip()
                elif line.startswith("data: ") and name == "metrics":
                    with lock:
                        _fold(json.loads(line[6:]), state)
        except (OSError, ValueError):
            pass   # closed at the end of the test

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def settled(expected: dict) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if state == expected:
                    return True
            time.sleep(0.1)
        return False

    try:
        with app.app_context():
            job = app.extensions["store"].get_job(job_id)
            assert settled(job_files.metrics(app.extensions["ctx"], job))
            # The heartbeat restarts the lost run from the beginning as run 2;
            # the lost run still writes once (superseded), then run 2 trains.
            _mark_restart(path.parent, 2)
            _emit(path, "train", 1, iteration=4, epoch=0.4, loss=99.0)
            _points(path, 2, range(1, 5), val=(2, 4))
            # A line arrives in two writes: nothing of it until it is whole.
            with open(path, "a") as fh:
                fh.write('{"type": "train", "iteration": 5, "epoch": 0.5, ')
            time.sleep(0.8)
            with open(path, "a") as fh:
                fh.write('"loss": 25.0, "run": 2}\n')
            assert settled(job_files.metrics(app.extensions["ctx"], job))
            # Resumed as run 3 from iteration 2's snapshot; run 2 writes late.
            _emit(path, "resumed", 3, iteration=2)
            _points(path, 3, range(3, 5), val=(4,))
            _emit(path, "train", 2, iteration=6, epoch=0.6, loss=77.0)
            expected = job_files.metrics(app.extensions["ctx"], job)
            assert [p["iteration"] for p in expected["train"]] == [1, 2, 3, 4]
            assert [p["loss"] for p in expected["train"]] == [21.0, 22.0, 33.0, 34.0]
            assert [p["iteration"] for p in expected["val"]] == [2, 4]
            assert settled(expected), (state, expected)
            # The same over the API's own /metrics.
            conn2 = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=30)
            conn2.request("GET", f"/api/v1/jobs/{job_id}/metrics", headers={"Authorization": f"Bearer {token}"})
            assert json.loads(conn2.getresponse().read()) == state
            conn2.close()
    finally:
        conn.close()
        reader.join(5)


def _chart(driver, canvas: str) -> dict:
    """{dataset label: [[x, y], ...]} of one of the job page's charts."""
    return driver.execute_script(
        "var c = Chart.getChart(document.getElementById(arguments[0])), r = {};"
        "c.data.datasets.forEach(function (d) { r[d.label] = d.data.map(function (p) { return [p.x, p.y]; }); });"
        "return r;", canvas)


def test_open_job_page_drops_the_lost_runs_points_on_restart(app, live, browser):
    from selenium.webdriver.common.by import By
    url, _token, job_id, path = live
    _points(path, 1, range(1, 4), val=(2,))
    browser.get(url + "/login")
    browser.find_element(By.ID, "username").send_keys("viewer")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_in_browser(lambda: "/login" not in browser.current_url)
    browser.get(url + f"/jobs/{job_id}")
    wait_in_browser(lambda: len(_chart(browser, "chart-outputs").get("train loss", [])) == 3, timeout=10)

    _mark_restart(path.parent, 2)
    _emit(path, "train", 1, iteration=4, epoch=0.4, loss=99.0)    # the lost run, superseded
    _points(path, 2, range(1, 3))
    with app.app_context():
        want = job_files.metrics(app.extensions["ctx"], app.extensions["store"].get_job(job_id))
    assert [p["loss"] for p in want["train"]] == [21.0, 22.0] and want["val"] == []

    def charted():
        out, rates = _chart(browser, "chart-outputs"), _chart(browser, "chart-lr")
        return (out.get("train loss") == [[p["epoch"], p["loss"]] for p in want["train"]]
                and not out.get("val loss") and not out.get("val accuracy")
                and rates.get("learning rate") == [[p["epoch"], p["lr"]] for p in want["lr"]])
    wait_in_browser(charted, timeout=5)
