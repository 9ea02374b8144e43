"""Users: first admin, admin-only management, validation, argon2id hashes, no secrets in logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from auth_testlib import (
    ADMIN_PASSWORD,
    USER_PASSWORD,
    bearer,
    login,
    make_settings,
    running,
    sign_in,
)
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.main import create_app
from modelgate_auth.schemas import clean_text
from modelgate_common import RateLimitSettings
from modelgate_common._logging import JsonFormatter
from sqlalchemy import create_engine, text


def _password_hash(settings: AuthSettings, username: str) -> str:
    engine = create_engine(settings.database)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    text("SELECT password_hash FROM users WHERE username = :u"), {"u": username}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_first_admin_is_created_from_the_secret_file(
    client: TestClient, settings: AuthSettings
) -> None:
    token = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    me = client.get("/auth/users/me", headers=bearer(token)).json()
    assert me["username"] == "admin"
    assert me["role"] == "admin"
    assert not me["disabled"]


@pytest.mark.parametrize("database_url", [None], ids=["sqlite"])
def test_database_file_is_private(client: TestClient, settings: AuthSettings) -> None:
    db_file = settings.common.var_dir / "data" / "users.db"
    assert db_file.stat().st_mode & 0o777 == 0o600
    assert db_file.parent.stat().st_mode & 0o077 == 0


def test_stored_hash_is_argon2id(
    client: TestClient, make_user: Any, settings: AuthSettings
) -> None:
    make_user("alice")
    stored = _password_hash(settings, "alice")
    assert stored.startswith("$argon2id$")
    assert USER_PASSWORD not in stored
    assert _password_hash(settings, "admin").startswith("$argon2id$")


def test_first_admin_is_not_recreated_and_file_not_needed_afterwards(
    tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url)
    with TestClient(create_app(settings)) as client:
        assert login(client, "admin", ADMIN_PASSWORD).status_code == 200
    settings.admin_password_path.unlink()
    with TestClient(create_app(settings)) as client:
        assert login(client, "admin", ADMIN_PASSWORD).status_code == 200


def test_missing_admin_password_on_first_start_is_a_clear_error(
    tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url)
    settings.admin_password_path.unlink()
    with pytest.raises(RuntimeError, match="modelgate init"):
        with TestClient(create_app(settings)):
            pass


def test_admin_manages_users(client: TestClient, admin_token: str) -> None:
    headers = bearer(admin_token)
    created = client.post(
        "/auth/users",
        json={"username": "carol", "password": USER_PASSWORD, "full_name": "Carol C"},
        headers=headers,
    )
    assert created.status_code == 201
    assert created.json()["role"] == "user"
    assert created.json()["full_name"] == "Carol C"
    assert "password" not in created.text and "hash" not in created.text

    listed = client.get("/auth/users", headers=headers).json()
    assert [u["username"] for u in listed] == ["admin", "carol"]
    assert client.get("/auth/users/carol", headers=headers).json()["username"] == "carol"

    patched = client.patch("/auth/users/carol", json={"role": "admin"}, headers=headers)
    assert patched.status_code == 200 and patched.json()["role"] == "admin"
    patched = client.patch("/auth/users/carol", json={"full_name": None}, headers=headers)
    assert patched.json()["full_name"] is None and patched.json()["role"] == "admin"

    assert client.delete("/auth/users/carol", headers=headers).status_code == 204
    assert client.get("/auth/users/carol", headers=headers).status_code == 404
    assert client.delete("/auth/users/carol", headers=headers).status_code == 404
    assert login(client, "carol", USER_PASSWORD).status_code == 400


def test_duplicate_user_is_409(client: TestClient, make_user: Any, admin_token: str) -> None:
    make_user("alice")
    again = {"username": "alice", "password": USER_PASSWORD}
    assert client.post("/auth/users", json=again, headers=bearer(admin_token)).status_code == 409


def test_list_users_pages(client: TestClient, make_user: Any, admin_token: str) -> None:
    for name in ("u-a", "u-b", "u-c"):
        make_user(name)
    page = client.get("/auth/users", params={"offset": 1, "limit": 2}, headers=bearer(admin_token))
    assert [u["username"] for u in page.json()] == ["u-a", "u-b"]
    too_big = client.get("/auth/users", params={"limit": 501}, headers=bearer(admin_token))
    assert too_big.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/auth/users", None),
        ("POST", "/auth/users", {"username": "mallory", "password": USER_PASSWORD}),
        ("GET", "/auth/users/admin", None),
        ("PATCH", "/auth/users/admin", {"disabled": True}),
        ("PATCH", "/auth/users/alice", {"role": "admin"}),
        ("DELETE", "/auth/users/admin", None),
    ],
)
def test_user_role_on_admin_routes_is_403(
    client: TestClient, user_tokens: dict[str, Any], method: str, path: str, body: Any
) -> None:
    response = client.request(method, path, json=body, headers=bearer(user_tokens["access_token"]))
    assert response.status_code == 403
    # Nothing changed.
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 200
    assert login(client, "mallory", USER_PASSWORD).status_code == 400


def test_admin_routes_without_a_token_are_401(client: TestClient) -> None:
    response = client.get("/auth/users")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_role_in_a_non_admin_request_is_refused(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    headers = bearer(user_tokens["access_token"])
    response = client.patch("/auth/users/me", json={"role": "admin"}, headers=headers)
    assert response.status_code == 403
    assert client.get("/auth/users/me", headers=headers).json()["role"] == "user"


def test_user_changes_own_full_name_and_password(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    headers = bearer(user_tokens["access_token"])
    named = client.patch("/auth/users/me", json={"full_name": "<b>Alice</b> A."}, headers=headers)
    assert named.status_code == 200 and named.json()["full_name"] == "Alice A."

    new_password = "another-long-password"
    wrong = {"password": new_password, "current_password": "not-my-password"}
    assert client.patch("/auth/users/me", json=wrong, headers=headers).status_code == 403
    missing_current = {"password": new_password}
    assert client.patch("/auth/users/me", json=missing_current, headers=headers).status_code == 422
    change = {"password": new_password, "current_password": USER_PASSWORD}
    assert client.patch("/auth/users/me", json=change, headers=headers).status_code == 200
    # A new password ends every session, this one too.
    assert client.get("/auth/users/me", headers=headers).status_code == 401
    assert login(client, "alice", USER_PASSWORD).status_code == 400
    assert login(client, "alice", new_password).status_code == 200


@pytest.mark.parametrize(
    "username", ["ab", "a" * 33, "Alice", "al ice", "al/ice", "alice@example.com", "ali\u00e7e", ""]
)
def test_user_name_rules(client: TestClient, admin_token: str, username: str) -> None:
    body = {"username": username, "password": USER_PASSWORD}
    assert client.post("/auth/users", json=body, headers=bearer(admin_token)).status_code == 422


@pytest.mark.parametrize("username", ["abc", "a" * 32, "a.b-c_9"])
def test_user_names_allowed(client: TestClient, admin_token: str, username: str) -> None:
    body = {"username": username, "password": USER_PASSWORD}
    assert client.post("/auth/users", json=body, headers=bearer(admin_token)).status_code == 201


@pytest.mark.parametrize(
    ("password", "status"),
    [("x" * 11, 422), ("x" * 12, 201), ("x" * 128, 201), ("x" * 129, 422), ("x" * 100_000, 422)],
)
def test_password_length_rules(
    client: TestClient, admin_token: str, password: str, status: int
) -> None:
    body = {"username": "pat", "password": password}
    response = client.post("/auth/users", json=body, headers=bearer(admin_token))
    assert response.status_code == status
    assert password not in response.text


@pytest.mark.parametrize(
    "body",
    [
        {"username": "dave", "password": USER_PASSWORD, "is_admin": True},
        {"username": "dave", "password": USER_PASSWORD, "role": "root"},
        {"username": "dave", "password": USER_PASSWORD, "disabled": "no"},
        {"username": "dave", "password": 123456789012345},
        {"username": ["dave"], "password": USER_PASSWORD},
        {"username": "dave", "password": USER_PASSWORD, "full_name": "x" * 101},
    ],
)
def test_create_user_schema_is_strict(client: TestClient, admin_token: str, body: Any) -> None:
    response = client.post("/auth/users", json=body, headers=bearer(admin_token))
    assert response.status_code == 422
    assert USER_PASSWORD not in response.text


def test_empty_update_is_422(client: TestClient, make_user: Any, admin_token: str) -> None:
    make_user("alice")
    assert (
        client.patch("/auth/users/alice", json={}, headers=bearer(admin_token)).status_code == 422
    )


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<script>alert(1)</script>Bob", "Bob"),
        ("<b>Bob</b> <i>Smith</i>", "Bob Smith"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;Eve", "Eve"),
        ('<img src=x onerror="alert(1)">Zed', "Zed"),
        ("Tom & Jerry", "Tom & Jerry"),
        ("a < b", "a < b"),
        ("  many   spaces\n\tand\x00 controls ", "many spaces and controls"),
        ("Zoë Ñoño", "Zoë Ñoño"),
    ],
)
def test_full_name_html_is_stripped(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_full_name_is_stored_clean(client: TestClient, admin_token: str) -> None:
    body = {
        "username": "mal",
        "password": USER_PASSWORD,
        "full_name": '<a href="javascript:x()">Mal</a><script>x</script>',
    }
    response = client.post("/auth/users", json=body, headers=bearer(admin_token))
    assert response.json()["full_name"] == "Mal"
    listed = client.get("/auth/users", headers=bearer(admin_token)).text
    assert "<script>" not in listed and "javascript:" not in listed


def test_last_active_admin_cannot_be_demoted_disabled_or_removed(
    client: TestClient, admin_token: str, make_user: Any
) -> None:
    headers = bearer(admin_token)
    assert (
        client.patch("/auth/users/admin", json={"role": "user"}, headers=headers).status_code == 409
    )
    assert (
        client.patch("/auth/users/admin", json={"disabled": True}, headers=headers).status_code
        == 409
    )
    assert client.delete("/auth/users/admin", headers=headers).status_code == 409
    make_user("second", role="admin")
    assert (
        client.patch("/auth/users/admin", json={"disabled": True}, headers=headers).status_code
        == 200
    )


def test_disabling_a_user_revokes_their_tokens(
    client: TestClient, user_tokens: dict[str, Any], admin_token: str
) -> None:
    access = user_tokens["access_token"]
    assert client.get("/auth/users/me", headers=bearer(access)).status_code == 200
    client.patch("/auth/users/alice", json={"disabled": True}, headers=bearer(admin_token))
    assert client.get("/auth/users/me", headers=bearer(access)).status_code == 401
    assert login(client, "alice", USER_PASSWORD).status_code == 400
    # Enabled again: a new login works, old tokens stay revoked.
    client.patch("/auth/users/alice", json={"disabled": False}, headers=bearer(admin_token))
    fresh = login(client, "alice", USER_PASSWORD)
    assert fresh.status_code == 200
    assert (
        client.get("/auth/users/me", headers=bearer(fresh.json()["access_token"])).status_code
        == 200
    )
    assert client.get("/auth/users/me", headers=bearer(access)).status_code == 401


def test_deleted_then_recreated_user_does_not_inherit_tokens(
    client: TestClient, user_tokens: dict[str, Any], admin_token: str, make_user: Any
) -> None:
    client.delete("/auth/users/alice", headers=bearer(admin_token))
    make_user("alice")
    old = user_tokens["access_token"]
    assert client.get("/auth/users/me", headers=bearer(old)).status_code == 401
    refresh = client.post("/auth/refresh", json={"refresh_token": user_tokens["refresh_token"]})
    assert refresh.status_code == 401
    new = login(client, "alice", USER_PASSWORD).json()["access_token"]
    assert client.get("/auth/users/me", headers=bearer(new)).status_code == 200


def test_no_password_or_token_in_any_log_line(
    client: TestClient, settings: AuthSettings, make_user: Any, admin_token: str
) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter("auth"))
    logging.getLogger().addHandler(handler)
    try:
        make_user("alice")
        tokens = login(client, "alice", USER_PASSWORD).json()
        login(client, "alice", "wrong-password-attempt")
        login(client, "nobody", "unknown-user-password")
        login(client, "alice", "x" * 129)
        refreshed = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})  # reuse
        client.post("/auth/logout", headers=bearer(refreshed.json()["access_token"]))
        client.patch(
            "/auth/users/alice",
            json={"password": "admin-set-password-1"},
            headers=bearer(admin_token),
        )
        client.post(
            "/auth/users",
            json={"username": "bob", "password": "shortpw1"},
            headers=bearer(admin_token),
        )
    finally:
        logging.getLogger().removeHandler(handler)
    audit_file = settings.common.log_dir / "audit.jsonl"
    audit_lines = audit_file.read_text().splitlines()
    assert any(json.loads(line).get("audit") == "refresh_reuse" for line in audit_lines)
    assert any(json.loads(line).get("audit") == "login_failed" for line in audit_lines)
    everything = "\n".join(lines + audit_lines)
    assert "login_failed" in everything
    secrets = [
        USER_PASSWORD,
        ADMIN_PASSWORD,
        "wrong-password-attempt",
        "unknown-user-password",
        "x" * 129,
        "admin-set-password-1",
        "shortpw1",
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed.json()["access_token"],
        refreshed.json()["refresh_token"],
        admin_token,
        # The JWT's signature alone must not leak either.
        tokens["access_token"].rsplit(".", 1)[1],
    ]
    for secret in secrets:
        assert secret not in everything


def test_hash_is_upgraded_when_the_parameters_change(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url)
    with TestClient(create_app(settings)):
        pass
    assert "$m=1024,t=1,p=1$" in _password_hash(settings, "admin")
    stronger = make_settings(tmp_path, redis_url, argon2_memory_kib=2048, argon2_time_cost=2)
    with TestClient(create_app(stronger)) as client:
        assert login(client, "admin", ADMIN_PASSWORD).status_code == 200
    assert "$m=2048,t=2,p=1$" in _password_hash(settings, "admin")


@pytest.mark.anyio
async def test_current_password_guesses_count_as_failed_sign_ins(
    tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url)
    settings.common.ratelimit = RateLimitSettings(login="100/minute", login_failures="3/hour")
    async with running(settings) as from_address:
        home = from_address("10.3.3.3")
        form = {"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD}
        admin = (await home.post("/auth/token", data=form)).json()["access_token"]
        body = {"username": "alice", "password": USER_PASSWORD}
        await home.post("/auth/users", json=body, headers=bearer(admin))
        form = {"grant_type": "password", "username": "alice", "password": USER_PASSWORD}
        headers = bearer((await home.post("/auth/token", data=form)).json()["access_token"])
        guesses = [
            (
                await home.patch(
                    "/auth/users/me",
                    json={"password": "a-new-password-123", "current_password": f"guess-{i}-xxxx"},
                    headers=headers,
                )
            ).status_code
            for i in range(3)
        ]
        assert guesses == [403, 403, 403]
        right = {"password": "a-new-password-123", "current_password": USER_PASSWORD}
        assert (await home.patch("/auth/users/me", json=right, headers=headers)).status_code == 429
        # The user name's sign-in budget is the same one: spent for every new address...
        assert await sign_in(from_address("10.4.4.4"), "alice", USER_PASSWORD) == 429
        # ...while the address alice signed in from before still lets her in.
        assert await sign_in(home, "alice", USER_PASSWORD) == 200
        # A full-name change needs no password and is not throttled.
        named = await home.patch("/auth/users/me", json={"full_name": "Alice"}, headers=headers)
        assert named.status_code == 200


def test_two_admins_demoted_at_once_leave_one(
    client: TestClient, make_user: Any, settings: AuthSettings
) -> None:
    """Two concurrent demotions of the two active admins: exactly one succeeds
    (PostgreSQL needs the admin rows locked; SQLite's write lock serializes anyway)."""
    from concurrent.futures import ThreadPoolExecutor

    from modelgate_auth.schemas import UserUpdate
    from modelgate_common import ServiceError

    make_user("bob", role="admin")
    service = client.app.state.auth_service  # type: ignore[attr-defined]

    def demote(name: str) -> str:
        try:
            service.update_user(name, UserUpdate(role="user"), actor="test")
        except ServiceError:
            return "refused"
        return "done"

    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(demote, ["admin", "bob"]))
        assert outcomes == ["done", "refused"]
        # Put the demoted one back for the next round.
        demoted = next(u for u in ("admin", "bob") if service.get_user(u).role == "user")
        service.update_user(demoted, UserUpdate(role="admin"), actor="test")
