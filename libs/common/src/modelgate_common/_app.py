"""The app factory every service builds on: one place for docs policy,
error handlers, middleware and health routes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI

from ._errors import install_error_handlers
from ._health import HealthChecks, health_router
from ._metrics import metrics_router
from ._middleware import ServiceMiddleware
from ._settings import CommonSettings


def create_service_app(
    *,
    title: str,
    settings: CommonSettings,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]],
    routers: Sequence[APIRouter],
    version: str = "1",
) -> FastAPI:
    docs = settings.docs_enabled
    app = FastAPI(
        title=title,
        version=version,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        swagger_ui_oauth2_redirect_url="/docs/oauth2-redirect" if docs else None,
    )
    app.state.health = HealthChecks()
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(metrics_router)
    for router in routers:
        app.include_router(router)
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
