"""Which queued job starts next: fair share between users (issue 27).

First-in, first-out let one user's sweep of 32 jobs hold everyone else for
hours. Here the next job comes from the user with the fewest running jobs;
between users with as many, from the one whose last job started longest ago
(a user who never ran goes first), and within one user in submission order.
A job's ``priority`` (low | normal | high; high for admins to grant) ranks
before all of that. ``USER_MAX_RUNNING`` (0: no limit) keeps a user's
further jobs queued while that many run.

The same order answers "where is my job in the queue" (``position``), and
holds in both queues: the local supervisor starts jobs in this order, and in
the celery queue each message is a doorbell for its device's queue, whose
task runs the job this order puts first when a worker takes it
(app.worker.celery_app.run_job_task).
"""
from __future__ import annotations

PRIORITIES = ("high", "normal", "low")


def _rank(job: dict) -> int:
    p = (job.get("params") or {}).get("priority") or "normal"
    return PRIORITIES.index(p) if p in PRIORITIES else 1


def order(queued: list[dict], state: dict[str, tuple[int, str]], max_running: int = 0) -> list[dict]:
    """``queued`` jobs in the order they should start, as if each started in
    turn; jobs of a user at ``max_running`` come after every other, in
    their own order (they wait for that user's jobs to end)."""
    out, held = _split(queued, state, max_running)
    return out + held


def runnable(queued: list[dict], state: dict[str, tuple[int, str]], max_running: int = 0) -> list[dict]:
    """``order`` without the jobs held by ``max_running``: those that may start now."""
    return _split(queued, state, max_running)[0]


def _split(queued: list[dict], state: dict[str, tuple[int, str]], max_running: int) -> tuple[list, list]:
    running = {o: r for o, (r, _) in state.items()}
    last = {o: s for o, (_, s) in state.items()}
    left = sorted(queued, key=lambda j: (j["created_at"], j["id"]))
    out, held, tick = [], [], 0
    while left:
        pick = min(left, key=lambda j: (_rank(j), running.get(j["owner"], 0), last.get(j["owner"], ""),
                                        j["created_at"], j["id"]))
        left.remove(pick)
        if max_running and running.get(pick["owner"], 0) >= max_running:
            held.append(pick)
            continue
        out.append(pick)
        running[pick["owner"]] = running.get(pick["owner"], 0) + 1
        tick += 1
        last[pick["owner"]] = f"~{tick:09d}"   # after every real timestamp: just started
    return out, held


def position(job: dict, queued: list[dict], state: dict[str, tuple[int, str]], max_running: int = 0) -> int | None:
    """1 for the job that starts next, ...; None when ``job`` is not queued."""
    for i, j in enumerate(order(queued, state, max_running), 1):
        if j["id"] == job["id"]:
            return i
    return None
