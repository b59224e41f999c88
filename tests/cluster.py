"""Real Redis, PostgreSQL and Celery worker processes for the scale-out tests
(tests/test_celery.py, tests/test_migrations.py), started and stopped by the
tests themselves from the Debian packages scripts/setup.sh installs.

A missing binary fails the test (setup installs them): skipping would show
an untested scale-out as passing.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import ROOT, free_port


def _need(path: str | None, what: str) -> str:
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"{what} not found: scripts/setup.sh installs it (scripts/debian-packages.txt)")
    return path


def _wait(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} did not come up in {timeout:g} s\n{tail}")
        time.sleep(0.05)


class Redis:
    """A redis-server on a free port, without persistence: a restart loses
    every message, the worst case the queue must survive."""

    def __init__(self, root: Path) -> None:
        self.binary = _need(shutil.which("redis-server"), "redis-server")
        self.root, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "redis.log"
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.root), "--save", "", "--appendonly", "no",
                                      "--logfile", str(log)], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False
        _wait(up, 20, "redis-server", log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Postgres:
    """A throw-away PostgreSQL cluster (initdb in a temp dir, trust auth on
    127.0.0.1 and a free port). PostgreSQL refuses to run as root: as root
    it runs as the ``postgres`` user the Debian package creates."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(_need(bins[-1] if bins else None, "PostgreSQL (initdb)")).parent
        # Not under pytest's 0700 tmp dirs: the postgres user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="layerbench-pg-"))
        os.chmod(self.root, 0o755)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://layerbench@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        data = self.root / "data"
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(data), "-U", "layerbench",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        log = self.root / "postgres.log"
        self.log = open(log, "ab")
        # fsync off: a test cluster need not survive a power cut, and it saves seconds.
        self.proc = subprocess.Popen([*self.as_user, str(self.bin / "postgres"), "-D", str(data),
                                      "-p", str(self.port), "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                                      "-c", "fsync=off", "-c", "synchronous_commit=off",
                                      "-c", "full_page_writes=off", "-c", "max_connections=200"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        _wait(lambda: self._psql("postgres", "SELECT 1").returncode == 0, 30, "postgres", log)

    def _psql(self, db: str, sql: str) -> subprocess.CompletedProcess:
        psql = self.bin / "psql" if (self.bin / "psql").exists() else shutil.which("psql")
        return subprocess.run([str(psql), "-h", "127.0.0.1", "-p", str(self.port), "-U", "layerbench",
                               "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                              capture_output=True, text=True)

    def create_db(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        out = self._psql("postgres", f'CREATE DATABASE "{name}"')
        assert out.returncode == 0, out.stderr
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)     # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


class CeleryWorker:
    """A real Celery worker (`python -m app.worker.celery_app -n NAME`) as a
    separate process, for the app ``cfg`` (its database, jobs dir, broker)."""

    def __init__(self, cfg: dict, name: str, log_dir: Path, **extra_env: str) -> None:
        env = dict(os.environ, LAYERBENCH_QUEUE="celery", LAYERBENCH_BROKER_URL=str(cfg["BROKER_URL"]),
                   LAYERBENCH_DATABASE_URL=str(cfg["DATABASE_URL"]), LAYERBENCH_JOBS_DIR=str(cfg["JOBS_DIR"]),
                   LAYERBENCH_INSTANCE_DIR=str(cfg["INSTANCE_DIR"]), LAYERBENCH_WORKER_GPUS="none",
                   LAYERBENCH_HEARTBEAT_SECONDS=str(cfg["HEARTBEAT_SECONDS"]),
                   LAYERBENCH_HANDOVER_SECONDS=str(cfg["HANDOVER_SECONDS"]),
                   LAYERBENCH_WORKER_POLL_SECONDS="0.1", **extra_env)
        self.name = name
        self.log_path = log_dir / f"worker-{name.replace('@', '_')}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.worker.celery_app", "-n", name,
                                      "--loglevel", "WARNING"],
                                     cwd=str(ROOT), env=env, stdout=self.log, stderr=self.log)

    def kill(self) -> None:
        """SIGKILL: the worker gets no say (its jobs must be handed over)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
