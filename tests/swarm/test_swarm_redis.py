"""Redis on Docker Swarm: on the backend network, which nginx is not on, and only each
service's own ACL user signs in (Swarm secrets: the services' passwords, Redis's ACL file)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_command
from tests.container_probes import (
    ANONYMOUS,
    SERVICE_USER,
    WRONG_PASSWORD,
    redis_outcomes,
    redis_ping,
)
from tests.swarm.conftest import SwarmStack

pytestmark = pytest.mark.swarm


def _image(container: str) -> str:
    return str(json.loads(run_command(["docker", "inspect", container]))[0]["Config"]["Image"])


def test_nginx_cannot_reach_redis(swarm_stack: SwarmStack) -> None:
    (redis,) = swarm_stack.containers("redis")
    redis_ip = swarm_stack.address(redis, "backend")
    auth = swarm_stack.containers("auth")[0]
    python_image = _image(auth)
    # Redis answers the probe from a service's network namespace ...
    assert redis_ping(auth, redis_ip, 6379, python_image) == "PONG"
    # ... and from every nginx's gets no answer from Redis, by address or by name.
    for nginx in swarm_stack.containers("nginx"):
        for host in (redis_ip, "redis"):
            found = redis_ping(nginx, host, 6379, python_image)
            assert found != "PONG", f"nginx reached Redis at {host}"


def test_redis_lets_in_each_service_as_its_own_user_only(swarm_stack: SwarmStack) -> None:
    for service in ("auth", "inference", "crypto"):
        container = swarm_stack.containers(service)[0]
        assert redis_outcomes(container, "redis", "") == ANONYMOUS, service
        assert redis_outcomes(container, "redis", service) == SERVICE_USER, service
        wrong = redis_outcomes(container, "redis", service, f"not-{service}s-password")
        assert wrong == WRONG_PASSWORD, service
