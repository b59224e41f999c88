"""Inference requests through the celery queue (app.services.inference.celery_offload), on a
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

from helpers import change_settings, client_for, infer_server_pids, make_app

from app.core.errors import ServiceError
from app.core.workspace import snapshot_name
from app.services.inference import celery_offload as offload


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


def _body(ctx, job: dict, token: str = "0" * 32, **over) -> dict:
    """A message as the web sends one, its scratch directory bound to it."""
    work = ctx.ws.scratch_dir()
    offload.bind(ctx, work, token, job["id"])
    body = {"job": job["id"], "runner": "app.contained.infer", "token": token, "wall_seconds": 30,
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


def test_a_message_runs_only_in_the_scratch_dir_staged_for_its_own_request(celery_app):
    # Issue 22, item 9: any .scratch/* directory was accepted, so a message
    # could point an inference run (the sender's own job and Python layer)
    # at the images another request staged, or at a validation's upload.
    ctx = celery_app.extensions["ctx"]
    job, other = _job_with_snapshot(celery_app), _job_with_snapshot(celery_app, owner="someone-else")
    mine, theirs = _body(ctx, job, token="a" * 32), _body(ctx, other, token="b" * 32)
    assert offload.check_request(ctx, mine)[3].name == mine["work"].split("/")[1]
    validation = ctx.ws.scratch_dir()          # a validation's scratch dir: bound to nothing
    # A marker that is a link to a right one (bound for this very request).
    link = ctx.ws.scratch_dir()
    moved = offload.bind(ctx, link, mine["token"], job["id"]).rename(ctx.ws.root / "elsewhere")
    link.with_name(link.name + offload.BOUND_SUFFIX).symlink_to(moved)
    refused = {
        "another request's scratch dir": {"work": theirs["work"]},
        "a scratch dir no request staged": {"work": offload.relative(ctx, validation)},
        "a marker that is a link (to a right one)": {"work": offload.relative(ctx, link)},
        "its own scratch dir under another job": {"job": other["id"], "model": theirs["model"]},
        "its own scratch dir under another token": {"token": "c" * 32},
    }
    for what, change in refused.items():
        with pytest.raises(ValueError):
            offload.check_request(ctx, {**mine, **change})
            pytest.fail(what)


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
    # The request is over: its scratch dir is bound to nothing any more, so
    # even the message still queued for it would be refused by a worker.
    assert list(work.parent.glob("*" + offload.BOUND_SUFFIX)) == []
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


def test_inference_on_a_real_worker_runs_in_its_bound_scratch_dir(tmp_path, celery_app):
    # End to end with a real Celery worker: a job trained there, then an
    # image classified there; the worker accepts the web's own (bound)
    # request, and nothing stays bound once it is answered.
    from pathlib import Path

    from cluster import CeleryWorker
    from helpers import post, wait_for
    client = client_for(celery_app)
    # The fixture's 1 s to take a request is for the give-up test: a node
    # just started on a busy machine may need longer to take its first.
    change_settings(celery_app, INFER_QUEUE_SECONDS=30)
    worker = CeleryWorker(celery_app.config, "w1@hostA", tmp_path)
    try:
        resp = post(client, "/api/v1/jobs", max_iter=4, snapshot_interval=1)
        assert resp.status_code == 201, resp.get_json()
        job = wait_for(client, resp.get_json()["id"], {"done", "error", "interrupted", "aborted"}, timeout=180)
        assert job["status"] == "done", job["error"]
        root = Path(celery_app.config["JOBS_DIR"])
        sample = sorted((root / "datasets" / "sample-digits" / "samples").glob("*.png"))[0]
        resp = client.post(f"/api/v1/jobs/{job['id']}/infer", content_type="multipart/form-data",
                           data={"image": (io.BytesIO(sample.read_bytes()), sample.name)})
        assert resp.status_code == 200, (resp.get_json(), worker.log_path.read_text()[-3000:])
        assert resp.get_json()["worker"] == "w1@hostA" and resp.get_json()["predictions"][0]["top"]
        assert list((root / ".scratch").glob("*" + offload.BOUND_SUFFIX)) == []
        # The node answered from a warm process (issue 24), which stays and
        # answers the next request the same; deleting the job retires it.
        servers = infer_server_pids(root / job["id"])
        assert len(servers) == 1, servers
        again = client.post(f"/api/v1/jobs/{job['id']}/infer", content_type="multipart/form-data",
                            data={"image": (io.BytesIO(sample.read_bytes()), sample.name)})
        assert again.status_code == 200 and again.get_json()["predictions"] == resp.get_json()["predictions"]
        assert infer_server_pids(root / job["id"]) == servers
        assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
        deadline = time.monotonic() + 30
        while infer_server_pids(root / job["id"]):
            assert time.monotonic() < deadline, "the node kept a deleted job's warm process"
            time.sleep(0.2)
    finally:
        worker.stop()
