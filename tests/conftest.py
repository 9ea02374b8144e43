"""Fixtures for the suites that run against a live stack through nginx.

Every test under tests/ is marked ``stack``; `make test` starts the native
stack for them. Point them at another stack (e.g. compose) with MG_BASE_URL
and MG_CERTS_DIR.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(ROOT / "tests"):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def https_port() -> int:
    return int(os.environ.get("MG_HTTPS_PORT", "8443"))


@pytest.fixture(scope="session")
def http_port() -> int:
    return int(os.environ.get("MG_HTTP_PORT", "8080"))


@pytest.fixture(scope="session")
def base_url(https_port: int) -> str:
    return os.environ.get("MG_BASE_URL", f"https://localhost:{https_port}")


@pytest.fixture(scope="session")
def certs_dir() -> Path:
    return Path(os.environ.get("MG_CERTS_DIR", ROOT / "certs"))


@pytest.fixture(scope="session")
def secrets_dir() -> Path:
    return Path(os.environ.get("MG_SECRETS_DIR", ROOT / "secrets"))


@pytest.fixture(scope="session")
def var_dir() -> Path:
    return Path(os.environ.get("MG_VAR_DIR", ROOT / "var"))


@pytest.fixture(scope="session")
def ca_file(certs_dir: Path) -> str:
    return str(certs_dir / "ca.pem")


def make_client(base_url: str, ca_file: str, source_ip: str | None = None) -> httpx.Client:
    """A client that verifies TLS with the stack's CA; optionally from another loopback address."""
    context = ssl.create_default_context(cafile=ca_file)
    transport = httpx.HTTPTransport(verify=context, local_address=source_ip)
    return httpx.Client(base_url=base_url, transport=transport, timeout=10.0)


@pytest.fixture
def client(base_url: str, ca_file: str) -> Iterator[httpx.Client]:
    with make_client(base_url, ca_file) as c:
        yield c
