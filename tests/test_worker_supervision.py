"""`serve` supervises its local worker: SIGKILL it mid-job and the web keeps
answering, a new worker starts, the job is interrupted at once with the cause,
and resuming it trains it to the end."""
from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from bench.slow_clients import probe
from helpers import LENET_SEED, SEED_LAYER, api, initial_token

pytestmark = pytest.mark.slow


def _ppid(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _workers_of(parent: int) -> set[int]:
    """Live `flask --app wsgi worker` children of ``parent``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
            if b"worker" in argv and b"wsgi" in argv and stat.rsplit(")", 1)[1].split()[0] != "Z" \
                    and _ppid(int(entry.name)) == parent:
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue   # exited while we looked
    return found


def _until(what: str, check, timeout: float, every: float = 0.1):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _healthy(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    return probe(host, int(port), "/healthz", timeout=5.0) < 5.0


def test_killed_worker_is_restarted_and_its_job_interrupted_then_resumed(server):
    url, instance = server
    token = initial_token(instance)
    job = api(url, token, "POST", "/api/v1/jobs", {
        "network": ("n.prototxt", LENET_SEED.encode()), "python_layer": ("l.py", SEED_LAYER.encode()),
        "dataset": (None, b"sample-digits"), "max_iter": (None, b"150"),
        "snapshot_interval": (None, b"1")})      # a snapshot every 22 iterations: killed well before the end
    path = f"/api/v1/jobs/{job['id']}"

    def running_with_snapshot():
        j = api(url, token, "GET", path)
        assert j["status"] in ("queued", "running"), j
        return j if j["status"] == "running" and j["snapshots"] else None

    _until("a snapshot", running_with_snapshot, timeout=180)
    # The job row names the worker process running it (runner.worker_name()).
    with sqlite3.connect(instance / "layerbench.sqlite3") as db:
        name = db.execute("select worker from jobs where id = ?", (job["id"],)).fetchone()[0]
    old = int(name.rsplit(":", 1)[1])
    serve_pid = _ppid(old)
    assert _workers_of(serve_pid) == {old}

    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    interrupted = _until("the job to be interrupted",
                         lambda: (j := api(url, token, "GET", path))["status"] == "interrupted" and j,
                         timeout=25)
    noticed = time.monotonic() - t0
    assert _healthy(url)
    msg = interrupted["error"]["message"]
    assert "signal 9" in msg and "SIGKILL" in msg, interrupted["error"]
    assert noticed < 5.0, noticed
    print(f"\ndead worker noticed and its job interrupted {noticed:.2f} s after SIGKILL")

    new = _until("a new worker", lambda: _workers_of(serve_pid) - {old}, timeout=30)
    assert _healthy(url)

    resumed = api(url, token, "POST", f"{path}/resume")
    assert resumed["status"] == "queued"
    last = interrupted["snapshots"][-1]["iteration"]

    def ended():
        assert _healthy(url)
        j = api(url, token, "GET", path)
        return j if j["status"] in ("done", "error", "aborted", "interrupted") else None

    done = _until("the resumed job to end", ended, timeout=300, every=0.5)
    assert done["status"] == "done", done["error"]
    assert done["iteration"] == 150 > last
    # The new worker trained it: the restarted one, under the same serve.
    with sqlite3.connect(instance / "layerbench.sqlite3") as db:
        name = db.execute("select worker from jobs where id = ?", (job["id"],)).fetchone()[0]
    assert int(name.rsplit(":", 1)[1]) in new


def test_respawner_backs_off_while_the_child_dies_young_and_resets_after(tmp_path):
    from app.worker.respawn import Respawner, describe_exit
    life = tmp_path / "life"
    life.write_text("0")   # seconds each child lives
    deaths = []
    r = Respawner([sys.executable, "-c", f"import sys, time; time.sleep(float(open({str(life)!r}).read())); "
                   "sys.exit(3)"], lambda pid, code, delay: deaths.append((code, delay)),
                  first_delay=0.05, max_delay=0.2, stable_after=1.0)
    r.start()

    def died(n: int):
        r.check()
        return len(deaths) >= n

    for n in range(1, 5):
        _until(f"death {n}", lambda: died(n), timeout=30, every=0.01)
    assert deaths == [(3, 0.05), (3, 0.1), (3, 0.2), (3, 0.2)]
    life.write_text("1.2")   # the next child lives past stable_after: back to the first delay
    _until("a long-lived death", lambda: died(5), timeout=30, every=0.01)
    assert deaths[-1] == (3, 0.05) and r.restarts == 4
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    live = r.running()
    if live is not None:
        live.kill()
        live.wait()
