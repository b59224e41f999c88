"""Worker names cannot collide (issue 27, part 2): real Redis, real Celery
worker processes on one host (tests/cluster.py), the real store.

* Two workers started without a name get distinct default names, both
  heart-beating in the store (before, both were ``layerbench@<host>`` and
  shared one row).
* A second worker under a live worker's explicit name exits non-zero at
  once, naming the live worker and LAYERBENCH_WORKER_NAME; the first keeps
  running. After a clean stop the name is free again.
"""
from __future__ import annotations

import socket
import time

import pytest

from cluster import CeleryWorker
from helpers import make_app

pytestmark = pytest.mark.slow


@pytest.fixture
def celery_app(tmp_path, sample_datasets, redis_server):
    app = make_app(tmp_path, sample_datasets, QUEUE="celery", BROKER_URL=redis_server.url.replace("/0", "/3"),
                   HEARTBEAT_SECONDS=0.5, HANDOVER_SECONDS=5.0)
    import redis
    redis.Redis.from_url(app.config["BROKER_URL"]).flushdb()    # no lock left by an earlier test
    yield app
    app.extensions["store"].engine.dispose()


def _live_names(app) -> set[str]:
    return {w["name"] for w in app.extensions["store"].list_workers(alive_since=time.time() - 5)}


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return got


def _log(w: CeleryWorker) -> str:
    w.log.flush()
    return w.log_path.read_text(errors="replace")


def test_default_names_are_unique_and_a_clash_refuses_to_start(celery_app, tmp_path):
    app = celery_app
    started = []
    try:
        # Two workers on one host with no name at all ("-n ''" is no name,
        # like an empty LAYERBENCH_WORKER_NAME): two names, two rows.
        for i in range(2):
            (tmp_path / f"d{i}").mkdir()
            started.append(CeleryWorker(app.config, "", tmp_path / f"d{i}"))
        names = _wait(lambda: len(n := _live_names(app)) == 2 and n, 60,
                      "two unnamed workers did not both heart-beat: " + " | ".join(_log(w) for w in started))
        host = socket.gethostname()
        assert all(n.startswith("layerbench-") and n.endswith(f"@{host}") for n in names), names

        # An explicit name held by a live worker: the second one refuses.
        first = CeleryWorker(app.config, "w1@hostA", tmp_path)
        started.append(first)
        _wait(lambda: "w1@hostA" in _live_names(app), 60, "w1@hostA never heart-beat: " + _log(first))
        (tmp_path / "second").mkdir()
        second = CeleryWorker(app.config, "w1@hostA", tmp_path / "second")
        started.append(second)
        assert second.proc.wait(60) == 2
        said = _log(second)
        assert "'w1@hostA' is held by a live worker" in said and f"pid {first.proc.pid}" in said, said
        assert "LAYERBENCH_WORKER_NAME" in said
        # The live one is untouched: still running, still heart-beating, alone under its name.
        time.sleep(1.5)
        assert first.proc.poll() is None and "w1@hostA" in _live_names(app)
        assert [w["pid"] for w in app.extensions["store"].list_workers(0) if w["name"] == "w1@hostA"] == \
            [first.proc.pid]

        # A clean stop gives the name back: the next worker may take it.
        first.stop()
        (tmp_path / "third").mkdir()
        third = CeleryWorker(app.config, "w1@hostA", tmp_path / "third")
        started.append(third)
        _wait(lambda: third.proc.poll() is None and "w1@hostA" in _live_names(app)
              and {w["pid"] for w in app.extensions["store"].list_workers(time.time() - 5)
                   if w["name"] == "w1@hostA"} == {third.proc.pid}, 60,
              "the name was not free after a clean stop: " + _log(third))
    finally:
        for w in started:
            w.stop()
