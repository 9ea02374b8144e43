"""Standard OAuth2 against the running stack, through nginx, with a stock client library:
authlib's ``OAuth2Client`` (httpx), unmodified. Discovery, client credentials with both
authentication methods, scope bounds, the RFC 6749 error codes, automatic refresh at
the token endpoint, reuse detection, revocation, a disabled client's live token, and a
client's predict limit counted exactly across the inference workers."""

from __future__ import annotations

import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client, OAuthError

from tests.conftest import bearer
from tests.integration.test_ratelimit import IRIS, concurrently, served_by

METADATA = "/.well-known/oauth-authorization-server"


@pytest.fixture
def metadata(client: httpx.Client) -> dict[str, Any]:
    response = client.get(METADATA)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def oauth(base_url: str, ca_file: str, fresh_source_ip: Callable[[], str]) -> Iterator[Any]:
    """``oauth(**kwargs)``: an authlib OAuth2Client that verifies TLS with the stack's CA,
    from a loopback address of its own (the sign-in budget is per address)."""
    made: list[OAuth2Client] = []

    def make(**kwargs: Any) -> OAuth2Client:
        transport = httpx.HTTPTransport(
            verify=ssl.create_default_context(cafile=ca_file), local_address=fresh_source_ip()
        )
        session = OAuth2Client(base_url=base_url, transport=transport, timeout=10.0, **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def service_account(client: httpx.Client, admin_token: str) -> Iterator[Any]:
    """``service_account(scopes)``: a registered client's id, secret and scopes; removed
    after the test."""
    made: list[str] = []

    def make(scopes: list[str] | None = None) -> dict[str, Any]:
        body = {"name": f"t-{secrets.token_hex(6)}", "scopes": scopes or ["models:read"]}
        response = client.post("/auth/clients", json=body, headers=bearer(admin_token))
        assert response.status_code == 201, response.text
        made.append(response.json()["client_id"])
        return dict(response.json())

    yield make
    for client_id in made:
        client.delete(f"/auth/clients/{client_id}", headers=bearer(admin_token))


def test_discovery_names_absolute_endpoints_that_work(
    metadata: dict[str, Any], base_url: str, client: httpx.Client
) -> None:
    assert metadata["issuer"] == base_url
    for name in ("token_endpoint", "jwks_uri", "revocation_endpoint"):
        assert metadata[name].startswith(base_url + "/"), metadata[name]
    assert set(metadata["grant_types_supported"]) == {
        "password",
        "refresh_token",
        "client_credentials",
    }
    assert {"client_secret_basic", "client_secret_post"} <= set(
        metadata["token_endpoint_auth_methods_supported"]
    )
    assert "models:predict" in metadata["scopes_supported"]
    assert metadata["response_types_supported"] == []
    keys = client.get(metadata["jwks_uri"].removeprefix(base_url)).json()["keys"]
    assert keys and all(key["kty"] == "RSA" for key in keys)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials_with_authlib(
    oauth: Any, service_account: Any, metadata: dict[str, Any], method: str
) -> None:
    account = service_account(["models:read", "models:predict"])
    session = oauth(
        client_id=account["client_id"],
        client_secret=account["client_secret"],
        token_endpoint_auth_method=method,
    )
    token = session.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert token["scope"] == "models:read models:predict"
    assert "refresh_token" not in token
    assert session.get("/v1/models").status_code == 200
    assert session.post("/predict", json=IRIS).status_code == 200
    # Its own subject and its own per-subject keys: a client encrypts nothing here
    # (no crypto scope), and user management is never a client's.
    assert session.post("/crypto/encrypt", json={"plaintext": "x"}).status_code == 403
    assert session.get("/auth/users").status_code == 403


def test_a_client_gets_at_most_its_scopes(
    oauth: Any, service_account: Any, metadata: dict[str, Any]
) -> None:
    account = service_account(["models:read", "models:predict"])
    session = oauth(client_id=account["client_id"], client_secret=account["client_secret"])
    narrowed = session.fetch_token(
        metadata["token_endpoint"], grant_type="client_credentials", scope="models:read"
    )
    assert narrowed["scope"] == "models:read"
    assert session.post("/predict", json=IRIS).status_code == 403
    with pytest.raises(OAuthError) as wider:
        session.fetch_token(
            metadata["token_endpoint"], grant_type="client_credentials", scope="crypto:encrypt"
        )
    assert wider.value.error == "invalid_scope"


def _error_of(call: Callable[[], Any]) -> str:
    with pytest.raises(OAuthError) as raised:
        call()
    return str(raised.value.error)


def test_every_token_endpoint_error_code(
    oauth: Any,
    service_account: Any,
    metadata: dict[str, Any],
    make_user: Callable[..., dict[str, str]],
    base_url: str,
    ca_file: str,
    fresh_source_ip: Callable[[], str],
) -> None:
    url = metadata["token_endpoint"]
    account = service_account()
    user = make_user()
    wrong_secret = oauth(client_id=account["client_id"], client_secret="wrong")
    assert _error_of(lambda: wrong_secret.fetch_token(url, grant_type="client_credentials")) == (
        "invalid_client"
    )
    public = oauth()
    assert (
        _error_of(lambda: public.fetch_token(url, username=user["username"], password="wrong!"))
        == "invalid_grant"
    )
    assert (
        _error_of(lambda: public.fetch_token(url, grant_type="urn:example:other", assertion="x"))
        == "unsupported_grant_type"
    )
    assert (
        _error_of(lambda: public.fetch_token(url, username=user["username"], scope="users:admin"))
        == "invalid_request"  # no password
    )
    confidential = oauth(client_id=account["client_id"], client_secret=account["client_secret"])
    assert (
        _error_of(
            lambda: confidential.fetch_token(
                url, username=user["username"], password=user["password"]
            )
        )
        == "unauthorized_client"
    )
    assert (
        _error_of(
            lambda: confidential.fetch_token(url, grant_type="client_credentials", scope="zzz")
        )
        == "invalid_scope"
    )
    # With Basic, invalid_client is a 401 with a Basic challenge (RFC 6749 §5.2).
    context = ssl.create_default_context(cafile=ca_file)
    transport = httpx.HTTPTransport(verify=context, local_address=fresh_source_ip())
    with httpx.Client(base_url=base_url, transport=transport) as raw:
        answer = raw.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(account["client_id"], "wrong"),
        )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic ")
    assert answer.json()["error"] == "invalid_client" and answer.json()["detail"]


def test_authlib_refreshes_by_itself_and_a_reused_refresh_token_ends_the_session(
    oauth: Any, metadata: dict[str, Any], make_user: Callable[..., dict[str, str]]
) -> None:
    user = make_user()
    updates: list[dict[str, Any]] = []
    session = oauth(
        token_endpoint=metadata["token_endpoint"],
        update_token=lambda token, refresh_token=None, access_token=None: updates.append(token),
    )
    first = session.fetch_token(
        metadata["token_endpoint"], username=user["username"], password=user["password"]
    )
    first_refresh = first["refresh_token"]
    # The access token has run out as far as the client knows: the next request refreshes
    # it through the token endpoint (grant_type=refresh_token) before it is sent.
    session.token["expires_at"] = int(time.time()) - 1
    assert session.get("/auth/users/me").json()["username"] == user["username"]
    assert len(updates) == 1
    assert updates[0]["refresh_token"] != first_refresh
    assert session.token["access_token"] != first["access_token"]
    # The spent refresh token presented again: invalid_grant, and the whole session ends.
    assert (
        _error_of(lambda: session.refresh_token(metadata["token_endpoint"], first_refresh))
        == "invalid_grant"
    )
    assert session.get("/auth/users/me").status_code == 401


def test_revocation_of_a_refresh_token_and_of_a_client_token(
    oauth: Any,
    metadata: dict[str, Any],
    make_user: Callable[..., dict[str, str]],
    service_account: Any,
) -> None:
    user = make_user()
    session = oauth(token_endpoint=metadata["token_endpoint"])
    token = session.fetch_token(
        metadata["token_endpoint"], username=user["username"], password=user["password"]
    )
    revoked = session.revoke_token(
        metadata["revocation_endpoint"],
        token=token["refresh_token"],
        token_type_hint="refresh_token",
    )
    assert revoked.status_code == 200
    assert session.get("/auth/users/me").status_code == 401  # its access token went too
    assert (
        _error_of(lambda: session.refresh_token(metadata["token_endpoint"], token["refresh_token"]))
        == "invalid_grant"
    )
    # An unknown token: 200 all the same (RFC 7009 §2.2).
    assert session.revoke_token(metadata["revocation_endpoint"], token="nothing").status_code == 200

    account = service_account(["models:read"])
    machine = oauth(client_id=account["client_id"], client_secret=account["client_secret"])
    access = machine.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert machine.get("/v1/models").status_code == 200
    answer = machine.revoke_token(
        metadata["revocation_endpoint"],
        token=access["access_token"],
        token_type_hint="access_token",
    )
    assert answer.status_code == 200
    assert machine.get("/v1/models").status_code == 401


def test_a_disabled_clients_live_token_is_refused_everywhere(
    oauth: Any,
    metadata: dict[str, Any],
    service_account: Any,
    client: httpx.Client,
    admin_token: str,
) -> None:
    account = service_account(["models:read", "models:predict", "crypto:encrypt"])
    machine = oauth(client_id=account["client_id"], client_secret=account["client_secret"])
    machine.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert machine.get("/v1/models").status_code == 200
    assert machine.post("/crypto/encrypt", json={"plaintext": "x"}).status_code == 200
    disabled = client.patch(
        f"/auth/clients/{account['client_id']}",
        json={"disabled": True},
        headers=bearer(admin_token),
    )
    assert disabled.status_code == 200
    assert machine.get("/v1/models").status_code == 401
    assert machine.post("/predict", json=IRIS).status_code == 401
    assert machine.post("/crypto/encrypt", json={"plaintext": "x"}).status_code == 401
    assert (
        _error_of(
            lambda: machine.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        )
        == "invalid_client"
    )


@pytest.mark.native  # reads the services' logs to see both workers served
def test_a_clients_predict_limit_is_exact_across_both_workers(
    oauth: Any,
    metadata: dict[str, Any],
    service_account: Any,
    client: httpx.Client,
    var_dir: Path,
) -> None:
    def burst(account: dict[str, Any]) -> list[httpx.Response]:
        machine = oauth(client_id=account["client_id"], client_secret=account["client_secret"])
        token = machine.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        auth = bearer(token["access_token"])
        return concurrently(lambda _: client.post("/predict", json=IRIS, headers=auth), 30)

    # Another client spends its own budget first (and opens the workers' Redis
    # connections, so the burst below meets the shared store, not its outage fallback).
    burst(service_account(["models:predict"]))
    responses = burst(service_account(["models:predict"]))
    # The client tier is the default predict limit (10/minute), one bucket per client
    # whichever worker answers.
    assert Counter(r.status_code for r in responses) == {200: 10, 429: 20}
    assert {r.headers["ratelimit-limit"] for r in responses} == {"10"}
    assert len(served_by(var_dir, "inference", (r.headers["x-request-id"] for r in responses))) == 2
