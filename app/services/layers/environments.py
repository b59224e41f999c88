"""The layer environment: what uploaded layer code can import, and the
packages an administrator adds for it.

Administrator-added packages are listed, pinned (``name==version``, optionally
``--hash=sha256:…``), in ``<INSTANCE_DIR>/layer-requirements.txt`` and
installed by ``flask layer-env sync`` (``add`` edits the file and syncs) with
the service's own pip, ``--target`` a fresh directory
``<INSTANCE_DIR>/layer-env/<fingerprint>`` — never into the service's
environment, and never at run time by user code. ``current.json`` names the
directory in force. Every sandboxed run mounts it read-only
(``mount``) and the runners append it to ``sys.path`` *after* the service's
packages (app.core.layer_code), so an added package never replaces one the
service runs on.

The fingerprint is a hash of the installed package list; a job records the
one it was validated with (``python_layer.environment``), and resume and
inference warn when it changed. ``describe`` is the visible environment:
a contained probe (app.contained.envprobe) run once per fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from app.core import untrusted
from app.core.errors import ServerFault
from app.core.tracebacks import LAYER_ENV_VAR, scrub
from app.core.workspace import Workspace
from app.services.runtime import sandbox
from app.services.context import Context
from app.core.config import Settings

REQUIREMENTS = "layer-requirements.txt"
ENV_DIR = "layer-env"
CURRENT = "current.json"
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)((?:\s+--hash=sha256:[0-9a-f]{64})*)$")
_probe_cache: dict[tuple[str, str | None], dict] = {}
_lock = threading.Lock()


def _root(cfg: Settings) -> Path:
    return cfg.instance_dir / ENV_DIR


def requirements_path(cfg: Settings) -> Path:
    """The administrator's list of pinned requirements for layer code."""
    return cfg.instance_dir / REQUIREMENTS


def parse_requirements(text: str) -> list[str]:
    """The pinned requirement lines of ``text`` (comments and blanks dropped);
    ValueError naming the first line that is not ``name==version``."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _PINNED.match(line):
            raise ValueError(f"line {n}: '{line[:100]}' is not pinned as name==version "
                             "(optionally followed by --hash=sha256:...)")
        out.append(line)
    return out


def current(cfg: Settings) -> dict | None:
    """{"dir", "fingerprint", "packages"} of the environment in force, or None."""
    try:
        info = json.loads(untrusted.read_all(_root(cfg) / CURRENT, 1 << 20))
        path = _root(cfg) / info["dirname"]
        return dict(info, dir=str(path)) if path.is_dir() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fingerprint(cfg: Settings) -> str:
    """The hash of the added package list in force ("none" without any)."""
    cur = current(cfg)
    return cur["fingerprint"] if cur else "none"


def mount(spec: sandbox.Spec, cfg: Settings) -> sandbox.Spec:
    """Let a sandboxed run see the added packages: read-only, named by
    LAYERBENCH_LAYER_ENV (the runner puts it last on sys.path)."""
    cur = current(cfg)
    if cur:
        spec.read_only.append(Path(cur["dir"]))
        spec.env[LAYER_ENV_VAR] = cur["dir"]
    return spec


def _installed(target: Path) -> list[str]:
    names = []
    for meta in sorted(target.glob("*.dist-info")):
        name, _, version = meta.name[:-len(".dist-info")].partition("-")
        names.append(f"{name.lower().replace('_', '-')}=={version}")
    return sorted(names)


def sync(cfg: Settings, pip_args: list[str] | None = None) -> dict:
    """Install what the requirements file lists into a fresh directory and put
    it in force; the new ``current`` (None when the list is empty)."""
    path = requirements_path(cfg)
    reqs = parse_requirements(untrusted.read_all(path, 1 << 20).decode()) if path.exists() else []
    root = _root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if not reqs:
        (root / CURRENT).unlink(missing_ok=True)
        return {"fingerprint": "none", "packages": [], "dir": None}
    tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    req_file = tmp.parent / f"{tmp.name}.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    try:
        # The service's own pip, but only into the target directory; every
        # dependency must be listed (pinned) too: --no-deps.
        argv = [sys.executable, "-m", "pip", "install", "--target", str(tmp), "--no-deps",
                "--disable-pip-version-check", "--no-input", "--no-compile", *(pip_args or []),
                "-r", str(req_file)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise ServerFault("pip could not install the layer packages: "
                               + (out.stderr.strip() or out.stdout.strip())[-2000:])
        packages = _installed(tmp)
        fp = "sha256:" + hashlib.sha256("\n".join(packages).encode()).hexdigest()[:16]
        dest = root / fp.replace(":", "-")
        for top, dirs, files in os.walk(tmp):   # readable by the sandbox uid
            os.chmod(top, 0o755)
            for f in files:
                os.chmod(os.path.join(top, f), 0o644)
        if dest.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
        # Written last: runs started before keep the directory they mounted.
        Workspace.write_json(root / CURRENT, {"fingerprint": fp, "dirname": dest.name, "packages": packages})
        return current(cfg) or {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        req_file.unlink(missing_ok=True)


def add(cfg: Settings, requirements: list[str], pip_args: list[str] | None = None) -> dict:
    """Add (or re-pin) ``requirements`` in the file, then ``sync``."""
    new = parse_requirements("\n".join(requirements))
    path = requirements_path(cfg)
    old = parse_requirements(untrusted.read_all(path, 1 << 20).decode()) if path.exists() else []
    names = {_PINNED.match(r).group(1).lower().replace("_", "-") for r in new}
    kept = [r for r in old if _PINNED.match(r).group(1).lower().replace("_", "-") not in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    Workspace.write_atomic(path, "# Packages for uploaded layer code (flask layer-env sync installs them)\n"
                           + "\n".join(kept + new) + "\n")
    return sync(cfg, pip_args)


def describe(c: Context) -> dict:
    """What layer code can import in the sandbox: Python, packages with
    versions (service or admin), Caffe's build; probed contained once per
    environment fingerprint and cached."""
    fp = fingerprint(c.cfg)
    key = (c.cfg.caffe_python, fp)
    with _lock:
        if key not in _probe_cache or not _probe_cache[key].get("ok"):
            _probe_cache[key] = _probe(c, fp)
        report = dict(_probe_cache[key])
    report["fingerprint"] = fp
    cur = current(c.cfg)
    report["added"] = cur["packages"] if cur else []
    return report


# What layer code usually imports (numerics, images, data files, graphs):
# the layer environment page lists these first, the service's own packages
# (web server, database, queue, tests) after them. Normalised names.
USUAL_FOR_LAYERS = frozenset({
    "numpy", "scipy", "scikit-image", "scikit-learn", "pillow", "imageio", "tifffile", "opencv-python",
    "opencv-python-headless", "h5py", "lmdb", "leveldb", "protobuf", "networkx", "pandas", "matplotlib",
    "pywavelets", "sympy", "numba", "joblib", "threadpoolctl", "six", "python-dateutil", "pyyaml", "pydot",
    "lazy-loader"})


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def describe_grouped(c: Context) -> dict:
    """``describe`` with the packages in two lists: "for_layers" (what
    layer code usually imports, and every package an administrator added)
    and "other" (the rest: what the service itself runs on)."""
    report = describe(c)
    packages = report.get("packages") or []
    usual = [p for p in packages if p.get("origin") == "admin" or _normal(p.get("name") or "") in USUAL_FOR_LAYERS]
    return dict(report, for_layers=usual, other=[p for p in packages if p not in usual])


def _probe(c: Context, fp: str) -> dict:
    work = c.ws.scratch_dir()
    try:
        out = work / "env.json"
        spec = mount(sandbox.Spec([c.cfg.caffe_python, "-m", "app.contained.envprobe", str(out)],
                                  writable=[work], cwd=work), c.cfg)
        result = sandbox.run(spec, c.containment, sandbox.Limits(wall_seconds=60,
                             address_space=c.cfg.memory_limit_bytes,
                             memory_bytes=c.cfg.memory_limit_bytes))
        try:
            report = json.loads(Workspace.read_capped(out, 4 << 20))
        except (OSError, ValueError):
            return {"ok": False, "error": f"the environment probe failed (exit status {result.returncode})",
                    "python": None, "packages": [], "caffe": None}
        report = json.loads(scrub(json.dumps(report)))
        return dict(report, ok=True, containment=c.containment)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def job_warnings(cfg: Settings, job: dict) -> list[str]:
    """A warning when the added packages changed since ``job`` was validated
    (a resume or an inference then runs its layers with other packages)."""
    if not job.get("python_layer"):
        return []
    # Recorded only where packages were added: a job without it had none.
    recorded = job["python_layer"].get("environment", "none")
    now = fingerprint(cfg)
    if recorded == now:
        return []
    return [f"The packages added for layer code changed since this job was validated (then {recorded}, "
            f"now {now}); its layers now run with the packages listed at /layer-env."]
