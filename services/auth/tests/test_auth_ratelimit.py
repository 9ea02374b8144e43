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
from auth_testlib import ADMIN_PASSWORD, login, make_settings
from fastapi.testclient import TestClient
from modelgate_auth.main import create_app
from modelgate_common import RateLimitSettings


@pytest.fixture
def limited(tmp_path: Path, redis_server: Any) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, redis_server.url)
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
