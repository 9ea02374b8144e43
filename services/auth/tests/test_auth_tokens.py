"""Password grant, token contents, refresh rotation and reuse detection, logout."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from auth_testlib import ADMIN_PASSWORD, USER_PASSWORD, bearer, login
from fastapi.testclient import TestClient
from jose import jwt
from modelgate_auth.config import AuthSettings
from modelgate_auth.schemas import UserUpdate
from modelgate_auth.service import RefreshRejected
from modelgate_common import ADMIN_SCOPES, ANALYST_SCOPES, PROBABILITY_SCOPE, USER_SCOPES, KeySet
from sqlalchemy import text


def _refresh(client: TestClient, token: str) -> int:
    return client.post("/auth/refresh", json={"refresh_token": token}).status_code


def _me(client: TestClient, token: str) -> int:
    return client.get("/auth/users/me", headers=bearer(token)).status_code


def _verify(settings: AuthSettings, token: str) -> dict[str, Any]:
    keyset = KeySet(settings.common.jwks_path)
    keyset.load()
    kid = jwt.get_unverified_header(token)["kid"]
    key = keyset.get(kid)
    assert key is not None
    return dict(
        jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=settings.common.jwt_audience,
            issuer=settings.common.jwt_issuer,
        )
    )


def test_password_grant_returns_an_rs256_token_with_every_claim(
    client: TestClient, settings: AuthSettings
) -> None:
    response = login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    published = json.loads(settings.common.jwks_path.read_text())["keys"]
    assert header["kid"] == published[0]["kid"]
    claims = _verify(settings, body["access_token"])
    assert set(claims) == {"iss", "aud", "sub", "role", "scope", "iat", "nbf", "exp", "jti", "uid"}
    assert claims["sub"] == "admin"
    assert claims["role"] == "admin"
    assert claims["scope"].split() == list(ADMIN_SCOPES) == body["scope"].split()
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 5


def test_a_re_created_user_name_gets_a_new_user_id_and_no_legacy_keys(
    client: TestClient, settings: AuthSettings, make_user: Any, admin_token: str
) -> None:
    """The ``uid`` claim is the user's immutable random id: a user deleted and created
    again under the same name gets another one, and only users that existed before ids
    (marked by the migration) carry ``legacy_owner_keys``."""
    make_user("alice")
    first = _verify(settings, login(client, "alice", USER_PASSWORD).json()["access_token"])
    again = _verify(settings, login(client, "alice", USER_PASSWORD).json()["access_token"])
    assert first["uid"] == again["uid"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["uid"])
    assert "legacy_owner_keys" not in first
    assert client.delete("/auth/users/alice", headers=bearer(admin_token)).status_code == 204
    make_user("alice")
    second = _verify(settings, login(client, "alice", USER_PASSWORD).json()["access_token"])
    assert second["sub"] == "alice" and second["uid"] != first["uid"]
    assert "legacy_owner_keys" not in second
    # A user the migration found (legacy_owner_keys set in the database) carries the claim,
    # on the password grant and on refresh.
    engine = client.app.state.auth_service.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET legacy_owner_keys = true WHERE username = 'admin'"))
    tokens = login(client, "admin", ADMIN_PASSWORD).json()
    assert _verify(settings, tokens["access_token"])["legacy_owner_keys"] is True
    refreshed = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert _verify(settings, refreshed.json()["access_token"])["legacy_owner_keys"] is True


def test_seed_alias_token_behaves_like_auth_token(client: TestClient) -> None:
    response = client.post("/token", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    me = client.get("/auth/users/me", headers=bearer(response.json()["access_token"]))
    assert me.status_code == 200
    assert me.json()["username"] == "admin"
    assert me.json()["role"] == "admin"


def test_user_gets_user_scopes_and_scope_narrows(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    body = login(client, "alice", USER_PASSWORD).json()
    assert body["scope"].split() == list(USER_SCOPES)
    narrowed = login(client, "alice", USER_PASSWORD, scope="models:read")
    assert narrowed.json()["scope"] == "models:read"
    # A scope the role does not have is not granted.
    mixed = login(client, "alice", USER_PASSWORD, scope="models:read users:admin")
    assert mixed.json()["scope"] == "models:read"
    refused = login(client, "alice", USER_PASSWORD, scope="users:admin")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"


def _audit_events(settings: AuthSettings, event: str) -> list[dict[str, Any]]:
    path = settings.common.log_dir / "audit.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("audit") == event]


@pytest.mark.parametrize("scope", ["zzz", "models:read zzz", "users:admin nope"])
def test_an_unknown_scope_answers_alike_for_right_and_wrong_passwords(
    client: TestClient, settings: AuthSettings, scope: str
) -> None:
    """An unknown scope name is refused before the password is checked: the right and a
    wrong password get the same 400, neither spends a password verification (so neither
    tells the other apart by time), and each refusal is audited."""
    passwords = client.app.state.auth_service.passwords  # type: ignore[attr-defined]
    before = passwords.verifications
    right = login(client, "admin", ADMIN_PASSWORD, scope=scope)
    wrong = login(client, "admin", "not-the-admin-password", scope=scope)
    unknown_user = login(client, "nobody", "not-the-admin-password", scope=scope)
    assert right.status_code == wrong.status_code == unknown_user.status_code == 400
    assert right.json() == wrong.json() == unknown_user.json()
    assert right.json()["detail"].startswith("invalid scope")
    assert passwords.verifications == before
    refused = _audit_events(settings, "login_refused")
    assert len(refused) == 3
    assert {e["reason"] for e in refused} == {"invalid_scope"}
    assert all(e["client_ip"] for e in refused)
    # The right password still signs in without the unknown name.
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 200


def test_a_scope_the_role_lacks_is_audited_like_a_sign_in(
    client: TestClient, settings: AuthSettings, make_user: Any
) -> None:
    """Known scopes the role does not have: only the right password learns this (400), and
    that answer leaves an audit line with the user name, as a successful sign-in does; a
    wrong password is an ordinary invalid_grant failure."""
    make_user("alice")
    refused = login(client, "alice", USER_PASSWORD, scope="users:admin")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"
    wrong = login(client, "alice", "not-the-right-password", scope="users:admin")
    assert wrong.json()["error"] == "invalid_grant"
    events = _audit_events(settings, "login_refused")
    assert [(e["user"], e["reason"]) for e in events] == [("alice", "scope_not_granted")]
    assert [e["reason"] for e in _audit_events(settings, "login_failed")] == ["bad_password"]


def test_probabilities_scope_only_for_roles_an_admin_grants(
    client: TestClient, make_user: Any, admin_token: str
) -> None:
    """models:probabilities is in no user token, asked for or not; an admin grants it
    by giving the analyst role, which takes effect at the next sign-in."""
    make_user("alice")
    assert PROBABILITY_SCOPE not in login(client, "alice", USER_PASSWORD).json()["scope"]
    asked = login(client, "alice", USER_PASSWORD, scope=f"models:predict {PROBABILITY_SCOPE}")
    assert asked.json()["scope"] == "models:predict"
    assert login(client, "alice", USER_PASSWORD, scope=PROBABILITY_SCOPE).status_code == 400
    granted = client.patch(
        "/auth/users/alice", json={"role": "analyst"}, headers=bearer(admin_token)
    )
    assert granted.status_code == 200 and granted.json()["role"] == "analyst"
    analyst = login(client, "alice", USER_PASSWORD).json()
    assert analyst["scope"].split() == list(ANALYST_SCOPES) == [*USER_SCOPES, PROBABILITY_SCOPE]
    assert PROBABILITY_SCOPE in login(client, "admin", ADMIN_PASSWORD).json()["scope"].split()
    # an analyst is no admin
    assert client.get("/auth/users", headers=bearer(analyst["access_token"])).status_code == 403


def test_narrowed_token_is_refused_where_a_missing_scope_is_needed(
    client: TestClient,
) -> None:
    token = login(client, "admin", ADMIN_PASSWORD, scope="models:read").json()["access_token"]
    assert client.get("/auth/users/me", headers=bearer(token)).status_code == 200
    response = client.get("/auth/users", headers=bearer(token))
    assert response.status_code == 403
    assert "insufficient_scope" in response.headers["www-authenticate"]


@pytest.mark.parametrize("case", ["unknown", "wrong-password", "disabled"])
def test_login_failures_are_indistinguishable(
    client: TestClient, make_user: Any, admin_token: str, case: str
) -> None:
    make_user("bob")
    client.patch("/auth/users/bob", json={"disabled": True}, headers=bearer(admin_token))
    username, password = {
        "unknown": ("nobody", USER_PASSWORD),
        "wrong-password": ("alice", "not-the-right-password"),
        "disabled": ("bob", USER_PASSWORD),
    }[case]
    if case == "wrong-password":
        make_user("alice")
    passwords = client.app.state.auth_service.passwords  # type: ignore[attr-defined]
    before = passwords.verifications
    response = login(client, username, password)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "incorrect username or password",
        "detail": "incorrect username or password",
    }
    assert response.headers["cache-control"] == "no-store"
    # Every path, the unknown user's too, spends one password verification.
    assert passwords.verifications == before + 1


def test_login_with_an_invalid_user_name_still_verifies_a_hash(client: TestClient) -> None:
    passwords = client.app.state.auth_service.passwords  # type: ignore[attr-defined]
    before = passwords.verifications
    response = login(client, "Robert'); DROP TABLE users;--", USER_PASSWORD)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert passwords.verifications == before + 1
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 200


def test_login_password_over_128_characters_is_an_invalid_request(client: TestClient) -> None:
    response = login(client, "admin", "x" * 129)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "x" * 129 not in response.text


def test_token_in_query_string_is_not_accepted(client: TestClient, admin_token: str) -> None:
    response = client.get("/auth/users/me", params={"access_token": admin_token})
    assert response.status_code == 401
    assert client.get("/auth/users/me", headers=bearer(admin_token)).status_code == 200


def test_refresh_rotates_and_the_old_refresh_token_is_spent(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    first = user_tokens["refresh_token"]
    response = client.post("/auth/refresh", json={"refresh_token": first})
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first
    assert second["access_token"] != user_tokens["access_token"]
    assert client.get("/auth/users/me", headers=bearer(second["access_token"])).status_code == 200
    third = client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert third.status_code == 200


def test_refresh_reuse_revokes_the_whole_family(
    client: TestClient, user_tokens: dict[str, Any], make_user: Any
) -> None:
    first = user_tokens["refresh_token"]
    rotated = client.post("/auth/refresh", json={"refresh_token": first}).json()
    # Another session of the same user, which reuse in the first must not touch.
    other = login(client, "alice", USER_PASSWORD).json()

    reuse = client.post("/auth/refresh", json={"refresh_token": first})
    assert reuse.status_code == 401
    assert reuse.json() == {"detail": "refresh token is invalid, expired or revoked"}
    # Everything in the family is dead: the rotated refresh token and both access tokens.
    assert (
        client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]}).status_code
        == 401
    )
    for token in (user_tokens["access_token"], rotated["access_token"]):
        assert client.get("/auth/users/me", headers=bearer(token)).status_code == 401
    assert client.get("/auth/users/me", headers=bearer(other["access_token"])).status_code == 200
    assert (
        client.post("/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code
        == 200
    )


def test_refresh_with_an_unknown_token_is_401(client: TestClient) -> None:
    response = client.post("/auth/refresh", json={"refresh_token": "made-up"})
    assert response.status_code == 401


def test_refresh_body_is_strict(client: TestClient, user_tokens: dict[str, Any]) -> None:
    token = user_tokens["refresh_token"]
    assert client.post("/auth/refresh", json={"refresh_token": token, "x": 1}).status_code == 422
    assert client.post("/auth/refresh", json={"refresh_token": 5}).status_code == 422
    assert client.post("/auth/refresh", json={}).status_code == 422


def test_refresh_is_refused_for_a_disabled_user(
    client: TestClient, user_tokens: dict[str, Any], admin_token: str
) -> None:
    client.patch("/auth/users/alice", json={"disabled": True}, headers=bearer(admin_token))
    response = client.post("/auth/refresh", json={"refresh_token": user_tokens["refresh_token"]})
    assert response.status_code == 401
    assert (
        client.get("/auth/users/me", headers=bearer(user_tokens["access_token"])).status_code == 401
    )


def test_refresh_keeps_the_narrowed_scope(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    tokens = login(client, "alice", USER_PASSWORD, scope="models:read").json()
    refreshed = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.json()["scope"] == "models:read"


def test_refresh_after_role_change_carries_the_new_role(
    client: TestClient, user_tokens: dict[str, Any], admin_token: str, settings: AuthSettings
) -> None:
    client.patch("/auth/users/alice", json={"role": "admin"}, headers=bearer(admin_token))
    # The role change revoked every token the user held, refresh tokens included.
    response = client.post("/auth/refresh", json={"refresh_token": user_tokens["refresh_token"]})
    assert response.status_code == 401
    assert (
        client.get("/auth/users/me", headers=bearer(user_tokens["access_token"])).status_code == 401
    )
    fresh = login(client, "alice", USER_PASSWORD).json()
    assert _verify(settings, fresh["access_token"])["role"] == "admin"
    assert client.get("/auth/users/me", headers=bearer(fresh["access_token"])).status_code == 200


def test_logout_revokes_the_access_token_and_its_refresh_family(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    access = user_tokens["access_token"]
    assert client.post("/auth/logout", headers=bearer(access)).status_code == 204
    assert client.get("/auth/users/me", headers=bearer(access)).status_code == 401
    refresh = client.post("/auth/refresh", json={"refresh_token": user_tokens["refresh_token"]})
    assert refresh.status_code == 401
    # Logging in again works.
    assert login(client, "alice", USER_PASSWORD).status_code == 200


def test_logout_after_refresh_revokes_earlier_access_tokens_of_the_session(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    rotated = client.post("/auth/refresh", json={"refresh_token": user_tokens["refresh_token"]})
    access = rotated.json()["access_token"]
    assert client.post("/auth/logout", headers=bearer(access)).status_code == 204
    old = user_tokens["access_token"]
    assert client.get("/auth/users/me", headers=bearer(old)).status_code == 401


def test_logout_needs_a_token(client: TestClient) -> None:
    response = client.post("/auth/logout")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_jwks_publishes_public_keys_only(client: TestClient, admin_token: str) -> None:
    response = client.get("/auth/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert len(keys) == 1
    assert set(keys[0]) == {"kty", "use", "alg", "kid", "n", "e"}
    assert keys[0]["kid"] == jwt.get_unverified_header(admin_token)["kid"]


def _login_count(client: TestClient, outcome: str) -> float:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("modelgate_logins_total{") and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_login_outcomes_are_counted(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    before = {o: _login_count(client, o) for o in ("success", "bad_password", "unknown_user")}
    login(client, "alice", USER_PASSWORD)
    login(client, "alice", "not-the-right-password")
    login(client, "nobody", "not-the-right-password")
    login(client, "nobody", "not-the-right-password")
    assert _login_count(client, "success") == before["success"] + 1
    assert _login_count(client, "bad_password") == before["bad_password"] + 1
    assert _login_count(client, "unknown_user") == before["unknown_user"] + 2


def test_concurrent_use_of_one_refresh_token_lets_exactly_one_through(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    service = client.app.state.auth_service  # type: ignore[attr-defined]
    token = user_tokens["refresh_token"]

    def attempt(_: int) -> str:
        try:
            service.refresh(token, None)
        except RefreshRejected:
            return "rejected"
        return "issued"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    # One winner; every other attempt is a reuse (never a database error).
    assert outcomes.count("issued") == 1
    assert outcomes.count("rejected") == 7


def test_expired_refresh_tokens_are_pruned(
    client: TestClient, user_tokens: dict[str, Any], settings: AuthSettings
) -> None:
    service = client.app.state.auth_service  # type: ignore[attr-defined]
    with service.engine.begin() as conn:
        conn.execute(text("UPDATE refresh_tokens SET expires_at = 0"))
    assert service.prune_refresh_tokens() >= 1
    with service.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM refresh_tokens")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM refresh_families")).scalar_one() == 0
    assert _refresh(client, user_tokens["refresh_token"]) == 401
    assert login(client, "alice", USER_PASSWORD).status_code == 200


def test_a_sign_in_racing_a_role_change_gets_no_token(
    client: TestClient, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin demotes the user while the password is being checked: the token that
    sign-in would sign postdates the demotion's cutoff, so it must not be signed with the
    scopes of the old role (nor at all: the user signs in again)."""
    make_user("racer", role="admin")
    service = client.app.state.auth_service  # type: ignore[attr-defined]
    verify = service.passwords.verify

    def verify_then_demote(password: str, stored: str) -> tuple[bool, str | None]:
        outcome = verify(password, stored)
        monkeypatch.setattr(service.passwords, "verify", verify)
        service.update_user("racer", UserUpdate(role="user"), "admin")
        return outcome

    monkeypatch.setattr(service.passwords, "verify", verify_then_demote)
    response = login(client, "racer", USER_PASSWORD)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    again = login(client, "racer", USER_PASSWORD)
    assert again.status_code == 200, again.text
    assert again.json()["scope"] == " ".join(USER_SCOPES)
