"""App factory and lifespan of the inference service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from modelgate_common import configure_logging, create_service_app, shared_resources

from .config import InferenceSettings
from .routes import router


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    configure_logging(
        "inference", settings.common.log_level, settings.common.log_dir / "audit.jsonl"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with shared_resources(app, settings.common):
            yield

    app = create_service_app(
        title="modelgate inference", settings=settings.common, lifespan=lifespan, routers=[router]
    )
    app.state.settings = settings
    return app
