"""Service accounts: the admin API, the client_credentials grant with both client
authentication methods, scope bounds, revocation on every change that must end the
client's tokens, the failure limit, and the audit trail."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from auth_testlib import ADMIN_PASSWORD, USER_PASSWORD, bearer, login, make_settings
from fastapi.testclient import TestClient
from jose import jwt
from modelgate_auth.clients import ClientAuthFailed
from modelgate_auth.config import AuthSettings
from modelgate_auth.main import create_app
from modelgate_common import RateLimitSettings
from sqlalchemy import text


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _client_token(
    client: TestClient, creds: dict[str, Any], method: str = "basic", scope: str | None = None
) -> Any:
    form = {"grant_type": "client_credentials"}
    if scope is not None:
        form["scope"] = scope
    if method == "basic":
        return client.post(
            "/auth/token", data=form, headers=_basic(creds["client_id"], creds["client_secret"])
        )
    form |= {"client_id": creds["client_id"], "client_secret": creds["client_secret"]}
    return client.post("/auth/token", data=form)


@pytest.fixture
def make_client(client: TestClient, admin_token: str) -> Any:
    def make(name: str = "batch-job", scopes: list[str] | None = None) -> dict[str, Any]:
        body = {"name": name, "scopes": scopes or ["models:read", "models:predict"]}
        response = client.post("/auth/clients", json=body, headers=bearer(admin_token))
        assert response.status_code == 201, response.text
        return dict(response.json())

    return make


def _audit(settings: AuthSettings, prefix: str) -> list[dict[str, Any]]:
    path = settings.common.log_dir / "audit.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if str(e.get("audit", "")).startswith(prefix)]


# -- admin API -----------------------------------------------------------------------------
def test_a_client_is_created_with_a_secret_shown_once_and_stored_hashed(
    client: TestClient, admin_token: str, make_client: Any
) -> None:
    created = make_client("nightly", ["models:predict", "models:read", "models:read"])
    assert set(created) == {
        "client_id",
        "client_secret",
        "name",
        "scopes",
        "disabled",
        "created_at",
        "updated_at",
    }
    assert created["scopes"] == ["models:read", "models:predict"]
    assert len(created["client_secret"]) >= 40
    listed = client.get("/auth/clients", headers=bearer(admin_token)).json()
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    assert "client_secret" not in listed[0]
    one = client.get(f"/auth/clients/{created['client_id']}", headers=bearer(admin_token))
    assert "client_secret" not in one.json()
    service = client.app.state.auth_service  # type: ignore[attr-defined]
    with service.engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_hash FROM clients")).scalar_one()
    assert stored.startswith("$argon2id$")
    assert created["client_secret"] not in stored


def test_client_names_are_unique(make_client: Any, client: TestClient, admin_token: str) -> None:
    make_client("same")
    again = client.post(
        "/auth/clients",
        json={"name": "same", "scopes": ["models:read"]},
        headers=bearer(admin_token),
    )
    assert again.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": ["models:read"]},
        {"name": "ok-name", "scopes": []},
        {"name": "ok-name", "scopes": ["users:admin"]},
        {"name": "ok-name", "scopes": ["nope"]},
        {"name": "ok-name", "scopes": "models:read"},
        {"name": 5, "scopes": ["models:read"]},
        {"name": "ok-name"},
        {"scopes": ["models:read"]},
        {"name": "ok-name", "scopes": ["models:read"], "role": "admin"},
        {"name": "<b>x</b>", "scopes": ["models:read"]},
        {"name": "a" * 65, "scopes": ["models:read"]},
    ],
)
def test_client_bodies_are_strict(
    client: TestClient, admin_token: str, body: dict[str, Any]
) -> None:
    response = client.post("/auth/clients", json=body, headers=bearer(admin_token))
    assert response.status_code == 422, response.text


def test_the_client_api_is_for_admins_only(
    client: TestClient, make_user: Any, make_client: Any
) -> None:
    created = make_client()
    make_user("alice")
    user = login(client, "alice", USER_PASSWORD).json()["access_token"]
    path = f"/auth/clients/{created['client_id']}"
    assert client.get("/auth/clients", headers=bearer(user)).status_code == 403
    assert client.get(path, headers=bearer(user)).status_code == 403
    assert client.delete(path, headers=bearer(user)).status_code == 403
    assert client.get("/auth/clients").status_code == 401
    assert client.get("/auth/clients", headers=bearer("not.a.token")).status_code == 401
    # A client's own token has no user management scope, whatever it was given.
    own = _client_token(client, created).json()["access_token"]
    assert client.get("/auth/clients", headers=bearer(own)).status_code == 403


def test_unknown_client_ids_are_404(client: TestClient, admin_token: str) -> None:
    for path in ("/auth/clients/0123456789abcdef01234567", "/auth/clients/..%2Fusers"):
        assert client.get(path, headers=bearer(admin_token)).status_code == 404
        assert client.delete(path, headers=bearer(admin_token)).status_code == 404
        patch = client.patch(path, json={"disabled": True}, headers=bearer(admin_token))
        assert patch.status_code == 404


def test_update_bodies_are_strict(client: TestClient, admin_token: str, make_client: Any) -> None:
    path = f"/auth/clients/{make_client()['client_id']}"
    for body in ({}, {"disabled": "yes"}, {"secret": "mine"}, {"scopes": ["users:admin"]}):
        assert client.patch(path, json=body, headers=bearer(admin_token)).status_code == 422


# -- client_credentials --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["basic", "post"])
def test_client_credentials_with_either_authentication_method(
    client: TestClient, make_client: Any, settings: AuthSettings, method: str
) -> None:
    created = make_client()
    response = _client_token(client, created, method)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh
    assert body["scope"] == "models:read models:predict"
    claims = jwt.get_unverified_claims(body["access_token"])
    assert claims["sub"] == f"client:{created['client_id']}"
    assert claims["role"] == "client"
    assert claims["scope"] == body["scope"]
    events = _audit(settings, "client_token")
    assert [e["client_id"] for e in events] == [created["client_id"]]


def test_a_client_gets_fewer_scopes_on_request_and_never_more(
    client: TestClient, make_client: Any
) -> None:
    created = make_client()
    narrowed = _client_token(client, created, scope="models:predict")
    assert narrowed.json()["scope"] == "models:predict"
    for scope in ("models:predict crypto:encrypt", "users:admin", "zzz"):
        refused = _client_token(client, created, scope=scope)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("method", ["basic", "post"])
def test_wrong_unknown_and_disabled_clients_get_one_answer(
    client: TestClient, admin_token: str, make_client: Any, method: str
) -> None:
    good = make_client("good")
    off = make_client("off")
    client.patch(
        f"/auth/clients/{off['client_id']}", json={"disabled": True}, headers=bearer(admin_token)
    )
    cases = [
        {**good, "client_secret": "wrong"},
        {"client_id": "0123456789abcdef01234567", "client_secret": "x"},
        {"client_id": "not-even-an-id", "client_secret": "x"},
        off,
    ]
    passwords = client.app.state.auth_service.passwords  # type: ignore[attr-defined]
    answers = []
    for creds in cases:
        before = passwords.verifications
        answers.append(_client_token(client, creds, method))
        assert passwords.verifications == before + 1  # every case costs one hash check
    status = 401 if method == "basic" else 400
    assert {a.status_code for a in answers} == {status}
    assert len({a.text for a in answers}) == 1
    assert answers[0].json()["error"] == "invalid_client"
    if method == "basic":
        assert all(a.headers["www-authenticate"].startswith("Basic ") for a in answers)


def test_client_credentials_need_client_authentication(client: TestClient) -> None:
    response = client.post("/auth/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"
    only_id = {"grant_type": "client_credentials", "client_id": "0123456789abcdef01234567"}
    assert client.post("/auth/token", data=only_id).json()["error"] == "invalid_client"


def test_a_client_cannot_use_the_user_grants(
    client: TestClient, make_client: Any, make_user: Any
) -> None:
    created = make_client()
    make_user("alice")
    headers = _basic(created["client_id"], created["client_secret"])
    form = {"grant_type": "password", "username": "alice", "password": USER_PASSWORD}
    response = client.post("/auth/token", data=form, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"
    refresh = {"grant_type": "refresh_token", "refresh_token": "whatever"}
    response = client.post("/auth/token", data=refresh, headers=headers)
    assert response.json()["error"] == "unauthorized_client"
    # A wrong secret there is invalid_client, not a hint about the grant.
    wrong = _basic(created["client_id"], "wrong")
    assert client.post("/auth/token", data=form, headers=wrong).json()["error"] == "invalid_client"


# -- revocation ------------------------------------------------------------------------------
def _me_status(client: TestClient, token: str) -> int:
    # Any authenticated route answers 401 for a revoked token: the client list is one
    # (403 for a live client token, which lacks users:admin).
    return client.get("/auth/clients", headers=bearer(token)).status_code


@pytest.mark.parametrize(
    "change",
    [{"disabled": True}, {"rotate_secret": True}, {"scopes": ["models:read"]}, "delete"],
    ids=["disable", "rotate", "scopes", "delete"],
)
def test_changes_revoke_the_clients_live_tokens(
    client: TestClient, admin_token: str, make_client: Any, change: Any
) -> None:
    created = make_client()
    token = _client_token(client, created).json()["access_token"]
    assert _me_status(client, token) == 403
    path = f"/auth/clients/{created['client_id']}"
    if change == "delete":
        assert client.delete(path, headers=bearer(admin_token)).status_code == 204
    else:
        response = client.patch(path, json=change, headers=bearer(admin_token))
        assert response.status_code == 200, response.text
        assert ("client_secret" in response.json()) == ("rotate_secret" in change)
    assert _me_status(client, token) == 401


def test_a_rotated_secret_replaces_the_old_one(
    client: TestClient, admin_token: str, make_client: Any
) -> None:
    created = make_client()
    path = f"/auth/clients/{created['client_id']}"
    rotated = client.patch(path, json={"rotate_secret": True}, headers=bearer(admin_token))
    assert rotated.headers["cache-control"] == "no-store"
    new = rotated.json()["client_secret"]
    assert new != created["client_secret"]
    assert _client_token(client, created).status_code == 401
    assert _client_token(client, {**created, "client_secret": new}).status_code == 200


def test_an_enabled_again_client_signs_in_and_a_renamed_one_keeps_its_id(
    client: TestClient, admin_token: str, make_client: Any
) -> None:
    created = make_client()
    path = f"/auth/clients/{created['client_id']}"
    client.patch(path, json={"disabled": True}, headers=bearer(admin_token))
    back = client.patch(
        path, json={"disabled": False, "name": "renamed"}, headers=bearer(admin_token)
    )
    assert back.json()["name"] == "renamed" and back.json()["disabled"] is False
    assert _client_token(client, created).status_code == 200


def test_every_client_event_is_audited(
    client: TestClient, admin_token: str, make_client: Any, settings: AuthSettings
) -> None:
    created = make_client()
    path = f"/auth/clients/{created['client_id']}"
    _client_token(client, created)
    _client_token(client, {**created, "client_secret": "wrong"})
    _client_token(client, created, scope="crypto:encrypt")
    client.patch(path, json={"rotate_secret": True}, headers=bearer(admin_token))
    client.delete(path, headers=bearer(admin_token))
    events = [(e["audit"], e.get("actor")) for e in _audit(settings, "client_")]
    assert events == [
        ("client_created", "admin"),
        ("client_token", None),
        ("client_auth_failed", None),
        ("client_token_refused", None),
        ("client_updated", "admin"),
        ("client_deleted", "admin"),
    ]
    text_of_log = (settings.common.log_dir / "audit.jsonl").read_text()
    assert created["client_secret"] not in text_of_log


def test_a_user_name_can_never_be_a_client_subject(client: TestClient, admin_token: str) -> None:
    body = {"username": "client:0123456789abcdef01234567", "password": USER_PASSWORD}
    assert client.post("/auth/users", json=body, headers=bearer(admin_token)).status_code == 422


# -- the failure limit ------------------------------------------------------------------------
@pytest.fixture
def limited(tmp_path: Path, redis_url: str) -> Any:
    limits = RateLimitSettings(login="1000/minute", login_failures="3/hour")
    settings = make_settings(tmp_path, redis_url)
    settings.common.ratelimit = limits
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_failed_client_authentication_is_limited_per_client(limited: TestClient) -> None:
    admin = login(limited, "admin", ADMIN_PASSWORD).json()["access_token"]
    body = {"name": "locked", "scopes": ["models:read"]}
    created = limited.post("/auth/clients", json=body, headers=bearer(admin)).json()
    other = limited.post(
        "/auth/clients", json={"name": "other", "scopes": ["models:read"]}, headers=bearer(admin)
    ).json()
    wrong = {**created, "client_secret": "wrong"}
    assert [_client_token(limited, wrong).status_code for _ in range(3)] == [401] * 3
    passwords = limited.app.state.auth_service.passwords  # type: ignore[attr-defined]
    before = passwords.verifications
    # Locked, even with the right secret, and without a hash being checked.
    locked = _client_token(limited, created)
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert passwords.verifications == before
    # Another client is not affected; nor is a user.
    assert _client_token(limited, other).status_code == 200
    assert login(limited, "admin", ADMIN_PASSWORD).status_code == 200


@pytest.mark.parametrize(
    "change", [{"scopes": ["models:read"]}, {"rotate_secret": True}, {"disabled": True}]
)
def test_a_client_token_racing_a_change_that_revokes_is_not_signed(
    client: TestClient, admin_token: str, make_client: Any, change: dict[str, Any]
) -> None:
    """The admin narrows, rotates or disables while the secret is being checked: a token
    signed afterwards would postdate the change's cutoff and outlive it."""
    created = make_client("racer", ["models:read", "models:predict"])
    clients = client.app.state.client_service  # type: ignore[attr-defined]
    authenticated = clients.authenticate(created["client_id"], created["client_secret"], None)
    changed = client.patch(
        f"/auth/clients/{created['client_id']}", json=change, headers=bearer(admin_token)
    )
    assert changed.status_code == 200, changed.text
    with pytest.raises(ClientAuthFailed):
        clients.token(authenticated, "", None)


def test_a_client_name_shaped_like_a_client_id_is_refused(
    client: TestClient, admin_token: str, make_client: Any
) -> None:
    """The CLI takes a client's id or name, the id first: a name that looks like an id
    (another client's, say) could make `modelgate client remove NAME` remove that one."""
    other = make_client("other-job")
    body = {"name": other["client_id"], "scopes": ["models:read"]}
    response = client.post("/auth/clients", json=body, headers=bearer(admin_token))
    assert response.status_code == 422, response.text
    renamed = client.patch(
        f"/auth/clients/{other['client_id']}",
        json={"name": "0123456789abcdef01234567"},
        headers=bearer(admin_token),
    )
    assert renamed.status_code == 422, renamed.text
