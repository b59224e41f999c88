"""One warm contained inference process (app.contained.infer_server) and
the pipes to it; the pool that keeps them is app.services.inference.warm_pool."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Executor
from pathlib import Path

from app.core import infer_wire
from app.services.inference import cold as inference
from app.services.runtime import sandbox
from app.services.context import Context

log = logging.getLogger(__name__)

RUNNER = "app.contained.infer_server"
LIFETIME_S = 3600.0     # a process's sandbox wall clock (and CPU limit: it only ever idles or answers)


class WarmProcess:
    """One contained infer_server of one job. Use under ``lock``."""

    def __init__(self, ctx: Context, job: dict, key: tuple, stamp: tuple) -> None:
        self.ctx, self.key, self.job_id, self.stamp = ctx, key, job["id"], stamp
        self.lock = threading.Lock()
        self.proc = self.work = self.log = None
        self.started = self.used = time.monotonic()
        self.retired = self.killed = False
        self.users = 0          # requests holding or waiting for it (the pool's count)
        self.exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        """The host pid of the sandbox (bwrap, or the launcher's child)."""
        return self.proc.pid if self.proc is not None else None

    def start(self, job: dict, model: Path, spawner: Executor) -> dict:
        """Start the process (from ``spawner``'s thread) and wait for its
        first frame: {"ready": True}, or the failure it reports (a layer that
        raised while the net loaded)."""
        cfg = self.ctx.cfg
        self.work = self.ctx.ws.scratch_dir()
        spec = inference.sandbox_spec(self.ctx, job, RUNNER, model, self.work)
        limits = inference.run_limits(cfg)
        limits.wall_seconds, limits.cpu_seconds = LIFETIME_S, int(LIFETIME_S)
        # stderr: an unnamed file beside the scratch dirs, which nothing in a
        # sandbox can reach by name; read back by descriptor for errors.
        self.log = tempfile.TemporaryFile(dir=self.work.parent)
        # Started from the pool's own long-lived thread: bwrap's
        # --die-with-parent follows the thread that forked it, and a request
        # thread may end (a dev server's thread per request) while the
        # process should live on.
        self.proc = spawner.submit(sandbox.start, spec, self.ctx.containment, limits, subprocess.PIPE,
                                   self.log, stdin=subprocess.PIPE).result()
        self.started = time.monotonic()
        os.set_blocking(self.proc.stdin.fileno(), False)
        deadline = self.started + inference.run_limits(cfg).wall_seconds
        header, _ = infer_wire.read_frame(self.proc.stdout.fileno(), deadline, max_blobs=0)
        if header.get("ready") is not True and header.get("ok") is not False:
            raise infer_wire.Broken("garbage", "no ready frame")
        return header

    def ask(self, header: dict, blobs: list[bytes], seconds: float) -> tuple[dict, list[bytes]]:
        """One request and its reply within ``seconds`` (``Broken`` otherwise)."""
        self.used = deadline = time.monotonic()
        deadline += seconds
        infer_wire.write_all(self.proc.stdin.fileno(), infer_wire.encode(header, blobs), deadline)
        reply = infer_wire.read_frame(self.proc.stdout.fileno(), deadline)
        self.used = time.monotonic()
        return reply

    def log_tail(self, limit: int = 3000) -> str:
        """The end of what the process wrote to stderr."""
        if self.log is None:
            return ""
        try:
            size = os.fstat(self.log.fileno()).st_size
            data = os.pread(self.log.fileno(), limit, max(0, size - limit))
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def kill(self, grace: float = 0.0) -> int | None:
        """Kill the process (its uid and cgroup go back), given ``grace``
        seconds to end by itself first; the exit status it ended with, None
        if it was still running."""
        self.retired = True
        if self.proc is None or self.killed:
            return self.exit_code
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.killed, self.exit_code = True, self.proc.poll()
        if self.exit_code is None:
            log.info("retiring warm inference process %s of job %s", self.proc.pid, self.job_id)
        sandbox.kill(self.proc)   # once only: a reaped pid may soon be another process's
        return self.exit_code

    def close(self) -> None:
        """``kill``, then close the pipes and the log and remove its files."""
        self.kill()
        if self.proc is not None:
            for end in (self.proc.stdin, self.proc.stdout):
                try:
                    if end is not None:
                        end.close()
                except OSError:
                    pass
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def close_when_free(wp: WarmProcess) -> None:
    """Close ``wp`` now if no request uses it, else as soon as its request
    is answered (never under a request's feet)."""
    wp.retired = True
    if wp.lock.acquire(blocking=False):
        try:
            wp.close()
        finally:
            wp.lock.release()
        return

    def later() -> None:
        with wp.lock:
            wp.close()
    threading.Thread(target=later, name="warm-retire", daemon=True).start()
