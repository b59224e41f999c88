"""Privilege separation: the one process that keeps root to start sandboxes.

When ``flask serve`` starts as root it runs this launcher as root and then
gunicorn and the job worker as the unprivileged service user (README,
"Privilege separation"). The next bug of the class that issue 22 fixed, a
host process tricked into reading a file, then reads only what the service
user may read: not the root-only files of the host.

The web and the worker ask for a contained run over a Unix seqpacket socket
that only the service user (checked with SO_PEERCRED) can connect to. The
launcher accepts nothing but a run spec it can check (``check``): one of
the contained runners (``python -m app.contained.<runner>``), every path it
binds inside the jobs directory or the layer environment (links resolved:
no link anywhere), GPU device nodes only. It then starts it with
``app.services.runtime.sandbox`` exactly as a root service would (leased uid,
cgroup, rlimits, bwrap), with the caller's stdout/stderr descriptors
(passed with SCM_RIGHTS), kills it when asked or when the caller hangs up
(the caller's death kills its runs, like bwrap's --die-with-parent), and
gives the writable directories back to the service user before it reports
the exit, so the service can publish, read and delete what the run left.

Protocol: one JSON object per packet. Caller: {"op": "mode"} or
{"op": "start", "spec": ..., "limits": ...} (+ 3 descriptors: stdin, stdout, stderr), then
{"op": "kill"} / {"op": "signal", "signal": N}. Launcher: {"mode": ...},
{"pid": ..., "uid": ...} or {"error": ...}, then {"returncode": ...,
"timed_out": ..., "oom_killed": ...}.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from app.services.runtime import data_roots

from app.services.runtime import sandbox
from app.services.runtime.sandbox_client import MAX_PACKET, send as _send
from app.core.config import Settings

log = logging.getLogger(__name__)

RUNNERS = {"train", "validate", "infer", "infer_server", "segment", "build_dataset", "probe", "envprobe",
           "weights", "gather"}
_DEVICE = re.compile(r"^/dev/nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Refused(ValueError):
    """A run spec the launcher will not start (the reason is the message)."""


# ---- the spec check -------------------------------------------------------------------

def _inside(raw: object, roots: list[Path], what: str) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/") or "\0" in raw:
        raise Refused(f"{what} {raw!r} is not an absolute path")
    path = Path(raw)
    # realpath == the path itself: no link in any component, no '..'.
    if os.path.realpath(raw) != os.path.normpath(raw) or ".." in path.parts:
        raise Refused(f"{what} {raw!r} goes through a link")
    if not any(path == r or path.is_relative_to(r) for r in roots):
        raise Refused(f"{what} {raw!r} is outside the jobs directory")
    return path


def _read_only(raw: object, roots: list[Path], cfg: Settings) -> Path:
    # Inside the jobs directory or the layer environment; or, read-only
    # only, inside one of the administrator's data roots (app.services.runtime.data_roots:
    # the web judged which user may name which; links are refused all the same).
    try:
        return _inside(raw, roots, "read-only path")
    except Refused:
        if isinstance(raw, str) and raw.startswith("/") and "\0" not in raw and \
                os.path.realpath(raw) == os.path.normpath(raw) and ".." not in Path(raw).parts and \
                data_roots.launcher_allows(cfg, Path(raw)):
            return Path(raw)
        raise


def check(msg: dict, cfg: Settings) -> tuple[sandbox.Spec, sandbox.Limits]:
    """The Spec and Limits of a start request, or ``Refused`` saying why."""
    raw, lim = msg.get("spec"), msg.get("limits")
    if not isinstance(raw, dict) or not isinstance(lim, dict):
        raise Refused("a start request needs a spec and limits")
    roots = [cfg.jobs_dir.resolve()]
    env_root = cfg.instance_dir.resolve() / "layer-env"
    argv = raw.get("argv")
    if not (isinstance(argv, list) and len(argv) >= 3 and all(isinstance(a, str) for a in argv)):
        raise Refused("argv must be a list of strings")
    if argv[0] != cfg.caffe_python or argv[1] != "-m" or \
            not argv[2].startswith("app.contained.") or argv[2].rsplit(".", 1)[1] not in RUNNERS:
        raise Refused(f"only the contained runners start here, not {' '.join(argv[:3])!r}")
    for a in argv[3:]:
        if a.startswith("/"):
            _inside(a, roots, "argument")
    spec = sandbox.Spec(argv=argv,
                        read_only=[_read_only(p, roots + [env_root], cfg) for p in raw.get("read_only", [])],
                        writable=[_inside(p, roots, "writable path") for p in raw.get("writable", [])],
                        cwd=_inside(raw["cwd"], roots, "cwd") if raw.get("cwd") else None)
    for dev in raw.get("devices", []):
        if not isinstance(dev, str) or not _DEVICE.match(dev):
            raise Refused(f"device {dev!r} is not a GPU device node")
        spec.devices.append(dev)
    env = raw.get("env", {})
    if not isinstance(env, dict) or len(env) > 64:
        raise Refused("env must be a small mapping")
    for k, v in env.items():
        if not (isinstance(k, str) and _ENV_KEY.match(k) and isinstance(v, str) and len(v) < 4096):
            raise Refused(f"environment variable {str(k)[:64]!r} is not allowed")
        spec.env[k] = v
    names = {f.name for f in fields(sandbox.Limits)}
    if set(lim) - names or not all(isinstance(v, (int, float)) and v >= 0 for v in lim.values()):
        raise Refused("limits must be non-negative numbers of sandbox.Limits")
    return spec, sandbox.Limits(**lim)


# ---- the launcher (root) ----------------------------------------------------------------

def give_back(paths: list[Path], uid: int, gid: int) -> None:
    """Hand what a run wrote in ``paths`` to the service user (no link
    followed; a file with several links is left as it is)."""
    for top in paths:
        try:
            os.chown(top, uid, gid, follow_symlinks=False)
        except OSError:
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if stat.S_ISDIR(st.st_mode) or st.st_nlink == 1:
                        os.chown(p, uid, gid, follow_symlinks=False)
                except OSError:
                    pass


class Launcher:
    """The root side: accepts the service user's connections on ``path``."""

    def __init__(self, path: Path, cfg: Settings, service_uid: int, service_gid: int) -> None:
        self.path, self.cfg = Path(path), cfg
        self.uid, self.gid = service_uid, service_gid
        self.how = sandbox.mode(cfg.sandbox)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.path.unlink(missing_ok=True)
        self.sock.bind(str(self.path))
        os.chown(self.path, service_uid, service_gid)
        os.chmod(self.path, 0o600)
        self.sock.listen(64)

    def serve_forever(self) -> None:
        """Answer connections until the process is killed."""
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pid, uid, gid = _peer(conn)
            if uid not in (self.uid, 0):
                _send(conn, {"error": f"uid {uid} may not start sandboxes"})
                return
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_PACKET, 3)
            except OSError:
                return
            if not data:   # a connection that only checked we listen
                return
            try:
                msg = json.loads(data)
                if msg.get("op") == "mode":
                    _send(conn, {"mode": self.how})
                elif msg.get("op") == "start" and len(fds) == 3:
                    self._run(conn, msg, fds)
                else:
                    _send(conn, {"error": "unknown request"})
            except Refused as exc:
                log.warning("refused a run spec from pid %s: %s", pid, exc)
                _send(conn, {"error": f"refused: {exc}"})
            except (ValueError, OSError, RuntimeError) as exc:
                _send(conn, {"error": f"could not start: {exc}"})
            finally:
                for fd in fds:
                    os.close(fd)

    def _run(self, conn: socket.socket, msg: dict, fds: list[int]) -> None:
        spec, limits = check(msg, self.cfg)
        t0 = time.monotonic()
        proc = sandbox.start(spec, self.how, limits, stdout=fds[1], stderr=fds[2], stdin=fds[0])
        # Only the run holds the caller's descriptors now: a pipe's reader
        # sees its end when the run's last process exits.
        while fds:
            os.close(fds.pop())
        _send(conn, {"pid": proc.pid, "uid": proc.sandbox_uid})
        threading.Thread(target=self._orders, args=(conn, proc), daemon=True).start()
        result = sandbox.wait(proc, limits, t0)
        give_back(spec.writable, self.uid, self.gid)
        try:
            _send(conn, {"returncode": result.returncode, "timed_out": result.timed_out,
                         "oom_killed": result.oom_killed})
        except OSError:
            pass   # the caller is gone; its run ended with it

    @staticmethod
    def _orders(conn: socket.socket, proc: subprocess.Popen) -> None:
        # kill / signal while it runs; the caller hanging up kills the run.
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                if proc.poll() is None:
                    _killpg(proc.pid, signal.SIGKILL)
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if msg.get("op") == "kill":
                _killpg(proc.pid, signal.SIGKILL)
            elif msg.get("op") == "signal" and msg.get("signal") in (signal.SIGTERM, signal.SIGINT):
                _killpg(proc.pid, msg["signal"])


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    import struct
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def main() -> None:
    """``python -m app.services.runtime.launcher SOCKET UID GID``: run as root by `serve`."""
    from app.core import config
    logging.basicConfig(level=logging.INFO, format="launcher: %(message)s")
    path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if os.geteuid() != 0:
        sys.exit("the sandbox launcher runs as root")
    Launcher(Path(path), config.load(), uid, gid).serve_forever()


if __name__ == "__main__":
    main()
