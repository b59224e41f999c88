"""Run a command contained: the one place that knows how.

bubblewrap with every namespace unshared (no network at all), a read-only
view of /usr, the Python env and the app, the job's inputs read-only, one
writable output directory, a private size-limited /tmp and a cleared
environment, with rlimits and a wall-clock limit that kills the whole sandbox.

Identity: when the service runs as root, bwrap itself runs as root (so it can
bind paths wherever the checkout lives, e.g. under a 0700 home directory) and
the command inside drops to an unprivileged uid leased for this run alone from
``SANDBOX_UIDS`` (so RLIMIT_NPROC, which counts per uid, is per run: one
tenant's fork bomb cannot starve another's). As an ordinary user, bwrap uses
an unprivileged user namespace and the run keeps the user's own uid.
Where bubblewrap cannot run: rlimits + ``unshare`` (network and pid
namespaces), said loudly.
"""
from __future__ import annotations

import logging
import fcntl
import itertools
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from app.core import config
from app.services.runtime import cgroups, run_counts
from app.services.runtime import sandbox_client as sandbox_remote

log = logging.getLogger(__name__)

NOBODY = 65534
# Leases of sandbox uids are flocks on files here (root only: as an ordinary
# user every run keeps the user's uid). /run is per boot, like the leases.
LEASE_DIR = Path("/run/layerbench-sandbox-uids")
_runs = itertools.count()


@dataclass
class Limits:
    """Resource limits for one contained process tree."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 600
    address_space: int = 16 << 30   # OpenBLAS threads reserve a lot of address space
    file_size: int = 4 << 30
    open_files: int = 1024
    processes: int = 512             # per uid (and per run's cgroup): stops fork bombs
    tmp_bytes: int = 256 << 20
    memory_bytes: int = 16 << 30     # resident memory of the whole run (its cgroup, where available)


@dataclass
class Result:
    """How a contained run ended."""

    returncode: int
    timed_out: bool
    seconds: float
    uid: int | None = None      # the uid it ran as (leased; None: ours)
    oom_killed: bool = False    # the kernel killed it for its cgroup's memory limit


@dataclass
class Spec:
    """What a contained command may see."""

    argv: list[str]
    read_only: list[Path] = field(default_factory=list)
    writable: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    devices: list[str] = field(default_factory=list)   # e.g. /dev/nvidia0


def _base_ro() -> list[Path]:
    # What Python + pycaffe need: the venv (its python links into /usr), the
    # app package, and the real prefix of the interpreter.
    venv = Path(sys.prefix)
    paths = [venv, config.ROOT / "app", Path(sys.base_prefix)]
    return [p for p in paths if p.exists() and not p.resolve().is_relative_to("/usr")]


# Why the preferred containment is not in force (empty when it is); /healthz
# and the start-up self-test report it.
DEGRADED: dict[str, str] = {}


@lru_cache(maxsize=4)
def mode(requested: str = "auto") -> str:
    """The containment in force: ``bwrap``, ``unshare`` or ``none``."""
    remote = sandbox_remote.configured()
    if remote:
        # Privilege separation: the root launcher starts every sandbox, so
        # what is in force is what it found (app.services.runtime.launcher).
        return sandbox_remote.remote_mode(remote)
    cgroups.sweep()   # groups a crashed process left behind
    if requested == "none":
        return "none"
    why = "bwrap is not installed" if not shutil.which("bwrap") else _self_test_bwrap()
    if not why:
        return "bwrap"
    if requested == "bwrap":
        raise RuntimeError(f"LAYERBENCH_SANDBOX=bwrap but bubblewrap cannot run here: {why}")
    DEGRADED["bwrap"] = why
    if shutil.which("unshare") and not _probe(command(Spec(["true"]), "unshare", Limits())):
        log.warning("bubblewrap unavailable (%s); user code runs with rlimits + unshare "
                    "only (no filesystem isolation)", why)
        return "unshare"
    log.warning("no containment available for user code (%s)", why)
    return "none"


def _probe(argv: list[str]) -> str:
    """Run ``argv``; '' when it succeeds, else the reason (its stderr)."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=20, text=True, errors="replace")
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if out.returncode == 0:
        return ""
    return (out.stderr.strip() or f"exit status {out.returncode}")[-500:]


def _self_test_bwrap() -> str:
    # Proves the sandbox starts with every path a real run binds (venv, app),
    # has no network interface but loopback, runs unprivileged and cannot
    # write to a directory it was not given. '' when all hold.
    code = ("import os,socket,sys\n"
            "ifs=sorted(n for _,n in socket.if_nameindex())\n"
            "try:\n open('/usr/probe-write','w'); sys.exit(3)\n"
            "except OSError: pass\n"
            "if os.geteuid()==0: sys.exit(5)\n"
            "import app\n"
            "sys.exit(0 if ifs==['lo'] else 4)\n")
    with lease() as uid:
        why = _probe(bwrap_argv(Spec([sys.executable, "-c", code]), Limits(), uid))
    return {"exit status 3": "the sandbox could write to /usr",
            "exit status 4": "the sandbox has a network interface",
            "exit status 5": "the sandbox runs as root"}.get(why, why)


def uid_range() -> range:
    """The uids sandboxed runs may be given (``SANDBOX_UIDS``, e.g. 3000000-3000999)."""
    return config.load().sandbox_uid_range


class lease:
    """A uid from ``uid_range()`` held for one run (a flock; None when we are
    not root and every run keeps our own uid). Usable as a context manager."""

    def __init__(self) -> None:
        self.uid: int | None = None
        self._fh = None
        if os.geteuid() != 0:
            return
        LEASE_DIR.mkdir(mode=0o700, exist_ok=True)
        uids = uid_range()
        start = random.randrange(len(uids))
        for i in range(len(uids)):
            uid = uids[(start + i) % len(uids)]
            fh = open(LEASE_DIR / str(uid), "a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            self.uid, self._fh = uid, fh
            return
        raise RuntimeError(f"all {len(uids)} sandbox uids are in use")

    def release(self) -> None:
        """Give the uid back (its processes are gone: the pid namespace died)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> int | None:
        return self.uid

    def __exit__(self, *exc) -> None:
        self.release()


def _drop(uid: int | None) -> list[str]:
    # Run as the leased uid with no capabilities and no way to regain any;
    # as an ordinary user (uid None) there is nothing to drop.
    if uid is None:
        return []
    return ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def _parents(paths: list[Path]) -> list[Path]:
    """Ancestors of the bind targets that bwrap must create, shallowest first.

    bwrap copies a missing parent's mode from the host (a 0700 home directory
    stays 0700 inside), which would lock the unprivileged uid out of the paths
    bound beneath it; we create them 0755 ourselves.
    """
    out: set[Path] = set()
    for p in paths:
        for a in p.parents:
            if a in (Path("/"), Path("/tmp"), Path("/dev")) or a.is_relative_to("/usr"):
                continue
            if any(a == q or a.is_relative_to(q) for q in paths):
                continue
            out.add(a)
    return sorted(out, key=lambda a: (len(a.parts), str(a)))


def bwrap_argv(spec: Spec, limits: Limits, uid: int | None = None) -> list[str]:
    """The full bwrap command line for ``spec``, run as ``uid`` inside."""
    if os.geteuid() == 0:
        # No user namespace: bwrap, as root, mounts what it is given wherever
        # it lives; the command then drops to ``uid`` (setpriv, below).
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
              "--unshare-cgroup-try"]
    else:
        ns = ["--unshare-all"]
    argv = ["bwrap", *ns, "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/" + link).is_symlink():
            argv += ["--symlink", f"usr/{link}", f"/{link}"]
    etc = [Path(p) for p in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf",
                             "/etc/ld.so.conf.d") if Path(p).exists()]
    for parent in _parents(etc):
        argv += ["--perms", "0755", "--dir", str(parent)]
    for p in etc:
        argv += ["--ro-bind", str(p), str(p)]
    argv += ["--proc", "/proc", "--dev", "/dev",
             # /tmp first: later binds may lie under it (pytest's tmp_path).
             "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    for dev in spec.devices:
        argv += ["--dev-bind", dev, dev]
    read_only = list(dict.fromkeys(_base_ro() + list(spec.read_only)))
    for parent in _parents(read_only + list(spec.writable)):
        argv += ["--perms", "0755", "--dir", str(parent)]
    for p in read_only:
        argv += ["--ro-bind", str(p), str(p)]
    for p in spec.writable:
        argv += ["--bind", str(p), str(p)]
    # The sandbox's own root (a tmpfs holding the mount points) is read-only
    # too: the only writable places are the output dirs and the private /tmp.
    argv += ["--remount-ro", "/", "--clearenv"]
    for k, v in _env(spec).items():
        argv += ["--setenv", k, v]
    if spec.cwd:
        argv += ["--chdir", str(spec.cwd)]
    return argv + _drop(uid) + list(spec.argv)


def _env(spec: Spec) -> dict[str, str]:
    env = {"PATH": f"{Path(sys.prefix) / 'bin'}:/usr/bin:/bin", "HOME": "/tmp",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(config.ROOT)}
    # BLAS threading and CPU-type overrides pass through unchanged, so a job
    # computes exactly as bare pycaffe would on this machine.
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(spec.env)
    return env


def _rlimits(limits: Limits, group: cgroups.RunGroup | None = None):
    def apply() -> None:
        if group is not None:
            group.join()   # before exec: everything the run starts stays inside
        # bwrap creates missing mount points with our umask: a service
        # started under umask 077 would lock the sandbox uid out of them.
        os.umask(0o022)
        for res, val in ((resource.RLIMIT_AS, limits.address_space),
                         (resource.RLIMIT_CPU, limits.cpu_seconds),
                         (resource.RLIMIT_FSIZE, limits.file_size),
                         (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_NPROC, limits.processes),
                         (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (val, val))
    return apply


def prepare_writable(path: Path, uid: int | None) -> None:
    """Make ``path`` (and what earlier runs left in it) writable by ``uid``."""
    if uid is None:
        return
    os.chown(path, uid, uid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, uid, follow_symlinks=False)


def command(spec: Spec, how: str, limits: Limits, uid: int | None = None) -> list[str]:
    """The argv that runs ``spec`` under containment ``how`` as ``uid``."""
    if how == "bwrap":
        return bwrap_argv(spec, limits, uid)
    if how == "unshare":
        # Namespaces first (creating them needs root, or a user namespace
        # when we are not root), then drop to the unprivileged uid.
        ns = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
        if os.geteuid() != 0:
            ns.insert(1, "--map-root-user")
        return ns + _drop(NOBODY if uid is None and os.geteuid() == 0 else uid) + spec.argv
    return list(spec.argv)


def start(spec: Spec, how: str, limits: Limits, stdout, stderr, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``spec`` contained; the caller waits with ``wait`` (or ``kill``),
    which gives the run's uid back. ``stdin``: DEVNULL, or PIPE for a
    process the host talks to (``proc.stdin``)."""
    remote = sandbox_remote.configured()
    if remote and how != "none":
        from dataclasses import asdict
        return sandbox_remote.start(remote, {
            "argv": list(spec.argv), "read_only": [str(p) for p in spec.read_only],
            "writable": [str(p) for p in spec.writable], "env": dict(spec.env),
            "cwd": str(spec.cwd) if spec.cwd else None, "devices": list(spec.devices)},
            asdict(limits), stdout, stderr, stdin)
    held = lease() if how != "none" else None
    uid = held.uid if held else None
    # The run's own cgroup (pids + memory for all its processes together),
    # where the host has them for us.
    group = cgroups.RunGroup(f"run-{uid if uid is not None else 'u'}-{os.getpid()}-{next(_runs)}",
                             limits.processes, limits.memory_bytes) \
        if how != "none" and cgroups.available() else None
    try:
        for p in spec.writable:
            prepare_writable(p, uid)
        env = None if how == "bwrap" else _env(spec)
        proc = subprocess.Popen(command(spec, how, limits, uid), stdin=stdin,
                                stdout=stdout, stderr=stderr, env=env, cwd=spec.cwd,
                                preexec_fn=_rlimits(limits, group if group and group.dirs else None),
                                start_new_session=True)
    except BaseException:
        if held:
            held.release()
        if group:
            group.close()
        raise
    # The lease lives as long as the Popen (closed with it if a caller never
    # waits); wait() and kill() give it back as soon as the run has ended.
    proc.sandbox_lease = held  # type: ignore[attr-defined]
    proc.sandbox_uid = uid     # type: ignore[attr-defined]
    proc.sandbox_group = group  # type: ignore[attr-defined]
    return proc


def oom_killed(proc: subprocess.Popen) -> bool:
    """Whether the kernel killed part of this run for its cgroup's memory limit."""
    if isinstance(proc, sandbox_remote.RemoteRun):
        return proc.oom
    group = getattr(proc, "sandbox_group", None)
    return bool(group is not None and group.oom_killed())


def _release(proc: subprocess.Popen) -> None:
    held = getattr(proc, "sandbox_lease", None)
    if held is not None:
        held.release()
    group = getattr(proc, "sandbox_group", None)
    if group is not None:
        proc.sandbox_oom = group.oom_killed()  # type: ignore[attr-defined]
        group.close()
        proc.sandbox_group = None  # type: ignore[attr-defined]


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the run's process group (what is left of it)."""
    if isinstance(proc, sandbox_remote.RemoteRun):
        proc.send_signal(sig)
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_exit(proc, timeout: float) -> int | None:
    """Wait at most ``timeout`` seconds for a started run to end: its exit
    status, or None while it runs. A watcher's sleep that ends as soon as
    the run does (a local Popen, or the launcher's report of a remote one)."""
    if isinstance(proc, sandbox_remote.RemoteRun):
        return proc.wait_for(timeout)
    if proc.poll() is not None:
        return proc.returncode
    # A pidfd turns readable when the process ends: one sleep, no polling
    # loop (Popen.wait(timeout) wakes every few ms, beside the training).
    pidfd = getattr(proc, "_layerbench_pidfd", None)
    if pidfd is None:
        try:
            pidfd = proc._layerbench_pidfd = os.pidfd_open(proc.pid)
        except (OSError, AttributeError):
            time.sleep(timeout)
            return proc.poll()
    select.select([pidfd], [], [], max(0.0, timeout))
    code = proc.poll()
    if code is not None:
        os.close(pidfd)
        proc._layerbench_pidfd = -1
    return code


def wait(proc: subprocess.Popen, limits: Limits, t0: float, poll: float = 0.02) -> Result:
    """Wait for ``proc`` under the wall-clock limit; on timeout kill its group."""
    deadline = t0 + limits.wall_seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            kill(proc)
            return Result(proc.returncode, True, time.monotonic() - t0, getattr(proc, "sandbox_uid", None),
                          getattr(proc, "sandbox_oom", False))
        time.sleep(poll)
    _release(proc)
    return Result(proc.returncode, False, time.monotonic() - t0, getattr(proc, "sandbox_uid", None),
                  getattr(proc, "sandbox_oom", False))


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group (bwrap's pid namespace dies with it)."""
    if isinstance(proc, sandbox_remote.RemoteRun):
        proc.kill()
        proc.wait()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    _release(proc)


def run(spec: Spec, how: str, limits: Limits, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, count: bool = True) -> Result:
    """Run ``spec`` contained to completion (or the wall-clock limit),
    counted in ``layerbench_sandbox_runs_total`` by its runner and how it
    ended (app.services.runtime.run_counts); ``count=False`` for a caller
    that counts it itself with a better outcome (validation: its verdict)."""
    t0 = time.monotonic()
    try:
        proc = start(spec, how, limits, stdout, stderr)
    except BaseException:
        if count:
            run_counts.count(run_counts.kind_of(spec.argv), "error")   # could not even start
        raise
    result = wait(proc, limits, t0)
    if count:
        run_counts.count(run_counts.kind_of(spec.argv),
                         run_counts.outcome_of(result.returncode, result.timed_out, result.oom_killed))
    return result
