"""Fixtures for the suites that run against a live stack through nginx.

Every test under tests/ is marked ``stack``; `make test` starts the native
stack for them. Point them at another stack (e.g. compose) with MG_BASE_URL
and MG_CERTS_DIR.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import secrets
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def run_command(
    argv: list[str],
    cwd: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> str:
    """stdout of a command (docker, compose) that must succeed; its stderr tail if not."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


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

    def state(self, program: str) -> str:
        """supervisord's state of a program: RUNNING, STOPPED, EXITED, STARTING, ..."""
        fields = self.ctl("status", program, check=False).split()
        return fields[1] if len(fields) > 1 else "UNKNOWN"

    def wait_state(self, program: str, states: set[str], timeout: float = 40.0) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(program)) not in states:
            assert time.monotonic() < deadline, f"{program} still {state} after {timeout} s"
            time.sleep(0.1)
        return state

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


# -- auth: logins, the first admin's token, throwaway users -------------------------------
# The login limit is per client address (5/minute by default), so every login through
# these fixtures comes from its own loopback address. The range starts at a random place
# each run: counters live in Redis, which may keep them from a run a minute ago.
_SOURCE_BASE = 0x7F400000 + secrets.randbelow(0x3F0000)  # within 127.64.0.0/10
_source_counter = itertools.count()


def next_source_ip() -> str:
    """A loopback address no earlier login of this test run has used."""
    return str(ipaddress.IPv4Address(_SOURCE_BASE + next(_source_counter) % 0xFFFF))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def admin_password(secrets_dir: Path) -> str:
    return (secrets_dir / "admin_password").read_text().strip()


@pytest.fixture(scope="session")
def fresh_source_ip() -> Callable[[], str]:
    """``fresh_source_ip()``: for clients other than httpx (bind it as the source address)."""
    return next_source_ip


@pytest.fixture(scope="session")
def new_client(base_url: str, ca_file: str) -> Callable[[], httpx.Client]:
    """``new_client()``: a client from a loopback address no earlier login has used."""
    return lambda: make_client(base_url, ca_file, next_source_ip())


@pytest.fixture(scope="session")
def login_response(new_client: Callable[[], httpx.Client]) -> Callable[..., httpx.Response]:
    """``login_response(username, password, scope=None, path="/auth/token")``: the raw answer."""

    def post(
        username: str, password: str, scope: str | None = None, path: str = "/auth/token"
    ) -> httpx.Response:
        form = {"grant_type": "password", "username": username, "password": password}
        if scope is not None:
            form["scope"] = scope
        with new_client() as c:
            return c.post(path, data=form)

    return post


@pytest.fixture(scope="session")
def login(login_response: Callable[..., httpx.Response]) -> Callable[..., dict[str, Any]]:
    """``login(username, password, scope=None)``: the token response (``access_token``,
    ``refresh_token``, ``scope``, …) of a successful password grant."""

    def do(username: str, password: str, scope: str | None = None) -> dict[str, Any]:
        response = login_response(username, password, scope)
        assert response.status_code == 200, response.text
        return dict(response.json())

    return do


@pytest.fixture
def admin_token(login: Callable[..., dict[str, Any]], admin_password: str) -> str:
    """A fresh access token of the first admin (``admin``)."""
    return str(login("admin", admin_password)["access_token"])


@pytest.fixture
def make_user(client: httpx.Client, admin_token: str) -> Iterator[Callable[..., dict[str, str]]]:
    """``make_user(role="user", username=None, password=None, **fields)`` creates a user
    through the admin API and returns ``{"username", "password", "role"}``; the users
    are removed after the test."""
    created: list[str] = []

    def make(
        role: str = "user",
        username: str | None = None,
        password: str | None = None,
        **fields: Any,
    ) -> dict[str, str]:
        name = username or f"t-{secrets.token_hex(6)}"
        secret = password or secrets.token_urlsafe(18)
        body = {"username": name, "password": secret, "role": role, **fields}
        response = client.post("/auth/users", json=body, headers=bearer(admin_token))
        assert response.status_code == 201, response.text
        created.append(name)
        return {"username": name, "password": secret, "role": role}

    yield make
    for name in created:
        client.delete(f"/auth/users/{name}", headers=bearer(admin_token))
