"""Users and their credentials: passwords, API tokens, sessions, revocation.

The web (app.web.auth, the `flask users` commands, the admin page) asks here
who a credential belongs to and never reads the users or tokens tables
itself. Every answer is for an *active* user only: a deactivated user's
tokens, password and sessions all fail, while their jobs stay.

Revocation and the 10 s cache: token and HTTP Basic checks are cached per
process for ``CACHE_SECONDS`` (clients poll job JSON many times a second; a
password hash costs tens of ms). Every change here (revoke, deactivate,
delete, password) clears this process's cache; *other* processes (other
gunicorn workers, `flask users` run from a shell) may still accept a revoked
token or a deactivated user's password for up to ``CACHE_SECONDS``. Sessions
are not cached: they end at once everywhere.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from app.core.errors import Conflict, NotFound
from app.services.context import Context
from app.store import now_iso

TOKEN_START = "lb_"
PREFIX_CHARS = 8            # of a token, after "lb_": names it in listings (48 bits, unique per user in practice)
CACHE_SECONDS = 10.0
LAST_USED_EVERY_S = 60.0    # last_used_at is written at most this often per token and process

_cache: dict[tuple[str, str], tuple[float, dict]] = {}   # (database, key): one process may serve several
_cache_lock = threading.Lock()


# ---- passwords: werkzeug's hash format ("scrypt:n:r:p$salt$hex", pbkdf2 read
# too), done with hashlib because services never import the web framework;
# hashes made by either side verify on the other (tests/test_auth_hardening).
_SALT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _derive(method: str, salt: str, password: str) -> str:
    kind, *args = method.split(":")
    if kind == "scrypt":
        n, r, p = map(int, args) if args else (2 ** 15, 8, 1)
        return hashlib.scrypt(password.encode(), salt=salt.encode(), n=n, r=r, p=p,
                              maxmem=132 * n * r * p).hex()
    if kind == "pbkdf2":
        name, rounds = (args + ["sha256", "1000000"][len(args):])[:2]
        return hashlib.pbkdf2_hmac(name, password.encode(), salt.encode(), int(rounds)).hex()
    raise ValueError(f"unknown password hash method {kind!r}")


def hash_password(password: str) -> str:
    """A password's stored form (scrypt, werkzeug's format)."""
    salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(16))
    method = "scrypt:32768:8:1"
    return f"{method}${salt}${_derive(method, salt, password)}"


def password_matches(stored: str, password: str) -> bool:
    """Whether ``password`` matches the stored hash (constant-time compare)."""
    try:
        method, salt, want = stored.split("$", 2)
        return hmac.compare_digest(_derive(method, salt, password), want)
    except ValueError:
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Checked against when the user does not exist: the same cost either way.
    return hash_password(secrets.token_urlsafe(16))


# ---- users -----------------------------------------------------------------
def _public(row: dict) -> dict:
    return {"name": row["name"], "admin": bool(row["admin"])}


def create(c: Context, name: str, password: str | None, admin: bool) -> tuple[str, str] | None:
    """Create a user; returns (password, first API token), or None if the
    name is taken. The password is generated when not given."""
    password = password or secrets.token_urlsafe(12)
    if not c.store.add_user(name, hash_password(password), admin):
        return None
    return password, new_token(c, name)


def _existing(c: Context, name: str) -> dict:
    row = c.store.get_user(name)
    if row is None:
        raise NotFound(f"No user {name!r}.")
    return row


def check_password(c: Context, name: str, password: str) -> dict | None:
    """{"name", "admin"} of an active user whose password this is, else None.
    Costs one hash whether or not the user exists (no enumeration by timing)."""
    row = c.store.get_user(name)
    ok = password_matches(row["password_hash"] if row else _dummy_hash(), password)
    return _public(row) if ok and row and row["active"] else None


def set_password(c: Context, name: str, password: str) -> None:
    """Change a user's password; ends all their sessions (API tokens stay)."""
    if not c.store.set_password(name, hash_password(password)):
        raise NotFound(f"No user {name!r}.")
    forget_cached()


def set_active(c: Context, name: str, active: bool) -> None:
    """Activate or deactivate a user. A deactivated user is refused on
    every route (tokens, HTTP Basic, sessions, which end); their jobs,
    datasets and tokens are kept for a later activation."""
    if not c.store.set_user_active(name, active):
        raise NotFound(f"No user {name!r}.")
    forget_cached()


def delete(c: Context, name: str) -> None:
    """Delete a user and their tokens. Refused (conflict) while they own
    jobs, datasets or pretrained models: those are kept, and a later user of
    the same name would inherit them; deactivate such a user instead."""
    from app.services.jobs import pretrained
    _existing(c, name)
    owns_models = any(m.get("owner") == name for m in pretrained.list_for(c, {"name": name, "admin": False}))
    if owns_models or not c.store.delete_user_without_records(name):
        raise Conflict(f"User {name!r} owns jobs, datasets or pretrained models: "
                                       "deactivate them instead (their work is kept).")
    forget_cached()


def end_sessions(c: Context, name: str) -> None:
    """End every browser session of ``name`` (logout does this: one logout
    ends the sessions on all devices, and a copied cookie dies with them)."""
    if not c.store.bump_session_generation(name):
        raise NotFound(f"No user {name!r}.")


def session_id(name: str, generation: int) -> str:
    """What a session cookie stores for its user: the generation, then the name."""
    return f"{generation}:{name}"


def session_user(c: Context, sid: str) -> dict | None:
    """The user of a session id if it is still valid ({"name", "admin",
    "generation"}): the user exists, is active, and is at that generation."""
    generation, sep, name = sid.partition(":")
    if not sep or not generation.isdigit():
        return None   # a cookie from before session generations: log in again
    row = c.store.get_user(name)
    if row is None or not row["active"] or row["session_generation"] != int(generation):
        return None
    return {**_public(row), "generation": row["session_generation"]}


def login_user_record(c: Context, name: str) -> dict | None:
    """{"name", "admin", "generation"} of an active user (to start a session)."""
    row = c.store.get_user(name)
    if row is None or not row["active"]:
        return None
    return {**_public(row), "generation": row["session_generation"]}


def listing(c: Context) -> list[dict]:
    """Every user (name, admin, active, created_at) with their tokens (see ``tokens``)."""
    by_user: dict[str, list[dict]] = {}
    for t in c.store.list_tokens():
        by_user.setdefault(t["user"], []).append(_token_view(c, t))
    return [{"name": u["name"], "admin": bool(u["admin"]), "active": bool(u["active"]),
             "created_at": u["created_at"], "tokens": by_user.get(u["name"], [])} for u in c.store.list_users()]


# ---- API tokens ------------------------------------------------------------
def token_hash(token: str) -> str:
    """The stored form of an API token (tokens are 256-bit random: a fast hash is safe)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(c: Context, name: str) -> str:
    """Create, store and return a fresh API token for an existing user."""
    _existing(c, name)
    token = TOKEN_START + secrets.token_urlsafe(32)
    while token[len(TOKEN_START)] == "-":   # a prefix that starts with '-' reads as an option on a command line
        token = TOKEN_START + secrets.token_urlsafe(32)
    c.store.add_token(name, token_hash(token), token[len(TOKEN_START):len(TOKEN_START) + PREFIX_CHARS])
    return token


def _token_name(row: dict) -> str:
    # Tokens from before 0004 have no prefix: named by their hash instead.
    return row["prefix"] or "#" + row["token_hash"][:PREFIX_CHARS]


def _expires(c: Context, created_at: str) -> datetime | None:
    days = c.cfg.token_days
    if days <= 0:
        return None
    return _parse(created_at) + timedelta(days=days)


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _token_view(c: Context, row: dict) -> dict:
    expires = _expires(c, row["created_at"])
    return {"prefix": _token_name(row), "created_at": row["created_at"], "last_used_at": row["last_used_at"],
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None,
            "expired": bool(expires and expires <= datetime.now(timezone.utc))}


def tokens(c: Context, name: str) -> list[dict]:
    """A user's tokens, oldest first: prefix (or ``#`` and the hash's start
    for tokens made before prefixes), created_at, last_used_at, expires_at."""
    _existing(c, name)
    return [_token_view(c, t) for t in c.store.list_tokens(name)]


def revoke_token(c: Context, name: str, prefix: str | None) -> int:
    """Delete ``name``'s token named ``prefix`` (None: all their tokens);
    how many went. An unknown prefix is not_found."""
    _existing(c, name)
    if prefix is None:
        gone = c.store.delete_tokens(name)
    else:
        prefix = prefix.removeprefix(TOKEN_START)   # the token's start as shown, or as pasted
        match = [t["token_hash"] for t in c.store.list_tokens(name) if _token_name(t) == prefix]
        if not match:
            raise NotFound(f"User {name!r} has no token {prefix!r}.")
        gone = c.store.delete_tokens(name, match)
    forget_cached()
    return gone


def user_for_token(c: Context, token: str) -> dict | None:
    """{"name", "admin"} of an API token's active user, or None (unknown,
    expired, or the user deactivated). Positive answers are cached."""
    key = token_hash(token)
    hit = _cached(c, key)
    if hit is not None:
        return hit
    row = c.store.user_for_token(key)
    if row is None or not row["active"]:
        return None
    now = datetime.now(timezone.utc)
    expires = _expires(c, row["created_at"])
    if expires is not None and expires <= now:
        return None
    last = row["last_used_at"]
    if last is None or (now - _parse(last)).total_seconds() > LAST_USED_EVERY_S:
        c.store.touch_token(key, now_iso())
    return _remember(c, key, _public(row))


def user_for_password(c: Context, name: str, password: str) -> dict | None:
    """{"name", "admin"} for HTTP Basic ``name``:``password``, or None;
    positive answers cached like tokens'."""
    key = "basic:" + token_hash(f"{name}\0{password}")
    hit = _cached(c, key)
    if hit is not None:
        return hit
    user = check_password(c, name, password)
    return _remember(c, key, user) if user is not None else None


def _cached(c: Context, key: str) -> dict | None:
    hit = _cache.get((str(c.store.engine.url), key))
    return dict(hit[1]) if hit and hit[0] > time.monotonic() else None


def _remember(c: Context, key: str, user: dict) -> dict:
    with _cache_lock:
        if len(_cache) > 4096:
            _cache.clear()
        _cache[(str(c.store.engine.url), key)] = (time.monotonic() + CACHE_SECONDS, dict(user))
    return user


def forget_cached() -> None:
    """Drop this process's cached token and password answers (after any revocation)."""
    with _cache_lock:
        _cache.clear()


def any_users(c: Context) -> bool:
    """Whether any account exists yet (the first start creates `admin`)."""
    return c.store.count_users() > 0
