"""Revocations carry the time they were written: the periodic push to Redis reads by
time window (with overlap) instead of by id, because PostgreSQL ids need not commit
in order and an id cursor could step over a revocation committed late.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("created_at", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_revocations_created_at", ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.drop_index("ix_revocations_created_at")
        batch.drop_column("created_at")
