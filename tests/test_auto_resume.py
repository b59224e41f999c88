"""Issue 27, part 4: jobs interrupted by the service's own death go on by
themselves after a restart, from their newest complete snapshot; a job its
owner stopped stays stopped; never two runs of one job at once."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers import DATA, ROOT, api, free_port, initial_token, training_pid


def _serve(base: Path, port: int, log) -> subprocess.Popen:
    """`make run`'s command on ``base`` (its own instance and jobs dir)."""
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(base / "instance"), LAYERBENCH_JOBS_DIR=str(base / "jobs"),
               LAYERBENCH_WORKER_POLL_SECONDS="0.1", HOST="127.0.0.1", PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve"], cwd=ROOT, env=env,
                            stdout=log, stderr=log, start_new_session=True)   # its own process group
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return proc
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, (base / "serve.log").read_text()[-3000:]
            time.sleep(0.2)


def _job(url: str, token: str, job_id: str) -> dict:
    return api(url, token, "GET", f"/api/v1/jobs/{job_id}")


def _kill_everything(proc: subprocess.Popen, instance: Path) -> None:
    """SIGKILL the whole `make run` process group, and whatever of this
    instance left it (a crash, an OOM of the host, a reboot)."""
    # Frozen first, then killed: no process of it acts on another's death
    # (as when the host goes down).
    os.killpg(proc.pid, signal.SIGSTOP)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"LAYERBENCH_INSTANCE_DIR={instance}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def test_killing_the_whole_service_mid_training_resumes_by_itself(sample_datasets):
    base = Path(tempfile.mkdtemp(prefix="lb-resume-", dir="/tmp"))
    shutil.copytree(sample_datasets, base / "jobs" / "datasets")
    port = free_port()
    log = open(base / "serve.log", "ab")
    proc = None
    try:
        proc = _serve(base, port, log)
        url, token = f"http://127.0.0.1:{port}", initial_token(base / "instance")
        fields = {"network": ("lenet.prototxt", (DATA / "lenet_seed.prototxt").read_bytes()),
                  "python_layer": ("layer.py", (DATA / "seed_accuracy_layer.py").read_bytes()),
                  "dataset": (None, b"sample-digits"), "max_iter": (None, b"150"),
                  "snapshot_interval": (None, b"0.5")}
        job = api(url, token, "POST", "/api/v1/jobs", fields)
        stopped = api(url, token, "POST", "/api/v1/jobs", dict(fields, max_iter=(None, b"100000")))
        out = base / "jobs" / job["id"] / "output"
        deadline = time.monotonic() + 120
        while not _job(url, token, job["id"])["snapshots"]:
            assert time.monotonic() < deadline, _job(url, token, job["id"])
            time.sleep(0.2)
        first_pid = training_pid(out)
        # The owner asks the second one to stop; the service dies before it does.
        api(url, token, "POST", f"/api/v1/jobs/{stopped['id']}/abort")
        _kill_everything(proc, base / "instance")
        assert not Path(f"/proc/{first_pid}").exists() or _dead(first_pid)

        proc = _serve(base, port, log)                  # `make run` again
        ended = _wait_end(url, token, job["id"])
        assert ended["status"] == "done", (ended["error"], ended["history"])
        messages = [e["message"] or "" for e in ended["history"]]
        assert any("the service restarted while it ran; resuming from snapshot" in m for m in messages), messages
        # One run at a time: the history is one line per state change and
        # the resumed run is the only one after the restart.
        assert [e["status"] for e in ended["history"]].count("running") == 2, ended["history"]
        other = _wait_end(url, token, stopped["id"])
        assert other["status"] in ("aborted", "interrupted") and other["status"] != "queued", other
    finally:
        if proc is not None:
            _kill_everything(proc, base / "instance")
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        try:
            if Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_end(url: str, token: str, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = _job(url, token, job_id)
        if job["status"] in ("done", "error", "aborted", "interrupted"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
