"""Failed sign-ins, counted: the login form, HTTP Basic and API tokens.

Two budgets per window (LAYERBENCH_LOGIN_WINDOW_SECONDS): LOGIN_FAILURES for
one user name from one client address, and the larger LOGIN_ADDRESS_FAILURES
for one address whatever the names (password spraying). Past either, that
address gets 429 with Retry-After for that name (or for every name) and the
password is not even tried, so a lucky guess is no oracle. The user's own
budget is scoped to the address on purpose: an attacker's failures from one
place must not lock the real user out everywhere else.

Counted with the ``limits`` library (the engine of Flask-Limiter): in memory
locally, in Redis (the broker) in celery mode, where every web process of an
install shares one count. In memory each gunicorn process counts alone, so
`serve`'s 2 workers allow up to twice the budgets; point
LAYERBENCH_RATELIMIT_STORAGE_URL at a Redis to share the count there too. Flask-Limiter's own request hooks
are not installed: they run on every request (~35 us each, measured) and
count requests per route, while only failures, across all routes, are
wanted here. Attempts that race each other can all be tried before any is
counted, so a burst gets at most the budget plus the server's concurrency.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time

from flask import Flask, current_app, request
from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from app.core.config import Settings

log = logging.getLogger(__name__)


def storage_url(cfg: Settings) -> str:
    """Where failures are counted: RATELIMIT_STORAGE_URL, else the broker's
    Redis in celery mode (several web hosts), else this process's memory."""
    if cfg.ratelimit_storage_url:
        return cfg.ratelimit_storage_url
    if cfg.queue == "celery":
        broker = cfg.broker_url
        return broker if broker.startswith(("redis://", "rediss://", "redis+unix://")) else cfg.redis_url
    return "memory://"


def client_address() -> str:
    """The client's address. Behind `serve`'s nginx the peer is a unix
    socket with no address, and nginx sets X-Forwarded-For to the client's
    (replacing any the client sent); a TCP peer's own address is used as is."""
    addr = request.remote_addr
    if addr:
        return addr
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.rsplit(",", 1)[-1].strip() or "unknown"


class Throttle:
    """The failure budgets of one app (its settings, its storage)."""

    def __init__(self, cfg: Settings) -> None:
        window = cfg.login_window_seconds
        self.per_name = RateLimitItemPerSecond(cfg.login_failures, window, namespace="LB-LOGIN")
        self.per_address = RateLimitItemPerSecond(cfg.login_address_failures, window,
                                                  namespace="LB-LOGIN")
        self.url = storage_url(cfg)
        self._strategy: MovingWindowRateLimiter | None = None
        self._lock = threading.Lock()

    def _limiter(self) -> MovingWindowRateLimiter:
        # Made on first use: most app objects (workers, CLI) never count a failure.
        with self._lock:
            if self._strategy is None:
                self._strategy = MovingWindowRateLimiter(storage_from_string(self.url))
            return self._strategy

    def _budgets(self, name: str | None, address: str) -> list[tuple]:
        out = [(self.per_address, "addr", address)]
        if name is not None:
            # Hashed: names are attacker-chosen text of any length.
            out.append((self.per_name, "name", hashlib.sha256(name.encode()).hexdigest()[:24], address))
        return out

    def wait_s(self, name: str | None, address: str) -> int:
        """Seconds until ``address`` may try ``name`` again (0: now).
        ``name`` None: a credential without a name (an API token)."""
        try:
            limiter = self._limiter()
            waits = [limiter.get_window_stats(item, *ids).reset_time - time.time()
                     for item, *ids in self._budgets(name, address) if not limiter.test(item, *ids)]
        except Exception:   # the counter's store is down: sign-ins go on, said loudly
            log.exception("cannot read failed-login counts from %s", self.url)
            return 0
        return max(1, math.ceil(max(waits))) if waits else 0

    def failed(self, name: str | None, address: str) -> None:
        """Count one failed sign-in of ``name`` (None: a bad token) from ``address``."""
        try:
            limiter = self._limiter()
            for item, *ids in self._budgets(name, address):
                limiter.hit(item, *ids)
        except Exception:
            log.exception("cannot count a failed login in %s", self.url)

    def close(self) -> None:
        """Let go of the counter's storage connections (Redis), if any."""
        with self._lock:
            client = getattr(self._strategy.storage, "storage", None) if self._strategy else None
            self._strategy = None
        if client is not None and hasattr(client, "close"):
            client.close()


def register(app: Flask) -> None:
    """Give ``app`` its failure counter."""
    app.extensions["throttle"] = Throttle(app.extensions["settings"])


def current() -> Throttle:
    """The current app's failure counter."""
    return current_app.extensions["throttle"]
