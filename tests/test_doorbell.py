"""The local queue's doorbell (app.services.runtime.doorbell): a submit, a
dataset upload and a run that ends wake the local worker at once, so a
worker polling the store only every 30 s still starts them in a moment
(before, each waited for the next poll: up to WORKER_POLL_SECONDS)."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from app.services.runtime import doorbell
from helpers import WorkerProcess, digit_pngs, post, upload_dataset, wait_for, zip_of

pytestmark = pytest.mark.slow


def _bells(app) -> list[Path]:
    return sorted((Path(app.config["INSTANCE_DIR"]) / doorbell.WAKE_DIR).glob("*.sock"))


def test_a_worker_polling_every_30_s_starts_jobs_and_builds_at_once(app, client):
    worker = WorkerProcess(app, LAYERBENCH_WORKER_POLL_SECONDS="30")   # a process: this one rings its bell
    try:
        _starts_at_once(app, client)
    finally:
        worker.stop()


def _starts_at_once(app, client) -> None:
    deadline = time.monotonic() + 30
    while not _bells(app):                  # the worker listens once it has recovered
        assert time.monotonic() < deadline, "the worker never bound its doorbell"
        time.sleep(0.05)
    time.sleep(0.5)                         # its first look at the (empty) store is over

    t0 = time.monotonic()
    first = post(client, "/api/v1/jobs", max_iter=4).get_json()
    second = post(client, "/api/v1/jobs", max_iter=4).get_json()   # waits for the one slot
    assert wait_for(client, first["id"], {"running", "done"}, timeout=20)["status"] in ("running", "done")
    # The second starts when the first ends: the run that ended rang.
    assert wait_for(client, second["id"], {"done", "error"}, timeout=25)["status"] == "done"
    assert time.monotonic() - t0 < 25

    ds = upload_dataset(client, zip_of(digit_pngs())).get_json()
    got = wait_for_dataset(client, ds["id"], timeout=20)
    assert got["status"] == "done", got


def wait_for_dataset(client, ds_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ds = client.get(f"/api/v1/datasets/{ds_id}").get_json()
        if ds["status"] in ("done", "error"):
            return ds
        assert time.monotonic() < deadline, f"the build waited for the poll: {ds['status']}"
        time.sleep(0.1)


def test_a_ring_to_a_worker_that_is_gone_removes_its_socket(tmp_path):
    class Cfg:
        instance_dir = tmp_path
    bell = doorbell.Bell(Cfg)
    assert doorbell.ring(Cfg) == 1 and bell.wait(0) is True      # rung, and every ring taken
    assert bell.wait(0) is False
    # A socket file whose process is gone (killed: no close).
    dead = tmp_path / doorbell.WAKE_DIR / "999999.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(dead))
    s.close()
    assert doorbell.ring(Cfg) == 1 and not dead.exists()
    bell.close()
    assert doorbell.ring(Cfg) == 0


def test_an_instance_deep_in_a_home_directory_still_has_a_bell(tmp_path):
    # A socket path over 107 bytes cannot be bound by name: the first local
    # worker in such an instance crashed at every start (a clone in a home
    # directory under pytest's tmp dir was one).
    class Cfg:
        instance_dir = tmp_path / ("deep-" * 20) / "instance"
    assert len(str(Cfg.instance_dir / doorbell.WAKE_DIR / "4194304.sock")) > 108
    bell = doorbell.Bell(Cfg)
    try:
        assert doorbell.ring(Cfg) == 1 and bell.wait(1) is True
    finally:
        bell.close()
    assert list((Cfg.instance_dir / doorbell.WAKE_DIR).iterdir()) == []
