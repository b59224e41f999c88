"""What /healthz says: is this install able to do its job right now."""
from __future__ import annotations

import shutil
from pathlib import Path

from app.services.runtime import cgroups

from app.services.runtime import gpus

from app.services.runtime import sandbox

from app.services.operations import selftest

from app.services.runtime import workers
from app.services.runtime.caffe_info import caffe_info
from app.services.context import Context

UNHEALTHY = "unhealthy"   # /healthz's status when ``ok`` is false


def health(c: Context, instance_dir: str | Path) -> dict:
    """``status`` ("ok" or "unhealthy") and ``ok`` plus the facts behind
    them, for admins and monitoring only (``summary`` is what anyone
    reads): pycaffe, the start-up self-test (a real contained validation;
    null when the server was not started by ``flask serve``), the
    containment in force and why it is degraded, the store, the queue and
    the GPUs."""
    caffe = caffe_info(c.cfg.caffe_python)
    store_ok = c.store.ping()
    check = selftest.load(Path(instance_dir))
    ok = bool(caffe.get("ok") and caffe.get("python_layer") and store_ok and (check is None or check.get("ok")))
    return {
        "status": "ok" if ok else UNHEALTHY,
        "ok": ok,
        "selftest": check,
        "caffe": {"version": caffe.get("version"), "python_layer": caffe.get("python_layer", False),
                  "gpu_build": caffe.get("gpu_build", False), "error": caffe.get("error")},
        "containment": c.containment,
        "containment_degraded": sandbox.DEGRADED.get("bwrap"),
        # Per-run cgroups (pids + memory of each run as a whole), or null
        # where the host gives us none (then rlimits and per-run uids alone).
        "cgroups": cgroups.available(),
        "store": {"ok": store_ok, "backend": c.store.engine.dialect.name},
        "queue": c.cfg.queue,
        # celery queue: the broker, and the live workers with their hosts,
        # GPUs and current jobs (empty lists and null in the local queue).
        "broker_ok": workers.broker_ok(c),
        "workers": workers.public(c),
        "gpus": list(gpus.detect()),
        "disk": disk(c),
    }


def summary(report: dict) -> dict:
    """What anyone may read of ``report`` (``health``'s): {"status": "ok"}
    or {"status": "unhealthy"}, nothing about the host behind it."""
    return {"status": report["status"]}


def disk(c: Context) -> dict:
    """Free space on the jobs volume, and whether it is below ``DISK_LOW_MB``."""
    try:
        free = shutil.disk_usage(c.ws.root).free
    except OSError:
        return {"free_mb": None, "low": True}
    free_mb = free // (1 << 20)
    return {"free_mb": free_mb, "low": free_mb < c.cfg.disk_low_mb}
