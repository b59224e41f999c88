"""Inference through HTTP against a served instance (`flask --app wsgi serve`,
as `make run` does: nginx, gunicorn, the local worker; as root the web runs
as the service user and sandboxes come from the launcher): a LeNet + the
seed's layer trained on sample-digits, then

* the cold first request (the model's contained process starts and loads),
* classify-one-image latency after it (p50 / p95 over ``n`` sequential
  requests on one keep-alive connection; every request after the first is
  counted, a second gunicorn worker's own first request included),
* 100 images per call: images/s over ``calls`` sequential calls,
* for comparison, the cold path (``LAYERBENCH_INFER_WARM=0``: a contained
  process per request, as before) on the same data root, served again.

Targets (issue 24): p50 <= 15 ms, p95 <= 30 ms, >= 2,000 images/s.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import time
import uuid

from .common import LENET_SEED, ROOT, SEED_LAYER, cleanup, free_port, make_app, stop, temp_root
from .cold_start import _accepting


def _multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"'.encode()
                    + (f'; filename="{f}"'.encode() if f else b"") + b"\r\n\r\n" + v + b"\r\n"
                    for n, f, v in fields) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _pngs(n: int) -> list[bytes]:
    """``n`` 28x28 grey digit-like images (noise: the net's answer does not matter here)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class _Api:
    """One keep-alive connection to the served instance."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.auth = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> dict:
        headers = dict(self.auth, **({"Content-Type": ctype} if ctype else {}))
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data[:300]!r}")
        return json.loads(data)


def _train(api: _Api) -> str:
    body, ctype = _multipart([("dataset", None, b"sample-digits"), ("max_iter", None, b"20"),
                              ("network", "lenet.prototxt", LENET_SEED.encode()),
                              ("python_layer", "layers.py", SEED_LAYER.encode())])
    job = api.call("POST", "/api/v1/jobs", body, ctype)
    deadline = time.monotonic() + 600
    while True:
        status = api.call("GET", f"/api/v1/jobs/{job['id']}")["status"]
        if status == "done":
            return job["id"]
        if status in ("error", "aborted") or time.monotonic() > deadline:
            raise RuntimeError(f"the benchmark's job ended {status}")
        time.sleep(0.5)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)


def _serve(root, port: int, **env_extra: str) -> subprocess.Popen:
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(root / "instance"), LAYERBENCH_JOBS_DIR=str(root / "jobs"),
               HOST="127.0.0.1", PORT=str(port), **env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not _accepting(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("serve did not come up")
        time.sleep(0.1)
    return proc


def _timed(api: _Api, path: str, body: bytes, ctype: str) -> float:
    t = time.perf_counter()
    api.call("POST", path, body, ctype)
    return time.perf_counter() - t


def run(n: int = 300, calls: int = 20, cold_n: int = 9) -> dict:
    """Cold first request, warm latency percentiles and 100-image throughput;
    then, served again with LAYERBENCH_INFER_WARM=0, one-image requests on
    the cold path (a contained process per request, as before warm
    inference) for comparison on the same machine and load."""
    root = temp_root()
    port = free_port()
    make_app(root)   # sample-digits and the admin, before serve starts
    proc = _serve(root, port)
    try:
        token = next(line.split()[-1] for line in (root / "instance" / "initial-credentials.txt")
                     .read_text().splitlines() if line.startswith("token:"))
        api = _Api(port, token)
        job = _train(api)
        path = f"/api/v1/jobs/{job}/infer"
        images = _pngs(100)
        one, one_type = _multipart([("image", "digit.png", images[0])])
        cold = _timed(api, path, one, one_type)
        lat = [_timed(api, path, one, one_type) for _ in range(n)]
        many, many_type = _multipart([("image", f"d{k}.png", b) for k, b in enumerate(images)])
        api.call("POST", path, many, many_type)
        t = time.perf_counter()
        for _ in range(calls):
            got = api.call("POST", path, many, many_type)
            assert len(got["predictions"]) == 100
        per_s = 100 * calls / (time.perf_counter() - t)
        stop(proc)
        proc = _serve(root, port, LAYERBENCH_INFER_WARM="0")
        api = _Api(port, token)
        for _ in range(5):     # the web side as warm as before the first request above (training polls)
            api.call("GET", f"/api/v1/jobs/{job}")
        cold_path_first = _timed(api, path, one, one_type)
        cold_path = [_timed(api, path, one, one_type) for _ in range(cold_n)]
        return {"cold_first_ms": round(cold * 1000, 1), "one_image_p50_ms": _pct(lat, 0.5),
                "one_image_p95_ms": _pct(lat, 0.95), "one_image_p99_ms": _pct(lat, 0.99),
                "one_image_max_ms": _pct(lat, 1.0), "requests": n,
                "images_per_s_100_per_call": round(per_s, 1), "calls": calls,
                "cold_path_first_ms": round(cold_path_first * 1000, 1),
                "cold_path_one_image_p50_ms": _pct(cold_path, 0.5), "cold_path_requests": cold_n,
                "targets": {"p50_ms": 15, "p95_ms": 30, "images_per_s": 2000}}
    finally:
        stop(proc)
        cleanup(root)
