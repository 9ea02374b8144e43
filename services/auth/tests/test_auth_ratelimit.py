"""The sign-in limits wired into the password grant, in-process with a real Redis:
a refused attempt never reaches the password check, failures count per user name,
and sign-in is refused (503), not failed open, while Redis is unreachable."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_testlib import ADMIN_PASSWORD, USER_PASSWORD, login, make_settings, running, sign_in
from fastapi.testclient import TestClient
from modelgate_auth.main import create_app
from modelgate_common import RateLimitSettings


@pytest.fixture
def limited(tmp_path: Path, redis_server: Any) -> Iterator[TestClient]:
    # Every request comes from one address, familiar after the first sign-in: a familiar
    # address's own allowance of failures is one, so the name's cap shows here.
    settings = make_settings(tmp_path, redis_server.url, familiar_address_failures=1)
    settings.common.ratelimit = RateLimitSettings(login="5/minute", login_failures="3/hour")
    with TestClient(create_app(settings)) as client:
        yield client


def password_checks(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "var" / "log" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return [e for e in events if e.get("audit") in ("login", "login_failed")]


def test_sixth_sign_in_from_one_client_never_reaches_the_password_check(
    limited: TestClient, tmp_path: Path
) -> None:
    statuses = [login(limited, f"nobody{i}", "wrong").status_code for i in range(5)]
    assert statuses == [400] * 5
    refused = login(limited, "admin", ADMIN_PASSWORD)  # even the right password
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["detail"]
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    # The seed alias shares the budget.
    assert limited.post("/token", data={"username": "a", "password": "b"}).status_code == 429
    assert len(password_checks(tmp_path)) == 5


def test_failures_per_user_name_lock_it_and_successes_do_not_count(
    limited: TestClient, tmp_path: Path
) -> None:
    ok = login(limited, "admin", ADMIN_PASSWORD)
    assert ok.status_code == 200
    assert ok.headers["ratelimit-remaining"] == "4"
    for _ in range(3):
        assert login(limited, "admin", "wrong").status_code == 400
    locked = login(limited, "admin", ADMIN_PASSWORD)
    assert locked.status_code == 429
    assert "failed sign-ins" in locked.json()["detail"]
    assert len(password_checks(tmp_path)) == 4


def test_sign_in_refused_while_redis_is_down(
    limited: TestClient, redis_server: Any, tmp_path: Path
) -> None:
    redis_server.stop()
    refused = login(limited, "admin", ADMIN_PASSWORD)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert password_checks(tmp_path) == []
    redis_server.start()
    ready: dict[str, Any] = {}
    for _ in range(200):  # the breaker lets this worker try Redis again after 2 s
        ready = limited.get("/health/ready").json()
        if ready["checks"]["rate_limits"]["status"] == "ok":
            break
        time.sleep(0.05)
    assert ready["checks"]["rate_limits"]["status"] == "ok"
    assert login(limited, "admin", ADMIN_PASSWORD).status_code == 200


# -- familiar addresses: strangers cannot lock a user out ---------------------------------
@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lockable_settings(tmp_path: Path, redis_url: str, **auth: Any) -> Any:
    settings = make_settings(tmp_path, redis_url, **auth)
    # Redis answers count here, not how fast a loaded machine returns to them: the longest
    # timeouts the settings allow (an outage in these tests is a stopped Redis).
    settings.common.redis_connect_timeout = settings.common.redis_socket_timeout = 5
    # Plenty per address (every attempt below comes from its own); 3 failures per name.
    settings.common.ratelimit = RateLimitSettings(login="100/minute", login_failures="3/hour")
    return settings


def audit_events(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "var" / "log" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("audit") == event]


@pytest.mark.anyio
async def test_strangers_spending_the_name_budget_do_not_lock_the_user_out(
    tmp_path: Path, redis_server: Any
) -> None:
    """Strangers spend admin's failure budget from three addresses: a new address meets the
    cap even with the right password, but admin still signs in from the address admin
    used before."""
    async with running(lockable_settings(tmp_path, redis_server.url)) as from_address:
        home = from_address("10.1.1.1")
        assert await sign_in(home, "admin", ADMIN_PASSWORD) == 200
        for n in range(3):
            assert await sign_in(from_address(f"203.0.113.{n}"), "admin", "wrong-guess") == 400
        assert await sign_in(from_address("203.0.113.50"), "admin", "another-guess") == 429
        # The cap holds for a new address whatever the password (no oracle either).
        assert await sign_in(from_address("203.0.113.51"), "admin", ADMIN_PASSWORD) == 429
        assert await sign_in(home, "admin", ADMIN_PASSWORD) == 200
        assert await sign_in(from_address("10.1.1.1"), "admin", ADMIN_PASSWORD) == 200
    [throttled, *_] = audit_events(tmp_path, "login_throttled")
    assert (throttled["user"], throttled["reason"]) == ("admin", "user")
    assert [e["client_ip"] for e in audit_events(tmp_path, "login_familiar_address")] == [
        "10.1.1.1",
        "10.1.1.1",
    ]


@pytest.mark.anyio
async def test_guessing_from_a_familiar_address_meets_its_own_small_cap(
    tmp_path: Path, redis_server: Any
) -> None:
    """Someone sharing the user's address (one NAT) gets only ``familiar_address_failures``
    password checks an hour there once the name's budget is spent."""
    settings = lockable_settings(tmp_path, redis_server.url, familiar_address_failures=2)
    async with running(settings) as from_address:
        shared = from_address("10.2.2.2")
        assert await sign_in(shared, "admin", ADMIN_PASSWORD) == 200
        for n in range(3):
            assert await sign_in(from_address(f"198.51.100.{n}"), "admin", "wrong-guess") == 400
        assert await sign_in(shared, "admin", "guess-one") == 400
        assert await sign_in(shared, "admin", "guess-two") == 400
        assert await sign_in(shared, "admin", ADMIN_PASSWORD) == 429


@pytest.mark.anyio
async def test_familiar_addresses_are_bounded_and_not_inherited_by_a_re_created_name(
    tmp_path: Path, redis_server: Any
) -> None:
    settings = lockable_settings(tmp_path, redis_server.url, familiar_addresses_kept=2)
    async with running(settings) as from_address:
        office = from_address("10.3.3.1")
        token = await office.post(
            "/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
        )
        admin = {"Authorization": f"Bearer {token.json()['access_token']}"}
        body = {"username": "alice", "password": USER_PASSWORD}
        assert (await office.post("/auth/users", json=body, headers=admin)).status_code == 201
        first, second, third = (from_address(f"10.3.3.{n}") for n in (2, 3, 4))
        for client in (first, second, third):
            assert await sign_in(client, "alice", USER_PASSWORD) == 200
        for n in range(3):
            assert await sign_in(from_address(f"192.0.2.{n}"), "alice", "wrong-guess") == 400
        # Two kept: the oldest of the three is forgotten.
        assert await sign_in(first, "alice", USER_PASSWORD) == 429
        assert await sign_in(third, "alice", USER_PASSWORD) == 200
        # A new alice starts with no familiar address (they belong to the user id).
        assert (await office.delete("/auth/users/alice", headers=admin)).status_code == 204
        assert (await office.post("/auth/users", json=body, headers=admin)).status_code == 201
        assert await sign_in(third, "alice", USER_PASSWORD) == 429
