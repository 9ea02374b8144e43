"""Redis stopped on the compose stack: the outage policy holds through nginx, and the
services' container healthchecks stay healthy (degraded is still ready), so Docker
neither restarts them nor has nginx lose them; with Redis back, sign-in works again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.compose.conftest import ComposeProject
from tests.conftest import bearer

pytestmark = [pytest.mark.compose, pytest.mark.faults]

SERVICES = ("auth", "inference", "crypto")
READY = (
    "import json, urllib.request\n"
    "print(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=5).read().decode())"
)


def readiness(project: ComposeProject, service: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(project.exec(service, "python3", "-c", READY).stdout)
    return body


def wait_rate_limits(project: ComposeProject, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = [readiness(project, s)["checks"]["rate_limits"]["status"] for s in SERVICES]
        if set(seen) == {status}:
            return
        time.sleep(0.5)
    raise AssertionError(f"rate_limits never all {status}: {seen}")


def test_redis_outage_keeps_containers_healthy_and_follows_the_policy(
    compose_project: ComposeProject,
    client: httpx.Client,
    base_url: str,
    ca_file: str,
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
    login_response: Callable[..., httpx.Response],
    admin_password: str,
) -> None:
    user = make_user()
    token = bearer(login(user["username"], user["password"])["access_token"])  # needs Redis
    compose_project.stop("redis")
    try:
        refused = login_response("admin", admin_password)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        encrypted = client.post("/crypto/encrypt", json={"plaintext": "x"}, headers=token)
        assert encrypted.status_code == 200
        wait_rate_limits(compose_project, "degraded")
        # Two healthcheck rounds later (5 s apart), every service is still healthy.
        time.sleep(11)
        containers = compose_project.containers()
        for service in SERVICES:
            assert containers[service]["State"]["Health"]["Status"] == "healthy", service
            assert containers[service]["RestartCount"] == 0, service
    finally:
        compose_project.start("redis")
    wait_rate_limits(compose_project, "ok")
    compose_project.wait_healthy(base_url, ca_file)
    assert login_response("admin", admin_password).status_code == 200
