"""Warm inference: after a model's first request its contained inference
process (app.contained.infer_server) stays alive and answers the next ones.

One process per (jobs dir, job, snapshot iteration and file, layer-environment
fingerprint), in the very sandbox a cold run gets (app.services.inference.cold
``sandbox_spec``: the job's input, output and dataset read-only, its own
scratch dir writable, a leased uid, its cgroup, no network). It only ever
serves its own job: the job id is part of the key, and only that job's
files are mounted. The host talks to it over stdin/stdout
(app.core.infer_wire: images in as bytes, predictions out), one request at a
time (a lock per process), each within ``INFER_REQUEST_SECONDS``.

A process that dies, misses that deadline or answers anything the protocol
does not allow is killed, and the request is retried once on a fresh one; a
layer that raises ends its process too (its reply says why). Per host
process (a gunicorn worker) at most ``INFER_WARM`` stay warm, least recently
used evicted first (never one a request holds: while all are busy there may
be more, until they finish), each retired after ``INFER_IDLE_SECONDS`` idle, after
``LIFETIME_S`` in all, and when its job is deleted or resumed
(``retire_job``, from app.services.jobs.lifecycle; other host processes notice within
``SWEEP_S`` that the job row is gone or changed).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.core.errors import InvalidPythonLayer, ServerFault, Unavailable
from app.core import infer_wire
from app.services.inference import cold as inference
from app.services.layers import environments as layer_env
from app.services.runtime import run_counts
from app.services.context import Context
from app.services.inference.warm_process import LIFETIME_S, WarmProcess, close_when_free
from app.core.config import Settings

log = logging.getLogger(__name__)

SWEEP_S = 5.0           # how often idle, old and orphaned processes are looked for


def enabled(cfg: Settings) -> bool:
    """Whether classification uses warm processes here (the local queue,
    ``INFER_WARM`` > 0); the celery queue runs inference on the workers."""
    from app.services.runtime import broker as queue
    return cfg.infer_warm > 0 and not queue.celery_mode(cfg)


def request_seconds(cfg: Settings) -> float:
    """The wall clock of one request to a warm process."""
    return cfg.infer_request_seconds or inference.run_limits(cfg).wall_seconds


def _stamp(job: dict) -> tuple:
    # What changes when a job is resumed (and ends again): a process started
    # before belongs to another life of the job.
    return job.get("status"), job.get("finished_at")


class Pool:
    """The warm processes of this host process, least recently used first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: OrderedDict[tuple, WarmProcess] = OrderedDict()
        self._owner = os.getpid()
        self._reaper: threading.Thread | None = None
        self._spawner: ThreadPoolExecutor | None = None

    def _mine(self) -> None:
        # A forked child (a gunicorn worker) starts empty: the parent's pipes,
        # processes and threads are not its own.
        if os.getpid() != self._owner:
            self._lock, self._procs, self._owner = threading.Lock(), OrderedDict(), os.getpid()
            self._reaper = self._spawner = None

    def spawner(self) -> ThreadPoolExecutor:
        """The one thread of this process that starts warm processes."""
        self._mine()
        with self._lock:
            if self._spawner is None:
                self._spawner = ThreadPoolExecutor(1, thread_name_prefix="warm-spawn")
            return self._spawner

    def checkout(self, ctx: Context, job: dict, key: tuple) -> WarmProcess:
        """The process for ``key`` (a new, not yet started one when there is
        none), now the most recently used and reserved for the caller until
        ``release``; beyond ``INFER_WARM`` the least recently used that no
        request holds are retired."""
        self._mine()
        gone = []
        with self._lock:
            wp = self._procs.get(key)
            if wp is not None and (wp.retired or wp.stamp != _stamp(job)
                                   or time.monotonic() - wp.started > LIFETIME_S - 2 * request_seconds(ctx.cfg)):
                gone.append(self._procs.pop(key))
                wp = None
            if wp is None:
                wp = self._procs[key] = WarmProcess(ctx, job, key, _stamp(job))
            self._procs.move_to_end(key)
            wp.users += 1
            gone += self._over_cap(ctx.cfg)
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(target=self._reap, name="warm-reaper", daemon=True)
                self._reaper.start()
        for old in gone:
            close_when_free(old)
        return wp

    def release(self, ctx: Context, wp: WarmProcess) -> None:
        """The caller of ``checkout`` is done with ``wp``."""
        with self._lock:
            wp.users -= 1
            gone = self._over_cap(ctx.cfg)
        for old in gone:
            close_when_free(old)

    def _over_cap(self, cfg: Settings) -> list[WarmProcess]:
        # Under the pool lock. A process a request holds or waits for is
        # never evicted (that would only make the request start another):
        # while every one is busy the pool may hold more, until they finish.
        cap, out = max(1, cfg.infer_warm), []
        for key, wp in list(self._procs.items()):
            if len(self._procs) <= cap:
                break
            if wp.users == 0:
                out.append(self._procs.pop(key))
        return out

    def forget(self, wp: WarmProcess) -> None:
        """Take ``wp`` out of the pool (the caller closes it)."""
        with self._lock:
            if self._procs.get(wp.key) is wp:
                del self._procs[wp.key]

    def retire(self, match) -> int:
        """Retire every process for which ``match(wp)`` holds; how many."""
        self._mine()
        with self._lock:
            gone = [wp for wp in self._procs.values() if match(wp)]
            for wp in gone:
                del self._procs[wp.key]
        for wp in gone:
            close_when_free(wp)
        return len(gone)

    def describe(self) -> list[dict]:
        """The warm processes: {"job", "iteration", "pid", "idle_s", "age_s"}."""
        now = time.monotonic()
        with self._lock:
            return [{"job": wp.job_id, "iteration": wp.key[2], "pid": wp.pid, "idle_s": round(now - wp.used, 3),
                     "age_s": round(now - wp.started, 3)} for wp in self._procs.values()]

    def _reap(self) -> None:
        while True:
            time.sleep(SWEEP_S)
            with self._lock:
                if not self._procs or os.getpid() != self._owner:
                    self._reaper = None
                    return
                current = list(self._procs.values())
            now = time.monotonic()
            for wp in current:
                idle = wp.ctx.cfg.infer_idle_seconds
                stale = (now - wp.used > idle and not wp.lock.locked()) or now - wp.started > LIFETIME_S - SWEEP_S
                if not stale:
                    try:
                        row = wp.ctx.store.get_job(wp.job_id)
                        stale = row is None or _stamp(row) != wp.stamp
                    except Exception:     # its store is gone (a test's app): nothing may use it any more
                        stale = True
                if stale:
                    self.retire(lambda other, wp=wp: other is wp)


POOL = Pool()
atexit.register(lambda: POOL.retire(lambda wp: True))


def request(ctx: Context, job: dict, model: Path, key: tuple, header: dict, blobs: list[bytes],
            check) -> object:
    """Send one request to the warm process for ``key`` (started first when
    there is none) and return ``check(reply, blobs)``, which raises
    ``infer_wire.Broken`` for a reply it cannot take. A process that breaks
    is killed and the request retried once on a fresh one; a reply or a
    start that reports a layer's failure raises it as the cold path does."""
    seconds = request_seconds(ctx.cfg)
    failures: list[tuple[infer_wire.Broken, str, object, bool]] = []
    # Counted once per request (kind infer_warm), however many warm
    # processes it took: the warm process itself lives on for later ones.
    outcome = "error"
    try:
        for _ in range(4):      # two breakdowns at most; a retirement meanwhile is none
            wp = POOL.checkout(ctx, job, key)
            try:
                with wp.lock:
                    result = _attempt(job, model, wp, header, blobs, check, seconds, failures)
            finally:
                POOL.release(ctx, wp)
            if result is not _AGAIN:
                outcome = "ok"
                return result
            if len(failures) == 2:
                break
        if not failures:
            outcome = None      # busy with other models: nothing ran for it
        elif failures[-1][0].kind == "timeout":
            outcome = "timeout"
        raise _unanswered(ctx, job, failures, seconds)
    finally:
        if outcome:
            run_counts.count("infer_warm", outcome)


_AGAIN = object()


def _attempt(job: dict, model: Path, wp: WarmProcess, header: dict, blobs: list[bytes], check,
             seconds: float, failures: list) -> object:
    # Under wp.lock: the checked reply, or _AGAIN (a process that broke is
    # recorded in ``failures``, killed and out of the pool).
    if wp.retired:
        return _AGAIN
    if wp.proc is not None and wp.proc.poll() is not None:
        POOL.forget(wp)      # ended while idle (its lifetime, a lost launcher): replace it
        wp.close()
        return _AGAIN
    try:
        if wp.proc is None:
            first = wp.start(job, model, POOL.spawner())
            if first.get("ok") is False:
                raise inference.layer_error(first)
        reply, got = wp.ask(header, blobs, seconds)
        if reply.get("ok") is False:
            raise inference.layer_error(reply)
        return check(reply, got)
    except infer_wire.Broken as exc:
        POOL.forget(wp)
        code = wp.kill(grace=1.0 if exc.kind == "died" else 0.0)   # its own exit status, if it ends
        failures.append((exc, wp.log_tail(), code, bool(getattr(wp.proc, "sandbox_oom", False))))
        wp.close()
        log.warning("warm inference process of job %s broke (%s: %s)", job["id"], exc.kind, exc)
        return _AGAIN
    except BaseException:
        POOL.forget(wp)      # a layer's failure ends the process too: never reused
        wp.close()
        raise


def _unanswered(ctx: Context, job: dict, failures: list, seconds: float):
    from app.core import tracebacks

    if not failures:
        return Unavailable("Inference is busy with other models; try again shortly.")
    exc, tail, code, oom = failures[-1]
    what = {"timeout": f"did not answer within {seconds:.0f} s",
            "garbage": "answered with something that is not a reply"}.get(
        exc.kind, "stopped" + (" (memory limit)" if oom else f" (exit status {code})" if code is not None else ""))
    message = f"Inference {what} on {len(failures)} fresh process{'es' if len(failures) > 1 else ''}."
    tail = tracebacks.scrub(tail, ctx.ws.input_dir(job["id"]), {str(ctx.ws.root): "<jobs>"})
    if job.get("python_layer"):    # its layers ran: the upload's doing
        return InvalidPythonLayer(message, [
            {"field": "python_layer", "file": "digits_python_layers.py", "message": message, "log_tail": tail}])
    return ServerFault(message, [{"log_tail": tail}])


def retire_job(ctx: Context, job_id: str) -> int:
    """Retire this host process's warm processes of a job (deleted or resumed)."""
    root = ctx.ws.root
    return POOL.retire(lambda wp: wp.job_id == job_id and wp.key[0] == str(root))


def retire_all() -> int:
    """Retire every warm process of this host process."""
    return POOL.retire(lambda wp: True)


def key_for(ctx: Context, job: dict, iteration: int, model: Path) -> tuple:
    """The pool key of a request: the same job, snapshot (iteration and the
    very file) and layer environment, or another process."""
    st = os.stat(model, follow_symlinks=False)
    return (str(ctx.ws.root), job["id"], iteration, layer_env.fingerprint(ctx.cfg),
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
