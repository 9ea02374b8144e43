"""A service app for the logging tests, run by the real gunicorn with the stack's
gunicorn.conf.py: ``GET /note`` logs one line besides its access line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from modelgate_common import CommonSettings, configure_logging, create_service_app


def create_app() -> FastAPI:
    settings = CommonSettings()
    configure_logging("logtest", **settings.logging_options("logtest"))
    router = APIRouter()

    @router.get("/note")
    async def note() -> dict[str, str]:
        logging.getLogger("logtest").info("noted")
        return {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    return create_service_app(
        title="logtest", settings=settings, lifespan=lifespan, routers=[router]
    )
