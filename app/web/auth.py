"""Who is asking: browser sessions (Flask-Login, CSRF via Flask-WTF) and API
bearer tokens (stored as sha256). Every request but /healthz, /login and
static files needs a user; another user's job answers 404."""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path

import click
from flask import Flask, current_app, g, redirect, request, url_for
from flask.cli import AppGroup
from flask_login import LoginManager, UserMixin, current_user as login_user_proxy
from werkzeug.security import check_password_hash, generate_password_hash

from app.web.errors import ApiError, wants_json

PUBLIC_ENDPOINTS = {"web.healthz", "web.login", "static"}


class User(UserMixin):
    """A logged-in user (what Flask-Login keeps in the session)."""

    def __init__(self, row: dict) -> None:
        self.name, self.admin = row["name"], bool(row["admin"])

    def get_id(self) -> str:
        return self.name


def _store():
    return current_app.extensions["store"]


def token_hash(token: str) -> str:
    """The stored form of an API token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str) -> str:
    """Create, store and return a fresh API token for ``name``."""
    token = "lb_" + secrets.token_urlsafe(32)
    _store().add_token(name, token_hash(token))
    return token


def create_user(name: str, password: str | None, admin: bool) -> tuple[str, str] | None:
    """Create a user; returns (password, token), or None if the name is taken."""
    password = password or secrets.token_urlsafe(12)
    if not _store().add_user(name, generate_password_hash(password), admin):
        return None
    return password, new_token(name)


def check_login(name: str, password: str) -> User | None:
    """The user if ``password`` is right."""
    row = _store().get_user(name)
    if row and check_password_hash(row["password_hash"], password):
        return User(row)
    # Same cost whether or not the user exists: no user enumeration by timing.
    check_password_hash(_dummy_hash(), password)
    return None


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return generate_password_hash("not-a-password")


def current_user() -> dict:
    """The user of the current request as {"name", "admin"} (guard ran first)."""
    return g.user


_TOKEN_CACHE: dict[str, tuple[float, dict]] = {}
TOKEN_CACHE_SECONDS = 10.0


def user_for_token(token: str) -> dict | None:
    """The user of an API token. Positive answers are cached for 10 s per
    process (clients poll job JSON many times a second; the lookup was a
    third of that route's time). Tokens cannot be revoked yet; whoever adds
    revocation must clear this cache or accept the 10 s."""
    key = token_hash(token)
    now = time.monotonic()
    hit = _TOKEN_CACHE.get(key)
    if hit and hit[0] > now:
        return hit[1]
    row = _store().user_for_token(key)
    if row is not None:
        if len(_TOKEN_CACHE) > 4096:
            _TOKEN_CACHE.clear()
        _TOKEN_CACHE[key] = (now + TOKEN_CACHE_SECONDS, {"name": row["name"], "admin": bool(row["admin"])})
        return _TOKEN_CACHE[key][1]
    return None


def user_for_password(name: str, password: str) -> dict | None:
    """The user of an HTTP Basic user:password. Positive answers are cached
    like tokens' (a password hash costs tens of ms; scripts poll)."""
    key = "basic:" + token_hash(f"{name}\0{password}")
    now = time.monotonic()
    hit = _TOKEN_CACHE.get(key)
    if hit and hit[0] > now:
        return hit[1]
    user = check_login(name, password)
    if user is None:
        return None
    if len(_TOKEN_CACHE) > 4096:
        _TOKEN_CACHE.clear()
    _TOKEN_CACHE[key] = (now + TOKEN_CACHE_SECONDS, {"name": user.name, "admin": user.admin})
    return _TOKEN_CACHE[key][1]


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _authenticate() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    token = _bearer()
    if token is not None:
        user = user_for_token(token)
        if user is None:
            raise ApiError(401, "unauthorized", "The API token is not valid.")
        g.user = dict(user)
        g.via_token = True
        return None
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        # HTTP Basic (DIGITS scripts, curl -u): like a token, never a session.
        user = user_for_password(auth.username or "", auth.password or "")
        if user is None:
            raise ApiError(401, "unauthorized", "Wrong user name or password.")
        g.user = dict(user)
        g.via_token = True
        return None
    if login_user_proxy.is_authenticated:
        # Session cookies authenticate the pages and the API's reads (the job
        # page polls them); API writes need a token, so no CSRF exposure.
        if request.blueprint in ("api", "digits") and request.method not in ("GET", "HEAD", "OPTIONS"):
            raise ApiError(401, "unauthorized", "API writes need an 'Authorization: Bearer <token>' header.")
        g.user = {"name": login_user_proxy.name, "admin": login_user_proxy.admin}
        g.via_token = False
        return None
    if wants_json():
        raise ApiError(401, "unauthorized", "Log in, or send 'Authorization: Bearer <token>'.")
    return redirect(url_for("web.login", next=request.full_path.rstrip("?")))


def ensure_initial_admin(app: Flask) -> None:
    """First start with an empty database: create `admin`, print its password
    and token once, and keep them in <instance>/initial-credentials.txt (0600)."""
    with app.app_context():
        if _store().count_users():
            return
        created = create_user("admin", None, True)
        if created is None:        # another worker process won the race
            return
        password, token = created
        path = Path(app.instance_path) / "initial-credentials.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"user: admin\npassword: {password}\ntoken: {token}\n")
        click.echo(f"Created user admin (saved in {path}):\npassword: {password}\ntoken: {token}", err=True)


def register(app: Flask) -> None:
    """Install login management, the request guard and the `users` CLI."""
    manager = LoginManager()
    manager.init_app(app)
    manager.login_view = "web.login"

    @manager.user_loader
    def _load(name: str):
        row = app.extensions["store"].get_user(name)
        return User(row) if row else None

    app.before_request(_authenticate)
    app.cli.add_command(users_cli)


users_cli = AppGroup("users", help="Manage users and API tokens.")


@users_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="may see and manage every job")
@click.option("--password", default=None, help="generated when not given")
def users_create(name: str, admin: bool, password: str | None) -> None:
    """Create a user; prints its password and an API token."""
    created = create_user(name, password, admin)
    if created is None:
        raise click.ClickException(f"user {name!r} already exists")
    click.echo(f"password: {created[0]}\ntoken: {created[1]}")


@users_cli.command("token")
@click.argument("name")
def users_token(name: str) -> None:
    """Print a fresh API token for an existing user."""
    if _store().get_user(name) is None:
        raise click.ClickException(f"no user {name!r}")
    click.echo(f"token: {new_token(name)}")
