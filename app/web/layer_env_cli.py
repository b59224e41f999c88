"""``flask --app wsgi layer-env``: the packages an administrator adds for
uploaded layer code (app.services.layers.environments owns how)."""
from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from app.core.config import Settings
from app.core.errors import ServiceError
from app.web.context import settings


def _cfg() -> Settings:
    return settings()


_PIP_ARG = click.option("--pip-arg", "pip_args", multiple=True, metavar="ARG",
                        help="passed to pip install (repeat), e.g. --pip-arg=--no-index "
                        "--pip-arg=--find-links=/srv/wheels")


@click.group("layer-env", cls=AppGroup)   # its commands run in the app's context
def layer_env_group() -> None:
    """Packages for uploaded layer code: installed apart from the service's
    own environment and mounted read-only into the sandbox."""


@layer_env_group.command("add")
@click.argument("requirements", nargs=-1, required=True)
@_PIP_ARG
def add_command(requirements: tuple[str, ...], pip_args: tuple[str, ...]) -> None:
    """Pin REQUIREMENTS (name==version, each dependency too) in
    <instance>/layer-requirements.txt and install the list."""
    from app.services.layers import environments as layer_env
    try:
        cur = layer_env.add(_cfg(), list(requirements), list(pip_args))
    except (ValueError, ServiceError) as exc:
        raise click.ClickException(str(getattr(exc, "message", exc))) from None
    click.echo(json.dumps({"fingerprint": cur.get("fingerprint"), "packages": cur.get("packages")}))


@layer_env_group.command("sync")
@_PIP_ARG
def sync_command(pip_args: tuple[str, ...]) -> None:
    """Install what <instance>/layer-requirements.txt lists (edit it by hand,
    then sync); an empty list removes the added packages."""
    from app.services.layers import environments as layer_env
    try:
        cur = layer_env.sync(_cfg(), list(pip_args))
    except (ValueError, ServiceError) as exc:
        raise click.ClickException(str(getattr(exc, "message", exc))) from None
    click.echo(json.dumps({"fingerprint": cur.get("fingerprint"), "packages": cur.get("packages")}))


@layer_env_group.command("list")
def list_command() -> None:
    """The added packages in force and their fingerprint."""
    from app.services.layers import environments as layer_env
    cur = layer_env.current(_cfg())
    click.echo(json.dumps({"fingerprint": cur["fingerprint"] if cur else "none",
                           "packages": cur["packages"] if cur else [],
                           "requirements": str(layer_env.requirements_path(_cfg()))}))
