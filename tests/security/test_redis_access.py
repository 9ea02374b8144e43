"""Redis of the native stack lets in only the services, each as its own ACL user: a local
process without a password may PING and nothing else; a service's user reaches only
modelgate's keys and no administrative command."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

pytestmark = pytest.mark.native  # the native stack's Redis port and secrets/

REDIS_URL = os.environ.get("MG_REDIS_URL", "redis://127.0.0.1:6391/0")


def _client(secrets_dir: Path, user: str | None) -> redis.Redis:
    if user is None:
        return redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    password = (secrets_dir / f"redis_{user}_password").read_text().strip()
    return redis.Redis.from_url(REDIS_URL, username=user, password=password, socket_timeout=5)


@pytest.fixture
def as_user(secrets_dir: Path) -> Iterator[Callable[[str | None], redis.Redis]]:
    opened: list[redis.Redis] = []

    def make(user: str | None) -> redis.Redis:
        client = _client(secrets_dir, user)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def test_without_a_password_only_ping_answers(as_user: Callable[[str | None], redis.Redis]) -> None:
    anonymous = as_user(None)
    assert anonymous.ping()
    for attempt, call in {
        "GET": lambda: anonymous.get("mg:revoked:sub:admin"),
        "SET": lambda: anonymous.set("mg:revoked:sub:x", "1"),
        "DEL": lambda: anonymous.delete("mg:revoked:sub:x"),
        "KEYS": lambda: anonymous.keys("mg:*"),
        "FLUSHALL": lambda: anonymous.flushall(),
        "CONFIG": lambda: anonymous.config_get("*"),
    }.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
            pytest.fail(f"{attempt} without a password was answered")


def test_a_wrong_password_is_refused(secrets_dir: Path) -> None:
    client = redis.Redis.from_url(
        REDIS_URL, username="auth", password=secrets.token_urlsafe(16), socket_timeout=5
    )
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.get("mg:revoked:sub:admin")
    finally:
        client.close()


def test_each_service_user_reaches_only_modelgates_keys_and_no_admin_command(
    as_user: Callable[[str | None], redis.Redis],
) -> None:
    for user in ("auth", "inference", "crypto"):
        client = as_user(user)
        key = f"mg:test:{user}-{secrets.token_hex(4)}"
        assert client.set(key, "1", ex=60), user
        assert client.delete(key) == 1, user
        for attempt, call in {
            "SET outside mg:*": lambda c=client: c.set("other:key", "1"),
            "FLUSHALL": lambda c=client: c.flushall(),
            "FLUSHDB": lambda c=client: c.flushdb(),
            "KEYS": lambda c=client: c.keys("*"),
            "CONFIG SET": lambda c=client: c.config_set("appendonly", "no"),
            "ACL LIST": lambda c=client: c.acl_list(),
        }.items():
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
                pytest.fail(f"{user}: {attempt} was answered")
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_user("crypto").publish("mg:inference:reload", "x")
        pytest.fail("crypto published on inference's channel")


def test_the_acl_file_holds_digests_not_passwords(secrets_dir: Path) -> None:
    acl = (secrets_dir / "redis_users.acl").read_text()
    for user in ("auth", "inference", "crypto"):
        password = (secrets_dir / f"redis_{user}_password").read_text().strip()
        assert password not in acl, user
        assert f"user {user} on #" in acl, user
