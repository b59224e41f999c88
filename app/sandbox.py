"""Run a command contained: the one place that knows how.

bubblewrap with every namespace unshared (no network at all), a read-only
view of /usr, the Python env and the app, the job's inputs read-only, one
writable output directory, a private size-limited /tmp and a cleared
environment; started as an unprivileged uid (setpriv) when we are root, with
rlimits and a wall-clock limit that kills the whole sandbox. Where bubblewrap
cannot run: rlimits + ``unshare`` (network and pid namespaces), said loudly.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import config

NOBODY = 65534


@dataclass
class Limits:
    """Resource limits for one contained process tree."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 600
    address_space: int = 16 << 30   # OpenBLAS threads reserve a lot of address space
    file_size: int = 4 << 30
    open_files: int = 1024
    processes: int = 512             # per uid: stops fork bombs
    tmp_bytes: int = 256 << 20


@dataclass
class Result:
    """How a contained run ended."""

    returncode: int
    timed_out: bool
    seconds: float


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


@lru_cache(maxsize=4)
def mode(requested: str = "auto") -> str:
    """The containment in force: ``bwrap``, ``unshare`` or ``none``."""
    if requested == "none":
        return "none"
    if shutil.which("bwrap") and _self_test_bwrap():
        return "bwrap"
    if requested == "bwrap":
        raise RuntimeError("LAYERBENCH_SANDBOX=bwrap but bubblewrap cannot run here")
    if shutil.which("unshare") and _probe(command(Spec(["true"]), "unshare", Limits())):
        print("WARNING: bubblewrap unavailable; user code runs with rlimits + unshare only "
              "(no filesystem isolation)", file=sys.stderr)
        return "unshare"
    print("WARNING: no containment available for user code", file=sys.stderr)
    return "none"


def _probe(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _self_test_bwrap() -> bool:
    # Proves the sandbox starts, has no network interface but loopback and
    # cannot write to a directory it was not given.
    code = ("import os,socket,sys\n"
            "ifs=sorted(n for _,n in socket.if_nameindex())\n"
            "try:\n open('/usr/probe-write','w'); sys.exit(3)\n"
            "except OSError: pass\n"
            "sys.exit(0 if ifs==['lo'] else 4)\n")
    argv = bwrap_argv(Spec([sys.executable, "-c", code]), Limits())
    return _probe(argv)


def _drop() -> list[str]:
    # bwrap started by root stays root on the host: drop to nobody first.
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all", "--"]


def bwrap_argv(spec: Spec, limits: Limits) -> list[str]:
    """The full bwrap command line for ``spec``."""
    argv = _drop() + ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                      "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/" + link).is_symlink():
            argv += ["--symlink", f"usr/{link}", f"/{link}"]
    for etc in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        if Path(etc).exists():
            argv += ["--ro-bind", etc, etc]
    argv += ["--proc", "/proc", "--dev", "/dev",
             # /tmp first: later binds may lie under it (pytest's tmp_path).
             "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    for dev in spec.devices:
        argv += ["--dev-bind", dev, dev]
    for p in dict.fromkeys(_base_ro() + list(spec.read_only)):
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
    return argv + list(spec.argv)


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


def _rlimits(limits: Limits):
    def apply() -> None:
        for res, val in ((resource.RLIMIT_AS, limits.address_space),
                         (resource.RLIMIT_CPU, limits.cpu_seconds),
                         (resource.RLIMIT_FSIZE, limits.file_size),
                         (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_NPROC, limits.processes),
                         (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (val, val))
    return apply


def prepare_writable(path: Path) -> None:
    """Make ``path`` writable by the sandbox uid."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)


def command(spec: Spec, how: str, limits: Limits) -> list[str]:
    """The argv that runs ``spec`` under containment ``how``."""
    if how == "bwrap":
        return bwrap_argv(spec, limits)
    if how == "unshare":
        # Namespaces first (creating them needs root, or a user namespace
        # when we are not root), then drop to the unprivileged uid.
        ns = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
        if os.geteuid() != 0:
            ns.insert(1, "--map-root-user")
        return ns + _drop() + spec.argv
    return list(spec.argv)


def start(spec: Spec, how: str, limits: Limits, stdout, stderr) -> subprocess.Popen:
    """Start ``spec`` contained; the caller waits with ``wait``."""
    for p in spec.writable:
        prepare_writable(p)
    env = None if how == "bwrap" else _env(spec)
    return subprocess.Popen(command(spec, how, limits), stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr, env=env, cwd=spec.cwd,
                            preexec_fn=_rlimits(limits), start_new_session=True)


def wait(proc: subprocess.Popen, limits: Limits, t0: float, poll: float = 0.02) -> Result:
    """Wait for ``proc`` under the wall-clock limit; on timeout kill its group."""
    deadline = t0 + limits.wall_seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            kill(proc)
            return Result(proc.returncode, True, time.monotonic() - t0)
        time.sleep(poll)
    return Result(proc.returncode, False, time.monotonic() - t0)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group (bwrap's pid namespace dies with it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(spec: Spec, how: str, limits: Limits, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL) -> Result:
    """Run ``spec`` contained to completion (or the wall-clock limit)."""
    t0 = time.monotonic()
    proc = start(spec, how, limits, stdout, stderr)
    return wait(proc, limits, t0)
