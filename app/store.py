"""The store: the only module that runs SQL.

SQLite (WAL) by default, any SQLAlchemy URL when scaling out. The store is the
source of truth for job state; workers write to it, pages read from it.
"""
from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy import event

from app.core.status import JobStatus

metadata = sa.MetaData()


jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("started_at", sa.String(40)),
    sa.Column("finished_at", sa.String(40)),
    sa.Column("dataset", sa.String(80)),
    sa.Column("device", sa.String(16), nullable=False, default="cpu"),
    sa.Column("params", sa.Text, nullable=False, default="{}"),
    sa.Column("python_layer", sa.Text),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("iteration", sa.Integer, nullable=False, default=0),
    sa.Column("max_iter", sa.Integer, nullable=False, default=0),
    sa.Column("epoch", sa.Float, nullable=False, default=0.0),
    sa.Column("eta_seconds", sa.Float),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("snapshots", sa.Text, nullable=False, default="[]"),
    sa.Column("error", sa.Text),
    sa.Column("abort_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("resume_from", sa.Integer),
    sa.Column("worker", sa.String(200)),
    # The run generation: each claim starts a new one, and a run may change
    # the job only while its generation is current (a superseded run is fenced).
    sa.Column("run", sa.Integer, nullable=False, server_default="0"),
    sa.Column("heartbeat_at", sa.Float),
    # Keyset pagination (Store.page_jobs): newest first on (created_at, id),
    # one index per filter the listings use, so a page is an index range scan
    # of ``limit`` rows at any depth and any table size.
    sa.Index("ix_jobs_created_id", "created_at", "id"),
    sa.Index("ix_jobs_owner_created_id", "owner", "created_at", "id"),
    sa.Index("ix_jobs_status_created_id", "status", "created_at", "id"),
    sa.Index("ix_jobs_dataset_created_id", "dataset", "created_at", "id"),
)

job_events = sa.Table(
    "job_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text),
)

datasets = sa.Table(
    "datasets", metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(80)),           # None: built-in, visible to all
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("info", sa.Text, nullable=False, default="{}"),
    sa.Column("error", sa.Text),
    # The build under way (migrations/versions/0003_dataset_builds.py): the
    # token of the run that claimed it, its worker and heartbeat. Every write
    # of a build is conditional on its token, and a hand-over clears the
    # token, so a build that was only slow can never take its dataset back.
    sa.Column("build_token", sa.String(40)),
    sa.Column("build_worker", sa.String(200)),
    sa.Column("build_heartbeat_at", sa.Float),
    # JSON list, one entry per hand-over of a build whose worker died (its
    # length is the queuing generation: app.services.runtime.broker.build_generation).
    sa.Column("handovers", sa.Text),
)

users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    # Revocation (migrations/versions/0004_revocation.py): a deactivated user
    # is refused everywhere; the session generation is part of every session
    # cookie's user id, so bumping it ends all of the user's sessions at once.
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("session_generation", sa.Integer, nullable=False, server_default="0"),
)

tokens = sa.Table(
    "tokens", metadata,
    # sha256 of the token: tokens are 256-bit random, so a fast hash is safe
    # and lets every API request find its token with one indexed lookup.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(80), sa.ForeignKey("users.name", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    # The first characters after "lb_", to name a token without holding it
    # (NULL for tokens made before 0004: they are named by their hash).
    sa.Column("prefix", sa.String(16)),
    sa.Column("last_used_at", sa.String(40)),
)

workers = sa.Table(
    "workers", metadata,
    # One row per Celery worker (migrations/versions/0002_workers.py), kept
    # fresh by its heartbeat: the web's only view of workers on other hosts.
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("gpus", sa.Text, nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("jobs", sa.Text, nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False, index=True),
)

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# The newest revision under migrations/ (tests/test_migrations.py checks it is
# Alembic's head): a start whose database is there already loads no Alembic.
SCHEMA_HEAD = "0004"
_MIGRATE_LOCK = 0x4C42   # PostgreSQL advisory lock key: one migrating process at a time

_GET_JOB = jobs.select().where(jobs.c.id == sa.bindparam("key"))
_GET_TOKEN_USER = (sa.select(users.c.name, users.c.admin, users.c.active, tokens.c.created_at,
                             tokens.c.last_used_at).join(tokens, tokens.c.user == users.c.name)
                   .where(tokens.c.token_hash == sa.bindparam("key")))
_GET_JOB_EVENTS = job_events.select().where(job_events.c.job_id == sa.bindparam("key")).order_by(job_events.c.id)

# Columns stored as JSON text and decoded on read.
_JSON_COLUMNS = ("params", "python_layer", "metrics", "snapshots", "error", "info", "handovers")


def now_iso() -> str:
    """Current UTC time as ISO-8601 with a Z suffix."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_job_id() -> str:
    """A server-chosen job id: sortable by time, unguessable suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the web process read while a worker writes; busy_timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _private_sqlite_file(path: str | None) -> None:
    """Create the SQLite file 0600, or tighten an existing one (and its WAL
    and shared-memory files) to 0600: it holds password and token hashes,
    and SQLite would create it with the process umask (often 0644, readable
    by every local user). SQLite gives the -wal/-shm files it creates the
    database file's own mode, so they follow."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    for name, create in ((path, os.O_CREAT), (path + "-wal", 0), (path + "-shm", 0)):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CLOEXEC | create, 0o600)
        except (FileNotFoundError, PermissionError):
            continue   # no such file yet, or not ours: SQLite reports what matters
        try:
            os.fchmod(fd, 0o600)
        except PermissionError:
            pass       # another user's file (read-only use): not ours to change
        finally:
            os.close(fd)


class DatasetStore:
    """Mixin: dataset records."""

    engine: sa.Engine

    def upsert_dataset(self, dataset_id: str, **fields: Any) -> None:
        """Insert or update a dataset row."""
        row = {k: (json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
               for k, v in fields.items()}
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(datasets.c.id).where(datasets.c.id == dataset_id)).first()
            if exists:
                conn.execute(datasets.update().where(datasets.c.id == dataset_id).values(**row))
            else:
                row.setdefault("created_at", now_iso())
                conn.execute(datasets.insert().values(id=dataset_id, **row))

    def get_dataset(self, dataset_id: str) -> dict | None:
        """One dataset as a dict, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).mappings().first()
        return _decode(row) if row else None

    def list_datasets(self, status: str | None = None) -> list[dict]:
        """All datasets, built-in first then newest."""
        q = datasets.select().order_by(datasets.c.owner.is_not(None), datasets.c.created_at.desc())
        if status:
            q = q.where(datasets.c.status == status)
        with self.engine.connect() as conn:
            return [_decode(r) for r in conn.execute(q).mappings()]

    def claim_dataset(self, dataset_id: str, from_status: str, to_status: str) -> bool:
        """Atomically move a dataset between states; False if it was not in ``from_status``."""
        q = (datasets.update().where(datasets.c.id == dataset_id, datasets.c.status == from_status)
             .values(status=to_status))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount > 0

    # A dataset build's writes: each one UPDATE whose WHERE is the fence.
    def claim_dataset_build(self, dataset_id: str, token: str, worker: str | None, now: float) -> bool:
        """queued -> running for the build run ``token`` on ``worker``, its
        heartbeat ``now``, in one compare-and-set (a running row always has
        a token and a heartbeat); False when it was not queued."""
        return self._dataset_cas(
            dataset_id, [datasets.c.status == "queued"],
            status="running", build_token=token, build_worker=worker, build_heartbeat_at=now)

    def beat_dataset_build(self, dataset_id: str, token: str, now: float, info: dict) -> bool:
        """The heartbeat (and progress, in ``info``) of build run ``token``,
        written only while it still owns the running dataset; False: it was
        handed over or ended (aborted, deleted) meanwhile."""
        return self._dataset_cas(
            dataset_id, [datasets.c.status == "running", datasets.c.build_token == token],
            build_heartbeat_at=now, info=info)

    def hand_over_dataset_build(self, dataset_id: str, token: str | None, beat_before: float,
                                **fields: Any) -> bool:
        """running -> ``fields["status"]`` (queued again, or error) for the
        build run ``token`` whose heartbeat is still older than
        ``beat_before``, clearing the token (so that run can write nothing
        more); of several workers noticing, exactly one does it, and a run
        that beat meanwhile keeps its dataset."""
        return self._dataset_cas(
            dataset_id, [datasets.c.status == "running", datasets.c.build_token.is_not_distinct_from(token),
                         sa.func.coalesce(datasets.c.build_heartbeat_at, 0) < beat_before],
            build_token=None, **fields)

    def end_dataset_build(self, dataset_id: str, token: str, **fields: Any) -> bool:
        """The end (status, error, info) of build run ``token``, written only
        while the token is still its own: running, or moved to error by its
        owner's abort (which keeps the token); never after a hand-over. A
        ``done`` end only while still running: an abort that came first wins."""
        ended = ["running"] if fields.get("status") == "done" else ["running", "error"]
        return self._dataset_cas(dataset_id, [datasets.c.build_token == token, datasets.c.status.in_(ended)],
                                 build_token=None, **fields)

    def _dataset_cas(self, dataset_id: str, where: list, **fields: Any) -> bool:
        q = datasets.update().where(datasets.c.id == dataset_id, *where).values(**_encoded(fields))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount > 0

    def delete_dataset(self, dataset_id: str) -> None:
        """Remove a dataset record."""
        with self.engine.begin() as conn:
            conn.execute(datasets.delete().where(datasets.c.id == dataset_id))

    def jobs_using(self, dataset_id: str, active_only: bool = True) -> list[str]:
        """Ids of jobs that use this dataset (queued or running only, unless
        ``active_only`` is false: finished jobs need it for inference)."""
        q = sa.select(jobs.c.id).where(jobs.c.dataset == dataset_id)
        if active_only:
            q = q.where(jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]


class UserStore:
    """Mixin: users and API tokens."""

    engine: sa.Engine

    def add_user(self, name: str, password_hash: str, admin: bool) -> bool:
        """Insert a user; False if the name is taken."""
        try:
            with self.engine.begin() as conn:
                conn.execute(users.insert().values(name=name, password_hash=password_hash,
                                                   admin=admin, created_at=now_iso()))
        except sa.exc.IntegrityError:
            return False
        return True

    def set_password(self, name: str, password_hash: str) -> bool:
        """Replace a user's password hash and end all their sessions (the
        session generation moves on in the same UPDATE)."""
        with self.engine.begin() as conn:
            return conn.execute(users.update().where(users.c.name == name).values(
                password_hash=password_hash,
                session_generation=users.c.session_generation + 1)).rowcount > 0

    def set_user_active(self, name: str, active: bool) -> bool:
        """(De)activate a user; deactivating also ends their sessions, so a
        later reactivation does not bring old cookies back. False: no user."""
        values: dict[str, Any] = {"active": active}
        if not active:
            values["session_generation"] = users.c.session_generation + 1
        with self.engine.begin() as conn:
            return conn.execute(users.update().where(users.c.name == name).values(**values)).rowcount > 0

    def bump_session_generation(self, name: str) -> bool:
        """End every session of ``name`` (their cookies name the old generation)."""
        with self.engine.begin() as conn:
            return conn.execute(users.update().where(users.c.name == name).values(
                session_generation=users.c.session_generation + 1)).rowcount > 0

    def delete_user_without_records(self, name: str) -> bool:
        """Delete a user (and their tokens) only if no job or dataset names
        them as owner, in one statement: a job created meanwhile cannot be
        orphaned. False: no such user, or they own records."""
        owns = sa.or_(sa.exists().where(jobs.c.owner == name), sa.exists().where(datasets.c.owner == name))
        with self.engine.begin() as conn:
            gone = conn.execute(users.delete().where(users.c.name == name, sa.not_(owns))).rowcount > 0
            if gone:   # SQLite's cascade needs foreign_keys=ON; say it outright
                conn.execute(tokens.delete().where(tokens.c.user == name))
        return gone

    def get_user(self, name: str) -> dict | None:
        """A user row, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(users.select().where(users.c.name == name)).mappings().first()
        return dict(row) if row else None

    def list_users(self) -> list[dict]:
        """Every user row (without the password hash), by name."""
        cols = [c for c in users.c if c.name != "password_hash"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(*cols).order_by(users.c.name)).mappings()]

    def count_users(self) -> int:
        """How many users exist."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one()

    def add_token(self, name: str, token_hash: str, prefix: str | None = None) -> None:
        """Store a token (its hash, and the prefix that names it) for a user."""
        with self.engine.begin() as conn:
            conn.execute(tokens.insert().values(token_hash=token_hash, user=name, created_at=now_iso(),
                                                prefix=prefix))

    def user_for_token(self, token_hash: str) -> dict | None:
        """The user owning a token hash (name, admin, active) with the
        token's created_at and last_used_at, or None."""
        return self._hot_fetch("token", token_hash)

    def touch_token(self, token_hash: str, at: str) -> None:
        """Record when a token was last used."""
        with self.engine.begin() as conn:
            conn.execute(tokens.update().where(tokens.c.token_hash == token_hash).values(last_used_at=at))

    def list_tokens(self, name: str | None = None) -> list[dict]:
        """Token rows (hash, user, prefix, created_at, last_used_at) of one
        user, or of everyone; oldest first."""
        q = tokens.select().order_by(tokens.c.user, tokens.c.created_at)
        if name is not None:
            q = q.where(tokens.c.user == name)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def delete_tokens(self, name: str, token_hashes: list[str] | None = None) -> int:
        """Delete the given tokens of ``name`` (all of them when None); how many went."""
        q = tokens.delete().where(tokens.c.user == name)
        if token_hashes is not None:
            q = q.where(tokens.c.token_hash.in_(token_hashes))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount


class Store(UserStore, DatasetStore):
    """Job, dataset and user records behind one SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            _private_sqlite_file(self.engine.url.database)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._hot = {name: str(stmt.compile(dialect=self.engine.dialect))
                     for name, stmt in (("job", _GET_JOB), ("token", _GET_TOKEN_USER),
                                        ("job_events", _GET_JOB_EVENTS))}
        self._positional = self.engine.dialect.positional

    def _hot_fetch(self, name: str, key: str) -> dict | None:
        """One row of a prebuilt query on every API request (job lookup,
        token lookup): compiled once for this engine's dialect and run on a
        pooled DBAPI connection, skipping SQLAlchemy's per-call execution and
        result layers (~3x faster; the job JSON route's throughput needs it)."""
        rows = self._hot_rows(name, key, first=True)
        return rows[0] if rows else None

    def _hot_rows(self, name: str, key: str, first: bool = False) -> list[dict]:
        return self._hot_many([(name, key, first)])[0]

    def _hot_many(self, queries: list[tuple[str, str, bool]]) -> list[list[dict]]:
        # Several prebuilt queries on one pooled connection and one read
        # transaction: under load each checkout and commit costs more than
        # the query itself.
        raw = self.engine.raw_connection()
        out = []
        try:
            cur = raw.cursor()
            for name, key, first in queries:
                cur.execute(self._hot[name], (key,) if self._positional else {"key": key})
                rows = [cur.fetchone()] if first else cur.fetchall()
                names = [d[0] for d in cur.description]
                out.append([dict(zip(names, row)) for row in rows if row is not None])
            cur.close()
            raw.commit()  # end the read transaction (lets WAL checkpoint)
        finally:
            raw.close()
        return out

    def get_job_with_events(self, job_id: str) -> tuple[dict | None, list[dict]]:
        """A job and its status history in one round trip (the job JSON)."""
        rows, events = self._hot_many([("job", job_id, True), ("job_events", job_id, False)])
        return (_decode(rows[0]) if rows else None), events

    def create_schema(self) -> None:
        """Bring the database to the newest schema with Alembic (migrations/),
        one process at a time; idempotent, run at every start and by
        ``flask --app wsgi db-upgrade``. A database made before Alembic has no
        ``alembic_version``: the baseline revision creates only what it lacks,
        so it is upgraded in place like any other.

        A database already at SCHEMA_HEAD, the usual start, only has its
        indexes ensured: importing Alembic and reading its scripts cost every
        process start (web workers, the job worker, each CLI command) ~85 ms
        of CPU for nothing to do."""
        if self.schema_revision() == SCHEMA_HEAD:
            with self.engine.begin() as conn:
                self._ensure_indexes(conn)
            return
        from alembic import command
        from alembic.config import Config
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
            self._ensure_indexes(conn)
            conn.commit()

    @staticmethod
    def _ensure_indexes(conn) -> None:
        # Indexes the model declares are ensured too (CREATE INDEX IF NOT
        # EXISTS, in effect): one dropped by hand comes back at the next start.
        for table in metadata.sorted_tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)

    def table_names(self) -> list[str]:
        """The tables of this database (none: an empty one, e.g. to restore into)."""
        with self.engine.connect() as conn:
            return sa.inspect(conn).get_table_names()

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None: never migrated)."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def _migration_lock(self):
        """A connection held while migrating: several gunicorn workers and
        Celery workers start at once, and exactly one may run the DDL."""
        import contextlib

        @contextlib.contextmanager
        def held():
            with self.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATE_LOCK})
                    conn.commit()
                    try:
                        yield conn
                    finally:
                        conn.rollback()
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATE_LOCK})
                        conn.commit()
                    return
                lock = None
                db = self.engine.url.database if conn.dialect.name == "sqlite" else None
                if db and db != ":memory:":
                    import fcntl
                    lock = open(f"{db}.migrate-lock", "a")
                    fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield conn
                finally:
                    if lock is not None:
                        lock.close()
        return held()

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.text("SELECT 1")).scalar() == 1
        except sa.exc.SQLAlchemyError:
            return False

    # ---- jobs ---------------------------------------------------------------
    def insert_job(self, **fields: Any) -> dict:
        """Insert a job row (status queued unless given) and return it."""
        fields.setdefault("id", new_job_id())
        fields.setdefault("created_at", now_iso())
        fields.setdefault("status", JobStatus.QUEUED.value)
        row = {k: (json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
               for k, v in fields.items()}
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(**row))
            conn.execute(job_events.insert().values(
                job_id=row["id"], at=row["created_at"], status=row["status"],
                message="submitted"))
        return self.get_job(row["id"])

    def get_job(self, job_id: str) -> dict | None:
        """One job as a dict (JSON columns decoded), or None."""
        # The hottest query (clients poll it): see _hot_fetch.
        row = self._hot_fetch("job", job_id)
        return _decode(row) if row else None

    def list_jobs(self, owner: str | None = None, status: str | None = None) -> list[dict]:
        """Jobs newest first, optionally filtered by owner and status."""
        q = jobs.select().order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        if status:
            q = q.where(jobs.c.status == status)
        with self.engine.connect() as conn:
            return [_decode(r) for r in conn.execute(q).mappings()]

    def share_state(self, owners: Iterable[str]) -> dict[str, tuple[int, str]]:
        """owner -> (running jobs, when their newest job started; "" never) for
        fair share (app.services.jobs.fairshare): one grouped query."""
        owners = list(set(owners))
        if not owners:
            return {}
        running = sa.func.sum(sa.case((jobs.c.status == JobStatus.RUNNING.value, 1), else_=0))
        q = sa.select(jobs.c.owner, running, sa.func.max(jobs.c.started_at)).where(
            jobs.c.owner.in_(owners)).group_by(jobs.c.owner)
        with self.engine.connect() as conn:
            found = {o: (int(r or 0), s or "") for o, r, s in conn.execute(q)}
        return {o: found.get(o, (0, "")) for o in owners}

    def page_jobs(self, *, limit: int, after: tuple[str, str] | None = None, owner: str | None = None,
                  status: str | None = None, dataset: str | None = None,
                  ids: Iterable[str] | None = None) -> tuple[list[dict], tuple[str, str] | None]:
        """One page of jobs, newest first: at most ``limit`` rows strictly
        older than the key ``after`` (a ``(created_at, id)`` pair, the last
        row of the previous page), filtered by owner, status, dataset and ids.
        Returns the rows and the key to pass as ``after`` for the next page
        (None on the last page).

        Keyset, not offset: the query is an index range scan of ``limit + 1``
        rows (see the ix_jobs_*_created_id indexes) whatever the page's depth,
        and jobs inserted meanwhile (always newer) neither shift nor repeat
        rows of later pages."""
        q = jobs.select().order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        if status:
            q = q.where(jobs.c.status == status)
        if dataset is not None:
            q = q.where(jobs.c.dataset == dataset)
        if ids is not None:
            q = q.where(jobs.c.id.in_(list(ids)))
        if after is not None:
            at, last_id = after
            # Written out rather than as a row value so that every backend
            # uses the index: the first term bounds the range scan.
            q = q.where(jobs.c.created_at <= at,
                        sa.or_(jobs.c.created_at < at, jobs.c.id < last_id))
        with self.engine.connect() as conn:
            rows = [_decode(r) for r in conn.execute(q).mappings()]
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, (rows[-1]["created_at"], rows[-1]["id"])

    def claim_job(self, job_id: str, worker: str, **fields: Any) -> int | None:
        """queued -> running for ``worker`` in one compare-and-set, starting a
        new run generation; returns it (None when someone else won)."""
        row = {k: (json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
               for k, v in fields.items()}
        with self.engine.begin() as conn:
            changed = conn.execute(
                jobs.update().where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, worker=worker, run=jobs.c.run + 1, **row)).rowcount
            if not changed:
                return None
            # The history names every worker that ran the job (hand-overs show).
            conn.execute(job_events.insert().values(job_id=job_id, at=now_iso(),
                                                    status=JobStatus.RUNNING.value, message=f"on {worker}"))
            return int(conn.execute(sa.select(jobs.c.run).where(jobs.c.id == job_id)).scalar())

    def update_job(self, job_id: str, *, expect_status: Iterable[str] | None = None,
                   expect_run: int | None = None, **fields: Any) -> bool:
        """Update fields; with ``expect_status`` only if the job is in one of
        those states, with ``expect_run`` only while that run generation is
        current (atomic compare-and-sets). Returns whether a row changed.
        A status change is also recorded in the job's history."""
        row = {k: (json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
               for k, v in fields.items()}
        q = jobs.update().where(jobs.c.id == job_id).values(**row)
        if expect_status is not None:
            q = q.where(jobs.c.status.in_([str(s) for s in expect_status]))
        if expect_run is not None:
            q = q.where(jobs.c.run == expect_run)
        with self.engine.begin() as conn:
            changed = conn.execute(q).rowcount > 0
            if changed and "status" in fields:
                conn.execute(job_events.insert().values(
                    job_id=job_id, at=now_iso(), status=str(fields["status"]),
                    message=(fields.get("error") or {}).get("message")
                    if isinstance(fields.get("error"), dict) else None))
        return changed

    def job_events(self, job_id: str) -> list[dict]:
        """The job's status history, oldest first (every job JSON carries it:
        a prebuilt query, like the job lookup)."""
        return self._hot_rows("job_events", job_id)

    def hand_over_job(self, job_id: str, run: int, beat_before: float, message: str, **fields: Any) -> bool:
        """running -> ``fields["status"]`` (queued to resume elsewhere, or
        interrupted) for a run whose worker stopped heart-beating: only while
        that run is current and its heartbeat is still older than
        ``beat_before`` (one compare-and-set, so of several workers noticing
        the same dead one exactly one hands the job over, and a run that beat
        meanwhile keeps its job). The history gets ``message``."""
        row = {k: (json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
               for k, v in fields.items()}
        q = (jobs.update().where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value,
                                 jobs.c.run == run, sa.func.coalesce(jobs.c.heartbeat_at, 0) < beat_before)
             .values(**row))
        with self.engine.begin() as conn:
            if not conn.execute(q).rowcount:
                return False
            conn.execute(job_events.insert().values(job_id=job_id, at=now_iso(),
                                                    status=str(fields["status"]), message=message))
        return True

    # ---- workers (celery queue) -------------------------------------------
    def beat_worker(self, name: str, **fields: Any) -> None:
        """Insert or refresh a worker's row (``gpus``/``jobs`` as lists)."""
        row = {k: (json.dumps(v) if k in ("gpus", "jobs") else v) for k, v in fields.items()}
        with self.engine.begin() as conn:
            if not conn.execute(workers.update().where(workers.c.name == name).values(**row)).rowcount:
                conn.execute(workers.insert().values(name=name, **row))

    def list_workers(self, alive_since: float) -> list[dict]:
        """Workers that beat at or after ``alive_since`` (epoch seconds), by name."""
        q = workers.select().where(workers.c.heartbeat_at >= alive_since).order_by(workers.c.name)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["gpus"], r["jobs"] = json.loads(r["gpus"]), json.loads(r["jobs"])
        return rows

    def delete_worker(self, name: str) -> None:
        """Forget a worker (it shut down cleanly)."""
        with self.engine.begin() as conn:
            conn.execute(workers.delete().where(workers.c.name == name))

    def delete_job(self, job_id: str) -> None:
        """Remove a job and its history."""
        with self.engine.begin() as conn:
            conn.execute(job_events.delete().where(job_events.c.job_id == job_id))
            conn.execute(jobs.delete().where(jobs.c.id == job_id))


def _encoded(fields: dict) -> dict:
    """Column values as stored (the JSON columns as text)."""
    return {k: (json.dumps(v) if k in _JSON_COLUMNS and v is not None else v) for k, v in fields.items()}


def _decode(row) -> dict:
    out = dict(row)
    for k in _JSON_COLUMNS:
        if out.get(k) is not None:
            out[k] = json.loads(out[k])
    return out

