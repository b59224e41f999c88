"""What ``flask serve`` does, when started as root, so that the web and the
job worker run as the unprivileged service user (issue 22, defence in
depth): the account, the ownership of the instance and jobs directories, a
way through 0700 ancestors (a checkout in /root), and the root launcher
that alone keeps the privilege to start sandboxes (app.services.runtime.launcher).

``LAYERBENCH_PRIVSEP=0`` keeps the old single-user layout (everything as
root); as an ordinary user there is nothing to separate.
"""
from __future__ import annotations

import logging
import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.core import config
from app.services.runtime.sandbox_client import SOCKET_ENV
from app.core.config import Settings

log = logging.getLogger(__name__)

SERVICE_USER = "layerbench"
_ACL_XATTR = "system.posix_acl_access"
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


@dataclass
class Dropped:
    """How the children of `serve` run: as ``uid``/``gid`` with ``env``."""

    uid: int
    gid: int
    env: dict[str, str]
    launcher: subprocess.Popen
    socket_dir: Path
    granted: list[str] = field(default_factory=list)

    def popen_args(self) -> dict:
        """Keyword arguments for subprocess.Popen of a child that drops to the user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "env": self.env}

    def close(self) -> None:
        """Stop the launcher (its runs die with their callers)."""
        if self.launcher.poll() is None:
            self.launcher.terminate()
            try:
                self.launcher.wait(10)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
        import shutil
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def wanted(cfg: Settings) -> bool:
    """Whether `serve` separates privileges: as root, in the local queue,
    unless turned off. In celery mode the jobs directory is shared with
    workers on other hosts that run sandboxes as root themselves: handing it
    to this host's service user would take a live run's output from under
    it, and the web could not remove what root workers wrote. There `serve`
    keeps one identity (docs/SCALE_OUT.md) until workers separate
    too."""
    return os.geteuid() == 0 and cfg.privsep and cfg.queue == "local"


def ensure_user() -> tuple[int, int]:
    """(uid, gid) of the service account, created as a system user when missing."""
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", "--user-group", SERVICE_USER],
                              capture_output=True, text=True)
        try:   # (two instances starting at once: the other one made it)
            pw = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise RuntimeError(f"could not create the service user {SERVICE_USER}: {made.stderr.strip()}") from None
    return pw.pw_uid, pw.pw_gid


def own(path: Path, uid: int, gid: int, depth: int = 3) -> None:
    """Give ``path`` and everything under it to the service user (no link
    followed): the web and worker create, move and delete there.

    Cheap on every start: only subtrees whose top is not the service
    user's are walked, looking ``depth`` levels down (jobs/<id>/output,
    jobs/datasets/<id>/build): what root wrote before privilege separation
    existed, and a run's output left behind when the whole service died
    (no launcher lived to hand it back; in the local queue no run outlives
    serve, so nothing there is live)."""
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != uid or st.st_gid != gid:
        _chown_tree(path, uid, gid)
        return
    if depth <= 0:
        return
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for e in entries:
        try:
            est = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(est.st_mode):
            own(Path(e.path), uid, gid, depth - 1)
        elif est.st_uid != uid and est.st_nlink == 1:
            os.chown(e.path, uid, gid, follow_symlinks=False)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
                # A file with several links may be someone else's too.
                if st.st_nlink == 1 or stat.S_ISDIR(st.st_mode):
                    os.chown(p, uid, gid, follow_symlinks=False)
            except OSError:
                pass


def _can_traverse(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def grant_traverse(path: Path, uid: int, gid: int) -> list[str]:
    """Let ``uid`` pass through every ancestor of ``path`` it cannot pass
    today, with one POSIX ACL entry ``user:<uid>:--x`` each (what
    ``setfacl -m u:layerbench:x`` adds): it may then reach the paths below,
    never list or read these directories. The directories it was granted."""
    granted = []
    for d in reversed([Path(path), *Path(path).parents]):
        try:
            st = os.stat(d)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or _can_traverse(st, uid, gid) or _acl_allows(d, uid):
            continue
        try:
            _add_acl_user_x(d, st, uid)
            granted.append(str(d))
        except OSError as exc:
            # A filesystem without POSIX ACLs: traverse for everyone instead
            # (o+x lets one pass to a known name, never list or read).
            log.warning("no ACLs on %s (%s): adding o+x so %s can pass", d, exc, SERVICE_USER)
            os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            granted.append(f"{d} (o+x)")
    return granted


def _acl_entries(d: Path) -> list[tuple[int, int, int]]:
    try:
        raw = os.getxattr(d, _ACL_XATTR)
    except OSError:
        return []
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]


def _acl_allows(d: Path, uid: int) -> bool:
    # The named entry counts only through the mask (a later chmod of the
    # group bits rewrites the mask and can mask the entry out).
    entries = _acl_entries(d)
    mask = next((p for t, p, _ in entries if t == _MASK), 7)
    return any(tag == _USER and eid == uid and perm & mask & 1 for tag, perm, eid in entries)


def _add_acl_user_x(d: Path, st: os.stat_result, uid: int) -> None:
    entries = _acl_entries(d) or [(_USER_OBJ, (st.st_mode >> 6) & 7, _UNDEFINED),
                                  (_GROUP_OBJ, (st.st_mode >> 3) & 7, _UNDEFINED),
                                  (_OTHER, st.st_mode & 7, _UNDEFINED)]
    kept = [e for e in entries if not (e[0] == _USER and e[2] == uid) and e[0] != _MASK]
    perm = 1 | next((p for t, p, i in entries if t == _USER and i == uid), 0)
    kept.append((_USER, perm, uid))
    # The mask bounds every group-class entry: the union keeps each one's rights.
    mask = 0
    for t, p, _ in kept:
        if t in (_USER, _GROUP, _GROUP_OBJ):
            mask |= p
    kept.append((_MASK, mask, _UNDEFINED))
    kept.sort(key=lambda e: (e[0], e[2]))
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in kept)
    os.setxattr(d, _ACL_XATTR, blob)


def prepare(cfg: Settings) -> Dropped:
    """Everything the unprivileged children need, and the launcher started."""
    uid, gid = ensure_user()
    instance, jobs = cfg.instance_dir, cfg.jobs_dir
    own(instance, uid, gid)
    own(jobs, uid, gid)
    os.chmod(instance, 0o700)
    granted: list[str] = []
    for needed in {config.ROOT, Path(sys.prefix), Path(sys.base_prefix), instance.resolve(), jobs.resolve(),
                   cfg.caffe_python_dir}:
        granted += grant_traverse(needed, uid, gid)
    if granted:
        log.warning("privilege separation: granted user %s traverse-only ACLs on %s", SERVICE_USER,
                    ", ".join(granted))
    # A short private directory for the socket (a Unix socket path holds at
    # most 107 bytes); the service user's group may pass, nobody else.
    sock_dir = Path(tempfile.mkdtemp(prefix="layerbench-launcher-", dir="/run" if os.path.isdir("/run") else None))
    os.chown(sock_dir, 0, gid)
    sock_dir.chmod(0o750)
    sock = sock_dir / "s"
    launcher = subprocess.Popen([sys.executable, "-m", "app.services.runtime.launcher", str(sock), str(uid), str(gid)])
    deadline = time.monotonic() + 60
    while not _listening(sock):
        if launcher.poll() is not None or time.monotonic() > deadline:
            launcher.kill()
            raise RuntimeError(f"the sandbox launcher did not start (exit status {launcher.poll()})")
        time.sleep(0.05)
    env = dict(os.environ, **{SOCKET_ENV: str(sock)})
    env["HOME"] = "/nonexistent"
    env["USER"] = env["LOGNAME"] = SERVICE_USER
    return Dropped(uid, gid, env, launcher, sock_dir, granted)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
