"""`modelgate db`: the user database's schema (Alembic migrations).

The auth service migrates at start (every replica; they take turns), so this is
for operators who want the schema changed before a rolling update, or to check it.
"""

from __future__ import annotations

import typer
from modelgate_auth.db import create_db_engine, head_revision, schema_revision, upgrade_schema
from sqlalchemy import make_url

from ._auth import auth_settings
from ._paths import ProjectPaths

db_app = typer.Typer(help="The user database schema (MG_AUTH_DATABASE_URL).", no_args_is_help=True)


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def upgrade() -> None:
    """Create the schema or migrate it to the newest revision."""
    settings = auth_settings(ProjectPaths.from_env())
    engine = create_db_engine(settings.database)
    try:
        before = schema_revision(engine)
        upgrade_schema(engine)
        after = schema_revision(engine)
    finally:
        engine.dispose()
    typer.echo(f"{_where(settings.database)}: {before or 'empty'} -> {after}")


@db_app.command("current")
def current() -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    settings = auth_settings(ProjectPaths.from_env())
    engine = create_db_engine(settings.database)
    try:
        revision = schema_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    typer.echo(f"{_where(settings.database)}: {revision or 'empty'} (newest: {head})")
    if revision != head:
        raise typer.Exit(1)
