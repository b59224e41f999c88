"""Cold start: a burst of 16 concurrent uploads (validate) the moment a
freshly started `flask --app wsgi serve` accepts connections, repeated over
several starts. Target: zero 5xx. (The caffe_pb2 loader once published a
half-loaded module to concurrent first requests: up to 17 of 50 answered 500.)

``burst`` is shared with tests/test_cold_start.py.
"""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import LENET_SEED, ROOT, SEED_LAYER, cleanup, free_port, make_app, stop, temp_root


def _body() -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [("dataset", None, b"sample-digits"), ("network", "lenet.prototxt", LENET_SEED.encode()),
             ("python_layer", "layers.py", SEED_LAYER.encode())]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"'.encode()
                    + (f'; filename="{f}"'.encode() if f else b"") + b"\r\n\r\n" + v + b"\r\n"
                    for n, f, v in parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _validate(port: int, token: str) -> int:
    body, ctype = _body()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/v1/validate", body=body,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status == 200 and not json.loads(data).get("ok"):
            return 422   # answered, but the seed job did not validate: count it as wrong
        return resp.status
    finally:
        conn.close()


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def burst(root: Path, port: int, n: int = 16) -> list[int]:
    """Start serve on ``root``, fire ``n`` uploads at once as soon as the port
    accepts, stop it; the statuses."""
    import os
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(root / "instance"), LAYERBENCH_JOBS_DIR=str(root / "jobs"),
               HOST="127.0.0.1", PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _accepting(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("serve did not come up")
            time.sleep(0.02)
        token = next(line.split()[-1] for line in (root / "instance" / "initial-credentials.txt")
                     .read_text().splitlines() if line.startswith("token:"))
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: _validate(port, token), range(n)))
    finally:
        stop(proc)


def run(rounds: int = 3, n: int = 16) -> dict:
    """``rounds`` fresh starts, each met by a burst of ``n`` uploads."""
    statuses: list[int] = []
    t0 = time.monotonic()
    for _ in range(rounds):
        root = temp_root()
        try:
            make_app(root)   # the first start's one-off work (sample dataset, admin) before timing
            statuses += burst(root, free_port(), n)
        finally:
            cleanup(root)
    return {"rounds": rounds, "uploads": len(statuses), "5xx": sum(s >= 500 for s in statuses),
            "not_ok": sum(s != 200 for s in statuses), "seconds": round(time.monotonic() - t0, 1)}
