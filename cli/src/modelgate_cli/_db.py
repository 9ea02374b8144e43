"""`modelgate db`: the user database's schema (Alembic migrations).

The auth service migrates at start (every replica; they take turns), so this is
for operators who want the schema changed before a rolling update, or to check it;
`copy` moves the users into another database (SQLite to PostgreSQL, _dbcopy.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from modelgate_auth.db import create_db_engine, head_revision, schema_revision, upgrade_schema
from sqlalchemy import make_url

from ._auth import auth_settings
from ._dbcopy import CopyError, copy_database, read_url_file
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


@db_app.command("copy")
def copy(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="URL",
            help="the target database: postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB or "
            "sqlite:///PATH (the password shows in the process list: prefer --to-file)",
        ),
    ] = None,
    to_file: Annotated[
        Path | None,
        typer.Option(
            "--to-file",
            metavar="PATH",
            help="read the target URL from this file (e.g. the secret you will give the "
            "service as MG_AUTH_DATABASE_URL_FILE)",
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="the target already holds rows (e.g. the first admin, made when auth started "
            "on it): delete them and copy, in one transaction (all or nothing)",
        ),
    ] = False,
) -> None:
    """Copy every user, refresh token and revocation from the configured database
    (MG_AUTH_DATABASE_URL, default var/data/users.db) into another one, e.g. from SQLite
    to PostgreSQL. Stop the auth service first.

    The target is first migrated to the newest revision (as `db upgrade`); the source must be.

    Rows keep their ids; ONE transaction on the target (all or nothing); sequences fixed.

    A target that holds rows is refused (no merge) unless --replace.

    Prints rows per table; never hashes or passwords (the URL's is shown as ***).
    """
    if (to is None) == (to_file is None):
        typer.echo("error: give the target as one of --to URL and --to-file PATH", err=True)
        raise typer.Exit(2)
    settings = auth_settings(ProjectPaths.from_env())
    try:
        target = read_url_file(to_file) if to_file is not None else str(to)
        result = copy_database(settings.database, target, replace=replace, report=typer.echo)
    except CopyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    total = sum(result.rows.values())
    replaced = sum(result.replaced.values())
    note = f", replacing {replaced} rows" if replaced else ""
    typer.echo(
        f"copied {total} rows in {len(result.rows)} tables from {result.source} to "
        f"{result.target} at revision {result.revision} in one transaction{note}"
    )
