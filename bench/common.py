"""Shared helpers for the benchmarks: a throwaway app with its own data root."""
from __future__ import annotations

import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
LENET_SEED = (DATA / "lenet_seed.prototxt").read_text()
SEED_LAYER = (DATA / "seed_accuracy_layer.py").read_text()


def temp_root() -> Path:
    """A data root the sandbox uid can traverse."""
    root = Path(tempfile.mkdtemp(prefix="layerbench-bench-"))
    root.chmod(0o755)
    return root


def make_app(root: Path, **overrides):
    """An app on ``root`` (sample-digits built on first use)."""
    from app.web import create_app
    return create_app({"INSTANCE_DIR": str(root / "instance"), "JOBS_DIR": str(root / "jobs"),
                       "WORKER_POLL_SECONDS": 0.2, **overrides})


def client(app):
    """A test client with an API token (as admin), like a real API client."""
    from app.web import auth
    with app.app_context():
        token = auth.new_token("admin")
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    c.token = token
    return c


def upload(**fields) -> dict:
    """Multipart fields for the LeNet + seed-layer job."""
    data = {k: str(v) for k, v in fields.items()}
    data.setdefault("dataset", "sample-digits")
    data["network"] = (io.BytesIO(LENET_SEED.encode()), "lenet.prototxt")
    data["python_layer"] = (io.BytesIO(SEED_LAYER.encode()), "my_layers.py")
    return data


def records(app, job_id: str, kind: str) -> list[dict]:
    """The runner's metric records of one type."""
    path = Path(app.config["JOBS_DIR"]) / job_id / "output" / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == kind:
            out.append(rec)
    return out


def wait(client, job_id: str, statuses=("done", "error", "aborted"), timeout=600.0) -> dict:
    """Poll until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["status"] in statuses or time.monotonic() > deadline:
            return job
        time.sleep(0.5)   # like the job page's update cadence


def median(xs) -> float:
    return statistics.median(xs)


def cleanup(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc) -> None:
    """Stop a server process: SIGTERM, then SIGKILL after 30 s."""
    import subprocess
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
