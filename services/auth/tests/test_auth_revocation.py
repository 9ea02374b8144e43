"""A revoked token stays revoked: after Redis loses its data, after the auth service
restarts, and when the revocation was made while Redis was down or by the CLI."""

from __future__ import annotations

import time
from typing import Any

import redis
from auth_testlib import ADMIN_PASSWORD, USER_PASSWORD, bearer, login
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.db import Revocation
from modelgate_auth.main import build_service, create_app
from modelgate_auth.revocation import PendingRevocation
from modelgate_auth.schemas import UserUpdate
from modelgate_common import REVOKED_INDEX, revoked_jti_key, revoked_subject_key


def _sync(client: TestClient) -> int:
    publisher = client.app.state.revocations  # type: ignore[attr-defined]
    assert client.portal is not None
    return int(client.portal.call(publisher.sync))


def _me(client: TestClient, token: str) -> int:
    return client.get("/auth/users/me", headers=bearer(token)).status_code


def _logged_out(client: TestClient, user_tokens: dict[str, Any]) -> tuple[str, str]:
    """Log the user's access token out: (the token, its token id)."""
    access = user_tokens["access_token"]
    client.post("/auth/logout", headers=bearer(access))
    jti = client.app.state.verifier._verified[access][0].token_id  # type: ignore[attr-defined]
    return access, jti


def test_revocation_is_back_in_redis_after_redis_lost_its_data(
    client: TestClient, user_tokens: dict[str, Any], redis_client: redis.Redis
) -> None:
    access = user_tokens["access_token"]
    client.post("/auth/logout", headers=bearer(access))
    assert _me(client, access) == 401
    redis_client.flushall()  # what a restart without persistence does
    assert _me(client, access) == 200  # the gap the sync closes
    assert _sync(client) >= 1
    assert _me(client, access) == 401


def test_revocation_survives_a_restart_of_redis_and_auth(
    settings: AuthSettings, redis_server: Any
) -> None:
    with TestClient(create_app(settings)) as first:
        admin = login(first, "admin", ADMIN_PASSWORD).json()["access_token"]
        user = {"username": "alice", "password": USER_PASSWORD}
        first.post("/auth/users", json=user, headers=bearer(admin))
        tokens = login(first, "alice", USER_PASSWORD).json()
        first.post("/auth/logout", headers=bearer(tokens["access_token"]))
        assert _me(first, tokens["access_token"]) == 401
    redis_server.stop()
    redis_server.start()  # empty
    with TestClient(create_app(settings)) as restarted:
        assert _me(restarted, tokens["access_token"]) == 401
        refresh = restarted.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refresh.status_code == 401
        assert login(restarted, "alice", USER_PASSWORD).status_code == 200


def test_logout_while_redis_is_down_is_pushed_when_it_returns(
    client: TestClient, user_tokens: dict[str, Any], redis_server: Any, redis_client: redis.Redis
) -> None:
    access = user_tokens["access_token"]
    redis_server.stop()
    # Verification fails open without Redis (the configured default); the logout is recorded.
    assert client.post("/auth/logout", headers=bearer(access)).status_code == 204
    redis_server.start()
    _sync(client)
    # Checks resume once the verifier's circuit breaker lets Redis be asked again
    # (MG_RATELIMIT_BREAKER_SECONDS after the last failure); until then it fails open.
    deadline = time.monotonic() + 15
    while _me(client, access) != 401:
        assert time.monotonic() < deadline, "revoked token still accepted after Redis returned"
        time.sleep(0.2)


def test_revocation_made_outside_the_service_reaches_redis(
    client: TestClient,
    user_tokens: dict[str, Any],
    settings: AuthSettings,
    redis_client: redis.Redis,
) -> None:
    access = user_tokens["access_token"]
    _sync(client)  # the marker is set: from now on only new revocations are pushed
    cli_service, _ = build_service(settings)  # what `modelgate user disable` uses
    cli_service.update_user("alice", UserUpdate(disabled=True), actor="cli")
    cli_service.engine.dispose()
    assert _me(client, access) == 200  # not in Redis yet
    assert _sync(client) == 1
    assert _me(client, access) == 401


def test_revoked_jti_expires_with_the_token(
    client: TestClient, user_tokens: dict[str, Any], redis_client: redis.Redis
) -> None:
    _, jti = _logged_out(client, user_tokens)
    ttl = redis_client.ttl(revoked_jti_key(jti))
    # Kept until the token's expiry plus the verifier's leeway, not forever.
    assert 0 < ttl <= 900 + 30


def test_a_revocation_committed_after_a_higher_id_still_reaches_redis(
    client: TestClient, settings: AuthSettings, redis_client: redis.Redis
) -> None:
    """PostgreSQL allocates ids at insert, not at commit: a revocation with a lower id
    can become visible after one with a higher id was pushed. The periodic push must
    not step over it (an id cursor did)."""
    sessions = client.app.state.auth_service.sessions  # type: ignore[attr-defined]
    expires = int(time.time()) + 600
    now = int(time.time())
    _sync(client)  # marker set: from now on the push is incremental
    with sessions.begin() as session:
        session.add(
            Revocation(
                id=1000, key="mg:test:late-high", value="1", expires_at=expires, created_at=now
            )
        )
    _sync(client)
    assert redis_client.get("mg:test:late-high") == b"1"
    with sessions.begin() as session:  # committed late, with the lower id
        session.add(
            Revocation(
                id=999, key="mg:test:late-low", value="1", expires_at=expires, created_at=now
            )
        )
    _sync(client)
    assert redis_client.get("mg:test:late-low") == b"1"


def test_a_deleted_revocation_key_is_restored_by_the_next_sync(
    client: TestClient, user_tokens: dict[str, Any], redis_client: redis.Redis
) -> None:
    """Whoever deletes mg:revoked:* keys (the marker kept) gets them back within one sync,
    however long ago they were written."""
    access, jti = _logged_out(client, user_tokens)
    _sync(client)  # marker set
    # Older than the incremental window: only a check of the whole live set finds it.
    sessions = client.app.state.auth_service.sessions  # type: ignore[attr-defined]
    with sessions.begin() as session:
        session.query(Revocation).update({Revocation.created_at: int(time.time()) - 3600})
    for key in redis_client.scan_iter("mg:revoked:*"):
        redis_client.delete(key)
    assert redis_client.exists("mg:auth:revocations-synced")
    assert _me(client, access) == 200  # the gap the sync closes
    assert _sync(client) >= 1
    assert redis_client.get(revoked_jti_key(jti)) == b"1"
    assert _me(client, access) == 401


def test_an_older_subject_cutoff_never_replaces_a_newer_one(
    client: TestClient, redis_client: redis.Redis
) -> None:
    """Two pushes can arrive in either order (two workers, the periodic re-push of every
    row): the cut-off in Redis only ever moves forward."""
    publisher = client.app.state.revocations  # type: ignore[attr-defined]
    assert client.portal is not None
    key = revoked_subject_key("alice")
    now = int(time.time())
    newer = PendingRevocation(key, str(now), now + 900)
    older = PendingRevocation(key, str(now - 100), now + 800)
    assert client.portal.call(publisher.push, [newer])
    assert client.portal.call(publisher.push, [older])
    assert redis_client.get(key) == str(now).encode()
    assert 800 < redis_client.ttl(key) <= 900
    later = PendingRevocation(key, str(now + 5), now + 905)
    assert client.portal.call(publisher.push, [later])
    assert redis_client.get(key) == str(now + 5).encode()


def test_every_pushed_revocation_is_listed_in_the_index(
    client: TestClient, user_tokens: dict[str, Any], redis_client: redis.Redis
) -> None:
    _, jti = _logged_out(client, user_tokens)
    score = redis_client.zscore(REVOKED_INDEX, f"{revoked_jti_key(jti)} 1")
    assert score is not None and score > time.time()


def _refresh_mirror(client: TestClient) -> None:
    verifier = client.app.state.verifier  # type: ignore[attr-defined]
    assert client.portal is not None
    assert client.portal.call(verifier.refresh_mirror)


def test_a_logged_out_token_stays_refused_while_redis_is_down(
    client: TestClient, user_tokens: dict[str, Any], redis_server: Any
) -> None:
    access = user_tokens["access_token"]
    assert client.post("/auth/logout", headers=bearer(access)).status_code == 204
    _refresh_mirror(client)
    redis_server.stop()
    try:
        # The lookup fails, then the breaker skips it: both answer from the mirror.
        assert [_me(client, access) for _ in range(3)] == [401] * 3
    finally:
        redis_server.start()


def test_tokens_of_a_disabled_user_or_from_before_a_password_change_stay_refused(
    client: TestClient, admin_token: str, make_user: Any, redis_server: Any
) -> None:
    make_user("bob")
    make_user("carol")
    bob = login(client, "bob", USER_PASSWORD).json()["access_token"]
    carol = login(client, "carol", USER_PASSWORD).json()["access_token"]
    disabled = client.patch("/auth/users/bob", json={"disabled": True}, headers=bearer(admin_token))
    assert disabled.status_code == 200, disabled.text
    changed = client.patch(
        "/auth/users/carol", json={"password": USER_PASSWORD + "-new"}, headers=bearer(admin_token)
    )
    assert changed.status_code == 200, changed.text
    _refresh_mirror(client)
    redis_server.stop()
    try:
        assert _me(client, bob) == 401
        assert _me(client, carol) == 401
        assert _me(client, admin_token) == 200  # unrevoked tokens: the fail-open policy
    finally:
        redis_server.start()
