"""Fixtures for the suites that run against a live stack through nginx.

Every test under tests/ is marked ``stack``; `make test` starts the native
stack for them. Point them at another stack (e.g. compose) with MG_BASE_URL
and MG_CERTS_DIR.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(ROOT / "tests"):
            item.add_marker(pytest.mark.stack)
    # Fault tests stop and start parts of the stack: run them after everything else
    # (a stable sort keeps every other order as collected).
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)


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


class NativeStack:
    """The operator's handle on the native stack: supervisorctl and the processes it runs.

    Tests that use it are marked ``native`` so a run against the compose stack
    deselects them (``-m "stack and not native"``).
    """

    PROGRAMS = ("redis", "auth", "inference", "crypto", "nginx")

    def __init__(self, var_dir: Path, base_url: str, ca_file: str) -> None:
        self.var_dir = var_dir
        self.base_url = base_url
        self.ca_file = ca_file
        self.env = {**os.environ, "MG_VAR_DIR": str(var_dir)}
        venv = Path(os.environ.get("MG_VENV", ROOT / ".venv"))
        self.supervisorctl = [
            str(venv / "bin" / "supervisorctl"),
            "-c",
            str(ROOT / "deploy" / "supervisord.conf"),
        ]

    def ctl(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [*self.supervisorctl, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"supervisorctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def pid(self, program: str) -> int:
        pid = int(self.ctl("pid", program).strip() or 0)
        assert pid > 0, f"{program} is not running"
        return pid

    def stop(self, program: str) -> None:
        self.ctl("stop", program)

    def start(self, program: str) -> None:
        self.ctl("start", program)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every program runs and nginx, and every service behind it, answer."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.ctl("status", check=False)
            running = [line for line in status.splitlines() if " RUNNING " in line]
            if len(running) == len(self.PROGRAMS) and self._answers():
                return
            time.sleep(0.2)
        raise AssertionError(f"stack not ready within {timeout} s:\n{status}")

    def _answers(self) -> bool:
        # Through nginx: a 502/503/504 means the service behind the path is not back yet.
        paths = ("/healthz", "/auth/.well-known/jwks.json", "/v2/health/live", "/crypto/encrypt")
        try:
            with make_client(self.base_url, self.ca_file) as c:
                return all(c.get(path).status_code < 500 for path in paths)
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="session")
def native_stack(var_dir: Path, base_url: str, ca_file: str) -> NativeStack:
    if not (var_dir / "run" / "supervisor.sock").exists():
        pytest.fail(f"no native stack runs from {var_dir} (make up); deselect with -m 'not native'")
    return NativeStack(var_dir, base_url, ca_file)
