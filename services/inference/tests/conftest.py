"""In-process fixtures: a real Redis, a throwaway token issuer, and a signed model
store built once per session (demo models) and copied for each test."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from inference_testdata import Audit, Serve
from modelgate_common.testing import TokenFactory
from modelgate_inference.builder import build_demo
from modelgate_inference.config import InferenceSettings
from modelgate_inference.main import create_app
from modelgate_inference.store import ensure_signing_key


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> TokenFactory:
    return TokenFactory(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("signing")
    private, public = folder / "model_signing_key", folder / "model_signing_key.pub"
    ensure_signing_key(private, public)
    return private, public


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Path, Path]) -> Path:
    store = tmp_path_factory.mktemp("demo-store")
    for name in ("iris", "breast_cancer"):
        build_demo(store, signing_keys[0], name)
    return store


@pytest.fixture
def store(tmp_path: Path, demo_store: Path) -> Path:
    """A writable copy of the demo store for one test."""
    target = tmp_path / "model_store"
    shutil.copytree(demo_store, target)
    return target


@pytest.fixture
def make_settings(
    tmp_path: Path,
    tokens: TokenFactory,
    redis_url: str,
    store: Path,
    signing_keys: tuple[Path, Path],
) -> Callable[..., InferenceSettings]:
    namespace = f"test:{uuid.uuid4().hex[:12]}"  # each test its own Redis keys

    def make(redis: str | None = None, **overrides: Any) -> InferenceSettings:
        common = tokens.settings(var_dir=tmp_path / "var", redis_url=redis or redis_url)
        values: dict[str, Any] = {
            "common": common,
            "model_store": store,
            "signing_public_key": signing_keys[1],
            "redis_namespace": namespace,
            "reload_poll_seconds": 0.5,
        }
        values.update(overrides)
        return InferenceSettings(**values)

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client speaking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as c:
            yield c


@pytest.fixture
def served() -> Serve:
    """Run another app (other settings, a second 'worker') in a test."""
    return serve


@pytest.fixture
async def client(
    make_settings: Callable[..., InferenceSettings],
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(make_settings())) as c:
        yield c


@pytest.fixture
def auth(tokens: TokenFactory) -> Callable[..., dict[str, str]]:
    def headers(sub: str = "alice", role: str = "user", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.mint(sub, role, **claims)}"}

    return headers


@pytest.fixture
def audit_log(tmp_path: Path) -> Audit:
    return Audit(tmp_path / "var" / "log" / "audit.jsonl")
