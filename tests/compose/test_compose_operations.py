"""The compose counterparts of the native-only checks: what a service exposes on its own
port, and the JSON error nginx answers while a service is down."""

from __future__ import annotations

import httpx
import pytest

from tests.compose.conftest import ComposeProject
from tests.security.conftest import hardening_problems

pytestmark = pytest.mark.compose

FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    print(urllib.request.urlopen('http://127.0.0.1:8000' + sys.argv[1], timeout=5).status)\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code)\n"
)


@pytest.mark.parametrize("service", ["auth", "inference", "crypto"])
def test_services_themselves_run_in_production_mode(
    compose_project: ComposeProject, service: str
) -> None:
    """Even asked from inside its own container, a service has no API docs."""
    for path in ("/docs", "/openapi.json", "/redoc"):
        status = compose_project.exec(service, "python3", "-c", FETCH, path).stdout.strip()
        assert status == "404", f"{service}{path}: {status}"
    # The same service does answer its own health: the port is right.
    live = compose_project.exec(service, "python3", "-c", FETCH, "/health/live").stdout
    assert live.strip() == "200"


@pytest.mark.faults
@pytest.mark.parametrize(
    ("service", "path"),
    [("crypto", "/crypto/encrypt"), ("inference", "/v2/health/live"), ("auth", "/auth/token")],
)
def test_json_502_with_security_headers_while_a_service_is_stopped(
    compose_project: ComposeProject,
    client: httpx.Client,
    base_url: str,
    ca_file: str,
    service: str,
    path: str,
) -> None:
    compose_project.stop(service)
    try:
        response = client.get(path)
        health = client.get("/healthz")
    finally:
        compose_project.start(service)
        compose_project.wait_healthy(base_url, ca_file)
    # Natively the service's port refuses at once (502); here its address is gone from the
    # bridge, so nginx's 2 s connect timeout answers first (504). Same JSON, same headers.
    assert response.status_code in (502, 504)
    assert response.json() == {"detail": "service unavailable"}
    assert hardening_problems(response) == []
    # The stack's health says so, and not which part is missing.
    assert health.status_code == 503
    assert health.json() == {"detail": "service unavailable"}
    assert hardening_problems(health) == []
    # Back where it was (nginx resolved its address once, at start): it answers again.
    assert client.get(path).status_code < 500
