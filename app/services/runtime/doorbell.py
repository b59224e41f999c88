"""The local queue's doorbell: the web (and a finishing run) wakes the local
worker as soon as there is something to start, instead of the worker finding
it at its next poll of the store (``WORKER_POLL_SECONDS``, which now only
bounds how late a missed ring is noticed).

Each local worker process binds a Unix datagram socket
``<instance>/wake/<pid>.sock`` (mode 0600: only the service's own user, which
the web runs as too, can ring); ``ring`` sends one byte to every socket there.
A ring is only a hint: the store stays the truth, a lost or extra ring costs
nothing but a poll, and a ring to a worker that is gone removes its socket.
The celery queue has its broker for this instead.

Sockets are named through the wake directory's descriptor
(``/proc/self/fd/N/<pid>.sock``): a Unix socket path may not be longer than
107 bytes, and an instance deep in a home directory easily is (a worker that
could not bind its bell would never start).
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

WAKE_DIR = "wake"


def _dir(cfg) -> Path:
    return cfg.instance_dir / WAKE_DIR


class Bell:
    """A local worker's end: ``wait`` returns early when rung."""

    def __init__(self, cfg) -> None:
        d = _dir(cfg)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = d / f"{os.getpid()}.sock"
        self._dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.unlink(self.path.name, dir_fd=self._dfd)   # left by an earlier process of this pid
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(_via(self._dfd, self.path.name))
        finally:
            os.umask(old)
        self.sock.setblocking(False)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until rung; whether it was rung
        (every ring pending is taken: one wake-up per burst)."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        rung = False
        while ready:
            try:
                self.sock.recv(16)
                rung = True
            except BlockingIOError:
                break
        return rung

    def close(self) -> None:
        """Stop listening (the socket file goes with it)."""
        self.sock.close()
        try:
            os.unlink(self.path.name, dir_fd=self._dfd)
        except FileNotFoundError:
            pass
        os.close(self._dfd)


def _via(dfd: int, name: str) -> str:
    # A short path to ``name`` in the directory open as ``dfd`` (see the module docstring).
    return f"/proc/self/fd/{dfd}/{name}"


def ring(cfg) -> int:
    """Wake every local worker of this instance; how many were rung."""
    try:
        dfd = os.open(_dir(cfg), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    rung = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for name in os.listdir(dfd):
                if not name.endswith(".sock"):
                    continue
                try:
                    s.sendto(b"!", _via(dfd, name))
                    rung += 1
                except BlockingIOError:
                    rung += 1                 # its queue is full of rings already: it will wake
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        try:
                            os.unlink(name, dir_fd=dfd)   # a worker that is gone
                        except FileNotFoundError:
                            pass
                    else:
                        log.debug("could not ring %s: %r", name, exc)
    finally:
        os.close(dfd)
    return rung
