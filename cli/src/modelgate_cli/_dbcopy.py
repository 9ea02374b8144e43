"""`modelgate db copy`: every row of the user database into another database.

The way from the SQLite file of one machine to PostgreSQL (docs/scale-out.md). The
target is brought to the newest schema revision by the same code as `modelgate db
upgrade`; then the auth tables are copied in foreign-key order, primary keys kept, in
ONE transaction on the target: it commits whole or leaves the target as it was. On
PostgreSQL the id sequences are moved past the copied ids afterwards (same transaction).

Nothing secret is reported: row counts only, URLs with the password masked, and errors
as the driver's first line (never SQLAlchemy's statement parameters, which would hold
password and token hashes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modelgate_auth.db import (
    Base,
    create_db_engine,
    head_revision,
    schema_revision,
    upgrade_schema,
)
from sqlalchemy import URL, Connection, Engine, Table, func, inspect, make_url, select, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

# Parents before children (users -> refresh_families -> refresh_tokens; revocations;
# service_keys).
TABLES: tuple[Table, ...] = tuple(Base.metadata.sorted_tables)
BATCH = 1000
# psycopg waits for an unreachable host as long as the OS lets it; a copy should not.
_CONNECT_TIMEOUT = "10"


class CopyError(Exception):
    """A one-line reason the copy did not happen (nothing was written)."""


@dataclass
class CopyResult:
    source: str
    target: str
    revision: str | None
    rows: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    table: str | None = None  # the table being copied (named when the copy fails)


def masked(url: str | URL) -> str:
    """The URL for people: password (also one given as a query parameter) as ***."""
    parsed = make_url(url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def parse_target(url: str) -> URL:
    """A target URL modelgate can write: sqlite:///PATH or postgresql+psycopg://…"""
    hint = "use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///PATH"
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        raise CopyError(f"the target is not a database URL: {hint}") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise CopyError(f"the target SQLite URL names no file: {hint}")
        return parsed
    if backend == "postgresql" and driver == "psycopg":
        return parsed
    raise CopyError(f"the target scheme {parsed.drivername!r} is not supported: {hint}")


def read_url_file(path: Path) -> str:
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CopyError(f"cannot read {path}: {exc.strerror}") from None
    if not url:
        raise CopyError(f"{path} is empty")
    return url


def _one_line(exc: BaseException, secrets: list[str]) -> str:
    """The driver's own message, first line only (no SQL, no parameters), passwords removed."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    message = f"{type(orig).__name__}: {lines[0] if lines else 'no message'}"
    for secret in secrets:
        message = message.replace(secret, "***")
    return message


def _same_database(a: URL, b: URL) -> bool:
    if a.get_backend_name() == "sqlite" and b.get_backend_name() == "sqlite":
        return Path(a.database or "").resolve() == Path(b.database or "").resolve()
    return (a.get_backend_name(), a.host, a.port or 5432, a.database) == (
        b.get_backend_name(),
        b.host,
        b.port or 5432,
        b.database,
    )


def _counts(conn: Connection) -> dict[str, int]:
    """Rows in each auth table the database has (a table not made yet counts as none)."""
    existing = set(inspect(conn).get_table_names())
    return {
        table.name: int(conn.scalar(select(func.count()).select_from(table)) or 0)
        for table in TABLES
        if table.name in existing
    }


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n)


@contextmanager
def _engine(url: URL, what: str, secrets: list[str]) -> Iterator[Engine]:
    try:
        engine = create_db_engine(url.render_as_string(hide_password=False))
    except OSError as exc:  # a SQLite file that cannot be made
        raise CopyError(f"cannot open {what}: {_one_line(exc, secrets)}") from None
    try:
        yield engine
    finally:
        engine.dispose()


def _check_source(source: URL) -> None:
    if source.get_backend_name() != "sqlite":
        return
    # create_db_engine would make an empty file: refuse before.
    if not source.database or source.database == ":memory:" or not Path(source.database).is_file():
        raise CopyError(
            f"the source database {masked(source)} does not exist (are MG_AUTH_DATABASE_URL "
            "and MG_VAR_DIR / MG_ROOT set as for the stack?)"
        )


def copy_database(
    source_url: str,
    target_url: str,
    *,
    replace: bool = False,
    report: Callable[[str], None] = print,
) -> CopyResult:
    """Copy every auth table from ``source_url`` into ``target_url`` (see the module doc)."""
    source = make_url(source_url)
    target = parse_target(target_url)
    result = CopyResult(masked(source), masked(target), head_revision())
    if target.get_backend_name() == "postgresql" and "connect_timeout" not in target.query:
        target = target.update_query_dict({"connect_timeout": _CONNECT_TIMEOUT})
    secrets = [p for p in (source.password, target.password) if p]
    if _same_database(source, target):
        raise CopyError(f"the source and the target are the same database ({result.source})")
    _check_source(source)

    def fail(what: str, exc: BaseException) -> CopyError:
        return CopyError(f"{what}: {_one_line(exc, secrets)}")

    source_name, target_name = f"the source {result.source}", f"the target {result.target}"
    with _engine(source, source_name, secrets) as src_engine:
        try:
            revision = schema_revision(src_engine)
        except SQLAlchemyError as exc:
            raise fail(f"cannot read {source_name}", exc) from None
        if revision != result.revision:
            raise CopyError(
                f"{source_name} is at schema revision {revision or 'none'}, not the newest "
                f"({result.revision}): run `modelgate db upgrade` on it first"
            )
        report(f"source {result.source}: revision {revision}")
        with _engine(target, target_name, secrets) as dst_engine:
            _upgrade_and_copy(src_engine, dst_engine, result, replace, report, fail)
    return result


def _upgrade_and_copy(
    src_engine: Engine,
    dst_engine: Engine,
    result: CopyResult,
    replace: bool,
    report: Callable[[str], None],
    fail: Callable[[str, BaseException], CopyError],
) -> None:
    target_name = f"the target {result.target}"
    try:
        before = schema_revision(dst_engine)
        with dst_engine.connect() as conn:
            existing = _counts(conn)
    except SQLAlchemyError as exc:
        raise fail(f"cannot reach {target_name}", exc) from None
    # Refused before the upgrade too: a non-empty target is left exactly as it was.
    if any(existing.values()) and not replace:
        raise CopyError(_not_empty(result.target, existing))
    try:
        upgrade_schema(dst_engine)
    except Exception as exc:  # Alembic's own errors too (a target newer than this code)
        raise fail(f"cannot upgrade {target_name}", exc) from None
    report(f"target {result.target}: revision {before or 'empty'} -> {result.revision}")

    try:
        _copy(src_engine, dst_engine, result, replace, report)
    except SQLAlchemyError as exc:
        at = f" at table {result.table}" if result.table else ""
        raise fail(f"copy failed{at}, nothing was written to the target", exc) from None


def _not_empty(where: str, counts: dict[str, int]) -> str:
    return (
        f"the target {where} already holds rows ({_describe(counts)}): refusing to merge or "
        "overwrite; empty it, or add --replace to replace them in the same transaction"
    )


def _copy(
    src_engine: Engine,
    dst_engine: Engine,
    result: CopyResult,
    replace: bool,
    report: Callable[[str], None],
) -> None:
    # One read transaction on the source (a consistent snapshot; on SQLite it holds the
    # write lock, so a still-running auth service waits rather than changing rows under us),
    # one write transaction on the target.
    with src_engine.connect() as src, dst_engine.begin() as dst:
        if dst.dialect.name == "postgresql":
            # Auth replicas already on the target wait until the copy commits or rolls back.
            names = ", ".join(table.name for table in TABLES)
            dst.execute(text(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE"))
        existing = _counts(dst)  # again, under the lock: the check above may be stale
        if any(existing.values()):
            if not replace:
                raise CopyError(_not_empty(result.target, existing))
            for table in reversed(TABLES):
                dst.execute(table.delete())
            result.replaced = {name: n for name, n in existing.items() if n}
            report(f"target: deleted {_describe(existing)} (--replace, same transaction)")
        for table in TABLES:
            result.table = table.name
            key = list(table.primary_key.columns)
            rows = src.execution_options(yield_per=BATCH).execute(select(table).order_by(*key))
            copied = 0
            for batch in rows.partitions(BATCH):
                dst.execute(table.insert(), [dict(row._mapping) for row in batch])
                copied += len(batch)
            result.rows[table.name] = copied
            report(f"{table.name}: {copied} rows")
        result.table = None
        written = _counts(dst)
        if written != result.rows:  # cannot happen unless a table is written to meanwhile
            raise CopyError(f"row counts differ after the copy ({written} != {result.rows})")
        if dst.dialect.name == "postgresql":
            result.sequences = _advance_sequences(dst)
            for column, next_id in result.sequences.items():
                report(f"sequence of {column}: next value {next_id}")


def _advance_sequences(conn: Connection) -> dict[str, int]:
    """Explicit ids do not move a PostgreSQL sequence: set each past the highest copied id."""
    advanced: dict[str, int] = {}
    for table in TABLES:
        column = table.autoincrement_column
        if column is None:
            continue
        next_id = conn.scalar(
            text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), "  # noqa: S608 (model names)
                f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
            ),
            {"table": table.name, "column": column.name},
        )
        if next_id is not None:
            advanced[f"{table.name}.{column.name}"] = int(next_id)
    return advanced
