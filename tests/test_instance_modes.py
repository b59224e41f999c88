"""The instance dir and the SQLite database are private (issue 22, item 9):
the database holds password and token hashes, the instance dir the secret
key too. Before, both followed the umask: a 0644 database any local user
could read."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from helpers import client_for, make_app


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _database_files(db: Path) -> list[Path]:
    """The database and its WAL and shared-memory files (all three exist
    once something was written; the empty migration lock beside them holds
    nothing)."""
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    assert all(p.is_file() for p in files), [p.name for p in files if not p.is_file()]
    return files


def test_a_new_instance_dir_is_0700_and_its_database_files_0600(tmp_path, sample_datasets):
    old = os.umask(0o022)     # the usual umask: what made the database 0644
    try:
        app = make_app(tmp_path, sample_datasets)
        try:
            client_for(app, "alice")        # writes: the WAL and its index exist now
            instance = Path(app.instance_path)
            db = instance / "layerbench.sqlite3"
            assert _mode(instance) == 0o700
            for path in _database_files(db):
                assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
        finally:
            app.extensions["store"].engine.dispose()
    finally:
        os.umask(old)


def test_an_older_install_is_made_private_at_the_next_start(tmp_path, sample_datasets):
    app = make_app(tmp_path, sample_datasets)
    client_for(app, "alice")     # its open connection keeps the WAL files
    instance = Path(app.instance_path)
    instance.chmod(0o755)
    for path in _database_files(instance / "layerbench.sqlite3"):
        path.chmod(0o644)
    from app.web import create_app
    again = create_app({"INSTANCE_DIR": str(instance), "JOBS_DIR": str(tmp_path / "jobs"), "TESTING": True})
    try:
        assert _mode(instance) == 0o700
        for path in _database_files(instance / "layerbench.sqlite3"):
            assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
    finally:
        again.extensions["store"].engine.dispose()
        app.extensions["store"].engine.dispose()
