"""Schemathesis against the live service: generated requests to every
documented operation find no 5xx and no undocumented status or content type.

Bounded and seeded in `make test`; `make fuzz` runs it longer with a fresh
seed (FUZZ_EXAMPLES, FUZZ_SEED).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import LENET_SEED, SEED_LAYER

pytestmark = pytest.mark.slow


def _api(url: str, token: str, data: bytes | None = None, ctype: str | None = None) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}",
                                                          **({"Content-Type": ctype} if ctype else {})})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _finished_job(url: str, token: str) -> str:
    """A real job trained to done, so job routes are fuzzed beyond 404."""
    boundary = "fuzz"
    parts = [("dataset", None, b"sample-digits"), ("max_iter", None, b"4"),
             ("network", "net.prototxt", LENET_SEED.encode()), ("python_layer", "l.py", SEED_LAYER.encode())]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"'.encode()
        + (f'; filename="{f}"'.encode() if f else b"") + b"\r\n\r\n" + v + b"\r\n" for n, f, v in parts)
    body += f"--{boundary}--\r\n".encode()
    job = _api(f"{url}/api/v1/jobs", token, body, f"multipart/form-data; boundary={boundary}")
    deadline = time.monotonic() + 120
    while job["status"] not in ("done", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
        job = _api(f"{url}/api/v1/jobs/{job['id']}", token)
    assert job["status"] == "done", job
    return job["id"]


def test_no_server_errors_and_nothing_undocumented(server, tmp_path):
    url, instance = server
    creds = (Path(instance) / "initial-credentials.txt").read_text()
    token = next(line.split()[-1] for line in creds.splitlines() if line.startswith("token:"))
    job_id = _finished_job(url, token)
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'headers = {{ Authorization = "Bearer {token}" }}\n'
                      f'parameters = {{ job_id = "{job_id}", dataset_id = "sample-digits" }}\n')
    examples = os.environ.get("FUZZ_EXAMPLES", "10")
    seed = os.environ.get("FUZZ_SEED", "20261127")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
         f"{url}/api/v1/openapi.json", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance",
         "--max-examples", examples, *(["--seed", seed] if seed else []), "--no-color"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
