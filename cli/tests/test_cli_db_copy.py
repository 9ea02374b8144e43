"""`modelgate db copy` from a real SQLite file into a fresh database of the throwaway
PostgreSQL cluster and into another SQLite file. The source is filled through the auth
app in-process; the copy is checked row by row and by the auth app pointed at the target
(logins, refresh, revocations, new ids)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis
from _pytest.fixtures import SubRequest
from auth_testlib import (
    ADMIN_PASSWORD,
    USER_PASSWORD,
    bearer,
    login,
    make_settings,
    open_databases,
)
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.db import Base, create_db_engine, upgrade_schema
from modelgate_auth.main import create_app
from modelgate_cli.main import app
from pg_testlib import PostgresCluster, free_port
from sqlalchemy import make_url, select
from typer.testing import CliRunner

runner = CliRunner()
TABLES = [
    "users",
    "clients",
    "refresh_families",
    "refresh_tokens",
    "revocations",
    "service_keys",
]
# The throwaway cluster trusts loopback: any password gets in, so a URL can carry one.
PASSWORD = "Pg-S3cret-do-not-print"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MG_ROOT", str(tmp_path))
    for name in (
        "MG_SECRETS_DIR",
        "MG_VAR_DIR",
        "MG_AUTH_DATABASE_URL",
        "MG_AUTH_DATABASE_URL_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def redis_client(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def target_url(request: SubRequest, project: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{project / 'elsewhere' / 'users.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return str(make_url(cluster.new_database()).set(password=PASSWORD).render_as_string(False))


def _settings(project: Path, redis_server: Any, url: str | None = None) -> AuthSettings:
    return make_settings(project, redis_server.url, database_url=url)


def _populate(settings: AuthSettings) -> dict[str, Any]:
    """Users, a service account, a rotated refresh token, a logout (revocations) in the
    source database."""
    with TestClient(create_app(settings)) as client:
        admin = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
        for name, extra in (("alice", {"full_name": "Alice A"}), ("bob", {}), ("carol", {})):
            body = {"username": name, "password": USER_PASSWORD, **extra}
            assert client.post("/auth/users", json=body, headers=bearer(admin)).status_code == 201
        disabled = client.patch("/auth/users/carol", json={"disabled": True}, headers=bearer(admin))
        assert disabled.status_code == 200, disabled.text
        service_account = {"name": "nightly", "scopes": ["models:predict"]}
        made = client.post("/auth/clients", json=service_account, headers=bearer(admin))
        assert made.status_code == 201, made.text
        first = login(client, "alice", USER_PASSWORD).json()
        rotated = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert rotated.status_code == 200, rotated.text
        bob = login(client, "bob", USER_PASSWORD).json()
        # An unknown user name: the audit log's hashing key is made (service_keys).
        assert login(client, "nobody", USER_PASSWORD).status_code == 400
        assert client.post("/auth/logout", headers=bearer(bob["access_token"])).status_code == 204
        return {"alice": rotated.json(), "bob": bob}


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in conn.execute(select(table).order_by(*table.primary_key.columns))
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def _copy(*args: str) -> Any:
    return runner.invoke(app, ["db", "copy", *args])


def _source_url(project: Path) -> str:
    return f"sqlite:///{project / 'var' / 'data' / 'users.db'}"


def test_the_auth_schema_is_the_five_tables_copied() -> None:
    assert sorted(Base.metadata.tables) == sorted(TABLES)


def test_copy_keeps_every_row_and_the_target_serves(
    project: Path, redis_server: Any, redis_client: redis.Redis, target_url: str
) -> None:
    tokens = _populate(_settings(project, redis_server))
    source_rows = _rows(_source_url(project))
    assert all(source_rows[name] for name in TABLES), source_rows.keys()

    result = _copy("--to", target_url)
    assert result.exit_code == 0, result.output
    for name in TABLES:
        assert f"{name}: {len(source_rows[name])} rows" in result.output
    assert "in one transaction" in result.output
    # Nothing secret on the terminal: no URL password, no password or token hash.
    assert PASSWORD not in result.output
    for secret in (
        [row[2] for row in source_rows["users"]]
        + [row[3] for row in source_rows["clients"]]
        + [row[0] for row in source_rows["refresh_tokens"]]
    ):
        assert secret not in result.output
    assert "$argon2" not in result.output

    assert _rows(target_url) == source_rows  # every row, every column
    assert _rows(_source_url(project)) == source_rows  # the source is only read

    # The auth service on the target, with a Redis that forgot everything: revocations
    # must come back from the copied table.
    redis_client.flushdb()
    with TestClient(create_app(_settings(project, redis_server, target_url))) as client:
        assert login(client, "alice", USER_PASSWORD).status_code == 200  # argon2 hash intact
        admin = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
        assert login(client, "carol", USER_PASSWORD).status_code == 400  # still disabled
        refreshed = client.post(
            "/auth/refresh", json={"refresh_token": tokens["alice"]["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        me = client.get("/auth/users/me", headers=bearer(tokens["alice"]["access_token"]))
        assert me.json()["full_name"] == "Alice A"
        revoked = client.get("/auth/users/me", headers=bearer(tokens["bob"]["access_token"]))
        assert revoked.status_code == 401
        bob_refresh = {"refresh_token": tokens["bob"]["refresh_token"]}
        assert client.post("/auth/refresh", json=bob_refresh).status_code == 401
        # New rows get fresh ids (PostgreSQL sequences moved past the copied ones).
        body = {"username": "dave", "password": USER_PASSWORD}
        created = client.post("/auth/users", json=body, headers=bearer(admin))
        assert created.status_code == 201, created.text
        logout = client.post("/auth/logout", headers=bearer(refreshed.json()["access_token"]))
        assert logout.status_code == 204
    after = _rows(target_url)
    dave = next(row for row in after["users"] if row[1] == "dave")
    assert dave[0] > max(row[0] for row in source_rows["users"])
    assert len(after["revocations"]) > len(source_rows["revocations"])
    assert min(row[0] for row in after["revocations"][len(source_rows["revocations"]) :]) > max(
        row[0] for row in source_rows["revocations"]
    )


def test_a_target_with_rows_is_refused_and_left_untouched(
    project: Path, redis_server: Any, target_url: str
) -> None:
    _populate(_settings(project, redis_server))
    assert _copy("--to", target_url).exit_code == 0
    before = _rows(target_url)
    with TestClient(create_app(_settings(project, redis_server))) as client:
        admin = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
        body = {"username": "erin", "password": USER_PASSWORD}
        assert client.post("/auth/users", json=body, headers=bearer(admin)).status_code == 201

    again = _copy("--to", target_url)
    assert again.exit_code == 1
    assert "already holds rows (" in again.output
    assert "users 4," in again.output
    assert "--replace" in again.output
    assert PASSWORD not in again.output
    assert _rows(target_url) == before


def test_replace_swaps_the_rows_in_one_transaction(
    project: Path, redis_server: Any, target_url: str
) -> None:
    # Auth started on the target first: it made its own first admin.
    with TestClient(create_app(_settings(project, redis_server, target_url))):
        pass
    assert len(_rows(target_url)["users"]) == 1
    _populate(_settings(project, redis_server))
    result = _copy("--to", target_url, "--replace")
    assert result.exit_code == 0, result.output
    assert "deleted users 1" in result.output
    assert _rows(target_url) == _rows(_source_url(project))


def _orphan_refresh_token(project: Path) -> None:
    """A row the target refuses (its family does not exist) in the last table copied
    with a foreign key: users and families are written before it fails."""
    # sqlite3's context manager commits but does not close: closing() does.
    with closing(sqlite3.connect(project / "var" / "data" / "users.db")) as conn, conn:
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute(
            "INSERT INTO refresh_tokens VALUES ('ffff', 'no-such-family', 'jti', 1, 1, 1, NULL)"
        )


def test_a_failure_mid_copy_leaves_the_target_empty(
    project: Path, redis_server: Any, target_url: str
) -> None:
    _populate(_settings(project, redis_server))
    _orphan_refresh_token(project)
    result = _copy("--to", target_url)
    assert result.exit_code == 1
    assert "copy failed at table refresh_tokens, nothing was written" in result.output
    assert "users: 4 rows" in result.output  # it did get that far
    assert "INSERT" not in result.output  # no statement, no parameters (hashes)
    assert PASSWORD not in result.output
    assert all(rows == [] for rows in _rows(target_url).values())


def test_a_failed_replace_keeps_the_old_rows(
    project: Path, redis_server: Any, target_url: str
) -> None:
    with TestClient(create_app(_settings(project, redis_server, target_url))):
        pass
    before = _rows(target_url)
    _populate(_settings(project, redis_server))
    _orphan_refresh_token(project)
    result = _copy("--to", target_url, "--replace")
    assert result.exit_code == 1
    assert _rows(target_url) == before


def test_the_target_url_can_come_from_a_file(
    project: Path, redis_server: Any, postgres: PostgresCluster
) -> None:
    _populate(_settings(project, redis_server))
    url = make_url(postgres.new_database()).set(password=PASSWORD).render_as_string(False)
    url_file = project / "target-url"
    url_file.write_text(url + "\n")
    result = _copy("--to-file", str(url_file))
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert ":***@127.0.0.1" in result.output
    assert _rows(url) == _rows(_source_url(project))


def test_a_source_behind_the_newest_revision_is_refused(project: Path) -> None:
    engine = create_db_engine(_source_url(project))
    try:
        upgrade_schema(engine, "0001")
    finally:
        engine.dispose()
    target = project / "target.db"
    result = _copy("--to", f"sqlite:///{target}")
    assert result.exit_code == 1
    assert "run `modelgate db upgrade` on it first" in result.output
    assert not target.exists()


def _one_error_line(result: Any) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_a_missing_source_is_refused_and_not_created(project: Path) -> None:
    line = _one_error_line(_copy("--to", f"sqlite:///{project / 'target.db'}"))
    assert "does not exist" in line
    assert not (project / "var" / "data" / "users.db").exists()
    assert not (project / "target.db").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mysql://modelgate:{PASSWORD}@127.0.0.1/modelgate", "scheme 'mysql' is not supported"),
        (
            f"postgresql+psycopg2://modelgate:{PASSWORD}@127.0.0.1/x",
            "'postgresql+psycopg2' is not supported",
        ),
        ("not a url", "not a database URL"),
        ("sqlite://", "names no file"),
    ],
)
def test_a_wrong_target_scheme_is_refused(project: Path, url: str, expected: str) -> None:
    line = _one_error_line(_copy("--to", url))
    assert expected in line
    assert PASSWORD not in line


def test_an_unreachable_target_is_one_clear_line(project: Path, redis_server: Any) -> None:
    _populate(_settings(project, redis_server))
    url = f"postgresql+psycopg://modelgate:{PASSWORD}@127.0.0.1:{free_port()}/modelgate"
    line = _one_error_line(_copy("--to", url))
    assert "cannot reach the target postgresql+psycopg://modelgate:***@127.0.0.1" in line
    assert PASSWORD not in line


def test_the_target_is_given_exactly_once(project: Path, tmp_path: Path) -> None:
    assert _copy().exit_code == 2
    both = _copy("--to", "sqlite:///x.db", "--to-file", str(tmp_path / "url"))
    assert both.exit_code == 2


def test_the_source_itself_is_refused_as_target(project: Path, redis_server: Any) -> None:
    _populate(_settings(project, redis_server))
    line = _one_error_line(_copy("--to", _source_url(project), "--replace"))
    assert "the same database" in line
    assert len(_rows(_source_url(project))["users"]) == 4


def test_copy_closes_both_databases_when_it_succeeds_and_when_it_fails(
    project: Path, redis_server: Any
) -> None:
    _populate(_settings(project, redis_server))
    assert open_databases(project) == []
    assert _copy("--to", f"sqlite:///{project / 'copied.db'}").exit_code == 0
    assert open_databases(project) == []
    _orphan_refresh_token(project)
    assert _copy("--to", f"sqlite:///{project / 'failed.db'}").exit_code == 1
    assert open_databases(project) == []
