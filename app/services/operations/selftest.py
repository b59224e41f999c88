"""The start-up self-test: one real contained validation, as a user's would run.

A sandbox that starts is not enough (a newcomer's checkout under a 0700 home
directory started bwrap fine, then every upload died): this validates a tiny
network with a Python layer against the built-in dataset, through the same
code a real upload takes (scratch dir under the jobs root, ``submission``,
the sandbox, pycaffe). ``flask serve`` runs it before serving and keeps the
answer in the instance dir; ``/healthz`` reports it.
"""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

from app.core import untrusted
from app.services.jobs import submission
from app.core.workspace import VALIDATION_DIR, Workspace
from app.core.config import Settings

RESULT_FILE = "selftest.json"

NET = """name: "selftest"
layer { name: "train-data" type: "Data" top: "data" top: "label" include { stage: "train" }
        data_param { batch_size: 4 } }
layer { name: "val-data" type: "Data" top: "data" top: "label" include { stage: "val" }
        data_param { batch_size: 4 } }
layer { name: "double" type: "Python" bottom: "data" top: "doubled"
        python_param { module: "digits_python_layers" layer: "Double" } }
layer { name: "fc" type: "InnerProduct" bottom: "doubled" top: "fc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
        exclude { stage: "deploy" } }
"""

LAYER = b"""import caffe


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
"""


def run(cfg: Settings, ws: Workspace, containment: str, datasets: dict) -> dict:
    """Validate the self-test network contained; ``{"ok", "reason", "seconds"}``."""
    t0 = time.monotonic()
    if containment == "none" and not cfg.allow_uncontained:
        return {"ok": False, "seconds": 0.0, "containment": containment,
                "reason": "no containment for uploaded code (bubblewrap and unshare both failed)"}
    scratch = ws.scratch_dir()
    try:
        (scratch / "input").mkdir()
        upload = submission.Upload(network_text=NET, layer_stream=io.BytesIO(LAYER),
                                   layer_filename="selftest.py",
                                   fields={"dataset": "sample-digits", "max_iter": "1"})
        try:
            prepared = submission.prepare(upload, scratch / "input", cfg=cfg, datasets=datasets)
            report = submission.run_validation(
                scratch / "input", scratch / VALIDATION_DIR, prepared, cfg=cfg, how=containment,
                dataset_dir=datasets["sample-digits"].path if "sample-digits" in datasets else None)
        except Exception as exc:  # any failure here is the server's, and is the answer
            return {"ok": False, "seconds": round(time.monotonic() - t0, 3), "containment": containment,
                    "reason": f"{type(exc).__name__}: {getattr(exc, 'message', exc)} "
                              f"{getattr(exc, 'server_log', '')}".strip()}
        reason = ""
        if not report.get("ok"):
            first = (report.get("errors") or [{}])[0]
            reason = "contained validation of the self-test network failed: " + \
                str(first.get("message") or "no report")
            tail = str(first.get("log_tail") or "").strip()
            if tail:
                reason += " | " + tail[-600:]
        return {"ok": bool(report.get("ok")), "reason": reason, "containment": containment,
                "seconds": round(time.monotonic() - t0, 3)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save(instance_dir: Path, result: dict) -> None:
    """Keep ``result`` where every web worker's ``/healthz`` reads it."""
    Workspace.write_json(Path(instance_dir) / RESULT_FILE, {**result, "at": time.time()})


def load(instance_dir: Path) -> dict | None:
    """The last saved self-test result, or None when none ran."""
    try:
        return json.loads(untrusted.read_all(Path(instance_dir) / RESULT_FILE, 1 << 20))
    except (OSError, ValueError):
        return None
