"""The service user's side of privilege separation (app.services.runtime.launcher):
ask the root launcher for a contained run and hold it like a Popen.

Imports nothing of the sandbox: app.services.runtime.sandbox calls ``start`` here
when the process is not root and ``LAYERBENCH_LAUNCHER`` names a launcher.
"""
from __future__ import annotations

import json
import os
import signal
import select
import socket
import subprocess

SOCKET_ENV = "LAYERBENCH_LAUNCHER"      # where the web and worker find the launcher
MAX_PACKET = 1 << 20


def send(conn: socket.socket, obj: dict) -> None:
    """One JSON packet."""
    conn.send(json.dumps(obj).encode())


def configured() -> str | None:
    """The launcher socket this process must use, or None (it starts its
    own sandboxes: root, or an ordinary user without privilege separation)."""
    path = os.environ.get(SOCKET_ENV)
    return path if path and os.geteuid() != 0 else None


class RemoteRun:
    """A run the launcher started: what app.services.runtime.sandbox's callers use of
    a Popen (``poll``, ``returncode``, ``pid``, ``stdout`` for PIPE)."""

    def __init__(self, conn: socket.socket, pid: int, uid: int | None, stdout) -> None:
        self.conn, self.pid, self.sandbox_uid, self.stdout = conn, pid, uid, stdout
        self.stdin = None
        self.returncode: int | None = None
        self.timed_out = self.oom = False
        self.lost = False   # the launcher went away: not the run's own doing

    def poll(self) -> int | None:
        """The exit status once the launcher reported it, else None."""
        if self.returncode is None:
            self._receive(block=False)
        return self.returncode

    def wait(self) -> int:
        """Block until the run ended (and its files are the service's again)."""
        while self.returncode is None:
            self._receive(block=True)
        return self.returncode

    def wait_for(self, timeout: float) -> int | None:
        """The exit status once reported within ``timeout`` seconds, else None."""
        if self.returncode is None:
            ready, _, _ = select.select([self.conn], [], [], max(0.0, timeout))
            if ready:
                self._receive(block=False)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the run's process group (bwrap's pid namespace dies with it)."""
        self._order({"op": "kill"})

    def send_signal(self, sig: int) -> None:
        self._order({"op": "signal", "signal": int(sig)})

    def _order(self, msg: dict) -> None:
        try:
            self.conn.send(json.dumps(msg).encode())
        except OSError:
            pass

    def _receive(self, block: bool) -> None:
        self.conn.setblocking(block)
        try:
            data = self.conn.recv(MAX_PACKET)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        finally:
            self.conn.setblocking(True)
        if not data:   # the launcher died: the run died with it (the server's fault)
            self.returncode, self.lost = -signal.SIGKILL, True
            return
        msg = json.loads(data)
        self.returncode = int(msg["returncode"])
        self.timed_out, self.oom = bool(msg.get("timed_out")), bool(msg.get("oom_killed"))
        self.sandbox_oom = self.oom
        self.conn.close()


def _connect(path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    return conn


def remote_mode(path: str) -> str:
    """The containment the launcher at ``path`` runs sandboxes with."""
    with _connect(path) as conn:
        send(conn, {"op": "mode"})
        msg = json.loads(conn.recv(MAX_PACKET))
    if "mode" not in msg:
        raise RuntimeError(f"the sandbox launcher answered: {msg.get('error')}")
    return msg["mode"]


def start(path: str, spec: dict, limits: dict, stdout, stderr, stdin=subprocess.DEVNULL) -> RemoteRun:
    """Ask the launcher at ``path`` to start ``spec`` (sandbox.Spec's fields,
    paths as strings) under ``limits`` (sandbox.Limits's); a RemoteRun, or
    RuntimeError with the launcher's reason. ``stdin``/``stdout`` may be
    PIPE (``run.stdin`` / ``run.stdout`` are then the host's ends)."""
    ends: dict[str, object] = {}
    send, opened = [], []
    for name, target in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if target is subprocess.STDOUT:
            send.append(send[1])
        elif target is subprocess.PIPE:
            r, w = os.pipe()
            mine, theirs = (w, r) if name == "stdin" else (r, w)
            ends[name] = os.fdopen(mine, "wb" if name == "stdin" else "rb")
            send.append(theirs)
            opened.append(theirs)
        elif target is None or target is subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDONLY if name == "stdin" else os.O_WRONLY)
            send.append(fd)
            opened.append(fd)
        else:
            send.append(target if isinstance(target, int) else target.fileno())
    conn = _connect(path)
    try:
        socket.send_fds(conn, [json.dumps({"op": "start", "limits": limits, "spec": spec}).encode()], send)
        msg = json.loads(conn.recv(MAX_PACKET) or b"{}")
    except BaseException:
        conn.close()
        for end in ends.values():
            end.close()
        raise
    finally:
        for fd in opened:
            os.close(fd)
    if "pid" not in msg:
        conn.close()
        for end in ends.values():
            end.close()
        raise RuntimeError(f"the sandbox launcher did not start the run: {msg.get('error', 'no answer')}")
    run = RemoteRun(conn, msg["pid"], msg.get("uid"), ends.get("stdout"))
    run.stdin = ends.get("stdin")
    return run
