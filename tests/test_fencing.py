"""One run per job at a time: a run presumed dead (its worker frozen) that
comes back after the job was handed to another run writes nothing more --
no metrics, no snapshots, no final state -- and its training stops."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from app.core.status import JobStatus
from app.worker.runner import recover
from helpers import post, training_pid, wait_for

pytestmark = pytest.mark.slow


def _until(check, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_frozen_run_that_comes_back_is_fenced(app, client, worker_process):
    worker = worker_process
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    a = worker.procs[0]
    # A snapshot every 11 iterations: run 1 is still far from 300 when run 2 claims the job.
    job = post(client, "/api/v1/jobs", max_iter=300, snapshot_interval=0.5).get_json()
    out = Path(app.config["JOBS_DIR"]) / job["id"] / "output"
    _until(lambda: wait_for(client, job["id"], {"running"})["snapshots"], what="a first snapshot")
    old_trainer = training_pid(out)

    # Freeze worker A (its training process keeps going underneath).
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # Declared dead the way a scale-out recovery would: stale heartbeat.
        beat = store.get_job(job["id"])["heartbeat_at"]
        _until(lambda: time.time() - beat > 1.5, what="a stale heartbeat")
        assert job["id"] in recover(ctx, stale_after=1.0)
        assert client.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
        b = worker.start()                       # run 2 on worker B
        _until(lambda: store.get_job(job["id"])["run"] == 2, what="run 2 claimed")
        # The old training process sees run 2 in the fence file and leaves.
        _until(lambda: not Path(f"/proc/{old_trainer}").exists(), what="the superseded trainer stopped")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)      # worker A wakes up into a world that moved on
    done = wait_for(client, job["id"], {"done", "error", "interrupted", "aborted"}, timeout=180)
    assert done["status"] == "done", done["error"]
    assert store.get_job(job["id"])["worker"].endswith(f":{b.proc.pid}")

    # Nothing run 1 wrote after run 2 began is part of the job.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_of_run2 = next(i for i, r in enumerate(records) if r.get("run") == 2)
    assert all(r.get("run") == 2 for r in records[first_of_run2:])
    iterations = [p["iteration"] for p in client.get(f"/api/v1/jobs/{job['id']}/metrics").get_json()["train"]]
    assert iterations == sorted(set(iterations)), "an iteration was recorded twice"
    # Run 1 recorded no end of its own: one history, handed over once.
    events = [e["status"] for e in store.job_events(job["id"])]
    assert events == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.INTERRUPTED, JobStatus.QUEUED,
                      JobStatus.RUNNING, JobStatus.DONE]
    assert a.proc.poll() is None                 # worker A lives on, fenced, not crashed
