"""Revocation: deactivated users, a per-user session generation, and token
prefixes with their last use.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Sessions are signed cookies, so ending one server-side needs something the
cookie names that the server can move on: ``users.session_generation`` is
part of each session's user id and is bumped by logout, password change and
deactivation (issue 22, item 7). ``users.active`` lets an administrator shut a
user out while keeping their jobs. Tokens gain ``prefix`` (the characters
after ``lb_`` that name a token in ``flask users tokens`` and the admin page;
NULL for older tokens, which are named by their hash instead) and
``last_used_at``.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults: existing users stay active, at generation 0.
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("session_generation", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("prefix", sa.String(16)))
        batch.add_column(sa.Column("last_used_at", sa.String(40)))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("prefix")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_generation")
        batch.drop_column("active")
