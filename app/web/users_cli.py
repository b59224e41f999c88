"""``flask --app wsgi users ...``: users, passwords, API tokens, revocation.

All of it goes through ``app.services.accounts.users``. A change made here reaches a
running server at once for sessions; a server process that checked a token
or a password in the last 10 s may accept it for up to 10 s more (its
per-process cache; app.services.accounts.users.CACHE_SECONDS).
"""
from __future__ import annotations

import click
from flask.cli import AppGroup

from app.core.errors import ServiceError
from app.services.accounts import users
from app.web.context import ctx

users_cli = AppGroup("users", help="Manage users, passwords and API tokens; revoke access.")

_CACHE_NOTE = ("Server processes that checked a credential in the last "
               f"{users.CACHE_SECONDS:.0f} s may accept it that much longer.")


def _run(fn, *args):
    try:
        return fn(ctx(), *args)
    except ServiceError as err:
        raise click.ClickException(err.message) from None


@users_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="may see and manage every job")
@click.option("--password", default=None, help="generated when not given")
def users_create(name: str, admin: bool, password: str | None) -> None:
    """Create a user; prints its password and an API token."""
    created = _run(users.create, name, password, admin)
    if created is None:
        raise click.ClickException(f"user {name!r} already exists")
    click.echo(f"password: {created[0]}\ntoken: {created[1]}")


@users_cli.command("token")
@click.argument("name")
def users_token(name: str) -> None:
    """Print a fresh API token for an existing user (older ones stay valid:
    see revoke-token)."""
    click.echo(f"token: {_run(users.new_token, name)}")


@users_cli.command("password")
@click.argument("name")
@click.option("--password", default=None, help="generated (and printed) when not given")
def users_password(name: str, password: str | None) -> None:
    """Set a user's password; ends all their browser sessions (API tokens stay)."""
    import secrets
    new = password or secrets.token_urlsafe(12)
    _run(users.set_password, name, new)
    click.echo(f"password: {new}" if password is None else f"password of {name} changed")


@users_cli.command("tokens")
@click.argument("name")
def users_tokens(name: str) -> None:
    """List a user's API tokens: prefix, created, last used (and expiry when
    LAYERBENCH_TOKEN_DAYS is set). Tokens made before prefixes existed are
    named '#' and the start of their hash."""
    rows = _run(users.tokens, name)
    if not rows:
        click.echo(f"{name} has no API tokens")
    for t in rows:
        line = f"{t['prefix']}  created {t['created_at']}  last used {t['last_used_at'] or 'never'}"
        if t["expires_at"]:
            line += f"  {'expired' if t['expired'] else 'expires'} {t['expires_at']}"
        click.echo(line)


@users_cli.command("revoke-token", epilog=_CACHE_NOTE)
@click.argument("name")
@click.argument("prefix", required=False)
@click.option("--all", "revoke_all", is_flag=True, help="revoke every token of the user")
def users_revoke_token(name: str, prefix: str | None, revoke_all: bool) -> None:
    """Revoke the token of NAME named PREFIX (see `users tokens`), or --all."""
    if revoke_all == (prefix is not None):
        raise click.UsageError("give a token PREFIX or --all (not both)")
    gone = _run(users.revoke_token, name, None if revoke_all else prefix)
    click.echo(f"revoked {gone} token(s) of {name}")


@users_cli.command("deactivate", epilog=_CACHE_NOTE)
@click.argument("name")
def users_deactivate(name: str) -> None:
    """Shut a user out: their tokens, password and sessions are refused (401)
    and their sessions end. Jobs, datasets and tokens are kept; `activate`
    lets them back in (with a fresh login)."""
    _run(users.set_active, name, False)
    click.echo(f"deactivated {name}")


@users_cli.command("activate")
@click.argument("name")
def users_activate(name: str) -> None:
    """Let a deactivated user back in."""
    _run(users.set_active, name, True)
    click.echo(f"activated {name}")


@users_cli.command("delete", epilog=_CACHE_NOTE)
@click.argument("name")
def users_delete(name: str) -> None:
    """Delete a user and their API tokens. REFUSED while the user owns jobs,
    datasets or pretrained models: their work is never deleted or orphaned
    (a later user of the same name would inherit it); deactivate them instead."""
    _run(users.delete, name)
    click.echo(f"deleted {name}")


@users_cli.command("end-sessions")
@click.argument("name")
def users_end_sessions(name: str) -> None:
    """Log a user out of every browser session (API tokens stay valid)."""
    _run(users.end_sessions, name)
    click.echo(f"ended all sessions of {name}")
