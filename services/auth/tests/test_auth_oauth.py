"""The token endpoint speaks RFC 6749: §5.2 errors beside ``detail``, a strict form
(§3.2), and ``grant_type=refresh_token`` (§6) with rotation and reuse detection."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from auth_testlib import USER_PASSWORD, bearer, login, make_settings
from fastapi.testclient import TestClient
from modelgate_auth.main import create_app


def _token(client: TestClient, form: dict[str, str], **kwargs: Any) -> Any:
    return client.post("/auth/token", data=form, **kwargs)


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    # RFC 6749 §5.2: printable ASCII without '"' and '\\' (the detail may hold anything).
    assert re.fullmatch(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+", body["error_description"])
    assert isinstance(body["detail"], str) and body["detail"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    return dict(body)


def _refresh_grant(client: TestClient, refresh_token: str, **extra: str) -> Any:
    return _token(client, {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra})


# -- form and errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"grant_type": "password", "username": "admin"}, "invalid_request"),
        ({"grant_type": "password", "password": USER_PASSWORD}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
        ({"grant_type": "x" * 65}, "invalid_request"),
        ({"username": "alice", "password": USER_PASSWORD, "scope": 'Models:"R'}, "invalid_scope"),
        ({"username": "alice", "password": USER_PASSWORD, "scope": "x" * 513}, "invalid_request"),
        ({"username": "a" * 257, "password": USER_PASSWORD}, "invalid_request"),
        ({"refresh_token": "r" * 257, "grant_type": "refresh_token"}, "invalid_request"),
    ],
)
def test_bad_forms_are_rfc6749_errors(
    client: TestClient, make_user: Any, form: dict[str, str], code: str
) -> None:
    make_user("alice")
    body = _error(_token(client, form), 400, code)
    # Nothing the client sent is echoed back.
    for value in form.values():
        if len(value) > 20:
            assert value not in body["detail"]


def test_a_parameter_given_twice_is_an_invalid_request(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    body = f"username=alice&password={USER_PASSWORD}&username=admin"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    response = client.post("/auth/token", content=body, headers=headers)
    assert "more than once" in _error(response, 400, "invalid_request")["detail"]


def test_unknown_parameters_are_ignored_and_empty_ones_are_absent(
    client: TestClient, make_user: Any
) -> None:
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD, "state": "x", "scope": ""}
    response = _token(client, form)
    assert response.status_code == 200, response.text
    assert response.json()["scope"].split()  # an empty scope asks for the role's scopes


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ('{"username": "admin", "password": "x"}', "application/json"),
        ("username=admin&password=x", "text/plain"),
        ("username=adm%FFin&password=x", "application/x-www-form-urlencoded"),
        ("username=admin\xe9&password=x", "application/x-www-form-urlencoded; charset=latin-1"),
        ("&".join(f"f{i}=1" for i in range(40)), "application/x-www-form-urlencoded"),
    ],
    ids=["json", "text", "bad-utf8", "not-ascii", "too-many-fields"],
)
def test_a_body_that_is_not_a_form_is_an_invalid_request(
    client: TestClient, content: str, content_type: str
) -> None:
    response = client.post(
        "/auth/token", content=content.encode("latin-1"), headers={"content-type": content_type}
    )
    _error(response, 400, "invalid_request")


def test_a_huge_body_is_refused_before_it_is_parsed(client: TestClient) -> None:
    body = "username=admin&password=" + "x" * 2_000_000
    headers = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post("/auth/token", content=body, headers=headers).status_code == 413


def test_the_grant_type_defaults_to_password(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    response = _token(client, {"username": "alice", "password": USER_PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def test_a_client_id_alone_is_accepted_with_a_user_grant(
    client: TestClient, make_user: Any
) -> None:
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD, "client_id": "swagger-ui"}
    assert _token(client, form).status_code == 200


def test_an_unknown_client_secret_is_invalid_client(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD}
    posted = _token(client, {**form, "client_id": "nobody", "client_secret": "wrong"})
    _error(posted, 400, "invalid_client")
    assert "www-authenticate" not in posted.headers
    basic = base64.b64encode(b"nobody:wrong").decode()
    with_basic = _token(client, form, headers={"Authorization": f"Basic {basic}"})
    _error(with_basic, 401, "invalid_client")
    assert with_basic.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":no-id").decode(),
        "Basic " + base64.b64encode(b"bad%ZZ%FF:x").decode(),
        "Basic " + base64.b64encode("caf\xe9:x".encode("latin-1")).decode(),
        b"Basic \xe9\xe9\xe9\xe9",  # not even ASCII, so not base64
    ],
)
def test_malformed_client_authentication_is_invalid_client(
    client: TestClient, make_user: Any, authorization: str | bytes
) -> None:
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD}
    response = _token(client, form, headers={"Authorization": authorization})
    _error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_empty_basic_credentials_are_no_client_authentication(
    client: TestClient, make_user: Any
) -> None:
    """Swagger UI's Authorize sends ``Basic base64(":")`` when its client fields are empty."""
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD}
    empty = "Basic " + base64.b64encode(b":").decode()
    assert _token(client, form, headers={"Authorization": empty}).status_code == 200
    wrong = _token(client, {**form, "password": "not-it"}, headers={"Authorization": empty})
    _error(wrong, 400, "invalid_grant")
    assert "www-authenticate" not in wrong.headers


def test_a_bearer_header_is_not_client_authentication(client: TestClient, make_user: Any) -> None:
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD}
    assert _token(client, form, headers={"Authorization": "Bearer abc"}).status_code == 200


def test_an_empty_basic_id_and_secret_are_no_client_authentication(
    client: TestClient, make_user: Any
) -> None:
    """Swagger UI's password flow sends ``Basic Og==`` when its client fields are empty."""
    make_user("alice")
    form = {"username": "alice", "password": USER_PASSWORD}
    empty = {"Authorization": "Basic " + base64.b64encode(b":").decode()}
    assert _token(client, form, headers=empty).status_code == 200


def test_two_client_authentication_methods_are_an_invalid_request(client: TestClient) -> None:
    basic = base64.b64encode(b"a:b").decode()
    form = {"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"}
    response = _token(client, form, headers={"Authorization": f"Basic {basic}"})
    _error(response, 400, "invalid_request")


# -- refresh_token grant -------------------------------------------------------------------
def test_refresh_token_grant_rotates(client: TestClient, user_tokens: dict[str, Any]) -> None:
    response = _refresh_grant(client, user_tokens["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    rotated = response.json()
    assert rotated["refresh_token"] != user_tokens["refresh_token"]
    assert rotated["scope"] == user_tokens["scope"]
    me = client.get("/auth/users/me", headers=bearer(rotated["access_token"]))
    assert me.json()["username"] == "alice"
    # The token endpoint and the /auth/refresh alias share one rotation.
    alias = client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert alias.status_code == 200
    assert _refresh_grant(client, alias.json()["refresh_token"]).status_code == 200


def test_refresh_token_reuse_is_invalid_grant_and_revokes_the_family(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    first = user_tokens["refresh_token"]
    rotated = _refresh_grant(client, first).json()
    _error(_refresh_grant(client, first), 400, "invalid_grant")
    _error(_refresh_grant(client, rotated["refresh_token"]), 400, "invalid_grant")
    for access in (user_tokens["access_token"], rotated["access_token"]):
        assert client.get("/auth/users/me", headers=bearer(access)).status_code == 401


def test_an_unknown_refresh_token_is_invalid_grant(client: TestClient) -> None:
    _error(_refresh_grant(client, "made-up"), 400, "invalid_grant")


def test_refresh_may_narrow_the_scope_but_never_widen_it(
    client: TestClient, make_user: Any
) -> None:
    make_user("alice")
    tokens = login(client, "alice", USER_PASSWORD, scope="models:read models:predict").json()
    wider = _refresh_grant(client, tokens["refresh_token"], scope="models:read crypto:encrypt")
    _error(wider, 400, "invalid_scope")
    # A refused widening spends nothing: the same refresh token still works.
    narrowed = _refresh_grant(client, tokens["refresh_token"], scope="models:read")
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "models:read"
    # The session keeps what it was granted: the next refresh without scope gets it all.
    again = _refresh_grant(client, narrowed.json()["refresh_token"])
    assert again.json()["scope"] == "models:read models:predict"


# -- RFC 7009 revocation and RFC 8414 metadata ------------------------------------------
def _revoke(client: TestClient, token: str, **extra: Any) -> Any:
    headers = extra.pop("headers", None)
    return client.post("/auth/revoke", data={"token": token, **extra}, headers=headers)


def test_revoking_a_refresh_token_ends_its_session(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    response = _revoke(client, user_tokens["refresh_token"], token_type_hint="refresh_token")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    _error(_refresh_grant(client, user_tokens["refresh_token"]), 400, "invalid_grant")
    assert (
        client.get("/auth/users/me", headers=bearer(user_tokens["access_token"])).status_code == 401
    )


def test_revoking_an_access_token_ends_only_that_token(
    client: TestClient, user_tokens: dict[str, Any]
) -> None:
    # The hint is only a hint: a wrong one still finds the token.
    response = _revoke(client, user_tokens["access_token"], token_type_hint="refresh_token")
    assert response.status_code == 200
    assert (
        client.get("/auth/users/me", headers=bearer(user_tokens["access_token"])).status_code == 401
    )
    assert _refresh_grant(client, user_tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    "token",
    ["made-up", "a.b.c", "x" * 4096, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."],
    ids=["unknown", "not-a-jwt", "long", "alg-none"],
)
def test_unknown_tokens_are_answered_200(client: TestClient, token: str) -> None:
    assert _revoke(client, token).status_code == 200


def test_revocation_requests_are_checked(client: TestClient) -> None:
    _error(client.post("/auth/revoke", data={}), 400, "invalid_request")
    _error(_revoke(client, "t", token_type_hint="id_token"), 400, "unsupported_token_type")
    _error(_revoke(client, "x" * 4097), 400, "invalid_request")
    as_json = client.post("/auth/revoke", json={"token": "t"})
    _error(as_json, 400, "invalid_request")
    basic = base64.b64encode(b"0123456789abcdef01234567:wrong").decode()
    wrong = _revoke(client, "t", headers={"Authorization": f"Basic {basic}"})
    _error(wrong, 401, "invalid_client")


def test_a_client_token_is_revoked_only_by_its_client(
    client: TestClient, admin_token: str, user_tokens: dict[str, Any]
) -> None:
    made = []
    for name in ("one", "two"):
        body = {"name": name, "scopes": ["models:read"]}
        made.append(client.post("/auth/clients", json=body, headers=bearer(admin_token)).json())
    one, two = made

    def basic(creds: dict[str, Any]) -> dict[str, str]:
        raw = f"{creds['client_id']}:{creds['client_secret']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    grant = {"grant_type": "client_credentials"}
    token = client.post("/auth/token", data=grant, headers=basic(one)).json()["access_token"]
    # Not without its client, not by another client; a client cannot end user sessions.
    _error(_revoke(client, token), 400, "unauthorized_client")
    _error(_revoke(client, token, headers=basic(two)), 400, "unauthorized_client")
    refresh = user_tokens["refresh_token"]
    _error(_revoke(client, refresh, headers=basic(two)), 400, "unauthorized_client")
    assert client.get("/auth/clients", headers=bearer(token)).status_code == 403  # still live
    assert _revoke(client, token, headers=basic(one)).status_code == 200
    assert client.get("/auth/clients", headers=bearer(token)).status_code == 401


def test_metadata_names_every_endpoint_with_absolute_urls(
    client: TestClient, settings: Any
) -> None:
    document = client.get("/.well-known/oauth-authorization-server").json()
    base = f"https://localhost:{settings.https_port}"
    assert document["issuer"] == base
    assert document["token_endpoint"] == f"{base}/auth/token"
    assert document["jwks_uri"] == f"{base}/auth/.well-known/jwks.json"
    assert document["revocation_endpoint"] == f"{base}/auth/revoke"
    assert document["grant_types_supported"] == ["password", "refresh_token", "client_credentials"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        document["token_endpoint_auth_methods_supported"]
    )
    assert "models:predict" in document["scopes_supported"]
    assert document["response_types_supported"] == []


def test_metadata_follows_the_configured_public_url(tmp_path: Any, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, public_url="https://api.example.com/ml/")
    with TestClient(create_app(settings)) as other:
        document = other.get("/.well-known/oauth-authorization-server").json()
    assert document["issuer"] == "https://api.example.com/ml"
    assert document["token_endpoint"] == "https://api.example.com/ml/auth/token"


def _me(client: TestClient, token: str) -> int:
    return client.get("/auth/users/me", headers=bearer(token)).status_code
