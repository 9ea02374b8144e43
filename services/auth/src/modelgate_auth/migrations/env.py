"""Alembic environment of the user database.

Migrations run through ``modelgate_auth.db.upgrade_schema`` (the service at start,
``modelgate db upgrade``), which passes an open connection in
``config.attributes["connection"]``; there is no alembic.ini and no URL here.
"""

from __future__ import annotations

from alembic import context
from modelgate_auth.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `modelgate db upgrade` (modelgate_auth.db)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
