"""App factory and lifespan of the auth service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from modelgate_common import configure_logging, create_service_app, shared_resources

from .config import AuthSettings
from .routes import router


def create_app(settings: AuthSettings | None = None) -> FastAPI:
    settings = settings or AuthSettings()
    configure_logging("auth", settings.common.log_level, settings.common.log_dir / "audit.jsonl")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with shared_resources(app, settings.common):
            yield

    app = create_service_app(
        title="modelgate auth", settings=settings.common, lifespan=lifespan, routers=[router]
    )
    app.state.settings = settings
    return app
