"""Tenants do not share limits: one job's fork bomb, at its own process
limit, leaves another user's validation and training untouched.

Every sandboxed run once ran as uid 65534, and RLIMIT_NPROC counts per uid:
a bomb at the limit made every other upload fail ("The validator died").
Now each run has its own uid (and, where the host allows, its own cgroup).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from helpers import SEED_LAYER, post, training_pid, wait_for

pytestmark = pytest.mark.slow

BOMB = SEED_LAYER.replace("        num_correct = 0.0\n", """        num_correct = 0.0
        import os, time
        if os.path.basename(os.getcwd()) == 'output' and not getattr(self, 'bombed', False):
            self.bombed = True                      # training only: fill the process limit
            while True:
                try:
                    if os.fork() == 0:
                        time.sleep(10 ** 6)
                        os._exit(0)
                except OSError:
                    break
            time.sleep(10 ** 6)                     # hold the limit without taking a core
""")


def _uid_of(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


def _processes_of(uid: int) -> int:
    return len(subprocess.run(["ps", "-u", str(uid), "-o", "pid="], capture_output=True, text=True).stdout.split())


def test_a_fork_bomb_in_one_job_leaves_another_jobs_validation_and_training_alone(app, client, worker):
    worker.procs[0].stop()
    # Both jobs train at once; the bomb's layer never returns, so its delete
    # ends it after the abort grace.
    worker.start(LAYERBENCH_WORKER_CONCURRENCY="2", LAYERBENCH_ABORT_GRACE_SECONDS="2")
    bomb = post(client, "/api/v1/jobs", layer=BOMB, max_iter=100000).get_json()
    wait_for(client, bomb["id"], {"running"})
    uid = _uid_of(training_pid(Path(app.config["JOBS_DIR"]) / bomb["id"] / "output"))
    deadline = time.monotonic() + 60
    while _processes_of(uid) < 400:                      # the bomb sits at its limit
        assert time.monotonic() < deadline, _processes_of(uid)
        time.sleep(0.2)

    report = post(client, "/api/v1/validate").get_json()
    assert report["ok"] is True, report
    other = post(client, "/api/v1/jobs", max_iter=30).get_json()
    done = wait_for(client, other["id"], {"done", "error", "interrupted", "aborted"}, timeout=180)
    assert done["status"] == "done", done["error"]
    assert client.get(f"/api/v1/jobs/{bomb['id']}").get_json()["status"] == "running"
    assert _processes_of(uid) >= 400                     # still at it, all along

    # Deleting the job takes its whole run down with it.
    assert client.delete(f"/api/v1/jobs/{bomb['id']}").status_code == 204
    deadline = time.monotonic() + 30
    while _processes_of(uid) > 0:                        # the whole run went with it
        assert time.monotonic() < deadline
        time.sleep(0.2)
