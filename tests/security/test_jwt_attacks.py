"""The JWT attack catalogue, through nginx, against a protected route of every service.

Each forged token differs from a valid one in exactly the way the attack needs;
the valid token, minted the same way, is accepted on every route (the control),
so each 401 is owed to the attack and not to something else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

ISSUER = "modelgate-auth"
AUDIENCE = "modelgate"
USER_SCOPES = "models:read models:predict crypto:encrypt crypto:decrypt"

# One protected route per service: (method, path, JSON body). Add a service's route here.
ROUTES = [
    pytest.param("GET", "/auth/users/me", None, id="auth"),
    pytest.param("GET", "/v1/models", None, id="inference"),
    pytest.param("POST", "/crypto/encrypt", {"plaintext": "attack"}, id="crypto"),
]


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")))


class KeyServer:
    """A local HTTP server offering an attacker's keys at a jku/x5u URL; it records
    every request, so a test can tell whether a verifier fetched anything."""

    def __init__(self, document: bytes) -> None:
        self.requests: list[str] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorded.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> KeyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Forge:
    """The stack's real signing key (to mint tokens whose only flaw is a claim) and an
    attacker's key (to mint tokens the stack must not trust)."""

    subject: str
    kid: str
    private_pem: str
    public_pem: str
    attacker_pem: str
    attacker_jwk: dict[str, Any]
    uid: str  # the victim's user id, as the auth service issued it

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": self.subject,
            "role": "user",
            "scope": USER_SCOPES,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "uid": self.uid,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any] | None = None, **headers: Any) -> str:
        return str(
            jwt.encode(
                claims or self.claims(),
                self.private_pem,
                algorithm="RS256",
                headers={"kid": self.kid, **headers},
            )
        )

    def sign_as_attacker(self, kid: str | None, **headers: Any) -> str:
        header = {"kid": kid, **headers} if kid is not None else headers
        return str(jwt.encode(self.claims(), self.attacker_pem, algorithm="RS256", headers=header))

    def hmac_token(self, secret: bytes, kid: str, alg: str = "HS256") -> str:
        signing_input = (
            f"{segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{segment(self.claims())}"
        )
        digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
        signature = hmac.new(secret, signing_input.encode(), digest).digest()
        return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def victim(
    login: Callable[..., dict[str, Any]],
    new_client: Callable[[], httpx.Client],
    admin_password: str,
) -> Iterator[dict[str, str]]:
    """A real user the forged tokens name as their subject."""
    admin = login("admin", admin_password)["access_token"]
    name = f"t-victim-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with new_client() as c:
        created = c.post(
            "/auth/users",
            json={"username": name, "password": password},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert created.status_code == 201, created.text
    yield {"username": name, "password": password}
    with new_client() as c:
        admin = login("admin", admin_password)["access_token"]
        c.delete(f"/auth/users/{name}", headers={"Authorization": f"Bearer {admin}"})


@pytest.fixture(scope="module")
def forge(victim: dict[str, str], secrets_dir: Path, login: Callable[..., dict[str, Any]]) -> Forge:
    issued = login(victim["username"], victim["password"])["access_token"]
    uid = jwt.get_unverified_claims(issued)["uid"]
    jwks = json.loads((secrets_dir / "jwks.json").read_text())
    kid = jwks["keys"][0]["kid"]
    private_pem = (secrets_dir / "jwt" / f"{kid}.pem").read_text()
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_pem = attacker.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    attacker_public = attacker.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker_jwk = {**jwk.construct(attacker_public, "RS256").to_dict(), "kid": "attacker"}
    return Forge(victim["username"], kid, private_pem, public_pem, attacker_pem, attacker_jwk, uid)


def call(client: httpx.Client, method: str, path: str, body: Any, token: str) -> httpx.Response:
    return client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})


# -- the control ------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_control_a_token_minted_with_the_real_key_is_accepted(
    client: httpx.Client, forge: Forge, method: str, path: str, body: Any
) -> None:
    assert call(client, method, path, body, forge.sign()).status_code == 200


# -- forged tokens --------------------------------------------------------------------------
def _none_alg(forge: Forge, alg: str) -> str:
    return f"{segment({'alg': alg, 'typ': 'JWT', 'kid': forge.kid})}.{segment(forge.claims())}."


def _tampered(forge: Forge) -> str:
    header, _, signature = forge.sign().split(".")
    return f"{header}.{segment(forge.claims(role='admin', scope='users:admin'))}.{signature}"


def _stripped(forge: Forge) -> str:
    header, payload, _ = forge.sign().split(".")
    return f"{header}.{payload}."


def _wrong_signature(forge: Forge) -> str:
    header, payload, _ = forge.sign().split(".")
    _, _, other = forge.sign(forge.claims(sub="admin")).split(".")
    return f"{header}.{payload}.{other}"


ATTACKS: dict[str, Callable[[Forge], str]] = {
    "alg-none": lambda f: _none_alg(f, "none"),
    "alg-None": lambda f: _none_alg(f, "None"),
    "alg-NONE": lambda f: _none_alg(f, "NONE"),
    "hs256-with-the-rsa-public-key": lambda f: f.hmac_token(f.public_pem.encode(), f.kid),
    "hs512-with-the-rsa-public-key": lambda f: f.hmac_token(f.public_pem.encode(), f.kid, "HS512"),
    "tampered-payload": _tampered,
    "stripped-signature": _stripped,
    "signature-of-another-token": _wrong_signature,
    "expired": lambda f: f.sign(f.claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
    "nbf-in-the-future": lambda f: f.sign(f.claims(nbf=int(time.time()) + 3600)),
    "no-exp": lambda f: f.sign(f.claims(exp=None)),
    "no-aud": lambda f: f.sign(f.claims(aud=None)),
    "wrong-aud": lambda f: f.sign(f.claims(aud="another-api")),
    "wrong-iss": lambda f: f.sign(f.claims(iss="https://evil.example")),
    "no-iss": lambda f: f.sign(f.claims(iss=None)),
    "no-iat": lambda f: f.sign(f.claims(iat=None)),
    "no-nbf": lambda f: f.sign(f.claims(nbf=None)),
    "no-jti": lambda f: f.sign(f.claims(jti=None)),
    "no-sub": lambda f: f.sign(f.claims(sub=None)),
    "no-uid": lambda f: f.sign(f.claims(uid=None)),
    "uid-not-a-string": lambda f: f.sign(f.claims(uid=12345678901234567890)),
    "legacy-owner-keys-not-a-boolean": lambda f: f.sign(f.claims(legacy_owner_keys="true")),
    "unknown-role": lambda f: f.sign(f.claims(role="root")),
    "no-kid": lambda f: str(jwt.encode(f.claims(), f.private_pem, algorithm="RS256")),
    "unknown-kid": lambda f: f.sign_as_attacker("no-such-key"),
    "attacker-key-with-the-real-kid": lambda f: f.sign_as_attacker(f.kid),
    "kid-path-traversal": lambda f: f.sign_as_attacker("../../../../../../dev/null"),
    "kid-path-traversal-hs256-empty-key": lambda f: f.hmac_token(b"", "../../../../../../dev/null"),
    "kid-sql-injection": lambda f: f.hmac_token(b"key", "x' UNION SELECT 'key' --"),
    "kid-absolute-path": lambda f: f.sign_as_attacker("/etc/passwd"),
    "jwk-header-with-the-attacker-key": lambda f: f.sign_as_attacker(
        "attacker", jwk=f.attacker_jwk
    ),
    "jwk-header-with-the-real-kid": lambda f: f.sign_as_attacker(
        f.kid, jwk={**f.attacker_jwk, "kid": f.kid}
    ),
    "x5c-header": lambda f: f.sign_as_attacker(f.kid, x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOC"]),
    "crit-header": lambda f: f.sign(crit=["exp"]),
    "garbage": lambda f: "not.a.jwt",
    "two-segments": lambda f: ".".join(f.sign().split(".")[:2]),
    "oversized": lambda f: f.sign(f.claims(pad="x" * 4000)),
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_forged_token_is_401(
    client: httpx.Client, forge: Forge, attack: str, method: str, path: str, body: Any
) -> None:
    response = call(client, method, path, body, ATTACKS[attack](forge))
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Traceback" not in response.text


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_key_url_in_the_header_is_never_fetched(
    client: httpx.Client, forge: Forge, header: str, method: str, path: str, body: Any
) -> None:
    document = json.dumps({"keys": [forge.attacker_jwk]}).encode()
    with KeyServer(document) as server:
        token = forge.sign_as_attacker("attacker", **{header: server.url})
        response = call(client, method, path, body, token)
        # The same header on a token the real key signed is refused too.
        genuine = call(client, method, path, body, forge.sign(**{header: server.url}))
    assert response.status_code == 401
    assert genuine.status_code == 401
    assert server.requests == []


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_token_in_the_query_string_is_not_accepted(
    client: httpx.Client, forge: Forge, method: str, path: str, body: Any
) -> None:
    token = forge.sign()
    response = client.request(method, path, json=body, params={"access_token": token})
    assert response.status_code == 401


# -- tokens the auth service issued, then took back ------------------------------------------
@pytest.fixture(scope="module")
def revoked_token(
    victim: dict[str, str], login: Callable[..., dict[str, Any]], new_client: Callable[..., Any]
) -> str:
    token = login(victim["username"], victim["password"])["access_token"]
    with new_client() as c:
        assert (
            c.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
        )
    return str(token)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_revoked_token_is_401(
    client: httpx.Client, revoked_token: str, method: str, path: str, body: Any
) -> None:
    assert call(client, method, path, body, revoked_token).status_code == 401


@pytest.fixture(scope="module")
def disabled_users_refreshed_token(
    login: Callable[..., dict[str, Any]],
    new_client: Callable[..., Any],
    admin_password: str,
) -> Iterator[tuple[str, str]]:
    """(a token of a user disabled after it was refreshed, a token of a control user)."""
    admin = {"Authorization": f"Bearer {login('admin', admin_password)['access_token']}"}
    names = [f"t-disabled-{uuid.uuid4().hex[:8]}", f"t-control-{uuid.uuid4().hex[:8]}"]
    password = uuid.uuid4().hex
    tokens = []
    with new_client() as c:
        for name in names:
            body = {"username": name, "password": password}
            assert c.post("/auth/users", json=body, headers=admin).status_code == 201
            first = login(name, password)
            refreshed = c.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
            assert refreshed.status_code == 200
            tokens.append(refreshed.json()["access_token"])
        disabled = c.patch(f"/auth/users/{names[0]}", json={"disabled": True}, headers=admin)
        assert disabled.status_code == 200
    yield tokens[0], tokens[1]
    with new_client() as c:
        admin = {"Authorization": f"Bearer {login('admin', admin_password)['access_token']}"}
        for name in names:
            c.delete(f"/auth/users/{name}", headers=admin)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_token_of_a_user_disabled_after_its_refresh_is_401(
    client: httpx.Client,
    disabled_users_refreshed_token: tuple[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    disabled, control = disabled_users_refreshed_token
    assert call(client, method, path, body, disabled).status_code == 401
    assert call(client, method, path, body, control).status_code == 200
