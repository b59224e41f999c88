"""Contained runs a request waits for, done by a worker (the celery queue).

Inference (classify, segment) runs the owner's Python layers on a trained
snapshot. In the ``local`` queue the web host runs it in the sandbox itself
(app.services.inference.run_sandboxed); in the ``celery`` queue the web host
runs no user code it does not have to, so the request goes to the workers:

* the web stages the images in a scratch directory under the jobs directory
  (the storage every host shares) and sends one ``layerbench.infer`` message
  to the ``infer`` queue, with paths *relative to* the jobs directory (each
  host resolves them against its own mount) and a reply token;
* every worker host runs a side node beside its training node
  (app.worker.celery_app.start_side_node), so a request never waits behind
  hours of training; whichever node takes the message runs the same sandboxed runner
  and pushes a reply record onto a Redis list named by the token;
* the web blocks on that list (BLPOP: woken at once, no polling of the
  shared directory, whose attribute caches may lag on NFS), then reads the
  runner's result from the scratch directory exactly as in local mode.

The message expires when the web stops waiting for a worker to take it, so
a request given up on is never run later for nobody. No live worker, or none
that took it in time, is the service's fault (503), never the user's.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

from app.core.errors import ServiceError
from app.services import queue
from app.services.context import Context

TASK_INFER = "layerbench.infer"
RUNNERS = frozenset({"app.contained.infer", "app.contained.segment"})   # all a message may name
INFER_QUEUE = "infer"
REPLY_KEY = "layerbench:reply:{token}"
REPLY_TTL_S = 600          # a reply nobody reads (the web gave up) goes away
START_MARGIN_S = 15        # a worker's sandbox and Caffe start-up, beyond the run's own limit


def relative(ctx: Context, path: Path) -> str:
    """``path`` relative to the jobs directory (what a message carries)."""
    return str(Path(path).resolve().relative_to(ctx.ws.root.resolve()))


def resolve(ctx: Context, rel: str) -> Path:
    """A message's relative path on this host; refuses anything that would
    leave the jobs directory (a message is data, not a command)."""
    root = ctx.ws.root.resolve()
    path = (root / rel).resolve()
    if rel.startswith("/") or not path.is_relative_to(root):
        raise ValueError(f"path outside the jobs directory: {rel!r}")
    return path


def check_runner(runner: str) -> str:
    """``runner`` if a message may name it (a message is data, not a command)."""
    if runner not in RUNNERS:
        raise ValueError(f"not an inference runner: {runner!r}")
    return runner


def run_on_worker(ctx: Context, job_id: str, runner: str, model: Path, work: Path,
                  run_seconds: float, what: str) -> dict:
    """Have a worker run ``runner`` for job ``job_id`` on ``model`` and the
    files staged in ``work`` (see the module docstring); its reply record:
    {"worker", "timed_out"} and, when the worker could not run it, "error". 503 when no worker is live, or
    none answered in time."""
    from app.services import workers
    if not workers.live(ctx):
        raise ServiceError("unavailable", f"{what} runs on a worker, and no worker is running; "
                           "start one (make worker) and try again.")
    token = secrets.token_hex(16)
    take_within = float(ctx.cfg["INFER_QUEUE_SECONDS"])
    body = {"job": job_id, "runner": check_runner(runner), "model": relative(ctx, model),
            "work": relative(ctx, work), "token": token}
    wait = int(take_within + run_seconds + START_MARGIN_S)
    try:
        r = queue.redis_client(ctx.cfg, read_timeout=wait + 10)
        queue.client(ctx.cfg).send_task(TASK_INFER, args=[body], queue=INFER_QUEUE, expires=take_within)
        got = r.blpop([REPLY_KEY.format(token=token)], timeout=wait)
    except Exception as exc:     # the broker is down: not the user's doing
        raise ServiceError("unavailable", f"{what} could not reach the queue ({type(exc).__name__}); "
                           "try again shortly.") from None
    if got is None:
        raise ServiceError("unavailable", f"No worker answered the {what.lower()} request within "
                           f"{wait} s (all busy or stopped); "
                           "try again shortly.")
    return json.loads(got[1])


def reply(ctx: Context, token: str, record: dict) -> None:
    """The worker's side: wake the web request waiting on ``token``."""
    key = REPLY_KEY.format(token=token)
    r = queue.redis_client(ctx.cfg)
    r.rpush(key, json.dumps(record))
    r.expire(key, REPLY_TTL_S)
