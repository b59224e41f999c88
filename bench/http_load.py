"""HTTP: the job JSON route vs a trivial Flask route under the same gunicorn
settings (wrk, closed loop), then p99 latency of the job route at a fixed
200 req/s (open loop, latency from the scheduled send time) while a job trains."""
from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

from .common import client as common_client, ROOT, cleanup, make_app, temp_root, upload


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(port: int, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} did not come up")


def _wrk(port: int, path: str, token: str, seconds: int = 6) -> float:
    # Both routes get the same header, so the comparison is like for like.
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "-H", f"Authorization: Bearer {token}",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{path}: {non2xx.group(1)} error responses")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def _fixed_rate(port: int, path: str, token: str, rate: float, seconds: float, threads: int = 16) -> list[float]:
    total = int(rate * seconds)
    t0 = time.perf_counter() + 0.2
    lock, nxt, lat = threading.Lock(), [0], []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= total:
                return
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}")
            lat.append(time.perf_counter() - due)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(lat)


def run() -> dict:
    """Requests/second of both routes, and latency percentiles while training."""
    from app.web.cli import gunicorn_argv
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (scripts/debian-packages.txt lists it)")
    root = temp_root()
    procs = []
    try:
        app = make_app(root)   # builds sample-digits, creates the database
        client = common_client(app)
        job = client.post("/api/v1/jobs", data=upload(max_iter=5), content_type="multipart/form-data").get_json()
        env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(root / "instance"),
                   LAYERBENCH_JOBS_DIR=str(root / "jobs"))
        p_app, p_triv = _port(), _port()
        for argv in (gunicorn_argv("127.0.0.1", p_app, 2, 8, "wsgi:app", access_log=False),
                     gunicorn_argv("127.0.0.1", p_triv, 2, 8, "bench.trivial_wsgi:app", access_log=False)):
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        route = f"/api/v1/jobs/{job['id']}"
        _up(p_app, route)
        _up(p_triv, "/ping")
        rps_job, rps_triv = [], []
        for _ in range(2):
            rps_triv.append(_wrk(p_triv, "/ping", client.token))
            rps_job.append(_wrk(p_app, route, client.token))
        procs[1].terminate()
        # A job trains while the job route is polled at 200 req/s.
        procs.append(subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "worker"], cwd=ROOT,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        train = client.post("/api/v1/jobs", data=upload(max_iter=100000),
                            content_type="multipart/form-data").get_json()
        deadline = time.monotonic() + 30
        while client.get(f"/api/v1/jobs/{train['id']}").get_json()["iteration"] < 5:
            if time.monotonic() > deadline:
                raise RuntimeError("training job did not start")
            time.sleep(0.2)
        lat = _fixed_rate(p_app, f"/api/v1/jobs/{train['id']}", client.token, 200, 10)
        running = client.get(f"/api/v1/jobs/{train['id']}").get_json()["status"]
        client.post(f"/api/v1/jobs/{train['id']}/abort")

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)
        return {"rps_job_json": round(max(rps_job), 1), "rps_trivial": round(max(rps_triv), 1),
                "ratio": round(max(rps_job) / max(rps_triv), 3),
                "at_200rps_while_training": {"p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
                                             "requests": len(lat), "job_status": running}}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        cleanup(root)
