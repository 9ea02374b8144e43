"""Redis stopped under traffic: every answer follows the outage policy, never a 500.

Sign-in refuses (503), predict and crypto count per worker in memory, readiness
says degraded; once Redis is back, counting is shared again without a restart.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import bearer
from tests.faults._traffic import Call, Traffic, service_port

if TYPE_CHECKING:
    from tests.conftest import NativeStack

pytestmark = [pytest.mark.faults, pytest.mark.native]

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
SERVICES = ("auth", "inference", "crypto")


def ready(service: str) -> dict[str, Any]:
    """/health/ready of one worker of a service (loopback, not through nginx)."""
    response = httpx.get(f"http://127.0.0.1:{service_port(service)}/health/ready", timeout=5)
    assert response.status_code == 200  # degraded is still ready
    body: dict[str, Any] = response.json()
    return body


def wait_rate_limits(status: str, timeout: float = 30.0) -> None:
    """Until 8 answers in a row from every service (either worker) report ``status``."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 8 * len(SERVICES):
        assert time.monotonic() < deadline, f"rate_limits never {status}: {ready('inference')}"
        checks = [ready(service)["checks"]["rate_limits"]["status"] for service in SERVICES]
        streak = streak + len(SERVICES) if set(checks) == {status} else 0
        time.sleep(0.1)


def test_redis_outage_follows_the_policy_and_shared_counting_resumes(
    native_stack: NativeStack,
    client: httpx.Client,
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
    login_response: Callable[..., httpx.Response],
    admin_password: str,
    traffic: Callable[..., Traffic],
) -> None:
    # Tokens are issued before the outage (sign-in needs Redis); each user is a new subject.
    tokens = {}
    for name in ("traffic", "outage", "after"):
        user = make_user()
        tokens[name] = bearer(login(user["username"], user["password"])["access_token"])
    # Background traffic: every answer must be one the policy allows, none a 5xx but
    # sign-in's 503.
    calls = [
        Call(
            "POST",
            "/predict",
            frozenset({200, 429}),
            kwargs={"json": IRIS, "headers": tokens["traffic"]},
        ),
        Call(
            "POST",
            "/crypto/encrypt",
            frozenset({200, 429}),
            kwargs={"json": {"plaintext": "x"}, "headers": tokens["traffic"]},
        ),
        Call(
            "POST",
            "/auth/token",
            frozenset({400, 429, 503}),
            idempotent=False,
            kwargs={"data": {"username": "rl-nobody", "password": "wrong"}},
        ),
    ]
    with traffic(calls, threads=3, max_seconds=60) as load:
        load.wait_for(20)
        native_stack.stop("redis")
        try:
            load.wait_for(20)
            # Sign-in is refused, not failed open and not a 500.
            refused = login_response("admin", admin_password)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["detail"]

            # Predict keeps answering within per-worker limits: at least one worker's 10,
            # at most both workers' 10 each.
            with ThreadPoolExecutor(10) as pool:
                answers = list(
                    pool.map(
                        lambda _: client.post("/predict", json=IRIS, headers=tokens["outage"]),
                        range(40),
                    )
                )
            statuses = Counter(r.status_code for r in answers)
            assert set(statuses) <= {200, 429}, statuses
            assert 10 <= statuses[200] <= 20, statuses
            encrypted = client.post(
                "/crypto/encrypt", json={"plaintext": "still here"}, headers=tokens["outage"]
            )
            assert encrypted.status_code == 200

            wait_rate_limits("degraded")
            body = ready("inference")
            assert body["status"] == "degraded"
            assert "per-worker" in body["checks"]["rate_limits"]["detail"]
        finally:
            native_stack.start("redis")
        wait_rate_limits("ok")
        load.wait_for(20)
    print(load.summary())
    failures = load.failures()
    assert not failures, [(o.call.path, o.status, o.error) for o in failures[:5]]
    statuses_seen = Counter(o.status for o in load.outcomes)
    assert statuses_seen[503] > 0  # sign-in was refused during the outage

    # Shared counting again, without a restart: a new subject gets 10 across both workers.
    assert login_response("admin", admin_password).status_code == 200
    with ThreadPoolExecutor(15) as pool:
        answers = list(
            pool.map(
                lambda _: client.post("/predict", json=IRIS, headers=tokens["after"]), range(15)
            )
        )
    assert Counter(r.status_code for r in answers) == {200: 10, 429: 5}
