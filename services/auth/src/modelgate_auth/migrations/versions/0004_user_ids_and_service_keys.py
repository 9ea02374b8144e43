"""Every user gets an immutable random id (``uid``), the identity that ciphertexts and
other per-user state are bound to: a user name can be deleted and created again, a
uid is never reused. Users present when this runs keep ``legacy_owner_keys``, which lets
their ciphertexts made under name-derived keys still decrypt; users created later never
get it. ``service_keys`` holds keys the auth service generates for itself (the key that
turns unknown user names into keyed hashes in the audit log).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("uid", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("legacy_owner_keys", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    users = sa.table(
        "users",
        sa.column("id", sa.Integer()),
        sa.column("uid", sa.String(32)),
        sa.column("legacy_owner_keys", sa.Boolean()),
    )
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.select(users.c.id)).all():
        connection.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(uid=secrets.token_hex(16), legacy_owner_keys=True)
        )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("uid", existing_type=sa.String(32), nullable=False)
        batch.create_index("ix_users_uid", ["uid"], unique=True)
    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_keys")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_uid")
        batch.drop_column("legacy_owner_keys")
        batch.drop_column("uid")
