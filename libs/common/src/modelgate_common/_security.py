"""The one access-token verifier every service uses.

Keys come only from the JWKS file the auth service publishes (never from a URL
or key inside a token); the algorithm is pinned to RS256; every claim is
required; revocation is checked in Redis.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError

from ._errors import BEARER_CHALLENGE, Forbidden, Unauthorized
from ._metrics import AUTH_FAILURES, service_name
from ._redis import CircuitBreaker
from ._settings import CommonSettings

log = logging.getLogger("modelgate.security")

ALGORITHM = "RS256"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "role", "scope", "iat", "nbf", "exp", "jti", "uid")
# ``uid``: the token owner's immutable random id, never reused (a user name can be deleted
# and created again). Per-owner state that must not pass to a later holder of the same
# name (encryption keys) is bound to it. ``legacy_owner_keys`` (optional, only ever
# ``true``) marks a user who existed before ids did: the crypto service also accepts that
# user's ciphertexts made under keys derived from the user name.
_UID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# "client": a service account (OAuth2 client_credentials), never a user's role.
ROLES = ("admin", "analyst", "user", "client")
USER_SCOPES = ("models:read", "models:predict", "crypto:encrypt", "crypto:decrypt")
# Class probabilities reveal far more of a model than labels do (extraction), so only a
# role an admin grants on purpose carries this scope: analyst and admin, never user.
PROBABILITY_SCOPE = "models:probabilities"
ANALYST_SCOPES = (*USER_SCOPES, PROBABILITY_SCOPE)
ADMIN_SCOPES = (*ANALYST_SCOPES, "models:admin", "users:admin")
ROLE_SCOPES = {"admin": ADMIN_SCOPES, "analyst": ANALYST_SCOPES, "user": USER_SCOPES}
SCOPE_DESCRIPTIONS = {
    "models:read": "list models and their schemas",
    "models:predict": "ask a model for predictions",
    PROBABILITY_SCOPE: "receive class probabilities with predictions (analyst and admin roles)",
    "crypto:encrypt": "encrypt text",
    "crypto:decrypt": "decrypt text",
    "models:admin": "load and reload models",
    "users:admin": "manage users",
}
# Headers that would point a naive verifier at attacker-chosen keys.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
_KID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_TOKEN_LENGTH = 4096


REVOKED_JTI_PREFIX = "mg:revoked:jti:"
REVOKED_SUBJECT_PREFIX = "mg:revoked:sub:"
# Every live revocation key, scored by its expiry (written with the keys by the auth
# service): what a worker copies to keep checking revocations through a Redis outage.
REVOKED_INDEX = "mg:revoked:index"


def revoked_jti_key(jti: str) -> str:
    return REVOKED_JTI_PREFIX + jti


def revoked_subject_key(subject: str) -> str:
    """Holds a time: tokens of this subject issued at or before it are revoked."""
    return REVOKED_SUBJECT_PREFIX + subject


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified access token. ``revocation`` says how its revocation was checked:
    ``redis`` (the shared revocation set does not list it), ``worker copy`` (Redis
    could not answer; this worker's last copy of that set does not list it, and the
    outage policy accepts it) or ``pending`` (only in ``Admission.prediction``, which
    looks it up with the prediction's limits before the model runs)."""

    subject: str
    role: str
    scopes: frozenset[str]
    token_id: str
    issued_at: int
    expires_at: int
    user_id: str
    legacy_owner_keys: bool = False
    revocation: Literal["redis", "worker copy", "pending"] = "pending"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class RevocationMirror:
    """The last live revocation set this worker read from Redis (token ids and subject
    cut-offs), so that a revoked token stays refused while Redis cannot answer.

    Refreshed whole every ``revocation_mirror_seconds`` (one ZRANGE of the index of
    live revocations, whose members are "<key> <value>") and completed by what each
    lookup finds; its size is the number of revocations whose tokens have not expired
    yet. What it cannot know: revocations made after its last refresh.
    """

    __slots__ = ("refreshed_at", "subject_cutoffs", "token_ids")

    def __init__(self) -> None:
        self.token_ids: set[str] = set()
        self.subject_cutoffs: dict[str, int] = {}
        self.refreshed_at: float | None = None  # time.monotonic() of the last refresh

    def replace(self, members: Sequence[bytes | str]) -> None:
        """Take the live members of the index: "<key> <value>" each."""
        token_ids: set[str] = set()
        cutoffs: dict[str, int] = {}
        for member in members:
            key, _, value = _text(member).rpartition(" ")
            if key.startswith(REVOKED_JTI_PREFIX):
                token_ids.add(key[len(REVOKED_JTI_PREFIX) :])
            elif key.startswith(REVOKED_SUBJECT_PREFIX):
                try:
                    cutoff = int(value)
                except ValueError:
                    continue
                subject = key[len(REVOKED_SUBJECT_PREFIX) :]
                cutoffs[subject] = max(cutoff, cutoffs.get(subject, cutoff))
        self.token_ids = token_ids
        self.subject_cutoffs = cutoffs
        self.refreshed_at = time.monotonic()

    def learn(self, principal: Principal, token_revoked: bool, cutoff: int | None) -> None:
        """What one lookup in Redis found for ``principal``'s token."""
        if token_revoked:
            self.token_ids.add(principal.token_id)
        if cutoff is not None and cutoff > self.subject_cutoffs.get(principal.subject, -1):
            self.subject_cutoffs[principal.subject] = cutoff

    def revoked(self, principal: Principal) -> bool:
        if principal.token_id in self.token_ids:
            return True
        cutoff = self.subject_cutoffs.get(principal.subject)
        return cutoff is not None and principal.issued_at <= cutoff


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class KeySet:
    """Public keys by ``kid``, read from the JWKS file.

    The file is re-read when it changes (checked at most once per
    ``min_reload_interval``), so a key added by rotation is picked up and a retired
    key stops verifying without a restart; an unknown kid also triggers a re-read,
    no more often than that interval.
    """

    def __init__(self, path: Path, min_reload_interval: float = 1.0) -> None:
        self.path = path
        self.min_reload_interval = min_reload_interval
        self._keys: dict[str, Key] = {}
        self._loaded_at = 0.0
        self._checked_at = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> None:
        stamp = self._file_stamp()
        document = json.loads(self.path.read_text(encoding="utf-8"))
        keys: dict[str, Key] = {}
        for entry in document.get("keys", []):
            if entry.get("kty") == "RSA" and entry.get("alg", ALGORITHM) == ALGORITHM:
                keys[entry["kid"]] = jwk.construct(entry, ALGORITHM)
        with self._lock:
            self._keys = keys
            self._stamp = stamp
            self._loaded_at = self._checked_at = time.monotonic()

    def get(self, kid: str) -> Key | None:
        now = time.monotonic()
        if now - self._checked_at >= self.min_reload_interval:
            self._checked_at = now
            changed = self._file_stamp() != self._stamp
            unknown = kid not in self._keys and now - self._loaded_at >= self.min_reload_interval
            if changed or unknown:
                try:
                    self.load()
                except (OSError, ValueError) as exc:
                    log.warning("cannot reload JWKS", extra={"reason": type(exc).__name__})
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)


class TokenVerifier:
    def __init__(
        self,
        settings: CommonSettings,
        redis: aioredis.Redis | None,
        keyset: KeySet | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keyset = keyset or KeySet(settings.jwks_path)
        self.revocation_degraded = False
        # A hung Redis would cost every request its timeout; after one failure the
        # check is skipped (per the policy) for a short cool-down.
        self._breaker = CircuitBreaker(settings.ratelimit.breaker_seconds)
        # Verified claims by token string, least recently used first: a client sends the
        # same token many times, and the RSA check is the costliest step. Only a token
        # whose signature and claims verified enters; its key's presence in the JWKS,
        # its expiry and its revocation are still checked on every request.
        self._verified: OrderedDict[str, tuple[Principal, str]] = OrderedDict()
        self._cache_size = cache_size
        # Consulted whenever Redis cannot answer a lookup, whatever the outage policy.
        self.mirror = RevocationMirror()

    async def refresh_mirror(self) -> bool:
        """Copy the live revocation set from Redis; False (the last copy is kept) when
        Redis cannot answer: the lookups' outage policy deals with that."""
        if self.redis is None:
            return False
        try:
            members = await self.redis.zrange(REVOKED_INDEX, int(time.time()), "+inf", byscore=True)
        except Exception:  # unreachable or failing Redis: keep the last copy
            return False
        self.mirror.replace(cast(list[bytes], members))
        return True

    def _decode(self, token: str) -> tuple[Principal, str]:
        if len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise Unauthorized("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise Unauthorized("malformed token") from None
        if header.get("alg") != ALGORITHM or _FORBIDDEN_HEADERS & header.keys():
            raise Unauthorized("token algorithm or header not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.match(kid):
            raise Unauthorized("token key id not accepted")
        key = self.keyset.get(kid)
        if key is None:
            raise Unauthorized("token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={
                    "require_" + claim: True
                    for claim in ("aud", "iat", "exp", "nbf", "iss", "sub", "jti")
                }
                | {"leeway": self.settings.jwt_leeway, "verify_at_hash": False},
            )
        except JOSEError:
            raise Unauthorized("token is invalid or expired") from None
        return _principal_from_claims(claims), kid

    def verify_claims(self, token: str) -> Principal:
        """The token's principal, its signature and claims verified (once per token, then
        from the cache until it expires) but its revocation not looked up yet
        (``revocation == "pending"``): only ``Admission.prediction`` takes such a
        principal, and looks the revocation up with the prediction's limits."""
        cached = self._verified.get(token)
        if cached is None:
            principal, kid = self._decode(token)
            self._verified[token] = (principal, kid)
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
            principal, kid = cached
            if self.keyset.get(kid) is None:  # its key was retired since
                self._verified.pop(token, None)
                raise Unauthorized("token signed by an unknown key")
        if principal.expires_at + self.settings.jwt_leeway < time.time():
            self._verified.pop(token, None)
            raise Unauthorized("token is invalid or expired")
        return principal

    async def verify(self, token: str) -> Principal:
        """The token's principal with its revocation looked up (``Unauthorized`` when
        the token is invalid, expired or revoked)."""
        return await self.check_revocation(self.verify_claims(token))

    async def check_revocation(self, principal: Principal) -> Principal:
        """``principal`` with its revocation status known; raises ``Unauthorized`` when
        the token is revoked (or, fail-closed, when Redis cannot be asked)."""
        keys = self.revocation_keys(principal)
        if keys is None:
            return self.revocation_unavailable(principal)
        try:
            jti_revoked, subject_revoked_at = await self.redis.mget(*keys)  # type: ignore[union-attr]
        except Exception as exc:  # Redis down: apply the configured policy
            return self.revocation_failed(exc, principal)
        checked = self.revocation_answered(principal)
        cutoff = None if subject_revoked_at is None else int(subject_revoked_at)
        if jti_revoked is not None or cutoff is not None:
            self.mirror.learn(principal, jti_revoked is not None, cutoff)
        if jti_revoked is not None:
            raise Unauthorized("token has been revoked")
        if cutoff is not None and principal.issued_at <= cutoff:
            raise Unauthorized("token has been revoked")
        return checked

    # The parts of the check, for a caller that asks Redis itself (``check_revocation``
    # above; the prediction's admission script, ``Admission.prediction``).
    def revocation_keys(self, principal: Principal) -> tuple[str, str] | None:
        """The token id's and the subject's revocation keys, or None when Redis is not
        to be asked (no revocation store, or it failed moments ago: the breaker is
        open); ``revocation_unavailable`` is the answer then."""
        if self.redis is None or self._breaker.open:
            return None
        return revoked_jti_key(principal.token_id), revoked_subject_key(principal.subject)

    def revocation_answered(self, principal: Principal) -> Principal:
        """Redis answered (and did not list the token): ``principal``, checked."""
        self._breaker.close()
        self.revocation_degraded = False
        return replace(principal, revocation="redis")

    def revocation_failed(self, exc: Exception, principal: Principal) -> Principal:
        """Redis could not be asked: the outage policy (may raise ``Unauthorized``)."""
        if self._breaker.trip():
            log.warning("revocation store unreachable", extra={"reason": type(exc).__name__})
        return self.revocation_unavailable(principal)

    def revocation_unavailable(self, principal: Principal) -> Principal:
        """Without Redis: a token revoked in the mirror is refused whatever the policy;
        any other token is accepted (fail-open) or refused (fail-closed)."""
        if self.redis is not None:
            self.revocation_degraded = True
        if self.mirror.revoked(principal):
            raise Unauthorized("token has been revoked")
        if self.redis is not None and not self.settings.revocation_fail_open:
            raise Unauthorized("token cannot be checked now")
        return replace(principal, revocation="worker copy")


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    role, scope = claims.get("role"), claims.get("scope")
    if role not in ROLES or not isinstance(scope, str):
        raise Unauthorized("token claims are invalid")
    if not all(isinstance(claims.get(c), str) for c in ("sub", "jti")):
        raise Unauthorized("token claims are invalid")
    uid, legacy = claims.get("uid"), claims.get("legacy_owner_keys", False)
    # A JSON boolean only (1 == True in Python); an id of the agreed shape only.
    if not isinstance(uid, str) or not _UID.fullmatch(uid) or type(legacy) is not bool:
        raise Unauthorized("token claims are invalid")
    # Whole numbers only: the library would also take "0" or true for a time.
    if not all(type(claims.get(c)) is int for c in ("iat", "nbf", "exp")):
        raise Unauthorized("token claims are invalid")
    return Principal(
        subject=claims["sub"],
        role=role,
        scopes=frozenset(scope.split()),
        token_id=claims["jti"],
        issued_at=claims["iat"],
        expires_at=claims["exp"],
        user_id=uid,
        legacy_owner_keys=legacy,
    )


# Header only: OAuth2PasswordBearer never reads a token from the query string.
bearer_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/token", scopes=SCOPE_DESCRIPTIONS, auto_error=False
)


async def authenticate(
    request: Request,
    security_scopes: SecurityScopes,
    token: Annotated[str | None, Depends(bearer_scheme)],
) -> Principal:
    """Dependency: a verified principal holding every scope the route asks for."""
    return await verify_bearer(request, token, security_scopes.scopes)


async def verify_bearer(
    request: Request,
    token: str | None,
    scopes: Sequence[str],
    *,
    pending_revocation: bool = False,
) -> Principal:
    """What ``authenticate`` does, for a dependency of a route's own that declares
    ``Security(bearer_scheme, scopes=...)`` itself. ``pending_revocation=True`` is for
    ``Admission.prediction`` alone, which looks the revocation up with the prediction's
    limits; a token without the scopes is still looked up first, so a revoked token is
    a 401, not a 403, either way."""
    if not token:
        AUTH_FAILURES.labels(service_name(), "no token").inc()
        raise Unauthorized("not authenticated", error="")
    verifier: TokenVerifier = request.app.state.verifier
    try:
        principal = verifier.verify_claims(token)
        missing = [s for s in scopes if s not in principal.scopes]
        if missing or not pending_revocation:
            principal = await verifier.check_revocation(principal)
    except Unauthorized as exc:
        count_auth_failure(exc)
        raise
    if missing:
        AUTH_FAILURES.labels(service_name(), "insufficient scope").inc()
        raise Forbidden(
            f"token lacks scope: {' '.join(missing)}",
            headers={
                "WWW-Authenticate": f'{BEARER_CHALLENGE}, error="insufficient_scope", '
                f'scope="{" ".join(scopes)}"'
            },
        )
    return principal


def count_auth_failure(exc: Unauthorized) -> None:
    AUTH_FAILURES.labels(service_name(), exc.message).inc()  # a small fixed set of texts
