"""GPU detection and allocation. Without a GPU (this machine, CI) detection
must say so, `auto` must train on the CPU and `gpu` must be refused; on a GPU
host (`make test-gpu-build` runs this suite there) detection must name each
GPU, and tests_gpu/ proves the training."""
from __future__ import annotations

import pytest

from app.services.runtime import gpus
from app.worker.supervisor import Allocator
from helpers import post, wait_for

FOUND = gpus.detect()
no_gpu_only = pytest.mark.skipif(bool(FOUND), reason="this host has a GPU: tests_gpu/ covers training on it")


def test_detection_matches_the_host_and_is_reported(client):
    reported = client.get("/healthz").get_json()["gpus"]
    if not FOUND:
        assert FOUND == () and gpus.device_nodes(0) == [] and reported == []
        return
    assert [g["index"] for g in FOUND] == list(range(len(FOUND)))
    assert all(g["name"] and g["memory_mb"] > 0 for g in FOUND)
    assert "/dev/nvidia0" in gpus.device_nodes(0)
    assert [g["index"] for g in reported] == [g["index"] for g in FOUND]


@no_gpu_only
def test_gpu_requests_are_400_without_a_gpu(client):
    for device in ("gpu", "gpu:0", "gpu:3"):
        resp = post(client, "/api/v1/jobs", max_iter=3, device=device)
        assert resp.status_code == 400, device
        body = resp.get_json()
        assert body["error"] == "invalid_request" and body["details"][0]["field"] == "device"
        assert "has none" in body["message"]
    assert post(client, "/api/v1/jobs", max_iter=3, device="tpu").status_code == 400
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


@no_gpu_only
def test_auto_trains_on_the_cpu(client, worker):
    job = post(client, "/api/v1/jobs", max_iter=5, device="auto").get_json()
    assert job["device"] == "auto"
    done = wait_for(client, job["id"], {"done", "error"})
    assert done["status"] == "done" and done["device"] == "cpu"
    assert "gpu" not in done


def test_device_messages():
    assert gpus.parse_device("auto", 0, False) is None and gpus.parse_device("cpu", 0, True) is None
    assert "built without CUDA" in gpus.parse_device("gpu", 2, False)
    assert "GPUs 0..1" in gpus.parse_device("gpu:2", 2, True)
    assert gpus.parse_device("gpu:1", 2, True) is None


def test_allocator_one_job_per_gpu_then_cpu():
    a = Allocator([0, 1], cpu_slots=1)
    assert a.pick("gpu:1") == ("gpu", 1)
    assert a.pick("gpu:1") is None            # busy: waits
    assert a.pick("auto") == ("gpu", 0)       # auto takes a free GPU first
    assert a.pick("gpu") is None              # none free: waits
    assert a.pick("auto") == ("cpu", None)    # then the CPU
    assert a.pick("auto") is None and a.pick("cpu") is None
    a.release("gpu", 1)
    assert a.pick("gpu") == ("gpu", 1)
    a.release("cpu", None)
    assert a.pick("cpu") == ("cpu", None)


def test_allocator_without_gpus():
    a = Allocator([], cpu_slots=2)
    assert a.pick("auto") == ("cpu", None) and a.pick("cpu") == ("cpu", None)
    assert a.pick("auto") is None and a.pick("gpu") is None
