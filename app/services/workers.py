"""Celery workers as the web sees them: the live ones, from their heartbeat
rows in the store (app.worker.heartbeat writes them), for /healthz and the
Workers page. Empty in the local queue."""
from __future__ import annotations

import time

from app.services import queue
from app.services.context import Context

# A worker is live while its heartbeat is younger than this many beats (a
# store hiccup or a busy host may delay one or two).
LIVE_BEATS = 5


def live(c: Context) -> list[dict]:
    """Live workers: name, host, pid, GPUs, slots, current jobs, started_at
    and seconds since the last heartbeat."""
    if not queue.celery_mode(c.cfg):
        return []
    now = time.time()
    window = max(LIVE_BEATS * float(c.cfg["HEARTBEAT_SECONDS"]), 5.0)
    out = []
    for w in c.store.list_workers(alive_since=now - window):
        out.append({"name": w["name"], "host": w["host"], "pid": w["pid"], "gpus": w["gpus"],
                    "slots": w["slots"], "jobs": w["jobs"], "started_at": w["started_at"],
                    "last_seen_s": round(now - w["heartbeat_at"], 1)})
    return out


def broker_ok(c: Context) -> bool | None:
    """Whether the broker answers (None in the local queue)."""
    if not queue.celery_mode(c.cfg):
        return None
    try:
        import redis
        return bool(redis.Redis.from_url(str(c.cfg["BROKER_URL"]), socket_timeout=2,
                                         socket_connect_timeout=2).ping())
    except Exception:
        return False
