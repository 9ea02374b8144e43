"""In-process tests of the auth service: a real SQLite file in a temporary folder
and a real, throwaway Redis (the root conftest's ``redis_server``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.main import create_app
from modelgate_common import CommonSettings

ADMIN_PASSWORD = "first-admin-password-for-tests"
USER_PASSWORD = "a-long-enough-user-password"


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return str(redis_server.url)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_settings(root: Path, redis_url: str, **overrides: Any) -> AuthSettings:
    secrets = root / "secrets"
    if not secrets.exists():
        secrets.mkdir(mode=0o700)
        password_file = secrets / "admin_password"
        password_file.write_text(ADMIN_PASSWORD + "\n")
        password_file.chmod(0o600)
    values: dict[str, Any] = {
        "common": CommonSettings(
            secrets_dir=secrets,
            var_dir=root / "var",
            redis_url=redis_url,
            environment="development",
        ),
        # Light argon2id parameters keep the suite fast; the algorithm is the same.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "argon2_parallelism": 1,
        # Tests call the sync themselves; the background loop must not race them.
        "revocation_sync_interval": 300,
    }
    values.update(overrides)
    return AuthSettings(**values)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> AuthSettings:
    return make_settings(tmp_path, redis_url)


@pytest.fixture
def client(settings: AuthSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def login(client: TestClient, username: str, password: str, scope: str | None = None) -> Any:
    form = {"grant_type": "password", "username": username, "password": password}
    if scope is not None:
        form["scope"] = scope
    return client.post("/auth/token", data=form)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
