"""A Celery worker's name, unique across the cluster (issue 27, part 2).

The name is the key of the worker's row in the store (``workers``), of the
``running ... on NAME`` lines in a job's history and of the hand-over of a
dead worker's jobs. Two live workers under one name share one row: each
one's heartbeat hides the other's death. So a name is held by a lock in the
broker, the one service every worker already needs: ``SET NX`` of
``layerbench:worker-name:<NAME>`` with a TTL, refreshed by the worker's
heartbeat (app.worker.heartbeat) and deleted on a clean stop.

* Without ``-n``/``LAYERBENCH_WORKER_NAME`` the name is
  ``layerbench-<6 hex>@<hostname>``: unique by default, and on the (unlikely)
  clash another suffix is drawn.
* A name given explicitly that a live worker holds refuses to start
  (``NameTaken``; exit status 2), naming the live worker and the setting.

A worker SIGKILLed keeps its name for at most the TTL: restarting it at once
under the same explicit name is refused until then (the message says so).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from app.core.config import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "layerbench:worker-name:"
MIN_TTL_S = 10.0         # a lock outlives a few missed heartbeats (a slow store, a busy host)
TTL_BEATS = 10           # ... and ten of the configured ones
BROKER_WAIT_S = 60.0     # how long a starting worker waits for a broker that does not answer
DEFAULT_TRIES = 5        # fresh suffixes drawn for a default name before giving up

# Atomic "still mine? then extend": a plain GET then PEXPIRE could extend a
# lock that expired and was taken by another worker in between. A lock lost
# with the broker's data (Redis restarted without persistence) is taken back.
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NameTaken(RuntimeError):
    """The name cannot be held: another live worker holds it, or the broker
    cannot tell (the message says which)."""


def default_name(host: str | None = None) -> str:
    """``layerbench-<6 hex>@<host>``: a fresh, unique-by-default node name.
    The suffix goes before the ``@`` so the part after it stays the host
    (the Workers page and /healthz read the host from there)."""
    return f"layerbench-{secrets.token_hex(3)}@{host or socket.gethostname()}"


def ttl_seconds(cfg: Settings) -> float:
    """How long a name outlives its worker's last heartbeat."""
    return max(MIN_TTL_S, TTL_BEATS * cfg.heartbeat_seconds)


class NameLock:
    """This worker's hold on its name in the broker (see the module docstring)."""

    def __init__(self, client, name: str, ttl_s: float) -> None:
        self.client, self.name, self.ttl_ms = client, name, int(ttl_s * 1000)
        self.key = KEY_PREFIX + name
        self.value = json.dumps({"name": name, "host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.time(), "token": secrets.token_hex(8)})
        self._lost_logged = False

    def acquire(self) -> dict | None:
        """Take the name: None when taken, else who holds it (the live
        worker's record: name, host, pid, since, and ttl_s left)."""
        if self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            return None
        raw, ttl_ms = self.client.get(self.key), self.client.pttl(self.key)
        try:
            holder = json.loads(raw) if raw else {}
        except ValueError:
            holder = {}
        if not raw:       # expired between the two calls: try once more
            return self.acquire()
        return {**holder, "ttl_s": round(max(ttl_ms, 0) / 1000, 1)}

    def refresh(self) -> bool:
        """Extend the hold (called by every heartbeat); False when another
        worker took the name meanwhile (only possible after this one lost
        it for longer than the TTL), which is logged once, or when the
        broker does not answer (logged; never raised)."""
        try:
            got = int(self.client.eval(_REFRESH, 1, self.key, self.value, self.ttl_ms))
        except Exception as exc:     # redis.RedisError, or a broken connection
            log.warning("worker name %s: cannot refresh its lock: %r", self.name, exc)
            return False
        if got == 2:
            log.warning("worker name %s: its lock was gone from the broker (restarted?); taken again", self.name)
        if got == 0 and not self._lost_logged:
            log.error("worker name %s is now held by another worker: this worker's heartbeat was away "
                      "longer than the lock's %.0f s; stop one of them", self.name, self.ttl_ms / 1000)
        self._lost_logged = got == 0
        return got != 0

    def release(self) -> None:
        """Give the name back (a clean stop), if this worker still holds it."""
        self.client.eval(_RELEASE, 1, self.key, self.value)


def _clash_message(name: str, holder: dict) -> str:
    since = holder.get("since")
    age = f", started {time.time() - since:.0f} s ago" if isinstance(since, (int, float)) else ""
    return (f"worker name {name!r} is held by a live worker ({holder.get('name', name)} on host "
            f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}{age}). Two workers under one name "
            f"would hide each other's death. Give this one another name with -n NAME or "
            f"LAYERBENCH_WORKER_NAME=NAME, or leave both unset for a unique default name. If that "
            f"worker was just killed, its name frees itself within {holder.get('ttl_s', '?')} s.")


def claim(cfg: Settings, name: str | None) -> NameLock:
    """Hold ``name`` (explicit: ``-n``/``LAYERBENCH_WORKER_NAME``) or a fresh
    default one for this worker; ``NameTaken`` when an explicit name is held
    by a live worker. Waits up to ``BROKER_WAIT_S`` for the broker."""
    import redis
    # Short timeouts: the heartbeat refreshes through this client, and a
    # broker that hangs must not delay the worker's row in the store.
    client = redis.Redis.from_url(cfg.broker_url, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + BROKER_WAIT_S
    while True:
        try:
            return _claim(client, cfg, name)
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise NameTaken(f"the broker ({cfg.broker_url}) did not answer for {BROKER_WAIT_S:.0f} s: "
                                f"cannot check that the worker name is unique ({exc})") from None
            log.warning("broker not answering (%s); trying again", exc)
            time.sleep(2)


def _claim(client, cfg: Settings, name: str | None) -> NameLock:
    for _ in range(1 if name else DEFAULT_TRIES):
        lock = NameLock(client, name or default_name(), ttl_seconds(cfg))
        holder = lock.acquire()
        if holder is None:
            return lock
        if name:
            raise NameTaken(_clash_message(name, holder))
        log.info("default worker name %s is taken; drawing another", lock.name)
    raise NameTaken(f"no free default worker name after {DEFAULT_TRIES} tries; set LAYERBENCH_WORKER_NAME")
