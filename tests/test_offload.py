"""Inference requests through the celery queue (app.services.offload), on a
real store, workspace and Redis: what a worker accepts from a message (a
message is data: only an inference runner, only that job's own snapshot,
only a fresh scratch directory), and the claim that lets a request given up
by the web never run later. (End to end with real Celery workers:
tests/test_celery.py.)"""
from __future__ import annotations

import io
import os
import time

import pytest

from helpers import client_for, make_app

from app.core.errors import ServiceError
from app.core.workspace import snapshot_name
from app.services import offload


@pytest.fixture
def celery_app(tmp_path, sample_datasets, redis_server):
    app = make_app(tmp_path, sample_datasets, QUEUE="celery", BROKER_URL=redis_server.url.replace("/0", "/2"),
                   INFER_QUEUE_SECONDS=1)
    yield app
    app.extensions["store"].engine.dispose()


def _job_with_snapshot(app, owner: str = "admin") -> dict:
    store, ws = app.extensions["store"], app.extensions["ctx"].ws
    job = store.insert_job(name="j", owner=owner, dataset="sample-digits", device="cpu", params={}, max_iter=4)
    ws.create_job(job["id"])
    out = ws.output_dir(job["id"])
    out.mkdir(exist_ok=True)
    for suffix in (".caffemodel", ".solverstate"):      # a complete snapshot
        (out / snapshot_name(4, suffix)).write_bytes(b"x")
    return job


def _body(ctx, job: dict, **over) -> dict:
    work = ctx.ws.scratch_dir()
    body = {"job": job["id"], "runner": "app.contained.infer", "token": "0" * 32, "wall_seconds": 30,
            "model": offload.relative(ctx, ctx.ws.output_dir(job["id"]) / snapshot_name(4, ".caffemodel")),
            "work": offload.relative(ctx, work)}
    return {**body, **over}


def test_a_worker_runs_only_an_inference_runner_on_the_jobs_own_snapshot_in_a_scratch_dir(celery_app):
    ctx = celery_app.extensions["ctx"]
    job, other = _job_with_snapshot(celery_app), _job_with_snapshot(celery_app, owner="someone-else")
    good = _body(ctx, job)
    got_job, runner, model, work, wall = offload.check_request(ctx, good)
    assert (got_job["id"], runner, wall) == (job["id"], "app.contained.infer", 30.0)
    assert model == ctx.ws.output_dir(job["id"]) / snapshot_name(4, ".caffemodel") and work.parent.name == ".scratch"

    other_model = offload.relative(ctx, ctx.ws.output_dir(other["id"]) / snapshot_name(4, ".caffemodel"))
    link = ctx.ws.scratch_dir()
    link.rmdir()
    link.symlink_to(ctx.ws.root)
    evil_link = ctx.ws.output_dir(job["id"]) / snapshot_name(8, ".caffemodel")
    evil_link.symlink_to(ctx.ws.output_dir(other["id"]) / snapshot_name(4, ".caffemodel"))
    refused = {
        "the whole jobs directory writable": {"work": "."},
        "an empty path": {"work": ""},
        "the datasets": {"work": "datasets"},
        "another job's outputs": {"work": f"{other['id']}/output"},
        "out of the jobs directory": {"work": ".scratch/../.."},
        "a scratch name that is a link": {"work": offload.relative(ctx, link.parent) + "/" + link.name},
        "another user's snapshot": {"model": other_model},
        "a snapshot link to another job": {"model": f"{job['id']}/output/{evil_link.name}"},
        "not a snapshot": {"model": f"{job['id']}/input/digits_python_layers.py"},
        "another runner": {"runner": "app.contained.train"},
        "any module": {"runner": "os"},
        "an endless run": {"wall_seconds": 10 ** 9},
        "a token that is not one": {"token": "../x"},
    }
    for what, change in refused.items():
        with pytest.raises(ValueError):
            offload.check_request(ctx, {**good, **change})
            pytest.fail(what)
    with pytest.raises(LookupError):
        offload.check_request(ctx, {**good, "job": "no-such-job"})


def test_a_request_nobody_took_in_time_is_given_up_and_can_no_longer_be_claimed(celery_app):
    ctx, store = celery_app.extensions["ctx"], celery_app.extensions["store"]
    job = _job_with_snapshot(celery_app)
    work = ctx.ws.scratch_dir()
    model = ctx.ws.output_dir(job["id"]) / snapshot_name(4, ".caffemodel")
    # No worker at all: refused at once.
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as err:
        offload.run_on_worker(ctx, job["id"], "app.contained.infer", model, work, 30, "Inference")
    assert err.value.code == "unavailable" and "no worker is running" in err.value.message
    assert time.monotonic() - t0 < 1
    # A worker is listed but takes nothing: 503 after INFER_QUEUE_SECONDS
    # (1 s here), not after the run's limit too.
    store.beat_worker("w1@hostA", host="hostA", pid=os.getpid(), gpus=[], slots=1, jobs=[],
                      started_at="x", heartbeat_at=time.time())
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as err:
        offload.run_on_worker(ctx, job["id"], "app.contained.infer", model, work, 30, "Inference")
    assert err.value.code == "unavailable" and "within 1 s" in err.value.message
    assert time.monotonic() - t0 < 5
    # The message is still in the queue; a worker that gets to it now must not run it.
    import redis
    r = redis.Redis.from_url(str(ctx.cfg["BROKER_URL"]))
    given_up = [k.decode().rsplit(":", 1)[1] for k in r.scan_iter("layerbench:taken:*")]
    assert len(given_up) == 1 and r.get(f"layerbench:taken:{given_up[0]}") == b"gave-up"
    assert offload.take(ctx, given_up[0], "w1@hostA") is False
    assert r.llen(f"layerbench:reply:{given_up[0]}") == 0          # nothing claimed, nothing run
    # A fresh request is claimed once, by one worker.
    assert offload.take(ctx, "f" * 32, "w1@hostA") is True
    assert offload.take(ctx, "f" * 32, "w2@hostB") is False


def test_inference_in_the_celery_queue_never_runs_on_the_web_host(celery_app):
    # With no worker, the web answers 503 rather than running the layer itself.
    job = _job_with_snapshot(celery_app)
    client = client_for(celery_app)
    resp = client.post(f"/api/v1/jobs/{job['id']}/infer", content_type="multipart/form-data",
                       data={"image": (io.BytesIO(b"\x89PNG not really"), "x.png")})
    assert resp.status_code == 503 and resp.get_json()["error"] == "unavailable", resp.get_json()
