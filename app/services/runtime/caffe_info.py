"""What pycaffe this install has, asked of a subprocess (app.contained.probe).

The web process never imports caffe (it would load libcaffe and BLAS into
every gunicorn worker); it runs the probe once per process instead.
"""
from __future__ import annotations

import json
import subprocess
import threading

from app.core.config import ROOT

_cache: dict[str, dict] = {}
_lock = threading.Lock()


def probe(python: str, timeout: float = 60) -> dict:
    """Run the probe with ``python`` and return its report."""
    try:
        out = subprocess.run([python, "-m", "app.contained.probe"], capture_output=True,
                             text=True, timeout=timeout, check=False, cwd=str(ROOT))
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        return {"ok": False, "error": f"probe failed: {exc}"}


def caffe_info(python: str) -> dict:
    """This install's pycaffe report for ``python``, probed once per process
    (again while it fails: a failed probe is not cached)."""
    info = _cache.get(python)
    if info is None or not info.get("ok"):
        with _lock:
            info = _cache.get(python)
            if info is None or not info.get("ok"):
                info = _cache[python] = probe(python)
    return info
