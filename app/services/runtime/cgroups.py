"""Per-run cgroups, where the host lets us make them: a pids and a memory
limit for one sandboxed run (on top of its rlimits), so a run's processes
and memory are bounded as a whole, not per process or per uid.

cgroup v2 (a unified hierarchy with the controllers enabled) or v1 (the pids
and memory hierarchies); neither when not root or not writable: then the
rlimits and the per-run uid alone bound a run, and ``available()`` says so.
"""
from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "layerbench"


def _v2() -> Path | None:
    controllers = ROOT / "cgroup.controllers"
    if controllers.is_file() and {"pids", "memory"} <= set(controllers.read_text().split()):
        return ROOT
    return None


def _v1() -> dict[str, Path] | None:
    found = {c: ROOT / c for c in ("pids", "memory") if (ROOT / c / "cgroup.procs").is_file()}
    return found if len(found) == 2 else None


@lru_cache(maxsize=1)
def available() -> str | None:
    """'v2', 'v1' or None: which cgroups this process can give runs."""
    if os.geteuid() != 0:
        return None
    if _v2() is not None and os.access(ROOT / "cgroup.subtree_control", os.W_OK):
        return "v2"
    if _v1() is not None and all(os.access(p, os.W_OK) for p in _v1().values()):
        return "v1"
    return None


class RunGroup:
    """One run's cgroup(s): created with limits, joined by the child before
    exec (``join`` in preexec_fn), removed after the run."""

    def __init__(self, name: str, pids: int, memory_bytes: int) -> None:
        self.dirs: list[Path] = []
        self.name = name
        try:
            self._create(available(), name, pids, memory_bytes)
        except OSError:
            # A host that shows cgroups but will not let us use them: the
            # run is still bounded by its rlimits and its own uid.
            self.close()
            self.dirs = []

    def _create(self, kind: str | None, name: str, pids: int, memory_bytes: int) -> None:
        if kind == "v2":
            base = ROOT / GROUP
            base.mkdir(exist_ok=True)
            (ROOT / "cgroup.subtree_control").write_text("+pids +memory")
            (base / "cgroup.subtree_control").write_text("+pids +memory")
            d = base / name
            d.mkdir(exist_ok=True)
            (d / "pids.max").write_text(str(pids))
            (d / "memory.max").write_text(str(memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            self.dirs = [d]
        elif kind == "v1":
            roots = _v1()
            for controller, root in roots.items():
                d = root / GROUP / name
                d.mkdir(parents=True, exist_ok=True)
                self.dirs.append(d)
            (roots["pids"] / GROUP / name / "pids.max").write_text(str(pids))
            (roots["memory"] / GROUP / name / "memory.limit_in_bytes").write_text(str(memory_bytes))

    def join(self) -> None:
        """Move the calling process into the group(s) (the child, before exec)."""
        for d in self.dirs:
            with open(d / "cgroup.procs", "w") as fh:
                fh.write(str(os.getpid()))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this group for memory."""
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
                except (OSError, ValueError):
                    continue
        return False

    def close(self) -> None:
        """Remove the group(s). A killed run's processes take a moment to
        leave (EBUSY until then); what is still busy after that is swept by a
        later run (``sweep``)."""
        deadline = time.monotonic() + 2.0
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)


def sweep() -> None:
    """Remove empty run groups whose creating process is gone (names are
    run-<uid>-<creator pid>-<n>)."""
    roots = [ROOT / GROUP] if available() == "v2" else [r / GROUP for r in (_v1() or {}).values()]
    for root in roots:
        for d in root.glob("run-*") if root.is_dir() else ():
            try:
                creator = int(d.name.split("-")[2])
                os.kill(creator, 0)
                continue            # its creator lives: the run may be starting
            except (IndexError, ValueError):
                pass
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                d.rmdir()
            except OSError:
                pass
