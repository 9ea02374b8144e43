"""The shared token verifier against valid tokens and the JWT attack catalogue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from modelgate_common import (
    TokenVerifier,
    Unauthorized,
    create_redis,
    revoked_jti_key,
    revoked_subject_key,
)
from modelgate_common.testing import TokenFactory


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(signature)}"


@pytest.fixture
def factory(tmp_path: Path) -> TokenFactory:
    return TokenFactory(tmp_path)


@pytest.fixture
def verifier(factory: TokenFactory) -> TokenVerifier:
    v = TokenVerifier(factory.settings(), None)
    v.keyset.load()
    return v


def verify(verifier: TokenVerifier, token: str) -> Any:
    return asyncio.run(verifier.verify(token))


def test_valid_token_gives_principal(factory: TokenFactory, verifier: TokenVerifier) -> None:
    principal = verify(verifier, factory.mint("alice"))
    assert principal.subject == "alice"
    assert principal.role == "user"
    assert "models:predict" in principal.scopes
    assert "users:admin" not in principal.scopes


def test_the_principal_carries_the_user_id_and_the_legacy_marker(
    factory: TokenFactory, verifier: TokenVerifier
) -> None:
    plain = verify(verifier, factory.mint("alice", uid="f0" * 16))
    assert (plain.user_id, plain.legacy_owner_keys) == ("f0" * 16, False)
    legacy = verify(verifier, factory.mint("alice", uid="f1" * 16, legacy_owner_keys=True))
    assert (legacy.user_id, legacy.legacy_owner_keys) == ("f1" * 16, True)
    explicit = verify(verifier, factory.mint("alice", uid="f2" * 16, legacy_owner_keys=False))
    assert explicit.legacy_owner_keys is False


def _attacks(factory: TokenFactory) -> dict[str, str]:
    now = int(time.time())
    claims = factory.claims()
    good = factory.mint()
    head, body, sig = good.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(body + "=="))
    tampered["role"] = "admin"
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": factory.kid}
    signing_input = f"{b64(json.dumps(hs_header).encode())}.{b64(json.dumps(claims).encode())}"
    hs_sig = hmac.new(factory.public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return {
        "alg none": forge({"alg": "none", "kid": factory.kid}, claims),
        "alg None": forge({"alg": "None", "kid": factory.kid}, claims),
        "hs256 with public key": f"{signing_input}.{b64(hs_sig)}",
        "tampered payload": f"{head}.{b64(json.dumps(tampered).encode())}.{sig}",
        "stripped signature": f"{head}.{body}.",
        "expired": factory.mint(exp=now - 120, iat=now - 1000, nbf=now - 1000),
        "nbf in future": factory.mint(nbf=now + 600),
        "no exp": factory.mint(exp=None),
        "no aud": factory.mint(aud=None),
        "no jti": factory.mint(jti=None),
        "no iat": factory.mint(iat=None),
        "no nbf": factory.mint(nbf=None),
        "wrong aud": factory.mint(aud="someone-else"),
        "wrong iss": factory.mint(iss="evil"),
        "unknown role": factory.mint(role="root"),
        "scope not a string": factory.mint(scope=["models:predict"]),
        "no uid": factory.mint(uid=None),
        "uid not a string": factory.mint(uid=12345678901234567890),
        "uid too short": factory.mint(uid="abc"),
        "uid with a line break": factory.mint(uid="a" * 32 + "\n"),
        "legacy claim a number": factory.mint(legacy_owner_keys=1),
        "legacy claim a string": factory.mint(legacy_owner_keys="true"),
        "garbage": "not-a-token",
        "two parts": "abc.def",
        "huge": "a." + "b" * 10000 + ".c",
    }


ATTACKS = [
    "alg none", "alg None", "hs256 with public key", "tampered payload", "stripped signature",
    "expired", "nbf in future", "no exp", "no aud", "no jti", "no iat", "no nbf", "wrong aud",
    "wrong iss", "unknown role", "scope not a string", "garbage", "two parts", "huge",
    "no uid", "uid not a string", "uid too short", "uid with a line break",
    "legacy claim a number", "legacy claim a string",
]  # fmt: skip


def test_attack_catalogue_is_complete(factory: TokenFactory) -> None:
    assert sorted(_attacks(factory)) == sorted(ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_catalogue_is_rejected(
    factory: TokenFactory, verifier: TokenVerifier, attack: str
) -> None:
    token = _attacks(factory)[attack]
    try:
        principal = verify(verifier, token)
    except Unauthorized:
        return
    pytest.fail(f"attack {attack!r} was accepted: {principal}")


@pytest.mark.parametrize(
    "header",
    [
        {"kid": "../../../../etc/passwd"},
        {"kid": "x' OR '1'='1"},
        {"kid": "unknown-key"},
        {"kid": 7},
        {"jku": "https://attacker.invalid/jwks.json"},
        {"x5u": "https://attacker.invalid/cert.pem"},
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
    ],
)
def test_hostile_headers_are_rejected(
    factory: TokenFactory, verifier: TokenVerifier, header: dict[str, Any]
) -> None:
    from jose import jwt

    headers = {"kid": factory.kid, **header}
    token = jwt.encode(factory.claims(), factory.private_pem, algorithm="RS256", headers=headers)
    with pytest.raises(Unauthorized):
        verify(verifier, token)


def test_token_from_another_key_is_rejected(tmp_path: Path, verifier: TokenVerifier) -> None:
    (tmp_path / "other").mkdir()
    other = TokenFactory(tmp_path / "other")
    with pytest.raises(Unauthorized):
        verify(verifier, other.mint())


def test_new_key_is_picked_up_from_the_jwks_file(
    tmp_path: Path, factory: TokenFactory, verifier: TokenVerifier
) -> None:
    (tmp_path / "new").mkdir()
    rotated = TokenFactory(tmp_path / "new", kid="test-key-2")
    keys = json.loads(factory.jwks_path.read_text())["keys"]
    keys = json.loads(rotated.jwks_path.read_text())["keys"] + keys
    factory.jwks_path.write_text(json.dumps({"keys": keys}))
    verifier.keyset.min_reload_interval = 0
    assert verify(verifier, rotated.mint("bob")).subject == "bob"
    assert verify(verifier, factory.mint("carol")).subject == "carol"


def test_cached_token_still_expires(factory: TokenFactory, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = factory.mint(exp=now + 1)
    verify(verifier, token)
    verifier.settings = verifier.settings.model_copy(update={"jwt_leeway": 0})
    time.sleep(2.1)
    with pytest.raises(Unauthorized):
        verify(verifier, token)


def test_a_verified_token_is_served_from_the_cache(
    factory: TokenFactory, verifier: TokenVerifier
) -> None:
    token = factory.mint("alice")
    first = verifier.verify_claims(token)
    assert verifier.verify_claims(token) is first  # the same principal, not verified again
    assert verifier.verify_claims(factory.mint("alice")) is not first


def test_the_cache_is_bounded_and_keeps_the_recently_used(factory: TokenFactory) -> None:
    verifier = TokenVerifier(factory.settings(), None, cache_size=2)
    verifier.keyset.load()
    one, two, three = (factory.mint(name) for name in ("one", "two", "three"))
    first = verifier.verify_claims(one)
    second = verifier.verify_claims(two)
    assert verifier.verify_claims(one) is first  # used last: "two" is now the oldest
    verifier.verify_claims(three)
    assert verifier.verify_claims(one) is first
    assert verifier.verify_claims(two) is not second  # evicted, verified anew
    assert verifier.verify_claims(two).subject == "two"


def test_a_token_with_a_bad_signature_is_never_cached(
    factory: TokenFactory, verifier: TokenVerifier
) -> None:
    good = factory.mint("alice")
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["role"] = "admin"
    forged = f"{head}.{b64(json.dumps(claims).encode())}.{sig}"
    flipped = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    verifier.verify_claims(good)  # the genuine token is cached: its twins must not ride on it
    for bad in (forged, flipped):
        for _ in range(2):  # a second try finds no cached verdict either
            with pytest.raises(Unauthorized):
                verifier.verify_claims(bad)


def test_a_cached_token_that_expired_is_refused(
    factory: TokenFactory, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier.settings = verifier.settings.model_copy(update={"jwt_leeway": 0})
    expires = int(time.time()) + 600
    token = factory.mint(exp=expires)
    cached = verifier.verify_claims(token)
    assert verifier.verify_claims(token) is cached
    # The clock moved past the expiry while the verdict sat in the cache (a wait on the
    # real clock would make the test depend on how fast a loaded machine gets here).
    monkeypatch.setattr(time, "time", lambda: expires + 0.5)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify_claims(token)


def _with_revocation_store(
    factory: TokenFactory,
    redis_server: Any,
    scenario: Callable[[aioredis.Redis, TokenVerifier], Awaitable[None]],
) -> None:
    """Run ``scenario`` with a verifier whose revocation store is ``redis_server``."""
    settings = factory.settings(redis_url=redis_server.url)

    async def run() -> None:
        redis = create_redis(settings)
        verifier = TokenVerifier(settings, redis)
        verifier.keyset.load()
        try:
            await scenario(redis, verifier)
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_a_cached_token_revoked_later_is_refused(factory: TokenFactory, redis_server: Any) -> None:
    async def scenario(redis: aioredis.Redis, verifier: TokenVerifier) -> None:
        token = factory.mint("alice")
        principal = await verifier.verify(token)
        assert verifier.verify_claims(token).token_id == principal.token_id  # cached
        await redis.set(revoked_jti_key(principal.token_id), b"1", ex=60)
        with pytest.raises(Unauthorized, match="revoked"):
            await verifier.verify(token)

    _with_revocation_store(factory, redis_server, scenario)


def test_revocation_by_jti_and_by_subject(factory: TokenFactory, redis_server: Any) -> None:
    async def scenario(redis: aioredis.Redis, verifier: TokenVerifier) -> None:
        token = factory.mint("alice")
        principal = await verifier.verify(token)
        await redis.set(revoked_jti_key(principal.token_id), b"1", ex=60)
        with pytest.raises(Unauthorized):
            await verifier.verify(token)
        other = factory.mint("alice")
        await redis.set(revoked_subject_key("alice"), str(int(time.time())).encode(), ex=60)
        with pytest.raises(Unauthorized):
            await verifier.verify(other)
        later = factory.mint("alice", iat=int(time.time()) + 1)
        assert (await verifier.verify(later)).subject == "alice"

    _with_revocation_store(factory, redis_server, scenario)


def test_redis_down_policy(factory: TokenFactory, redis_server: Any) -> None:
    async def scenario(fail_open: bool) -> bool:
        settings = factory.settings(redis_url=redis_server.url, revocation_fail_open=fail_open)
        redis: aioredis.Redis = create_redis(settings)
        verifier = TokenVerifier(settings, redis)
        verifier.keyset.load()
        try:
            await verifier.verify(factory.mint())
            return True
        except Unauthorized:
            return False
        finally:
            assert verifier.revocation_degraded
            await redis.aclose()

    redis_server.stop()
    assert asyncio.run(scenario(fail_open=True)) is True
    assert asyncio.run(scenario(fail_open=False)) is False


def test_hung_redis_is_asked_once_then_the_breaker_skips_it(
    factory: TokenFactory, redis_server: Any
) -> None:
    import os
    import signal

    settings = factory.settings(redis_url=redis_server.url)

    async def scenario() -> int:
        redis = create_redis(settings)
        verifier = TokenVerifier(settings, redis)
        verifier.keyset.load()
        token = factory.mint()
        await verifier.verify(token)  # connection made while Redis answers
        asked = 0
        real_mget = redis.mget

        async def counting_mget(*keys: Any) -> Any:
            nonlocal asked
            asked += 1
            return await real_mget(*keys)

        redis.mget = counting_mget  # type: ignore[method-assign]
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            for _ in range(5):
                assert (await verifier.verify(token)).subject == "alice"  # fail-open policy
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
            await redis.aclose()
        assert verifier.revocation_degraded
        return asked

    # One request waits for the socket timeout; the next ones skip the hung Redis.
    assert asyncio.run(scenario()) == 1
