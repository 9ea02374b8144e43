"""The auth service through nginx: an off-the-shelf OAuth2 client, independent JWT
verification against the published JWKS, refresh, logout, users, key rotation."""

from __future__ import annotations

import os
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from authlib.integrations.requests_client import OAuth2Session
from modelgate_auth.keys import KeyStore
from requests.adapters import HTTPAdapter

ISSUER = os.environ.get("MG_JWT_ISSUER", "modelgate-auth")
AUDIENCE = os.environ.get("MG_JWT_AUDIENCE", "modelgate")
CLAIMS = ["iss", "aud", "sub", "role", "scope", "iat", "nbf", "exp", "jti", "uid"]
USER_SCOPES = "models:read models:predict crypto:encrypt crypto:decrypt"
# A route of each service that needs a valid token, with the scope it needs.
PROTECTED = [
    ("GET", "/auth/users/me", None),
    ("GET", "/v1/models", None),
    ("POST", "/crypto/encrypt", {"plaintext": "hello"}),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def statuses(client: httpx.Client, token: str) -> list[int]:
    """The status of each service's protected route for ``token``."""
    return [
        client.request(method, path, json=body, headers=bearer(token)).status_code
        for method, path, body in PROTECTED
    ]


class SourceAddressAdapter(HTTPAdapter):
    """requests from a given loopback address (the login limit counts per address)."""

    def __init__(self, source_ip: str) -> None:
        self.source_ip = source_ip
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source_ip, 0)
        super().init_poolmanager(*args, **kwargs)


def test_oauth2_client_library_gets_a_token_that_an_independent_jwt_library_verifies(
    base_url: str, ca_file: str, admin_password: str, fresh_source_ip: Callable[[], str]
) -> None:
    session = OAuth2Session(client_id="modelgate-tests", token_endpoint_auth_method="none")
    session.verify = ca_file
    session.trust_env = False  # REQUESTS_CA_BUNDLE and proxies from the environment don't apply
    session.mount("https://", SourceAddressAdapter(fresh_source_ip()))
    token = session.fetch_token(f"{base_url}/auth/token", username="admin", password=admin_password)
    assert token["token_type"].lower() == "bearer"
    assert token["expires_in"] == 900

    jwks_client = pyjwt.PyJWKClient(
        f"{base_url}/auth/.well-known/jwks.json",
        ssl_context=ssl.create_default_context(cafile=ca_file),
    )
    signing_key = jwks_client.get_signing_key_from_jwt(token["access_token"])
    claims = pyjwt.decode(
        token["access_token"],
        signing_key.key,
        algorithms=["RS256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": CLAIMS},
    )
    assert claims["sub"] == "admin"
    assert claims["role"] == "admin"
    assert "users:admin" in claims["scope"].split()
    assert pyjwt.get_unverified_header(token["access_token"])["kid"] == signing_key.key_id
    # The same library refuses it for another audience.
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token["access_token"], signing_key.key, algorithms=["RS256"], audience="other")
    # The client library's session uses the token as a bearer token.
    me = session.get(f"{base_url}/auth/users/me")
    assert me.status_code == 200
    assert me.json()["username"] == "admin"


def test_seed_alias_token_route(
    login_response: Callable[..., httpx.Response], admin_password: str, client: httpx.Client
) -> None:
    response = login_response("admin", admin_password, path="/token")
    assert response.status_code == 200
    assert "no-store" in response.headers["cache-control"]
    me = client.get("/auth/users/me", headers=bearer(response.json()["access_token"]))
    assert me.json()["username"] == "admin"


def test_login_failures_look_the_same(
    login_response: Callable[..., httpx.Response],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
    admin_token: str,
) -> None:
    user = make_user()
    disabled = make_user()
    client.patch(
        f"/auth/users/{disabled['username']}", json={"disabled": True}, headers=bearer(admin_token)
    )
    answers = [
        login_response("no-such-user", "a-password-of-some-length"),
        login_response(user["username"], "a-wrong-password-for-sure"),
        login_response(disabled["username"], disabled["password"]),
    ]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert len({a.text for a in answers}) == 1
    assert answers[0].json()["error"] == "invalid_grant"


def test_a_user_token_works_on_every_service_and_not_on_admin_routes(
    login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
) -> None:
    user = make_user()
    token = login(user["username"], user["password"])
    assert token["scope"] == USER_SCOPES
    assert statuses(client, token["access_token"]) == [200, 200, 200]
    for method, path in (("GET", "/auth/users"), ("DELETE", "/auth/users/admin")):
        response = client.request(method, path, headers=bearer(token["access_token"]))
        assert response.status_code == 403


def test_scope_narrows_the_token_on_every_service(
    login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
) -> None:
    user = make_user()
    token = login(user["username"], user["password"], scope="models:read")
    assert token["scope"] == "models:read"
    assert statuses(client, token["access_token"]) == [200, 200, 403]


def test_refresh_rotation_and_reuse_detection(
    login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
) -> None:
    user = make_user()
    first = login(user["username"], user["password"])
    second = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    rotated = second.json()
    assert statuses(client, rotated["access_token"]) == [200, 200, 200]
    reuse = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    # The whole family is revoked, on every service.
    for token in (first["access_token"], rotated["access_token"]):
        assert statuses(client, token) == [401, 401, 401]
    again = client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert again.status_code == 401


def test_logout_revokes_the_token_on_every_service(
    login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
) -> None:
    user = make_user()
    token = login(user["username"], user["password"])
    assert statuses(client, token["access_token"]) == [200, 200, 200]
    assert client.post("/auth/logout", headers=bearer(token["access_token"])).status_code == 204
    assert statuses(client, token["access_token"]) == [401, 401, 401]
    refresh = client.post("/auth/refresh", json={"refresh_token": token["refresh_token"]})
    assert refresh.status_code == 401


def test_disabling_a_user_revokes_their_refreshed_token_everywhere(
    login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
    admin_token: str,
) -> None:
    user = make_user()
    token = login(user["username"], user["password"])
    refreshed = client.post("/auth/refresh", json={"refresh_token": token["refresh_token"]})
    access = refreshed.json()["access_token"]
    assert statuses(client, access) == [200, 200, 200]
    patched = client.patch(
        f"/auth/users/{user['username']}", json={"disabled": True}, headers=bearer(admin_token)
    )
    assert patched.status_code == 200
    assert statuses(client, access) == [401, 401, 401]
    again = client.post("/auth/refresh", json={"refresh_token": refreshed.json()["refresh_token"]})
    assert again.status_code == 401


def test_admin_user_management(
    client: httpx.Client, admin_token: str, login: Callable[..., dict[str, Any]]
) -> None:
    headers = bearer(admin_token)
    name = f"t-crud-{os.getpid()}"
    body = {
        "username": name,
        "password": "a-password-for-crud",
        "full_name": "<script>alert(1)</script>Crud <b>User</b>",
    }
    created = client.post("/auth/users", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["full_name"] == "Crud User"
    try:
        assert name in [u["username"] for u in client.get("/auth/users", headers=headers).json()]
        promoted = client.patch(f"/auth/users/{name}", json={"role": "admin"}, headers=headers)
        assert promoted.json()["role"] == "admin"
        token = login(name, "a-password-for-crud")
        assert "users:admin" in token["scope"].split()
        duplicate = client.post("/auth/users", json=body, headers=headers)
        assert duplicate.status_code == 409
    finally:
        assert client.delete(f"/auth/users/{name}", headers=headers).status_code == 204
    assert client.get(f"/auth/users/{name}", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"password": "x" * 129}, 422),
        ({"password": "x" * 11}, 422),
        ({"password": "x" * 12, "role": "superuser"}, 422),
        ({"password": "x" * 12, "extra": 1}, 422),
    ],
)
def test_create_user_validation(
    client: httpx.Client, admin_token: str, body: dict[str, Any], status: int
) -> None:
    response = client.post(
        "/auth/users", json={"username": "t-invalid", **body}, headers=bearer(admin_token)
    )
    assert response.status_code == status
    assert "x" * 11 not in response.text


def test_login_with_a_129_character_password_is_an_invalid_request(
    login_response: Callable[..., httpx.Response],
) -> None:
    response = login_response("admin", "p" * 129)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "p" * 129 not in response.text


def _keystore(secrets_dir: Path) -> KeyStore:
    """The same key files `modelgate keys rotate-jwt|retire-jwt` edit (the CLI itself is
    tested in cli/tests; calling it in-process here saves its start-up time)."""
    jwks = Path(os.environ.get("MG_JWKS_FILE", secrets_dir / "jwks.json"))
    return KeyStore(secrets_dir / "jwt", jwks)


@pytest.mark.native
def test_key_rotation_with_tokens_of_both_keys_in_flight(
    native_stack: Any,
    secrets_dir: Path,
    login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
) -> None:
    user = make_user()
    old = login(user["username"], user["password"])["access_token"]
    store = _keystore(secrets_dir)
    store.rotate()
    time.sleep(1.2)  # the signer and the verifiers look at the JWKS file once a second
    middle = login(user["username"], user["password"])["access_token"]
    middle_kid = pyjwt.get_unverified_header(middle)["kid"]
    assert middle_kid != pyjwt.get_unverified_header(old)["kid"]
    published = [k["kid"] for k in client.get("/auth/.well-known/jwks.json").json()["keys"]]
    assert published[0] == middle_kid
    # Tokens of both keys verify on every service.
    assert statuses(client, old) == [200, 200, 200]
    assert statuses(client, middle) == [200, 200, 200]

    store.rotate()
    time.sleep(1.2)
    newest = login(user["username"], user["password"])["access_token"]
    store.retire(middle_kid, min_age=0)
    time.sleep(1.2)
    published = [k["kid"] for k in client.get("/auth/.well-known/jwks.json").json()["keys"]]
    assert middle_kid not in published
    # The retired key's tokens stop verifying everywhere, even ones verified (cached) before.
    assert statuses(client, middle) == [401, 401, 401]
    assert statuses(client, newest) == [200, 200, 200]
    assert statuses(client, old) == [200, 200, 200]


def test_jwks_is_public_and_has_no_private_members(client: httpx.Client) -> None:
    response = client.get("/auth/.well-known/jwks.json")
    assert response.status_code == 200
    for key in response.json()["keys"]:
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["kid"]
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()


@pytest.mark.native
def test_no_password_or_token_in_any_log_file(
    var_dir: Path,
    native_stack: Any,
    login: Callable[..., dict[str, Any]],
    login_response: Callable[..., httpx.Response],
    make_user: Callable[..., dict[str, str]],
    client: httpx.Client,
) -> None:
    user = make_user()
    wrong = f"wrong-{uuid.uuid4().hex}"
    assert login_response(user["username"], wrong).status_code == 400
    first = login(user["username"], user["password"])
    second = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
    client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})  # reuse
    client.post("/auth/logout", headers=bearer(second["access_token"]))
    time.sleep(1.5)  # nginx flushes its access log buffer every second
    logs = {path: path.read_text(errors="replace") for path in (var_dir / "log").rglob("*")
            if path.is_file()}  # fmt: skip
    everything = "\n".join(logs.values())
    assert user["username"] in everything  # the events were logged, by name
    secrets = [user["password"], wrong, first["access_token"], first["refresh_token"],
               second["access_token"], second["refresh_token"],
               first["access_token"].rsplit(".", 1)[1]]  # fmt: skip
    for secret in secrets:
        leaks = [str(path) for path, text in logs.items() if secret in text]
        assert not leaks, f"a secret appears in {leaks}"
