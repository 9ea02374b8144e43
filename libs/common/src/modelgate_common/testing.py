"""Test helpers for in-process tests of any service: a throwaway RS256 key,
its JWKS file, and tokens minted with any claims (including broken ones)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from ._security import ROLE_SCOPES, USER_SCOPES
from ._settings import CommonSettings, RateLimitSettings

# In-process tests make many requests as one subject from one address: limits that
# never trigger, still checked on every request. A test of the limits passes its own.
GENEROUS_LIMITS = RateLimitSettings(
    login="100000/minute",
    login_failures="100000/hour",
    predict="100000/minute",
    predict_tiers={},
    predict_rows_per_day=1_000_000_000,
    crypto="100000/minute",
)


def default_uid(sub: str) -> str:
    """The ``uid`` a minted token carries unless told otherwise: one per subject name
    across mints (pass ``uid=`` to mint for a re-created user of the same name)."""
    return hashlib.sha256(sub.encode("utf-8")).hexdigest()[:32]


class TokenFactory:
    def __init__(self, folder: Path, kid: str = "test-key-1") -> None:
        self.kid = kid
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        public_jwk = jwk.construct(self.public_pem, "RS256").to_dict()
        public_jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
        self.jwks_path = folder / "jwks.json"
        self.jwks_path.write_text(json.dumps({"keys": [public_jwk]}))

    def settings(self, **overrides: Any) -> CommonSettings:
        values: dict[str, Any] = {
            "jwks_file": self.jwks_path,
            "environment": "development",
            "ratelimit": GENEROUS_LIMITS,
        }
        values.update(overrides)
        return CommonSettings(**values)

    def claims(self, sub: str = "alice", role: str = "user", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        scopes = ROLE_SCOPES.get(role, USER_SCOPES)
        claims: dict[str, Any] = {
            "iss": "modelgate-auth",
            "aud": "modelgate",
            "sub": sub,
            "role": role,
            "scope": " ".join(scopes),
            "iat": now,
            "nbf": now,
            "exp": now + 900,
            "jti": uuid.uuid4().hex,
            "uid": default_uid(sub),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, sub: str = "alice", role: str = "user", **overrides: Any) -> str:
        return jwt.encode(
            self.claims(sub, role, **overrides),
            self.private_pem,
            algorithm="RS256",
            headers={"kid": self.kid},
        )
