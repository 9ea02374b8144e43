"""In-process fixtures: a real Redis, a throwaway token issuer, a keyring in a temp folder."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from modelgate_common.testing import TokenFactory
from modelgate_crypto.config import CryptoSettings
from modelgate_crypto.fernet_keyring import KEYRING_FILENAME, create_keyring
from modelgate_crypto.main import create_app


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> TokenFactory:
    return TokenFactory(tmp_path_factory.mktemp("issuer"))


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def keyring_path(secrets_dir: Path) -> Path:
    path = secrets_dir / KEYRING_FILENAME
    create_keyring(path)
    return path


@pytest.fixture
def make_settings(
    tmp_path: Path, secrets_dir: Path, tokens: TokenFactory, redis_url: str
) -> Callable[..., CryptoSettings]:
    def make(**overrides: Any) -> CryptoSettings:
        common = tokens.settings(
            secrets_dir=secrets_dir, var_dir=tmp_path / "var", redis_url=redis_url
        )
        return CryptoSettings(common=common, **overrides)

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(
    keyring_path: Path, make_settings: Callable[..., CryptoSettings]
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(make_settings())) as c:
        yield c


Serve = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def served() -> Serve:
    """Run another app (other settings, a second 'worker') in a test."""
    return serve


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client speaking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://crypto") as c:
            yield c


class Audit:
    """The audit file the service writes, read back as JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def raw(self) -> str:
        return self.path.read_text() if self.path.exists() else ""


@pytest.fixture
def audit_log(tmp_path: Path) -> Audit:
    return Audit(tmp_path / "var" / "log" / "audit.jsonl")


@pytest.fixture
def auth(tokens: TokenFactory) -> Callable[..., dict[str, str]]:
    def headers(sub: str = "alice", role: str = "user", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.mint(sub, role, **claims)}"}

    return headers
