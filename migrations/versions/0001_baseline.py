"""The baseline: the schema as it was when Alembic took over.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Databases made before Alembic (by ``Store.create_schema``'s create_all and its
add-missing-columns step) have these tables but no ``alembic_version``, and
may lack columns or indexes added to the model over time. So this revision
does not assume an empty database: it creates what is missing (tables,
columns, indexes) and leaves what exists, which brings both a new database and
any pre-Alembic one to exactly this baseline. The tables are a frozen copy,
not ``app.store``'s: later revisions change the model, never this file.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

baseline = sa.MetaData()

sa.Table(
    "jobs", baseline,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(80), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("started_at", sa.String(40)),
    sa.Column("finished_at", sa.String(40)),
    sa.Column("dataset", sa.String(80)),
    sa.Column("device", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("python_layer", sa.Text),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("iteration", sa.Integer, nullable=False),
    sa.Column("max_iter", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Float, nullable=False),
    sa.Column("eta_seconds", sa.Float),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("snapshots", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("abort_requested", sa.Boolean, nullable=False),
    sa.Column("resume_from", sa.Integer),
    sa.Column("worker", sa.String(200)),
    sa.Column("run", sa.Integer, nullable=False, server_default="0"),
    sa.Column("heartbeat_at", sa.Float),
    sa.Index("ix_jobs_created_id", "created_at", "id"),
    sa.Index("ix_jobs_owner_created_id", "owner", "created_at", "id"),
    sa.Index("ix_jobs_status_created_id", "status", "created_at", "id"),
    sa.Index("ix_jobs_dataset_created_id", "dataset", "created_at", "id"),
)

sa.Table(
    "job_events", baseline,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text),
)

sa.Table(
    "datasets", baseline,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(80)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("info", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
)

sa.Table(
    "users", baseline,
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

sa.Table(
    "tokens", baseline,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(80), sa.ForeignKey("users.name", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", sa.String(40), nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in baseline.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(bind)
            continue
        # A pre-Alembic database: columns added to the model since it was made
        # were nullable or had a server default, so ADD COLUMN suffices.
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have:
                ddl = sa.schema.CreateColumn(col).compile(dialect=bind.dialect)
                op.execute(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
        for index in table.indexes:
            index.create(bind, checkfirst=True)


def downgrade() -> None:
    for table in reversed(baseline.sorted_tables):
        op.drop_table(table.name)
