"""Sweeps: a list in ``learning_rate`` and/or ``batch_size`` (``0.01,0.02`` or
``[0.01, 0.02]``, DIGITS's syntax) makes one job per combination, grouped.

Every combination is validated before any is queued: a sweep is accepted
whole or not at all. The jobs share a group ``{"id", "name", "jobs"}`` in
their params; the job list shows it and links the group's jobs together.
"""
from __future__ import annotations

import io
import itertools
import re
import shutil
import tempfile
from dataclasses import replace

from app.core.errors import InvalidRequest
from app.services.jobs import admission
from app.services.jobs import intake
from app.services.jobs import waiting
from app.services.context import Context
from app.services.jobs.submission import Upload
from app.store import new_job_id

SWEPT = ("learning_rate", "batch_size")
MAX_JOBS = 32


def values(raw: str | None) -> list[str]:
    """The values of one swept field: one or more, in the order given."""
    text = (raw or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [v for v in (part.strip() for part in re.split(r"[,\s]+", text)) if v]


def combinations(fields: dict[str, str]) -> list[dict[str, str]]:
    """One field override per job (a single {} when nothing is swept)."""
    lists = {name: values(fields.get(name)) for name in SWEPT}
    swept = [name for name, vals in lists.items() if len(vals) > 1]
    if not swept:
        return [{}]
    combos = [dict(zip(swept, vals)) for vals in itertools.product(*(lists[n] for n in swept))]
    if len(combos) > MAX_JOBS:
        raise InvalidRequest(f"A sweep makes at most {MAX_JOBS} jobs (this one: {len(combos)}).",
                           [{"field": swept[0], "message": f"at most {MAX_JOBS} combinations"}])
    return combos


def _label(combo: dict[str, str]) -> str:
    short = {"learning_rate": "lr", "batch_size": "batch"}
    return " [" + ", ".join(f"{short[k]}={v}" for k, v in combo.items()) + "]"


def submit_all(c: Context, upload: Upload, user: dict) -> list[dict]:
    """Validate and queue one job per combination; the jobs, in order."""
    combos = combinations(upload.fields)
    if combos == [{}]:
        return [admission.submit(c, upload, user)]
    building = waiting.building(c, upload, user)
    # The uploaded files are streams: read once, handed to every job.
    limit = c.cfg.max_layer_file_bytes + 1
    layer = upload.layer_stream.read(limit) if upload.layer_stream is not None else None
    # Several layer files or a zip (app.services.layers.files): read once too.
    parts = [(s.read(c.cfg.max_upload_bytes + 1), n) for s, n in upload.layer_files]
    spool = None
    if upload.weights_stream is not None:
        spool = tempfile.TemporaryFile()
        shutil.copyfileobj(upload.weights_stream, spool)
    validated, held = [], []
    try:
        for combo in combos:
            if spool is not None:
                spool.seek(0)
            one = replace(upload, fields={**upload.fields, **combo},
                          layer_stream=io.BytesIO(layer) if layer is not None else None,
                          layer_files=[(io.BytesIO(d), n) for d, n in parts],
                          weights_stream=spool)
            if building is not None:
                # As a single job does, each combination waits for the
                # dataset being built (validated once it is done).
                name = (upload.fields.get("name") or "job") + _label(combo)
                held.append(waiting.hold(c, replace(one, fields={**one.fields, "name": name}), user, building))
                continue
            validated.append((combo, *intake.validate_new(c, one, user)))
    except BaseException:
        for _, job_id, _, _ in validated:
            c.ws.delete(c.ws.job_dir(job_id))
        raise
    finally:
        if spool is not None:
            spool.close()
    if held:
        return held
    ids = [job_id for _, job_id, _, _ in validated]
    group = {"id": new_job_id(), "name": (upload.fields.get("group_name") or upload.fields.get("name")
                                          or validated[0][2].network.net.name or "sweep").strip()[:200],
             "jobs": ids}
    return [intake.queue_new(c, job_id, prepared, report, user, group=group, name_suffix=_label(combo))
            for combo, job_id, prepared, report in validated]
