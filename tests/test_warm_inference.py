"""Warm inference (app.services.inference.warm_pool, app.contained.infer_server): after a
model's first request its contained process stays alive and answers the
next ones. Real Caffe, the real sandbox and worker, no mocks: the warm
process is reused per job and answers exactly as the cold path does, another
job gets another process, delete, resume and idleness retire it, the LRU
cap holds, and a hostile layer that hangs, crashes or raises in forward on a
marked image (or writes garbage into the reply pipe) fails that request
clearly (400) while the next one gets a fresh process and succeeds."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import (LENET_SEED, SEED_LAYER, Workers, change_settings, client_for, infer_server_pids, make_app, post,
                     wait_for)

from app.services.inference import classify as classification

from app.services.inference import warm_pool as warm

REQUEST_SECONDS = 5
# In the deploy net too (no stage rule): passes the raw image through and
# misbehaves on marked ones (use_mean=none, so the data are the pixels).
GATE = """layer {
  name: "gate"
  type: "Python"
  bottom: "data"
  top: "data"
  python_param { module: "digits_python_layers" layer: "Gate" }
}
"""
GATE_LAYER = SEED_LAYER + """

class Gate(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        import os, time
        top[0].data[...] = bottom[0].data
        for x in bottom[0].data:
            if x.min() == x.max() == 255:      # all white: hang
                time.sleep(10 ** 6)
            if x.min() == x.max() == 128:      # all grey: crash
                os._exit(3)
            if x.min() == x.max() == 64:       # all dark grey: raise
                raise ValueError("a marked image")
            if x.min() == x.max() == 32:       # all darker grey: garbage into the reply pipe
                for fd in os.listdir("/proc/self/fd"):
                    if int(fd) > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                        os.write(int(fd), (5).to_bytes(4, "big") + b"junk!")

    def backward(self, top, propagate_down, bottom):
        pass
"""
HOSTILE_NET = LENET_SEED.replace('layer {\n  name: "scale"', GATE + 'layer {\n  name: "scale"', 1)


def png(value=None, seed: int = 0) -> bytes:
    """A 28x28 grey PNG: all ``value``, or noise from ``seed``."""
    arr = np.full((28, 28), value, np.uint8) if value is not None else \
        np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """An app with two trained jobs (the seed LeNet, and one with the
    hostile Gate layer); its worker stops once they are done."""
    from app.caffe.datasets import ensure_sample_digits
    samples = tmp_path_factory.mktemp("warm-sample") / "datasets"
    ensure_sample_digits(samples)
    app = make_app(tmp_path_factory.mktemp("warm"), samples, INFER_REQUEST_SECONDS=REQUEST_SECONDS)
    client = client_for(app, "admin")
    workers = Workers(app)
    workers.start()
    try:
        plain = post(client, "/api/v1/jobs", max_iter=5, name="plain").get_json()
        hostile = post(client, "/api/v1/jobs", network=HOSTILE_NET, layer=GATE_LAYER, max_iter=5,
                       use_mean="none", name="hostile").get_json()
        for job in (plain, hostile):
            assert wait_for(client, job["id"], {"done", "error"}, timeout=300)["status"] == "done", job
    finally:
        for w in workers.procs:
            w.stop()
    yield app, client, plain["id"], hostile["id"]
    warm.retire_all()
    app.extensions["store"].engine.dispose()


def _infer(client, job_id: str, *images: bytes):
    data = {"image": [(io.BytesIO(b), f"img{k}.png") for k, b in enumerate(images)]}
    return client.post(f"/api/v1/jobs/{job_id}/infer", data=data, content_type="multipart/form-data")


def _warm_pid(job_id: str) -> int | None:
    pids = [p["pid"] for p in warm.POOL.describe() if p["job"] == job_id]
    assert len(pids) <= 1, pids        # one process per job (one snapshot, one environment here)
    return pids[0] if pids else None


def _runner_pids(app, job_id: str) -> list[int]:
    """Host pids of `python -m app.contained.infer_server` serving ``job_id``."""
    return infer_server_pids(Path(app.config["JOBS_DIR"]) / job_id)


def _no_runners(app, job_id: str, timeout: float = 10) -> bool:
    # The sandbox's own processes die with its pid namespace, just after it.
    deadline = time.monotonic() + timeout
    while _runner_pids(app, job_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_second_request_reuses_the_process_and_answers_as_the_cold_path(lab):
    app, client, plain, _ = lab
    images = [png(seed=k) for k in range(3)] + [b"not an image"]
    first = _infer(client, plain, *images)
    assert first.status_code == 200, first.get_json()
    pid = _warm_pid(plain)
    assert pid is not None and len(_runner_pids(app, plain)) == 1
    runner = _runner_pids(app, plain)
    second = _infer(client, plain, *images)
    assert second.status_code == 200 and second.get_json() == first.get_json()
    assert _warm_pid(plain) == pid and _runner_pids(app, plain) == runner   # the very same process
    assert first.get_json()["predictions"][3]["error"].startswith("not a readable image")

    # The cold path (a process per request) gives the same answer, byte for
    # byte, visualizations and every probability included.
    ctx, job = app.extensions["ctx"], app.extensions["store"].get_job(plain)

    def service():
        return classification.classify(ctx, job, [(io.BytesIO(b), f"img{k}.png") for k, b in enumerate(images)], None,
                                  probabilities=True, visualize=True)
    warm_out = service()
    change_settings(app, INFER_WARM=0)
    try:
        cold_http = _infer(client, plain, *images)
        cold_out = service()
    finally:
        change_settings(app, INFER_WARM=4)
    assert cold_http.status_code == 200 and cold_http.get_json() == first.get_json()
    assert warm_out == cold_out
    assert len(warm_out["visualizations"]) > 4 and warm_out["visualizations"][0]["png"].startswith(b"\x89PNG")
    assert len(warm_out["predictions"][0]["probabilities"]) == 10
    assert _warm_pid(plain) == pid


def test_another_caller_never_shares_the_owners_process(lab):
    """A warm process keeps state between requests: the images of someone
    else allowed to use the job (an admin) go to a process of their own, so
    the owner's layer code can never hand them back to the owner later."""
    app, client, plain, _ = lab
    other = client_for(app, "auditor", admin=True)
    assert _infer(client, plain, png(seed=1)).status_code == 200
    assert _infer(other, plain, png(seed=2)).status_code == 200
    pids = {p["pid"] for p in warm.POOL.describe() if p["job"] == plain}
    assert len(pids) == 2, warm.POOL.describe()
    assert _infer(client, plain, png(seed=3)).status_code == 200
    assert {p["pid"] for p in warm.POOL.describe() if p["job"] == plain} == pids   # each reused, none shared
    warm.retire_job(app.extensions["ctx"], plain)


def test_another_job_gets_another_process(lab):
    app, client, plain, hostile = lab
    assert _infer(client, plain, png(seed=1)).status_code == 200
    resp = _infer(client, hostile, png(seed=1))
    assert resp.status_code == 200, resp.get_json()
    assert None not in (_warm_pid(plain), _warm_pid(hostile)) and _warm_pid(plain) != _warm_pid(hostile)
    assert set(_runner_pids(app, plain)).isdisjoint(_runner_pids(app, hostile))


@pytest.mark.parametrize("marker,expected", [(255, f"did not answer within {REQUEST_SECONDS} s"),
                                             (128, "stopped (exit status 3)"),
                                             (32, "answered with something that is not a reply")])
def test_a_layer_that_hangs_crashes_or_forges_fails_that_request_and_the_next_gets_a_fresh_process(
        lab, marker, expected):
    app, client, _, hostile = lab
    assert _infer(client, hostile, png(seed=2)).status_code == 200
    before = _warm_pid(hostile)
    t0 = time.monotonic()
    resp = _infer(client, hostile, png(seed=3), png(marker))
    body = resp.get_json()
    assert resp.status_code == 400 and body["error"] == "invalid_python_layer", body
    assert expected in body["message"] and "2 fresh processes" in body["message"], body["message"]
    assert body["details"][0]["file"] == "digits_python_layers.py"
    assert time.monotonic() - t0 < 4 * REQUEST_SECONDS + 30     # killed at the limit, retried once, no more
    assert _warm_pid(hostile) is None and _gone(before)
    assert _no_runners(app, hostile)
    again = _infer(client, hostile, png(seed=3))
    assert again.status_code == 200, again.get_json()
    assert _warm_pid(hostile) not in (None, before)


def test_a_layer_that_raises_is_reported_and_its_process_replaced(lab):
    app, client, _, hostile = lab
    assert _infer(client, hostile, png(seed=4)).status_code == 200
    before = _warm_pid(hostile)
    resp = _infer(client, hostile, png(64))
    body = resp.get_json()
    assert resp.status_code == 400 and "ValueError: a marked image" in body["message"], body
    assert "digits_python_layers.py" in body["details"][0]["traceback"]
    assert _gone(before) and _warm_pid(hostile) is None
    assert _infer(client, hostile, png(seed=4)).status_code == 200
    assert _warm_pid(hostile) not in (None, before)


def test_the_lru_cap_holds(lab):
    app, client, plain, hostile = lab
    change_settings(app, INFER_WARM=1)
    try:
        assert _infer(client, plain, png(seed=5)).status_code == 200
        first = _warm_pid(plain)
        assert _infer(client, hostile, png(seed=5)).status_code == 200
        assert [p["job"] for p in warm.POOL.describe()] == [hostile]
        assert _gone(first) and _no_runners(app, plain)
        assert _infer(client, plain, png(seed=5)).status_code == 200
        assert [p["job"] for p in warm.POOL.describe()] == [plain]
    finally:
        change_settings(app, INFER_WARM=4)


def test_an_idle_process_is_retired(lab):
    app, client, plain, _ = lab
    change_settings(app, INFER_IDLE_SECONDS=1)
    try:
        assert _infer(client, plain, png(seed=7)).status_code == 200
        pid = _warm_pid(plain)
        assert _gone(pid, timeout=warm.SWEEP_S * 2 + 5) and _warm_pid(plain) is None
        assert _no_runners(app, plain)
    finally:
        change_settings(app, INFER_IDLE_SECONDS=300)


def test_resume_and_delete_retire_the_jobs_processes(lab):
    app, client, plain, hostile = lab
    store = app.extensions["store"]
    assert _infer(client, hostile, png(seed=6)).status_code == 200
    keep = _warm_pid(hostile)
    # Resume (an aborted job with a snapshot): its process goes, others stay.
    store.update_job(plain, status="aborted")
    assert _infer(client, plain, png(seed=6)).status_code == 200
    pid = _warm_pid(plain)
    assert client.post(f"/api/v1/jobs/{plain}/resume").status_code in (200, 202)
    assert _gone(pid) and _warm_pid(plain) is None and _no_runners(app, plain)
    # Delete: the same (no worker runs, so the requeued job is still queued).
    store.update_job(plain, status="done")
    assert _infer(client, plain, png(seed=6)).status_code == 200
    pid = _warm_pid(plain)
    assert client.delete(f"/api/v1/jobs/{plain}").status_code == 204
    assert _gone(pid) and _warm_pid(plain) is None and _no_runners(app, plain)
    assert _warm_pid(hostile) == keep

