"""Liveness and readiness.

Live means the process answers. Ready runs every registered check; a check
says ``ok``, ``degraded`` (serving with reduced guarantees, e.g. per-worker
rate limits while Redis is down) or ``fail``. Only ``fail`` makes ready 503.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request

from ._errors import JsonResponse

Status = Literal["ok", "degraded", "fail"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    detail: str = ""


Check = Callable[[], Awaitable[CheckResult]]


class HealthChecks:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def run(self) -> tuple[Status, dict[str, dict[str, str]]]:
        results = {name: await check() for name, check in self._checks.items()}
        statuses = {r.status for r in results.values()}
        overall: Status = (
            "fail" if "fail" in statuses else "degraded" if "degraded" in statuses else "ok"
        )
        return overall, {n: {"status": r.status, "detail": r.detail} for n, r in results.items()}


health_router = APIRouter(tags=["health"])


@health_router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get("/health/ready", responses={503: {"description": "A check failed"}})
async def ready(request: Request) -> JsonResponse:
    checks: HealthChecks = request.app.state.health
    overall, details = await checks.run()
    return JsonResponse(
        {"status": overall, "checks": details}, status_code=503 if overall == "fail" else 200
    )
