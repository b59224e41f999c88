"""``submit``: one new job from an upload, queued, or held until the
dataset it names has finished building (DIGITS let a job wait for its
dataset)."""
from __future__ import annotations

from app.services.jobs import intake

from app.services.jobs import waiting
from app.services.context import Context
from app.services.jobs.submission import Upload


def submit(c: Context, upload: Upload, user: dict) -> dict:
    """Validate and queue a new job owned by ``user``; invalid_* and nothing
    queued when the upload is wrong."""
    intake.check_share(c, upload, user)
    ds = waiting.building(c, upload, user)
    if ds is not None:   # DIGITS: accepted, waits for its dataset
        intake.guard_containment(c)
        return waiting.hold(c, upload, user, ds)
    job_id, prepared, report = intake.validate_new(c, upload, user)
    return intake.queue_new(c, job_id, prepared, report, user)
