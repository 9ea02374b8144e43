"""The schema comes from the Alembic migrations, on SQLite and PostgreSQL alike:
they build exactly what the models describe, adopt a database made before Alembic,
and run again as a no-op (every replica runs them at start)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from auth_testlib import make_settings, open_databases
from modelgate_auth.config import AuthSettings
from modelgate_auth.db import (
    Base,
    _alembic_config,
    create_db_engine,
    head_revision,
    schema_revision,
    upgrade_schema,
)
from modelgate_auth.main import build_service
from sqlalchemy import Engine, inspect, text


@pytest.fixture
def engine(settings: AuthSettings) -> Engine:
    engine = create_db_engine(settings.database)
    yield engine  # type: ignore[misc]
    engine.dispose()


def test_migrations_build_what_the_models_describe(engine: Engine) -> None:
    assert schema_revision(engine) is None
    upgrade_schema(engine)
    assert schema_revision(engine) == head_revision() == "0004"
    with engine.connect() as conn:
        differences = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert differences == []


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO revocations (key, value, expires_at, created_at) "
                "VALUES ('k', '1', 1, 1)"
            )
        )
    upgrade_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM revocations")).scalar_one() == 1


def test_a_database_made_before_alembic_is_adopted_and_migrated(engine: Engine) -> None:
    # The schema as the service made it before migrations existed: what 0001 creates
    # (no revocations.created_at, no users.uid), without Alembic's version table.
    upgrade_schema(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text("INSERT INTO revocations (id, key, value, expires_at) VALUES (1, 'k', '1', 9)")
        )
    assert schema_revision(engine) is None
    upgrade_schema(engine)
    assert schema_revision(engine) == head_revision()
    columns = {c["name"] for c in inspect(engine).get_columns("revocations")}
    assert "created_at" in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT created_at FROM revocations")).scalar_one() == 0


def test_users_present_at_0004_get_random_ids_and_keep_name_derived_keys(
    engine: Engine,
) -> None:
    upgrade_schema(engine, "0003")
    with engine.begin() as conn:
        for name in ("alice", "bob"):
            conn.execute(
                text(
                    "INSERT INTO users (username, password_hash, role, disabled, created_at, "
                    "updated_at, revoked_before) VALUES (:name, 'h', 'user', false, 1, 1, 0)"
                ),
                {"name": name},
            )
    upgrade_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, legacy_owner_keys FROM users")).all()
        assert conn.execute(text("SELECT count(*) FROM service_keys")).scalar_one() == 0
    uids = [uid for uid, _ in rows]
    assert len(set(uids)) == 2
    assert all(len(uid) == 32 and int(uid, 16) >= 0 for uid in uids)
    assert [bool(legacy) for _, legacy in rows] == [True, True]


def test_the_migrations_ship_inside_the_package() -> None:
    import modelgate_auth

    versions = Path(modelgate_auth.__file__).parent / "migrations" / "versions"
    assert sorted(p.name for p in versions.glob("*.py")) == [
        "0001_initial.py",
        "0002_revocation_created_at.py",
        "0003_clients.py",
        "0004_user_ids_and_service_keys.py",
    ]


def test_replicas_starting_together_migrate_once(settings: AuthSettings) -> None:
    """Four replicas start at once on an empty database: they take turns (advisory lock
    on PostgreSQL, the write lock on SQLite) and every one of them succeeds."""
    engines = [create_db_engine(settings.database) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(upgrade_schema, engines))
        assert {schema_revision(e) for e in engines} == {head_revision()}
    finally:
        for e in engines:
            e.dispose()


def test_clients_migration_adds_and_drops_only_its_table(engine: Engine) -> None:
    upgrade_schema(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO revocations (key, value, expires_at, created_at) "
                "VALUES ('k', '1', 1, 1)"
            )
        )
    assert "clients" not in inspect(engine).get_table_names()
    upgrade_schema(engine, "0003")
    assert schema_revision(engine) == "0003"
    unique = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("clients")}
    assert {("client_id",), ("name",)} <= unique
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO clients (client_id, name, secret_hash, scopes, disabled, "
                "created_at, updated_at, revoked_before) "
                "VALUES ('0123456789abcdef01234567', 'job', 'h', 'models:read', false, 1, 1, 0)"
            )
        )
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0002")
    assert "clients" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM revocations")).scalar_one() == 1


def test_a_start_refused_by_the_schema_leaves_no_database_open(
    tmp_path: Path, redis_url: str
) -> None:
    """A database at a revision this version does not know (made by a newer one) stops
    the start with Alembic's error, and the engine made for it is disposed."""
    settings = make_settings(tmp_path, redis_url)
    engine = create_db_engine(settings.database)
    try:
        upgrade_schema(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    finally:
        engine.dispose()
    with pytest.raises(CommandError, match="ffff"):
        build_service(settings)
    assert open_databases(tmp_path) == []
