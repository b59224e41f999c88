"""Slow clients cannot make the real server (`flask --app wsgi serve`, nginx
in front of gunicorn) unavailable, and Server-Sent Events still stream
through the proxy."""
from __future__ import annotations

import http.client
import json
import time

import pytest

from bench.slow_clients import SlowClients, probe
from helpers import LENET_SEED, SEED_LAYER, api, initial_token

pytestmark = pytest.mark.slow


def _hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _submit(url: str, token: str) -> dict:
    """A LeNet job that trains until aborted."""
    return api(url, token, "POST", "/api/v1/jobs", {
        "network": ("n.prototxt", LENET_SEED.encode()), "python_layer": ("l.py", SEED_LAYER.encode()),
        "dataset": (None, b"sample-digits"), "max_iter": (None, b"100000")})


def _open_events(url: str, token: str, job_id: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(*_hostport(url), timeout=60)
    conn.request("GET", f"/api/v1/jobs/{job_id}/events",
                 headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
    return conn, conn.getresponse()


def test_healthz_answers_while_200_slow_clients_trickle(server):
    url, _instance = server
    host, port = _hostport(url)
    with SlowClients(host, port, n=200) as slow:
        slow.wait_trickling(rounds=2)
        # Every probe answers, each well inside its own deadline (gunicorn
        # alone times every one of them out: its 16 threads are all taken).
        latencies = [probe(host, port, "/healthz", timeout=5.0) for _ in range(50)]
        # ...while the slow clients were there: all 200 are still open, unanswered.
        assert slow.open_count() == 200
    assert len(latencies) == 50 and max(latencies) < 5.0


def test_job_events_stream_through_the_proxy(server):
    url, instance = server
    token = initial_token(instance)
    job = _submit(url, token)
    conn, resp = _open_events(url, token, job["id"])
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")

    def events():
        name = None
        while True:
            line = resp.readline().decode()
            assert line, "the stream ended early"
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                yield name, json.loads(line[6:])

    stream = events()
    # Events arrive while the job runs (the stream is far from its end): a
    # buffering proxy would hold them back until the job ended.
    deadline = time.monotonic() + 120
    seen = set()
    for name, data in stream:
        seen.add(name)
        if name == "status":
            assert data["status"] in ("queued", "running"), data
        if name == "metrics" and "status" in seen:
            break
        assert time.monotonic() < deadline, seen
    api(url, token, "POST", f"/api/v1/jobs/{job['id']}/abort")
    last = None
    for name, data in stream:
        if name == "status":
            last = data["status"]
        if name == "end":
            break
    conn.close()
    assert last == "aborted"


def test_open_event_streams_cannot_take_every_thread(server):
    # serve's default is 2 gunicorn workers x 8 threads; each open stream
    # holds one, and nginx lets 8 / 2 stream, even if all land on one worker.
    url, instance = server
    token = initial_token(instance)
    job = _submit(url, token)
    streams = []
    try:
        for _ in range(4):
            conn, resp = _open_events(url, token, job["id"])
            streams.append(conn)
            assert resp.status == 200 and resp.readline().startswith(b"event: status")  # a thread streams
        conn, resp = _open_events(url, token, job["id"])
        streams.append(conn)
        assert resp.status == 503   # the job page falls back to polling
        host, port = _hostport(url)
        assert all(probe(host, port, "/healthz", timeout=5.0) < 5.0 for _ in range(50))
    finally:
        for conn in streams:
            conn.close()
        api(url, token, "POST", f"/api/v1/jobs/{job['id']}/abort")
