"""Checks shared by the security suite: what every response through nginx must carry
and must never reveal, and a raw HTTPS request whose path no client library tidies."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

# Names of the software behind nginx: none may appear in a header or a body.
FRAMEWORK_NAMES = re.compile(
    r"uvicorn|fastapi|starlette|gunicorn|python|pydantic|werkzeug|httptools|openssl",
    re.IGNORECASE,
)
# A version number next to a server name, e.g. "nginx/1.22.1".
SERVER_VERSION = re.compile(r"nginx/\d|\b\d+\.\d+\.\d+\b")
HSTS_MIN_SECONDS = 365 * 24 * 3600


def hardening_problems(response: httpx.Response) -> list[str]:
    """Everything wrong with one response's headers and body, as readable lines."""
    problems = []
    headers = response.headers
    hsts = headers.get("strict-transport-security", "")
    match = re.search(r"max-age=(\d+)", hsts)
    if not match or int(match.group(1)) < HSTS_MIN_SECONDS:
        problems.append(f"HSTS missing or under a year: {hsts!r}")
    if headers.get("x-content-type-options") != "nosniff":
        problems.append("X-Content-Type-Options is not nosniff")
    if "no-store" not in headers.get("cache-control", ""):
        problems.append("Cache-Control lacks no-store")
    frame_denied = headers.get("x-frame-options", "").upper() == "DENY" or (
        "frame-ancestors 'none'" in headers.get("content-security-policy", "")
    )
    if not frame_denied:
        problems.append("framing not denied (X-Frame-Options DENY / frame-ancestors 'none')")
    if headers.get("server", "nginx") != "nginx":
        problems.append(f"Server header reveals more than 'nginx': {headers['server']!r}")
    for name in ("x-powered-by", "x-aspnet-version", "via"):
        if name in headers:
            problems.append(f"header {name} present")
    for name, value in headers.multi_items():
        if FRAMEWORK_NAMES.search(f"{name}: {value}"):
            problems.append(f"header names the software: {name}: {value}")
        if name != "date" and SERVER_VERSION.search(value) and name != "x-request-id":
            problems.append(f"header carries a version: {name}: {value}")
    body = response.text
    if FRAMEWORK_NAMES.search(body):
        problems.append(f"body names the software: {body[:300]!r}")
    if "Traceback" in body or 'File "' in body:
        problems.append("body carries a stack trace")
    return problems


@pytest.fixture(scope="session")
def assert_hardened() -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        problems = hardening_problems(response)
        assert not problems, f"{response.request.method} {response.request.url.path} " + (
            f"-> {response.status_code}: " + "; ".join(problems)
        )

    return check


def raw_https(base_url: str, ca_file: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as given over verified TLS; the status and the raw answer."""
    parts = urlsplit(base_url)
    assert parts.hostname and parts.port
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), answer


@pytest.fixture(scope="session")
def raw_get(base_url: str, ca_file: str) -> Callable[..., tuple[int, bytes]]:
    host = urlsplit(base_url).netloc

    def send(target: str, method: str = "GET", extra: str = "") -> tuple[int, bytes]:
        request = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        return raw_https(base_url, ca_file, request.encode())

    return send
