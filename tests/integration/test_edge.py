"""The edge: TLS, security headers, refusals nginx makes before any service."""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest

SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


def assert_hardened(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["server"] == "nginx"  # no version
    assert response.headers["content-type"].startswith("application/json")
    response.json()  # every answer, errors included, is JSON


def test_healthz_answers_with_security_headers(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert_hardened(response)


def test_request_id_is_generated_by_nginx(client: httpx.Client) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(len(i) == 32 for i in ids)


def test_certificate_verifies_for_localhost_and_127(https_port: int, ca_file: str) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    for host in ("localhost", "127.0.0.1"):
        with socket.create_connection(("127.0.0.1", https_port)) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_certificate_not_trusted_without_the_ca(base_url: str) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/healthz", verify=ssl.create_default_context())


def test_plain_http_serves_no_api(http_port: int) -> None:
    for path in ("/healthz", "/auth/token", "/v1/models", "/predict"):
        response = httpx.post(f"http://127.0.0.1:{http_port}{path}", data={"x": "y"})
        assert response.status_code == 403
        assert "HTTPS" in response.json()["detail"]
        assert_hardened(response)


def test_unknown_path_is_json_404(client: httpx.Client) -> None:
    response = client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json() == {"detail": "not found"}
    assert_hardened(response)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "FOO", "PROPFIND"])
def test_trace_and_unknown_methods_are_405(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/healthz")
    assert response.status_code == 405
    assert_hardened(response)


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/health/live",
        "/health/ready",
        "/docs",
        "/openapi.json",
        "/redoc",
        "/auth/../metrics",
        "/%2e%2e/metrics",
    ],
)
def test_internal_routes_not_served(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert_hardened(response)


@pytest.mark.parametrize("path", ["/crypto/encrypt", "/v1/models/iris/predict", "/auth/token"])
def test_body_over_cap_is_413_json(client: httpx.Client, path: str) -> None:
    response = client.post(
        path, content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "request body too large"}
    assert_hardened(response)
