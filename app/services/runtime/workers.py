"""Celery workers as the web sees them: the live ones, from their heartbeat
rows in the store (app.worker.heartbeat writes them), for /healthz and the
Workers page. Empty in the local queue."""
from __future__ import annotations

import time

from app.services.runtime import broker as queue
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
    window = max(LIVE_BEATS * c.cfg.heartbeat_seconds, 5.0)
    out = []
    for w in c.store.list_workers(alive_since=now - window):
        out.append({"name": w["name"], "host": w["host"], "pid": w["pid"], "gpus": w["gpus"],
                    "slots": w["slots"], "jobs": w["jobs"], "started_at": w["started_at"],
                    "last_seen_s": round(now - w["heartbeat_at"], 1)})
    return out


def public(c: Context) -> list[dict]:
    """Live workers for /healthz, which answers without a login: how many
    jobs each runs, not which (job ids are for users who may see them)."""
    return [{**{k: v for k, v in w.items() if k != "jobs"}, "running": len(w["jobs"])} for w in live(c)]


def for_user(c: Context, user: dict) -> list[dict]:
    """Live workers for the Workers page: each with the current jobs ``user``
    may see (as job records: id, name, owner) and how many run in all."""
    from app.services.access import may_see
    out = []
    for w in live(c):
        visible = [j for j in (c.store.get_job(i) for i in w["jobs"]) if j is not None and may_see(user, j)]
        out.append({**w, "running": len(w["jobs"]),
                    "jobs": [{"id": j["id"], "name": j["name"], "owner": j["owner"]} for j in visible]})
    return out


def broker_ok(c: Context) -> bool | None:
    """Whether the broker answers (None in the local queue)."""
    if not queue.celery_mode(c.cfg):
        return None
    try:
        import redis
        client = redis.Redis.from_url(c.cfg.broker_url, socket_timeout=2, socket_connect_timeout=2)
        return bool(client.ping())
    except Exception:
        return False
