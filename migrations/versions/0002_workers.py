"""Workers: one row per Celery worker, kept fresh by its heartbeat.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Workers on other hosts share nothing with the web process but the store (and
the jobs directory), so their liveness, hosts, GPUs and current jobs are
written here for /healthz and the Workers page.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),     # the Celery node name, w1@hostA
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("gpus", sa.Text, nullable=False),              # JSON list of GPU indices
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("jobs", sa.Text, nullable=False),              # JSON list of job ids running now
        sa.Column("started_at", sa.String(40), nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("workers")
