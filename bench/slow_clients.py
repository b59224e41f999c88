"""Slow clients: /healthz latency through `flask --app wsgi serve` with no
slow connections open, and with 200 connections that each trickle a request
one byte at a time (half dribble their headers, half their body), as
slowloris and R.U.D.Y. do. Target: p99 <= 100 ms with 200 slow clients.
A `serve --no-proxy` baseline (gunicorn alone) shows what nginx buys.

The load generator (``SlowClients``, ``probe``) is shared with
tests/test_slow_clients.py.
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .common import ROOT, cleanup, free_port, make_app, stop, temp_root

HEADER_PREFIX = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: "
BODY_HEADERS = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: slow\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 1000000\r\n\r\n")


class SlowClients:
    """``n`` open connections, each sending one more byte of a request that
    never ends every ``interval`` seconds. Even ones trickle their headers
    from the first byte; odd ones send whole headers, then trickle the body.
    A connection the server closes (nginx drops a header that takes too long)
    is opened again at once, so ``n`` stay open, as an attacker would keep them."""

    def __init__(self, host: str, port: int, n: int = 200, interval: float = 0.5) -> None:
        self.host, self.port, self.n, self.interval = host, port, n, interval
        self.socks: list[socket.socket | None] = [None] * n
        self.sent = [0] * n            # trickled bytes per connection
        self.reopened = self.bytes_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _open(self, i: int) -> None:
        s = socket.create_connection((self.host, self.port), timeout=5)
        if i % 2:
            s.sendall(BODY_HEADERS)
        s.setblocking(False)
        self.socks[i], self.sent[i] = s, 0
        self._send_one(i)

    def _send_one(self, i: int) -> None:
        # Header tricklers spell out HEADER_PREFIX, then pad its last line
        # forever; body tricklers send 'a's.
        k = self.sent[i]
        byte = HEADER_PREFIX[k:k + 1] if i % 2 == 0 and k < len(HEADER_PREFIX) else b"a"
        self.socks[i].send(byte)
        self.sent[i] += 1
        self.bytes_sent += 1

    @staticmethod
    def _open_still(s: socket.socket) -> bool:
        try:
            s.recv(1, socket.MSG_PEEK)   # EOF, an error or any answer: the request is over
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            for i, s in enumerate(self.socks):
                try:
                    if s is not None and self._open_still(s):
                        self._send_one(i)
                        continue
                    if s is not None:
                        s.close()
                        self.reopened += 1
                    self._open(i)
                except OSError:
                    self.socks[i] = None   # opened again on the next round

    def wait_trickling(self, rounds: int = 2, timeout: float = 30.0) -> None:
        """Return once every connection has trickled ``rounds`` more bytes."""
        deadline = time.monotonic() + timeout
        target = self.bytes_sent + rounds * self.n
        while self.bytes_sent < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"slow clients sent {self.bytes_sent} of {target} bytes")
            time.sleep(0.05)

    def open_count(self) -> int:
        """Connections open right now (neither closed nor answered by the server)."""
        return sum(1 for s in self.socks if s is not None and self._open_still(s))

    def __enter__(self) -> "SlowClients":
        for i in range(self.n):
            self._open(i)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            if s is not None:
                s.close()


def probe(host: str, port: int, path: str = "/healthz", timeout: float = 5.0) -> float:
    """Seconds one GET on a fresh connection took; raises unless it is a 200."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}")
    finally:
        conn.close()
    return time.perf_counter() - t0


def _pcts(lat: list[float]) -> dict:
    lat = sorted(lat)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)
    return {"p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0), "probes": len(lat)}


def _serve(root: Path, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(root / "instance"), LAYERBENCH_JOBS_DIR=str(root / "jobs"),
               HOST="127.0.0.1", PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            probe("127.0.0.1", port, timeout=2)
            return proc
        except (OSError, RuntimeError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.terminate()
                raise RuntimeError("serve did not come up")
            time.sleep(0.2)


def _probes(port: int, n: int, timeout: float, every: float) -> tuple[list[float], int]:
    # Spread over n * every seconds, so the slow clients' churn (nginx drops
    # a header after 10 s; they reconnect) happens while we measure.
    lat, failed = [], 0
    for _ in range(n):
        t0 = time.monotonic()
        try:
            lat.append(probe("127.0.0.1", port, timeout=timeout))
        except (OSError, RuntimeError):
            failed += 1
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    return lat, failed


def _measure(port: int, slow: int, probes: int, timeout: float, every: float = 0.1) -> dict:
    if slow == 0:
        lat, failed = _probes(port, probes, timeout, every)
        return {**_pcts(lat), "failed": failed}
    with SlowClients("127.0.0.1", port, slow) as clients:
        clients.wait_trickling()
        lat, failed = _probes(port, probes, timeout, every)
        out = _pcts(lat) if lat else {"probes": 0}
        return {**out, "failed": failed, "timeout_s": timeout, "slow_open_at_end": clients.open_count(),
                "slow_reopened": clients.reopened}


def run(slow: int = 200, probes: int = 200) -> dict:
    """/healthz p50/p99 with 0 and ``slow`` slow clients, behind nginx; and
    the same slow clients against gunicorn alone (`serve --no-proxy`)."""
    root = temp_root()
    try:
        make_app(root)   # builds sample-digits and the database once, before serve
        port = free_port()
        proc = _serve(root, port)
        try:
            _probes(port, 10, 5.0, 0.0)   # warm up: the first requests load the app's lazy imports
            out = {"nginx_0_slow": _measure(port, 0, probes, 5.0),
                   f"nginx_{slow}_slow": _measure(port, slow, probes, 5.0)}
        finally:
            stop(proc)
        # Baseline: a few probes with a short timeout, since they are expected to fail.
        proc = _serve(root, port, "--no-proxy")
        try:
            out[f"gunicorn_alone_{slow}_slow"] = _measure(port, slow, 10, 1.0, every=0.0)
        finally:
            stop(proc)
        return out
    finally:
        cleanup(root)
