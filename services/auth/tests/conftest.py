"""In-process tests of the auth service: a real, throwaway Redis (the root conftest's
``redis_server``) and a real user database. Every test that uses ``settings`` runs
twice: against a SQLite file in a temporary folder (the default) and against a fresh
database in a PostgreSQL cluster that the test run starts (pg_testlib)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _pytest.fixtures import SubRequest
from auth_testlib import ADMIN_PASSWORD, USER_PASSWORD, bearer, login, make_settings
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.main import create_app
from pg_testlib import PostgresCluster, postgres  # noqa: F401 (the session fixture)


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return str(redis_server.url)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: SubRequest) -> str | None:
    """None: the default SQLite file under var_dir; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture
def settings(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, database_url: str | None
) -> AuthSettings:
    return make_settings(tmp_path, redis_url, database_url=database_url)


@pytest.fixture
def client(settings: AuthSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def admin_token(client: TestClient) -> str:
    response = login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def make_user(client: TestClient, admin_token: str) -> Any:
    def make(username: str = "alice", role: str = "user", **fields: Any) -> dict[str, Any]:
        body = {"username": username, "password": USER_PASSWORD, "role": role, **fields}
        response = client.post("/auth/users", json=body, headers=bearer(admin_token))
        assert response.status_code == 201, response.text
        return {"username": username, "password": USER_PASSWORD}

    return make


@pytest.fixture
def user_tokens(client: TestClient, make_user: Any) -> dict[str, Any]:
    user = make_user("alice")
    response = login(client, user["username"], user["password"])
    assert response.status_code == 200, response.text
    return dict(response.json())
