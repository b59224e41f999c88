"""Dataset builds: the run that owns a build, its worker and heartbeat, and
the hand-overs of builds whose worker died.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

In the celery queue a dataset build runs on some host's side node, and a
build whose node died is handed over (app.worker.heartbeat). Kept in the
dataset's ``info`` JSON, the build's token and heartbeat could only be
written whole and unconditionally, so a slow build's late write could take
back a dataset already handed over. As columns, every write of a build is
an UPDATE fenced by its token (app.store: claim/beat/hand_over/end_dataset_build).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("build_token", sa.String(40)))         # the run that claimed it; NULL: none
        batch.add_column(sa.Column("build_worker", sa.String(200)))       # the Celery node building it
        batch.add_column(sa.Column("build_heartbeat_at", sa.Float))       # epoch seconds of its last beat
        batch.add_column(sa.Column("handovers", sa.Text))                 # JSON list of hand-overs


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        for name in ("handovers", "build_heartbeat_at", "build_worker", "build_token"):
            batch.drop_column(name)
