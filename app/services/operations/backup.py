"""Online backup and restore of an instance (issue 27, part 5).

A backup directory holds:

* ``layerbench.sqlite3``: the database, copied with SQLite's online backup
  API while the service runs (one read transaction: a consistent copy, never
  the torn one ``cp`` of a live file can give; writers are not blocked in
  WAL mode), checked with ``PRAGMA integrity_check``;
* ``secret_key``: the instance's session key (sessions survive a restore);
* ``jobs/``: every regular file of the jobs directory (jobs, datasets,
  pretrained models), copied, never hard-linked: the service refuses to
  read a hard-linked file under the jobs dir (app.core.untrusted: user code
  could plant one), so a hard-linked restore would lose every snapshot;
* ``manifest.json``, written last (a backup without one is incomplete):
  each file's relative path, size and sha256, the database's, and the jobs
  root it came from.

The jobs directory is written by hostile user code: it is read only through
app.core.untrusted, so links, FIFOs, devices and hard links planted there
are left out (the service never reads them either) and nothing follows a
link out of the tree. The database is copied first, then the files: every
file the copied database refers to exists, and a job still running then is
``running`` in the copy (a restored local worker marks it interrupted,
resumable from its snapshots).

PostgreSQL: the database is ``layerbench.pgdump`` instead, written by
``pg_dump --format=custom`` (one transaction: a consistent snapshot while
the service writes on), listed in the manifest with its size and sha256
like every other file; ``restore`` checks it and loads it with
``pg_restore`` into an empty database the operator created
(docs/OPERATIONS.md, "Backup and restore").
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from app.core import untrusted
from app.core.errors import Conflict, NotFound, ServiceError
from app.core.workspace import Workspace
from app.services.context import Context
from app.store import now_iso

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATABASE = "layerbench.sqlite3"
PG_DUMP = "layerbench.pgdump"
SECRET = "secret_key"
JOBS = "jobs"
FORMAT = 1
_INPUT_TEXT = ".prototxt"     # job inputs name dataset files by absolute path (see _rebase)


def pg_dump_command(url: str, dest: Path) -> str:
    """The pg_dump command that backs up the PostgreSQL database at ``url``."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return f"pg_dump --format=custom --file {dest / PG_DUMP} '{plain}'"


def _libpq(url) -> tuple[str, dict]:
    """(the URL libpq's tools take, their environment) for a SQLAlchemy URL
    object: the driver name dropped (postgresql+psycopg://), the password
    in PGPASSWORD, not in an argv every local user can read in /proc."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _pg_tool(name: str) -> str:
    """pg_dump or pg_restore: the newest installed (a dump made by an older
    pg_dump than the server is refused; Debian installs one per version)."""
    import glob
    import shutil
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise ServiceError("unsupported", f"{name} is not installed (Debian: postgresql-client)")
    return path


def _run_tool(argv: list[str], what: str, env: dict) -> None:
    import subprocess
    done = subprocess.run(argv, capture_output=True, text=True, timeout=24 * 3600, env=env)
    if done.returncode != 0:
        raise ServiceError("backup_failed", f"{what} failed (exit status {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")


def dump_postgres(url, dest: Path) -> dict:
    """``pg_dump --format=custom`` of the database at ``url`` (a SQLAlchemy
    URL) into ``dest``; its size and sha256, read back through untrusted."""
    plain, env = _libpq(url)
    _run_tool([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(dest), "--dbname", plain],
              "pg_dump", env)
    os.chmod(dest, 0o600)
    with untrusted.open_file(dest) as fh:
        return {"file": dest.name, "size": os.fstat(fh.fileno()).st_size, "sha256": untrusted.sha256_of(fh),
                "backend": "postgresql"}


def _empty_or_new(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise Conflict(f"{what} {path} is not empty: refusing to overwrite it; "
                           "give a new or empty directory.")


def backup(c: Context, dest: Path, instance_dir: Path) -> dict:
    """Back up the database and the jobs directory of a (running) instance
    into ``dest`` (new or empty); the manifest written. ServiceError
    ``unsupported`` on PostgreSQL, ``conflict`` when ``dest`` is not empty."""
    engine_url = c.store.engine.url
    secret = Path(instance_dir).resolve() / SECRET
    if engine_url.get_backend_name() == "postgresql":
        return _backup(c, dest, engine_url, secret)
    if engine_url.get_backend_name() != "sqlite":
        raise ServiceError("unsupported", f"cannot back up a {engine_url.get_backend_name()} database")
    return _backup(c, dest, Path(str(engine_url.database)).resolve(), secret)


def jobs_only(c: Context, dest: Path) -> dict:
    """The jobs directory and its manifest alone (beside a pg_dump)."""
    return _backup(c, dest, None, None)


def _backup(c: Context, dest: Path, database, secret: Path | None) -> dict:
    dest = Path(dest).resolve()     # untrusted walks from / and follows no link on the way
    root = Path(c.ws.root).resolve()
    if dest == root or root in dest.parents:
        raise Conflict(f"the backup directory {dest} lies inside the jobs directory {root}: "
                           "it would copy itself")
    _empty_or_new(dest, "backup directory")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)     # the copy holds password and token hashes
    t0 = time.monotonic()
    manifest = {"format": FORMAT, "created_at": now_iso(), "jobs_root": str(root),
                # First the database, then the files (see the module docstring).
                "database": None if database is None else copy_database(database, dest / DATABASE)
                if isinstance(database, Path) else dump_postgres(database, dest / PG_DUMP)}
    manifest.update(_copy_tree(root, dest / JOBS))
    manifest["secret_key"] = _copy_if_there(secret, dest / SECRET) if secret else False
    Workspace.write_json(dest / MANIFEST, manifest)
    os.chmod(dest / MANIFEST, 0o600)
    log.info("backup of %d files (%d bytes)%s in %.1f s into %s", len(manifest["files"]),
             sum(f["size"] for f in manifest["files"]), " and the database" if database else "",
             time.monotonic() - t0, dest)
    return manifest


def copy_database(src: Path, dest: Path) -> dict:
    """A consistent copy of the live SQLite database ``src`` (online backup
    API, one step: one read transaction) at ``dest``; its size and sha256."""
    source = sqlite3.connect(str(src), timeout=30)
    target = sqlite3.connect(str(dest))
    try:
        source.backup(target)
        check = target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()
        source.close()
    if check != "ok":
        raise ServiceError("backup_failed", f"the copied database fails its integrity check: {check}")
    os.chmod(dest, 0o600)
    with untrusted.open_file(dest) as fh:
        return {"file": dest.name, "size": os.fstat(fh.fileno()).st_size, "sha256": untrusted.sha256_of(fh)}


def _copy_tree(root: Path, dest: Path) -> dict:
    """Every regular file under ``root`` (through app.core.untrusted) into
    ``dest``; {"files": [{path, size, sha256}], "skipped": [{path, reason}]}."""
    files, skipped = [], []
    dest.mkdir(mode=0o755, exist_ok=True)
    for rel, entry in untrusted.iter_files(root, beneath=root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The size listed: a file that changed since is taken as it is now.
            with untrusted.open_file(root / rel, beneath=root) as fh:
                size, digest = untrusted.copy_fd(fh, target)
        except OSError as exc:   # gone meanwhile (a job deleted), or swapped for a link
            skipped.append({"path": rel, "reason": str(exc)})
            continue
        files.append({"path": rel, "size": size, "sha256": digest})
    return {"files": files, "skipped": skipped}


def _copy_if_there(src: Path, dest: Path) -> bool:
    try:
        with untrusted.open_file(src, max_size=1 << 16) as fh:
            untrusted.copy_fd(fh, dest)
    except FileNotFoundError:
        return False
    os.chmod(dest, 0o600)
    return True


def read_manifest(src: Path) -> dict:
    """The manifest of the backup at ``src``; ServiceError when there is
    none (an incomplete backup) or it is not one this version writes."""
    try:
        manifest = json.loads(untrusted.read_all(Path(src) / MANIFEST, 1 << 30))
    except FileNotFoundError:
        raise NotFound(f"{src} holds no {MANIFEST}: not a backup, or an incomplete one") from None
    if manifest.get("format") != FORMAT:
        raise ServiceError("unsupported", f"backup format {manifest.get('format')!r} is not {FORMAT}")
    return manifest


def restore(src: Path, instance_dir: Path, jobs_dir: Path, database_url: str | None = None) -> dict:
    """Restore the backup at ``src`` into a fresh ``instance_dir`` and
    ``jobs_dir`` (each new or empty: ``conflict`` otherwise). Every file is
    checked against the manifest's sha256 as it is copied (``backup_corrupt``
    on a mismatch). A PostgreSQL backup loads into ``database_url``, an
    empty database (``conflict`` when it has tables; ``invalid`` when none
    is given). Returns the manifest."""
    src, instance_dir, jobs_dir = Path(src).resolve(), Path(instance_dir).resolve(), Path(jobs_dir).resolve()
    manifest = read_manifest(src)
    db = manifest.get("database")     # None: a --jobs-only backup (the database is pg_restore's)
    postgres = bool(db) and db.get("backend") == "postgresql"
    if postgres and not database_url:
        raise ServiceError("invalid", "This backup holds a PostgreSQL dump: give the empty database to load "
                           "it into (--database-url postgresql+psycopg://USER@HOST/NEWDB; createdb makes one).")
    if db is not None:
        _empty_or_new(instance_dir, "instance directory")
    _empty_or_new(jobs_dir, "jobs directory")
    if postgres:
        # Checked before anything is written: a database in use is never touched.
        into = _empty_database(database_url)
        _verify(src / PG_DUMP, db, src)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    old_root, new_root = str(manifest["jobs_root"]), str(jobs_dir.resolve())
    for f in manifest["files"]:
        target = jobs_dir / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        _restore_file(src / JOBS / f["path"], target, f, src / JOBS,
                      rebase=(old_root, new_root) if _is_input_text(f["path"]) else None)
    if db is None:
        log.info("restored %d files from %s (no database in this backup)", len(manifest["files"]), src)
        return manifest
    instance_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if postgres:
        plain, env = _libpq(into)
        _run_tool([_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", "--single-transaction",
                   "--dbname", plain, str(src / PG_DUMP)], "pg_restore", env)
    else:
        _restore_file(src / DATABASE, instance_dir / DATABASE, db, src)
        os.chmod(instance_dir / DATABASE, 0o600)
    if manifest.get("secret_key"):
        with untrusted.open_file(src / SECRET, max_size=1 << 16) as fh:
            untrusted.copy_fd(fh, instance_dir / SECRET)
        os.chmod(instance_dir / SECRET, 0o600)
    log.info("restored %d files and the database from %s", len(manifest["files"]), src)
    return manifest


def _empty_database(url: str):
    """The parsed URL of ``url`` once it names an empty database."""
    from app.store import Store
    store = Store(url)
    try:
        tables = store.table_names()
    except Exception as exc:     # cannot connect: say so before anything is written
        raise ServiceError("invalid", f"cannot open the database to restore into: {exc}") from None
    finally:
        store.engine.dispose()
    if tables:
        raise Conflict(f"the database to restore into is not empty ({len(tables)} tables): refusing to load "
                       "over it; create an empty one (createdb).")
    return store.engine.url


def _verify(path: Path, entry: dict, beneath: Path) -> None:
    """``path`` has the manifest's size and sha256 (``backup_corrupt`` if not)."""
    try:
        with untrusted.open_file(path, beneath=beneath, size=int(entry["size"])) as fh:
            digest = untrusted.sha256_of(fh)
    except OSError as exc:
        raise ServiceError("backup_corrupt", f"{path.name}: {exc}; the backup is damaged") from None
    if digest != entry["sha256"]:
        raise ServiceError("backup_corrupt", f"{path.name}: its sha256 differs from the manifest's; the backup "
                           "is damaged")


def _is_input_text(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) == 3 and parts[1] == "input" and parts[2].endswith(_INPUT_TEXT)


def _restore_file(path: Path, target: Path, entry: dict, beneath: Path, rebase: tuple[str, str] | None = None) -> None:
    try:
        with untrusted.open_file(path, beneath=beneath, size=int(entry["size"])) as fh:
            if rebase is None or rebase[0] == rebase[1]:
                _, digest = untrusted.copy_fd(fh, target)
            else:
                data = fh.read()
                digest = _sha256(data)
                # A job's prototxts name its dataset's LMDBs and mean file by
                # absolute path under the jobs root it was made in: a restore
                # into another root points them at the new one (resume, retrain).
                Workspace.write_atomic(target, data.replace(rebase[0].encode() + b"/", rebase[1].encode() + b"/"))
    except OSError as exc:      # missing, the wrong size, or not a plain file
        raise ServiceError("backup_corrupt", f"{entry.get('path', path.name)}: {exc}; the backup is "
                           "damaged") from None
    if digest != entry["sha256"]:
        raise ServiceError("backup_corrupt", f"{entry.get('path', path.name)}: its sha256 differs from the "
                           "manifest's; the backup is damaged")


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()
