"""Alembic's environment for Layerbench: migrations run on the connection the
store hands over (``app.store.Store.create_schema``), never from an ini file,
so the one URL in the settings is the only one there is."""
from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `flask --app wsgi db-upgrade` (Store.create_schema), "
                       "which passes the store's connection")
# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies
# the table instead, and is a no-op on PostgreSQL.
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
