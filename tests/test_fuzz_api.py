"""Schemathesis against the live service: generated requests to every
documented operation find no 5xx and no undocumented status or content type.

Bounded and seeded in `make test`; `make fuzz` runs it longer with a fresh
seed (FUZZ_EXAMPLES, FUZZ_SEED).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import LENET_SEED, SEED_LAYER, api, initial_token

pytestmark = pytest.mark.slow


def _finished_job(url: str, token: str) -> str:
    """A real job trained to done, so job routes are fuzzed beyond 404."""
    job = api(url, token, "POST", "/api/v1/jobs", {
        "dataset": (None, b"sample-digits"), "max_iter": (None, b"4"),
        "network": ("net.prototxt", LENET_SEED.encode()), "python_layer": ("l.py", SEED_LAYER.encode())})
    deadline = time.monotonic() + 120
    while job["status"] not in ("done", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
        job = api(url, token, "GET", f"/api/v1/jobs/{job['id']}")
    assert job["status"] == "done", job
    return job["id"]


def test_no_server_errors_and_nothing_undocumented(server, tmp_path):
    url, instance = server
    token = initial_token(instance)
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
