"""Helpers shared by the auth service's unit tests (imported by conftest and tests)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.keys import KeyStore
from modelgate_auth.main import create_app
from modelgate_common import CommonSettings
from modelgate_common.testing import GENEROUS_LIMITS

ADMIN_PASSWORD = "first-admin-password-for-tests"
USER_PASSWORD = "a-long-enough-user-password"


def login(client: TestClient, username: str, password: str, scope: str | None = None) -> Any:
    form = {"grant_type": "password", "username": username, "password": password}
    if scope is not None:
        form["scope"] = scope
    return client.post("/auth/token", data=form)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_databases(folder: Path) -> list[str]:
    """SQLite files under ``folder`` this process holds open (a connection holds the
    database and its -wal and -shm files). An engine left to the garbage collector keeps
    them open until a collection, and Python 3.13 then warns of an unclosed database."""
    fds = Path("/proc/self/fd")
    opened = []
    for fd in fds.iterdir():
        try:
            target = (fds / fd.name).readlink()
        except FileNotFoundError:  # the descriptor iterdir itself used, closed since
            continue
        if target.is_relative_to(folder) and ".db" in target.name:
            opened.append(str(target))
    return opened


def make_settings(root: Path, redis_url: str, **overrides: Any) -> AuthSettings:
    secrets = root / "secrets"
    if not secrets.exists():
        secrets.mkdir(mode=0o700)
        password_file = secrets / "admin_password"
        password_file.write_text(ADMIN_PASSWORD + "\n")
        password_file.chmod(0o600)
        # A signing key made once per test run: RSA key generation is the slowest setup step.
        template = _template_keys()
        shutil.copytree(template / "jwt", secrets / "jwt")
        shutil.copy2(template / "jwks.json", secrets / "jwks.json")
    values: dict[str, Any] = {
        "common": CommonSettings(
            secrets_dir=secrets,
            var_dir=root / "var",
            redis_url=redis_url,
            environment="development",
            ratelimit=GENEROUS_LIMITS,  # test_auth_ratelimit.py tests the real ones
        ),
        # Light argon2id parameters keep the suite fast; the algorithm is the same.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "argon2_parallelism": 1,
        # Tests call the sync themselves; the background loop must not race them.
        "revocation_sync_interval": 300,
    }
    values.update(overrides)
    return AuthSettings(**values)


@functools.cache
def _template_keys() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mg-auth-keys-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    KeyStore(folder / "jwt", folder / "jwks.json").ensure()
    return folder


@contextlib.asynccontextmanager
async def running(settings: Any) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """The app with its lifespan, and clients that each come from an address of their own."""
    app = create_app(settings)
    clients: list[httpx.AsyncClient] = []

    def from_address(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://auth")
        clients.append(client)
        return client

    async with app.router.lifespan_context(app):
        try:
            yield from_address
        finally:
            for client in clients:
                await client.aclose()


async def sign_in(client: httpx.AsyncClient, username: str, password: str) -> int:
    form = {"grant_type": "password", "username": username, "password": password}
    return (await client.post("/auth/token", data=form)).status_code
