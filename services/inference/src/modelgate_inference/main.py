"""App factory and lifespan of the inference service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from modelgate_common import (
    JsonResponse,
    ServiceError,
    configure_logging,
    create_service_app,
    shared_resources,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .config import InferenceSettings
from .routes import router
from .service import ModelRegistry, VersionSync


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    configure_logging("inference", **settings.common.logging_options("inference"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with shared_resources(app, settings.common):
            registry = ModelRegistry(
                settings.model_store,
                settings.public_key_path,
                bounds_margin=settings.bounds_margin,
                max_batch=settings.max_batch,
            )
            registry.scan()
            app.state.registry = registry
            app.state.health.add("models", registry.health)
            sync = VersionSync(
                registry,
                app.state.redis,
                namespace=settings.redis_namespace,
                poll_seconds=settings.reload_poll_seconds,
                ack_seconds=settings.reload_ack_seconds,
            )
            app.state.version_sync = sync
            await sync.start()
            try:
                yield
            finally:
                await sync.stop()

    app = create_service_app(
        title="modelgate inference", settings=settings.common, lifespan=lifespan, routers=[router]
    )
    app.state.settings = settings
    _add_protocol_error_field(app)
    return app


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _add_protocol_error_field(app: FastAPI) -> None:
    """Open Inference Protocol clients read an error's text from ``error``: under
    /v2 every error body carries it next to the usual ``detail``."""
    for exc_class in (ServiceError, RequestValidationError, StarletteHTTPException):
        original = cast(Handler, app.exception_handlers[exc_class])

        async def handler(
            request: Request, exc: Exception, original: Handler = original
        ) -> Response:
            response = await original(request, exc)
            if not request.url.path.startswith("/v2") or not response.body:
                return response  # (no body: the client hung up, nobody reads it)
            body: dict[str, Any] = orjson.loads(bytes(response.body))
            body["error"] = _error_text(body.get("detail"))
            headers = {
                k: v
                for k, v in response.headers.items()
                if k not in ("content-length", "content-type")
            }
            return JsonResponse(body, response.status_code, headers=headers)

        app.add_exception_handler(exc_class, handler)


def _error_text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid')}"
    return "error"
