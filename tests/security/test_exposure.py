"""What nginx must not serve: odd methods, API docs, metrics, the services' own
health routes, whatever the path tricks. Raw request lines are used where a
client library would tidy the path (dot segments, encoded slashes)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.conftest import NativeStack

# What would show that a hidden route answered after all.
LEAK_MARKERS = (b"openapi", b"swagger", b"# HELP", b"# TYPE", b"redoc", b'"checks"')
SERVICE_PATHS = ("/auth/token", "/v1/models", "/v2/models/iris/infer", "/crypto/encrypt")


@pytest.mark.parametrize(
    "method", ["TRACE", "TRACK", "CONNECT", "DEBUG", "PROPFIND", "MOVE", "SEARCH", "FOO"]
)
@pytest.mark.parametrize("path", ["/healthz", *SERVICE_PATHS])
def test_trace_and_unknown_methods_405_everywhere(
    raw_get: Callable[..., tuple[int, bytes]], method: str, path: str
) -> None:
    secret = "Authorization: Bearer do-not-echo-me\r\nCookie: session=do-not-echo-me\r\n"
    status, answer = raw_get(path, method=method, extra=secret)
    assert status == 405, answer[:200]
    # Cross-site tracing: the request (and its credentials) is never reflected.
    assert b"do-not-echo-me" not in answer
    assert b"Allow: " in answer


@pytest.mark.parametrize(
    ("method", "target"),
    [("CONNECT", "127.0.0.1:6379"), ("get", "/healthz"), ("G\tET", "/healthz")],
)
def test_tunnels_and_malformed_methods_refused(
    raw_get: Callable[..., tuple[int, bytes]], method: str, target: str
) -> None:
    """nginx is no forward proxy, and a method it cannot parse never reaches a service."""
    status, answer = raw_get(target, method=method)
    assert status in (400, 405), answer[:200]


HIDDEN = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/metrics"]
HEALTH = ["/health/live", "/health/ready"]
# /v2/health/* is the Open Inference Protocol's own public health, not the service's.
EXPOSED_PATHS = [p + h for p in ("", "/auth", "/crypto") for h in HIDDEN + HEALTH] + [
    p + h for p in ("/v1/models", "/v2") for h in HIDDEN
]


@pytest.mark.parametrize("path", EXPOSED_PATHS)
def test_docs_metrics_and_service_health_not_served(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None], path: str
) -> None:
    response = client.get(path)
    # 404, or 401 where the path falls in a protected route (a model named "docs").
    assert response.status_code in (401, 404), response.text[:200]
    assert not any(m.decode() in response.text for m in LEAK_MARKERS)
    assert_hardened(response)


TRICKS = [
    "/auth/../metrics",
    "/auth/%2e%2e/metrics",
    "/auth/..%2fmetrics",
    "/auth%2f..%2fmetrics",
    "/auth/.well-known/../../openapi.json",
    "/v1/models/../../docs",
    "/v1/models/..%2f..%2fopenapi.json",
    "/v2/../health/ready",
    "/v2/health/../../health/live",
    "/v2%2f..%2fmetrics",
    "/crypto/%2e%2e/%2e%2e/health/ready",
    "/crypto/./../metrics",
    "//metrics",
    "///openapi.json",
    "/METRICS",
    "/Docs",
    "/metrics/",
    "/metrics;x",
    "/metrics%00",
    "/metrics%20",
    "/openapi.json?format=yaml",
    "/%6detrics",
    "/auth/%2E%2E%2F%2E%2E%2Fmetrics",
    "http://127.0.0.1/metrics",
    "https://localhost/auth/../openapi.json",
]


@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_reach_no_hidden_route(
    raw_get: Callable[..., tuple[int, bytes]], target: str
) -> None:
    status, answer = raw_get(target)
    assert status in (400, 404), answer[:300]
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert not any(marker in body for marker in LEAK_MARKERS), body[:300]


@pytest.mark.native
@pytest.mark.parametrize("service", ["auth", "inference", "crypto"])
@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc"])
def test_services_themselves_run_in_production_mode(
    native_stack: NativeStack, service: str, path: str
) -> None:
    """Even on its loopback port, a service started by the stack has no API docs."""
    default = {"auth": "8101", "inference": "8102", "crypto": "8103"}[service]
    port = int(os.environ.get(f"MG_{service.upper()}_PORT", default))
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    assert response.status_code == 404
    # The same service does answer its own health: the port is right.
    assert httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=5).status_code == 200
