"""Schema migrations (Alembic, migrations/): a new database and one made
before Alembic (a dump of what the old ``Store.create_schema`` produced, in
tests/data/pre_alembic/) both end at the newest revision, with their rows,
and with exactly the schema ``app.store`` declares; on SQLite and on a real
PostgreSQL."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.config import Config

from helpers import DATA, ROOT
from app.store import MIGRATIONS, SCHEMA_HEAD, Store, metadata

OLD_JOB = "20260101-000000-aaaaaaaa"


def _head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _drift(store: Store, model: sa.MetaData = metadata) -> list:
    """Differences between the migrated database and the model (none wanted)."""
    with store.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), model)


def test_the_drift_check_sees_a_difference(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'd.sqlite3'}")
    store.create_schema()
    other = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(other)
    other.tables["jobs"].append_column(sa.Column("extra", sa.Integer))
    assert [d[0] for d in _drift(store, other)] == ["add_column"]


def _old_rows_survive(store: Store) -> None:
    job = store.get_job(OLD_JOB)
    assert job["name"] == "old job" and job["params"] == {"max_iter": 4} and job["status"] == "done"
    assert store.get_user("olduser")["admin"]
    # 0004: an old user stays active, at session generation 0.
    assert store.get_user("olduser")["active"] and store.get_user("olduser")["session_generation"] == 0
    assert store.get_dataset("old-ds")["info"] == {"classes": 2}
    assert [e["message"] for e in store.job_events(OLD_JOB)] == ["submitted"]
    # ... and the upgraded database takes new rows and the new table.
    store.insert_job(id="20260102-000000-bbbbbbbb", name="new", owner="olduser", device="cpu", params={})
    store.beat_worker("w@h", host="h", pid=1, gpus=[], slots=1, jobs=[], started_at="x", heartbeat_at=1.0)
    assert [w["name"] for w in store.list_workers(alive_since=0)] == ["w@h"]
    # ... and the dataset build columns of 0003 (empty on old rows).
    old = store.get_dataset("old-ds")
    assert (old["build_token"], old["build_worker"], old["build_heartbeat_at"], old["handovers"]) == (None,) * 4
    store.upsert_dataset("old-ds", status="running")    # a build under way across the upgrade: no token
    assert store.hand_over_dataset_build("old-ds", None, 1.0, status="queued", handovers=[{"worker": None}])
    assert store.claim_dataset_build("old-ds", "t1", "w@h", 5.0)
    assert not store.hand_over_dataset_build("old-ds", None, 6.0, status="queued")   # t1 owns it now
    assert store.hand_over_dataset_build("old-ds", "t1", 6.0, status="queued",
                                         handovers=[{"worker": None}, {"worker": "w@h"}])
    assert [h["worker"] for h in store.get_dataset("old-ds")["handovers"]] == [None, "w@h"]


def test_the_head_a_start_trusts_is_alembics(tmp_path):
    # A database at SCHEMA_HEAD skips Alembic at start: a migration added
    # without moving SCHEMA_HEAD would never run on an existing database.
    assert SCHEMA_HEAD == _head()
    # And a database one revision behind is still migrated at start.
    from alembic import command
    store = Store(f"sqlite:///{tmp_path / 'behind.sqlite3'}")
    store.create_schema()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    assert store.schema_revision() == "0003" and _drift(store) != []
    store.create_schema()
    assert store.schema_revision() == SCHEMA_HEAD and _drift(store) == []


def test_a_new_sqlite_database_is_created_at_head_and_matches_the_model(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert store.schema_revision() is None
    store.create_schema()
    assert store.schema_revision() == _head() == "0004"
    assert _drift(store) == []
    store.create_schema()         # idempotent: every start runs it
    assert store.schema_revision() == "0004"


def test_a_pre_alembic_sqlite_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.executescript((DATA / "pre_alembic" / "sqlite.sql").read_text())
    # Older still: made before the heartbeat column and the listing index
    # (the baseline revision adds what such a database lacks).
    con.executescript("ALTER TABLE jobs DROP COLUMN heartbeat_at; DROP INDEX ix_jobs_created_id;")
    con.close()
    store = Store(f"sqlite:///{path}")
    assert store.schema_revision() is None
    store.create_schema()
    assert store.schema_revision() == "0004"
    assert _drift(store) == []
    _old_rows_survive(store)


def test_the_cli_upgrades_and_reports_the_revision(tmp_path, sample_datasets):
    import shutil
    shutil.copytree(sample_datasets, tmp_path / "j" / "datasets")
    env = {"LAYERBENCH_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}",
           "LAYERBENCH_INSTANCE_DIR": str(tmp_path / "i"), "LAYERBENCH_JOBS_DIR": str(tmp_path / "j")}
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db-upgrade"],
                         cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "0004" in out.stdout


def test_a_pre_alembic_postgresql_database_is_upgraded_in_place(postgres):
    url = postgres.create_db("pre_alembic")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        ddl = [line for line in (DATA / "pre_alembic" / "postgresql.sql").read_text().splitlines()
               if not line.startswith("--")]
        for statement in "\n".join(ddl).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        conn.exec_driver_sql("INSERT INTO users VALUES ('olduser', 'hash', true, '2026-01-01T00:00:00Z')")
        conn.exec_driver_sql(
            "INSERT INTO jobs (id, name, owner, status, created_at, device, params, progress, iteration, max_iter,"
            " epoch, metrics, snapshots, abort_requested) VALUES "
            f"('{OLD_JOB}', 'old job', 'olduser', 'done', '2026-01-01T00:00:00Z', 'cpu', '{{\"max_iter\": 4}}',"
            " 1.0, 4, 4, 0.2, '{}', '[]', false)")
        conn.exec_driver_sql(f"INSERT INTO job_events (job_id, at, status, message) VALUES "
                             f"('{OLD_JOB}', '2026-01-01T00:00:00Z', 'queued', 'submitted')")
        conn.exec_driver_sql("INSERT INTO datasets VALUES ('old-ds', 'Old', 'olduser', 'done', "
                             "'2026-01-01T00:00:00Z', '{\"classes\": 2}', NULL)")
    engine.dispose()
    store = Store(url)
    assert store.schema_revision() is None
    store.create_schema()
    assert store.schema_revision() == "0004"
    assert _drift(store) == []
    _old_rows_survive(store)
    store.engine.dispose()


def test_a_new_postgresql_database_matches_the_model(postgres):
    store = Store(postgres.create_db("fresh"))
    store.create_schema()
    store.create_schema()
    assert store.schema_revision() == "0004"
    assert _drift(store) == []
    store.engine.dispose()
