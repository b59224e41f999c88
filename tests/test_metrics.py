"""GET /metrics (issue 27, part 3): a real `flask serve` (nginx, gunicorn's
two workers, the local worker, sandboxed training), scraped as Prometheus
would and parsed with prometheus_client's own parser; and who may scrape.
"""
from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import LENET_SEED, SEED_LAYER, api, initial_token

ENDED = {"done", "error", "aborted", "interrupted"}


def _scrape(url: str, token: str | None = None) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _submit(url: str, token: str, **fields) -> dict:
    parts = {k: (None, str(v).encode()) for k, v in dict(dataset="sample-digits", **fields).items()}
    parts.update(network=("network.prototxt", LENET_SEED.encode()), python_layer=("my_layers.py", SEED_LAYER.encode()))
    return api(url, token, "POST", "/api/v1/jobs", parts)


def _until(url: str, token: str, job_id: str, pred, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        job = api(url, token, "GET", f"/api/v1/jobs/{job_id}")
        polls += 1
        if pred(job):
            job["polls"] = polls
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.mark.slow
def test_a_live_service_exports_its_jobs_training_and_requests(server):
    url, instance = server
    token = initial_token(instance)
    before = _scrape(url)
    assert _value(before, "layerbench_jobs", status="done") == 0
    assert _value(before, "layerbench_disk_free_bytes") > 0

    job = _submit(url, token, max_iter=4, name="tiny")
    done = _until(url, token, job["id"], lambda j: j["status"] in ENDED)
    assert done["status"] == "done", done
    # A long one, scraped while it trains, then aborted.
    long = _submit(url, token, max_iter=100000, name="long")
    running = _until(url, token, long["id"], lambda j: j["status"] == "running" and (j["eta_seconds"] or 0) > 0)
    during = _scrape(url)
    assert _value(during, "layerbench_jobs", status="running") == 1
    assert _value(during, "layerbench_train_iterations_per_second", job=long["id"]) > 0
    speeds = [k for k in during if k[0] == "layerbench_train_iterations_per_second"]
    assert speeds == [("layerbench_train_iterations_per_second", (("job", long["id"]),))]
    api(url, token, "POST", f"/api/v1/jobs/{long['id']}/abort")
    aborted = _until(url, token, long["id"], lambda j: j["status"] in ENDED)
    # Exactly these GETs of the job route, whichever gunicorn worker answered
    # each one: the histogram adds up across processes (multiprocess mode).
    for _ in range(7):
        api(url, token, "GET", f"/api/v1/jobs/{job['id']}")

    after = _scrape(url)
    assert _value(after, "layerbench_jobs", status="done") == 1
    assert _value(after, "layerbench_jobs", status="aborted") == 1
    assert _value(after, "layerbench_jobs", status="queued") == _value(after, "layerbench_jobs", status="running") == 0
    assert _value(after, "layerbench_jobs_finished_total", status="done") == 1
    assert _value(after, "layerbench_jobs_finished_total", status="aborted") == 1
    assert not [k for k in after if k[0] == "layerbench_train_iterations_per_second"]    # nothing runs now
    # Each job waited in the queue once; each was validated once (its time kept).
    assert _value(after, "layerbench_queue_wait_seconds_count") == 2
    assert _value(after, "layerbench_queue_wait_seconds_bucket", le="+Inf") == 2
    assert _value(after, "layerbench_validation_seconds_count") == 2
    assert _value(after, "layerbench_validation_seconds_sum") > 0
    assert _value(after, "layerbench_sandbox_runs_total", kind="train", outcome="done") == 1
    assert _value(after, "layerbench_sandbox_runs_total", kind="train", outcome="aborted") == 1
    assert _value(after, "layerbench_sandbox_runs_total", kind="validate", outcome="ok") == 2
    assert _value(after, "layerbench_workers", state="live") == 0     # the local queue has no Celery workers

    # HTTP: labelled by URL rule (never a raw path with an id in it).
    route = "/api/v1/jobs/<job_id>"
    gets = _value(after, "layerbench_http_request_duration_seconds_count", route=route, method="GET", status="200")
    assert gets == done["polls"] + running["polls"] + aborted["polls"] + 7
    assert _value(after, "layerbench_http_request_duration_seconds_count",
                  route="/api/v1/jobs", method="POST", status="201") == 2
    assert _value(after, "layerbench_http_request_duration_seconds_count",
                  route="/metrics", method="GET", status="200") == 2      # the two scrapes before this one
    routes = {dict(k[1]).get("route") for k in after if k[0].startswith("layerbench_http_request_duration")}
    assert not [r for r in routes if job["id"] in r or long["id"] in r], routes
    # gunicorn's workers keep them in prometheus_client's multiprocess files
    # under the instance dir, one directory per gunicorn master.
    dirs = [d for d in (instance / "metrics").iterdir()]
    assert len(dirs) == 1 and list(dirs[0].glob("histogram_*.db")), dirs

    # Contained runs the store keeps no record of count too, in the gunicorn
    # worker that ran them: a validate-only call and an inference request
    # (the local queue answers it from a warm process).
    report = api(url, token, "POST", "/api/v1/validate", {
        "dataset": (None, b"sample-digits"), "network": ("network.prototxt", LENET_SEED.encode()),
        "python_layer": ("my_layers.py", SEED_LAYER.encode())})
    assert report["ok"] is True, report
    image = sorted((instance.parent / "jobs" / "datasets" / "sample-digits" / "samples").glob("*.png"))[0]
    answer = api(url, token, "POST", f"/api/v1/jobs/{job['id']}/infer", {"image": (image.name, image.read_bytes())})
    assert answer["predictions"], answer
    moved = _scrape(url)
    assert _value(moved, "layerbench_sandbox_runs_total", kind="validate", outcome="ok") == 3
    assert _value(moved, "layerbench_sandbox_runs_total", kind="infer_warm", outcome="ok") == 1
    assert _value(moved, "layerbench_sandbox_runs_total", kind="train", outcome="done") == 1   # unchanged
    assert list(dirs[0].glob("counter_*.db"))      # kept with the gunicorn workers' other metrics



def test_off_this_host_metrics_need_the_metrics_token(tmp_path, sample_datasets):
    from helpers import client_for, make_app
    app = make_app(tmp_path, sample_datasets, METRICS_TOKEN="scrape-secret-1")
    user = client_for(app, "admin")            # a user's API token is not the metrics token
    try:
        remote = app.test_client()
        remote.environ_base["REMOTE_ADDR"] = "203.0.113.9"
        assert remote.get("/metrics").status_code == 401
        for wrong in ("nope", user.token):
            resp = remote.get("/metrics", headers={"Authorization": f"Bearer {wrong}"})
            assert resp.status_code == 401 and b"layerbench_jobs" not in resp.data
        resp = remote.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
        assert resp.status_code == 200
        assert "layerbench_jobs" in {f.name for f in text_string_to_metric_families(resp.get_data(as_text=True))}
        # From this host no token is needed (IPv4 and IPv6 loopback).
        for addr in ("127.0.0.1", "::1"):
            local = app.test_client()
            local.environ_base["REMOTE_ADDR"] = addr
            assert local.get("/metrics").status_code == 200
        # Paths nothing routes and made-up methods add no series of their own.
        local.open(f"/no/such/{time.monotonic_ns()}", method="BREW")
        samples = {(s.name, tuple(sorted(s.labels.items()))) for f in
                   text_string_to_metric_families(local.get("/metrics").get_data(as_text=True)) for s in f.samples}
        assert ("layerbench_http_request_duration_seconds_count",
                (("method", "other"), ("route", "<unmatched>"), ("status", "404"))) in samples
        assert not [s for s in samples if "BREW" in str(s) or "/no/such" in str(s)]
    finally:
        app.extensions["store"].engine.dispose()
    # Without a token configured, nobody off this host may scrape.
    (tmp_path / "b").mkdir()
    closed = make_app(tmp_path / "b", sample_datasets)
    try:
        remote = closed.test_client()
        remote.environ_base["REMOTE_ADDR"] = "203.0.113.9"
        assert remote.get("/metrics").status_code == 403
        assert remote.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"}).status_code == 403
    finally:
        closed.extensions["store"].engine.dispose()
