"""Contained runs a request waits for, done by a worker (the celery queue).

Inference (classify, segment) runs the owner's Python layers on a trained
snapshot. In the ``local`` queue the web host runs it in the sandbox itself
(app.services.inference.cold.run_sandboxed); in the ``celery`` queue the web host
runs no user code it does not have to, so the request goes to the workers:

* the web stages the images in a scratch directory under the jobs directory
  (the storage every host shares) and sends one ``layerbench.infer`` message
  to the ``infer`` queue: the job, the snapshot and the scratch directory as
  paths *relative to* the jobs directory (each host resolves them against
  its own mount), the run's time limit and a reply token;
* every worker host runs an inference node beside its training node
  (app.worker.celery_app), so a request never waits behind hours of
  training; the node that takes the message first *claims* the request
  (``take``), then runs the same sandboxed runner and pushes the outcome onto
  a Redis list named by the token;
* the web blocks on that list (BLPOP: woken at once, no polling of the
  shared directory, whose attribute caches may lag on NFS), then reads the
  runner's result from the scratch directory exactly as in local mode.

Bounds: a request no worker claimed within ``INFER_QUEUE_SECONDS`` is given
up (503) and can no longer be claimed (the claim and the give-up are one
Redis SET NX: exactly one wins), so it never runs later for nobody; a
claimed one is answered within its time limit plus a start-up margin. No
live worker, or none in time, is the service's fault (503), never the
user's.

A message is data, not a command: a worker runs only the inference runners,
only on a snapshot in that job's own output directory and only in the
scratch directory the web staged for *this* request (``check_request``):
before sending, the web records beside that directory, where no sandbox
reaches, a digest of the request's token and job (``bind``), and removes it
when the request ends. A message naming another scratch directory (another
request's images, a validation's upload), another job, or a request that
already ended is refused. The broker must still be private or
password-protected (docs/SCALE_OUT.md).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from app.core.errors import ServiceError, Unavailable
from app.core.workspace import SNAPSHOT_PREFIX, Workspace
from app.services.runtime import broker as queue
from app.services.context import Context

TASK_INFER = "layerbench.infer"
INFER_QUEUE = "infer"
RUNNERS = frozenset({"app.contained.infer", "app.contained.segment"})   # all a message may name
REPLY_KEY = "layerbench:reply:{token}"
TAKEN_KEY = "layerbench:taken:{token}"
KEY_TTL_S = 600            # replies and claims nobody reads any more go away
START_MARGIN_S = 15        # a worker's sandbox and Caffe start-up, beyond the run's own limit
MAX_WALL_S = 3600          # the longest run a message may ask for
GAVE_UP = "gave-up"
_SCRATCH = re.compile(r"\.scratch/[A-Za-z0-9_]{1,64}")
_MODEL = re.compile(rf"{SNAPSHOT_PREFIX}_iter_\d{{1,12}}\.caffemodel")
# Beside the scratch directory (``.scratch/<name>.request``): the scratch
# names allowed in a message (``_SCRATCH``) hold no dot, so a marker can
# never be named as one, and only the scratch directory itself is ever
# bound into a sandbox, never its parent.
BOUND_SUFFIX = ".request"


def _digest(token: str, job_id: str) -> bytes:
    # Only a digest is kept on the shared disk: reading it gives no one the
    # token (which names the request's reply list in Redis).
    return hashlib.sha256(f"layerbench-infer\0{token}\0{job_id}".encode()).hexdigest().encode()


def bind(ctx: Context, work: Path, token: str, job_id: str) -> Path:
    """The web's side, before it sends the message: record that scratch
    directory ``work`` belongs to request ``token`` for job ``job_id``. The
    marker's path (the caller removes it when the request ends)."""
    marker = Path(work).with_name(Path(work).name + BOUND_SUFFIX)
    if marker.parent != (ctx.ws.root / ".scratch").resolve():
        raise ValueError("not a scratch directory")
    Workspace.write_atomic(marker, _digest(token, job_id))
    return marker


def is_bound(marker: Path, token: str, job_id: str) -> bool:
    """The worker's side: whether ``marker`` (``bind``'s) records request
    ``token`` for job ``job_id``. A missing marker, a link, anything but a
    small regular file, or another request's digest: False."""
    try:
        recorded = Workspace.read_capped(marker, 256)   # no link followed, regular files only
    except OSError:
        return False
    return hmac.compare_digest(recorded, _digest(token, job_id))


def relative(ctx: Context, path: Path) -> str:
    """``path`` relative to the jobs directory (what a message carries)."""
    return str(Path(path).resolve().relative_to(ctx.ws.root.resolve()))


def check_request(ctx: Context, body: dict) -> tuple[dict, str, Path, Path, float]:
    """A worker's check of a message before it runs anything: (job row,
    runner, model, scratch directory, wall seconds), or ValueError. The
    runner is an inference runner, the model a snapshot in the job's own
    output directory, the scratch directory the one the web bound to this
    request's token and job (``bind``: not the jobs directory, not another
    job's files, not another request's or a validation's scratch
    directory), no link anywhere."""
    if not re.fullmatch(r"[0-9a-f]{32}", str(body.get("token"))):
        raise ValueError("bad reply token")
    runner = str(body.get("runner"))
    if runner not in RUNNERS:
        raise ValueError(f"not an inference runner: {runner!r}")
    job = ctx.store.get_job(str(body.get("job")))
    if job is None:
        raise LookupError("the job no longer exists")
    root = ctx.ws.root.resolve()
    work_rel, model_rel = str(body.get("work")), str(body.get("model"))
    if not _SCRATCH.fullmatch(work_rel):
        raise ValueError("not a scratch directory")
    work = root / work_rel
    if work.is_symlink() or not work.is_dir() or work.resolve() != work:
        raise ValueError("not a scratch directory")
    if not is_bound(root / (work_rel + BOUND_SUFFIX), str(body["token"]), job["id"]):
        raise ValueError("not the scratch directory of this request")
    out = ctx.ws.output_dir(job["id"])
    name = Path(model_rel).name
    model = out / name
    if not _MODEL.fullmatch(name) or model_rel != relative(ctx, out / name) or model.is_symlink() \
            or not model.is_file():
        raise ValueError("not a snapshot of this job")
    wall = float(body.get("wall_seconds") or 0)
    if not 0 < wall <= MAX_WALL_S:
        raise ValueError("bad time limit")
    return job, runner, model, work, wall


def run_on_worker(ctx: Context, job_id: str, runner: str, model: Path, work: Path,
                  run_seconds: float, what: str) -> dict:
    """Have a worker run ``runner`` for job ``job_id`` on ``model`` and the
    files staged in ``work`` within ``run_seconds`` (see the module
    docstring); its outcome record: {"worker", "timed_out"} and, when the
    worker could not run it, "error" (and "gone" if the job was deleted).
    503 when no worker is live, or none claimed it in time."""
    from app.services.runtime import workers
    if runner not in RUNNERS:
        raise ValueError(runner)
    if not workers.live(ctx):
        raise Unavailable(f"{what} runs on a worker, and no worker is running; "
                           "start one (make worker) and try again.")
    token = secrets.token_hex(16)
    take_within = ctx.cfg.infer_queue_seconds
    body = {"job": job_id, "runner": runner, "model": relative(ctx, model), "work": relative(ctx, work),
            "token": token, "wall_seconds": run_seconds}
    marker = bind(ctx, work, token, job_id)
    try:
        return _send_and_wait(ctx, body, take_within, int(run_seconds + START_MARGIN_S), what)
    finally:
        # The request is over (answered or given up): from now on no
        # message may name its scratch directory, a replay of its own included.
        marker.unlink(missing_ok=True)


def _send_and_wait(ctx: Context, body: dict, take_within: float, run_wait: int, what: str) -> dict:
    """Send the message ``body`` and wait for its claim, then its outcome."""
    token = body["token"]
    reply_key = REPLY_KEY.format(token=token)
    try:
        r = queue.redis_client(ctx.cfg, read_timeout=max(take_within, run_wait) + 10)
        queue.client(ctx.cfg).send_task(TASK_INFER, args=[body], queue=INFER_QUEUE, expires=take_within)
        got = r.blpop([reply_key], timeout=max(1, int(take_within)))
        if got is None:
            # Nobody claimed it in time: give it up, unless a worker claims
            # it this very moment (then its claim won, and it runs).
            if r.set(TAKEN_KEY.format(token=token), GAVE_UP, nx=True, ex=KEY_TTL_S):
                raise Unavailable(f"No worker took the {what.lower()} request within "
                                   f"{take_within:.0f} s (all busy or stopped); try again shortly.")
            got = r.blpop([reply_key], timeout=5)
        record = json.loads(got[1]) if got else {}
        if record.get("claimed"):                # the worker runs it now
            got = r.blpop([reply_key], timeout=run_wait)
            record = json.loads(got[1]) if got else {}
    except ServiceError:
        raise
    except Exception as exc:     # the broker is down: not the user's doing
        raise Unavailable(f"{what} could not reach the queue ({type(exc).__name__}); "
                           "try again shortly.") from None
    if not record or "claimed" in record:
        raise Unavailable(f"The worker running the {what.lower()} request did not answer "
                           f"within {run_wait} s; try again shortly.")
    return record


def take(ctx: Context, token: str, worker: str) -> bool:
    """The worker's claim of a request, before it runs anything: False when
    the web gave up on it (or another delivery of it claimed it)."""
    r = queue.redis_client(ctx.cfg)
    if not r.set(TAKEN_KEY.format(token=token), worker, nx=True, ex=KEY_TTL_S):
        return False
    reply(ctx, token, {"claimed": worker})
    return True


def reply(ctx: Context, token: str, record: dict) -> None:
    """The worker's side: wake the web request waiting on ``token``."""
    key = REPLY_KEY.format(token=token)
    pipe = queue.redis_client(ctx.cfg).pipeline(transaction=True)
    pipe.rpush(key, json.dumps(record)).expire(key, KEY_TTL_S)
    pipe.execute()
