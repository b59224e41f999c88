"""What a job's live page follows (the event stream of /api/v1/jobs/<id>/events):
status changes, new metric records and new log output, until the job ended
and everything it wrote was sent. Plain data; the view writes the SSE."""
from __future__ import annotations

import time
from typing import Iterator

from app.core.status import JobStatus
from app.core.workspace import METRICS_FILE
from app.services.jobs import files as job_files
from app.services.jobs import lifecycle as jobs
from app.services.context import Context
from app.services.jobs.live_metrics import MetricsFeed

POLL_SECONDS = 0.5
MAX_SECONDS = 6 * 3600   # a stream is closed after this (the page reconnects)


def follow(c: Context, job_id: str) -> Iterator[tuple[str, object]]:
    """(event, data): ("status", job JSON | {"status": "deleted"}),
    ("metrics", [records]), ("log", text), ("end", {}). Run-fenced, and
    restarted/resumed records kept in order: the page applies them as
    job_files.metrics does (app.services.jobs.live_metrics)."""
    tail = MetricsFeed(c.ws.output_dir(job_id) / METRICS_FILE)
    log_offset, last = 0, None
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        cur = c.store.get_job(job_id)
        if cur is None:
            yield "status", {"status": "deleted"}
            return
        body = jobs.to_json(cur)
        key = (body["status"], body["iteration"], body["progress"])
        if key != last:
            last = key
            yield "status", body
        recs = tail.records()
        if recs:
            yield "metrics", recs
        chunk, log_offset, size = job_files.log(c, cur, log_offset, 64 * 1024)
        if chunk:
            yield "log", chunk.decode("utf-8", "replace")
        if JobStatus(cur["status"]).ended and not recs and log_offset >= size:
            yield "end", {}
            return
        time.sleep(POLL_SECONDS)
