"""Who is asking: browser sessions (Flask-Login), API bearer tokens and HTTP
Basic. Every request but /healthz, /login and static files needs a user;
another user's job answers 404. Credentials are judged by
``app.services.accounts.users``; this module wires them into requests:

* one CSRF rule for every blueprint: a state-changing request authenticated
  by the session cookie needs the CSRF token (form field ``csrf_token`` or an
  ``X-CSRFToken`` header); one authenticated by a bearer token or HTTP Basic
  never uses the session and needs none (browsers attach neither on their
  own: this app never sends a ``WWW-Authenticate`` challenge, so no browser
  keeps Basic credentials for it). Scripts (DIGITS's ``curl -c cookies
  -XPOST -F username -F password /login``) sign in without a token when
  they send no session cookie, judged by Origin/Referer instead
  (``same_origin_or_absent``); the session they get is marked, and its
  writes are judged the same way;
* failed sign-ins counted (``app.web.throttle``), 429 past the budget;
* sessions carry the user's session generation (``User.get_id``): logout,
  a password change or deactivation ends every session of that user;
* ``safe_next``: where the login page may send the browser afterwards.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import Flask, Response, current_app, g, redirect, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user as login_user_proxy, user_logged_out

from app.services.accounts import users
from app.web import throttle
from app.web.context import ctx
from app.web.errors import ApiError, respond, wants_json
from app.web.security import csrf

# Not users' routes: /healthz and /metrics judge their own callers (details
# for admins or a monitoring token; metrics from loopback or its token).
PUBLIC_ENDPOINTS = {"web.healthz", "web.login", "static", "metrics.scrape"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class User(UserMixin):
    """A logged-in user (what Flask-Login keeps in the session)."""

    def __init__(self, record: dict) -> None:
        self.name, self.admin = record["name"], bool(record["admin"])
        self.generation = int(record["generation"])

    def get_id(self) -> str:
        # The session cookie stores this: the generation in it is checked on
        # every request, so bumping it server-side ends the session.
        return users.session_id(self.name, self.generation)


class TooManyFailures(ApiError):
    """429: too many failed sign-ins from this address (for this name)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "too_many_requests", "Too many failed sign-ins from this address; "
                         f"try again in {retry_after} s.")
        self.retry_after = retry_after


def current_user() -> dict:
    """The user of the current request as {"name", "admin"} (guard ran first)."""
    return g.user


def create_user(name: str, password: str | None, admin: bool) -> tuple[str, str] | None:
    """Create a user; returns (password, token), or None if the name is taken."""
    return users.create(ctx(), name, password, admin)


def new_token(name: str) -> str:
    """Create, store and return a fresh API token for ``name``."""
    return users.new_token(ctx(), name)


def user_for_token(token: str) -> dict | None:
    """{"name", "admin"} of an API token's active user, or None (not counted
    as a failed sign-in: for routes that only look, like /healthz)."""
    return users.user_for_token(ctx(), token)


def _refuse_if_throttled(name: str | None) -> None:
    wait = throttle.current().wait_s(name, throttle.client_address())
    if wait:
        raise TooManyFailures(wait)


def _failed(name: str | None) -> None:
    throttle.current().failed(name, throttle.client_address())


def check_login(name: str, password: str) -> User | None:
    """The user if ``password`` is right (the login form); counts a failure
    otherwise. Raises ``TooManyFailures`` past the failure budget."""
    _refuse_if_throttled(name)
    user = users.check_password(ctx(), name, password)
    record = users.login_user_record(ctx(), name) if user is not None else None
    if record is None:
        _failed(name)
        return None
    return User(record)


# What a browser ignores or rewrites in a URL before resolving it (WHATWG URL
# parser): leading/trailing C0 controls and spaces are stripped, tab and
# newlines removed anywhere, and a backslash is a slash. ``next`` is judged
# after the same, or "/\t/evil.example" would pass as a path and leave as //evil.example.
_STRIPPED = "".join(chr(i) for i in range(0x21))
_REMOVED = re.compile(r"[\t\n\r]")


def safe_next(target: str | None) -> str:
    """Where to go after login: ``target`` if it is a path on this site, as
    the browser will read it; else the job list."""
    fallback = url_for("web.index")
    path = _REMOVED.sub("", (target or "").strip(_STRIPPED)).replace("\\", "/")
    if not path.startswith("/") or path.startswith("//") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return fallback
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        return fallback
    return path


def _as(user: dict, via_token: bool) -> None:
    g.user = {"name": user["name"], "admin": bool(user["admin"])}
    g.via_token = via_token
    if via_token:
        # Not cookie-authenticated: no CSRF exposure, so the pages' forms
        # (Flask-WTF) skip their token check for this request too.
        g.csrf_valid = True


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _needs_csrf() -> bool:
    return request.method not in SAFE_METHODS and current_app.config.get("WTF_CSRF_ENABLED", True)


SCRIPT_SESSION = "script"   # session key: signed in by a script (DIGITS's curl -c cookies), see below


def same_origin_or_absent() -> bool:
    """OWASP's "verify origin with standard headers", for requests that
    cannot carry a form token. A browser marks every cross-site POST:
    ``Sec-Fetch-Site`` (cross-site / same-site), ``Origin`` (the page's
    origin, or "null" from sandboxed frames, data: URLs and no-referrer
    pages), and mostly ``Referer``. Accepted: ``Sec-Fetch-Site`` absent or
    same-origin, and the first of ``Origin`` / ``Referer`` present naming
    exactly this site (scheme, host, port); or none of them at all, which
    no browser's cross-site form post sends (curl, DIGITS's scripts)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    own = request.host_url.rstrip("/")
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("Referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return True


def _script_login() -> bool:
    # Login CSRF (a victim signed in to the attacker's account) is defended
    # by the form token when the request has a session to hold one: every
    # browser that loaded the login page has. A request with no session
    # cookie at all (a DIGITS script: curl -c cookies -F username -F password)
    # is judged by its Origin/Referer instead.
    return request.endpoint == "web.login" and \
        current_app.config.get("SESSION_COOKIE_NAME", "session") not in request.cookies and same_origin_or_absent()


def _authenticate() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        if request.endpoint is not None and _needs_csrf():
            if _script_login():
                g.csrf_valid = g.script_login = True   # the form's own token check agrees
            else:
                csrf.protect()   # the login form: its token lives in the session cookie too
        return None
    token = _bearer()
    if token is not None:
        user = users.user_for_token(ctx(), token)
        if user is None:
            # A valid token is never throttled (256 random bits: guessing is
            # hopeless); bad ones are counted per address.
            _refuse_if_throttled(None)
            _failed(None)
            raise ApiError(401, "unauthorized", "The API token is not valid.")
        _as(user, via_token=True)
        return None
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        # HTTP Basic (DIGITS scripts, curl -u): like a token, never a session.
        name = auth.username or ""
        _refuse_if_throttled(name)
        user = users.user_for_password(ctx(), name, auth.password or "")
        if user is None:
            _failed(name)
            raise ApiError(401, "unauthorized", "Wrong user name or password.")
        _as(user, via_token=True)
        return None
    if login_user_proxy.is_authenticated:
        if _needs_csrf():
            if session.get(SCRIPT_SESSION) and same_origin_or_absent():
                # A session a script signed in (_script_login): only a
                # client that sent no session cookie and no cross-site marks
                # holds one, and no browser's cross-site post passes
                # same_origin_or_absent. Browser sessions keep the token rule.
                g.csrf_valid = True
            else:
                csrf.protect()   # CSRFError -> 400 (app.web.security)
        _as({"name": login_user_proxy.name, "admin": login_user_proxy.admin}, via_token=False)
        return None
    if wants_json():
        raise ApiError(401, "unauthorized", "Log in, or send 'Authorization: Bearer <token>'.")
    return redirect(url_for("web.login", next=request.full_path.rstrip("?")))


def _load_session_user(sid: str) -> User | None:
    record = users.session_user(ctx(), sid)
    return User(record) if record else None


def _logged_out(_sender, user=None, **_extra) -> None:
    # Logout ends every session of the user, not only this cookie (a copy
    # taken earlier would otherwise stay valid: the cookies are stateless).
    if isinstance(user, User):
        users.end_sessions(ctx(), user.name)


def _too_many(err: TooManyFailures) -> Response:
    resp = respond(err)
    resp.headers["Retry-After"] = str(err.retry_after)
    return resp


def ensure_initial_admin(app: Flask) -> None:
    """First start with an empty database: create `admin`, print its password
    and token once, and keep them in <instance>/initial-credentials.txt (0600)."""
    with app.app_context():
        c = ctx()
        if users.any_users(c):
            return
        created = users.create(c, "admin", None, True)
        if created is None:        # another worker process won the race
            return
        password, token = created
        path = Path(app.instance_path) / "initial-credentials.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"user: admin\npassword: {password}\ntoken: {token}\n")
        click.echo(f"Created user admin (saved in {path}):\npassword: {password}\ntoken: {token}", err=True)


def register(app: Flask) -> None:
    """Install login management, the request guard and the failure counter
    (the admin pages and the `users` CLI are registered by the factory)."""
    manager = LoginManager()
    manager.init_app(app)
    manager.login_view = "web.login"
    manager.user_loader(_load_session_user)
    user_logged_out.connect(_logged_out, app)
    throttle.register(app)
    app.register_error_handler(TooManyFailures, _too_many)
    app.before_request(_authenticate)
