"""The user database as it was before Alembic: users, refresh tokens, revocations.

Every table and index is created only if missing, so a database made by the
earlier ``CREATE TABLE IF NOT EXISTS`` start-up adopts Alembic without a manual stamp.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(32), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("full_name", sa.String(255), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.Column("revoked_before", sa.Integer(), nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "refresh_families",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("scope", sa.String(512), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.Integer(), nullable=True),
        if_not_exists=True,
    )
    op.create_index(
        "ix_refresh_families_user_id", "refresh_families", ["user_id"], if_not_exists=True
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column(
            "family_id",
            sa.String(64),
            sa.ForeignKey("refresh_families.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("access_jti", sa.String(64), nullable=False),
        sa.Column("access_expires_at", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=False),
        sa.Column("used_at", sa.Integer(), nullable=True),
        if_not_exists=True,
    )
    op.create_index(
        "ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"], if_not_exists=True
    )
    op.create_index(
        "ix_refresh_tokens_access_jti", "refresh_tokens", ["access_jti"], if_not_exists=True
    )
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=False),
        if_not_exists=True,
    )
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("revocations")
    op.drop_table("refresh_tokens")
    op.drop_table("refresh_families")
    op.drop_table("users")
