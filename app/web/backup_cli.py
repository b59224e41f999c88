"""``flask backup DEST`` and ``flask restore SRC`` (app.services.operations.backup;
docs/OPERATIONS.md, "Backup and restore")."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from flask import Flask, current_app

from app.core.errors import ServiceError
from app.web.context import settings


@click.command("backup")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--jobs-only", is_flag=True, help="only the jobs directory and its manifest (PostgreSQL: "
              "beside a pg_dump of the database)")
def backup_command(dest: Path, jobs_only: bool) -> None:
    """Back up this instance into DEST (new or empty), also while it serves:
    a consistent copy of the database (SQLite: the online backup API;
    PostgreSQL: pg_dump --format=custom), the jobs directory and a manifest
    of sizes and sha256s."""
    from app.services.operations import backup
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    c = current_app.extensions["ctx"]
    try:
        manifest = backup.jobs_only(c, dest) if jobs_only else backup.backup(c, dest, Path(current_app.instance_path))
    except ServiceError as err:
        click.echo(f"backup: {err.message}", err=True)
        sys.exit(2 if err.code == "unsupported" else 1)
    click.echo(f"backed up {len(manifest['files'])} files"
               f"{' and the database' if manifest['database'] else ''} into {dest.resolve()}"
               + (f" ({len(manifest['skipped'])} left out: see manifest.json)" if manifest["skipped"] else ""))


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--instance-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the new instance directory (new or empty)")
@click.option("--jobs-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the new jobs directory (new or empty)")
@click.option("--database-url", default=None, help="PostgreSQL backups: the empty database to load the dump "
              "into (postgresql+psycopg://USER@HOST/NEWDB)")
def restore_command(src: Path, instance_dir: Path, jobs_dir: Path, database_url: str | None) -> None:
    """Restore the backup SRC into a fresh instance and jobs directory, then
    serve them with LAYERBENCH_INSTANCE_DIR and LAYERBENCH_JOBS_DIR. Never
    into the directories this command itself runs with (it has just opened
    them), never over anything: a non-empty target is refused."""
    from app.services.operations import backup
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mine = {Path(current_app.instance_path).resolve(), settings().jobs_dir.resolve()}
    if database_url and database_url == settings().database_url:
        click.echo("restore: --database-url must be a new, empty database, not the one this command runs with "
                   "(LAYERBENCH_DATABASE_URL)", err=True)
        sys.exit(1)
    if {instance_dir.resolve(), jobs_dir.resolve()} & mine:
        click.echo("restore: --instance-dir/--jobs-dir must be new directories, not the ones this command "
                   "runs with (LAYERBENCH_INSTANCE_DIR / LAYERBENCH_JOBS_DIR)", err=True)
        sys.exit(1)
    try:
        manifest = backup.restore(src, instance_dir, jobs_dir, database_url)
    except ServiceError as err:
        click.echo(f"restore: {err.message}", err=True)
        sys.exit(1)
    click.echo(f"restored {len(manifest['files'])} files{' and the database' if manifest['database'] else ''}; "
               f"serve them with LAYERBENCH_INSTANCE_DIR={instance_dir.resolve()} "
               f"LAYERBENCH_JOBS_DIR={jobs_dir.resolve()}"
               + (" LAYERBENCH_DATABASE_URL=<the --database-url>" if database_url else ""))


def register(app: Flask) -> None:
    """Attach ``backup`` and ``restore`` to ``app``'s CLI."""
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
