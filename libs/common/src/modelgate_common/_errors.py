"""One error base and the handlers that render every failure as JSON.

No handler reveals a stack trace, a library name or a version; unexpected
exceptions are logged with their traceback and answered with a bare 500. A client
that hangs up while its body is read is not an error of ours: no traceback, one
debug line, and status 499 (nginx's "client closed request") in the access line
and metrics, never a 500.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

log = logging.getLogger("modelgate.errors")

BEARER_CHALLENGE = 'Bearer realm="modelgate"'
# nginx's code for "client closed request": what the access line and metrics record.
CLIENT_CLOSED_REQUEST = 499


class JsonResponse(Response):
    """JSON rendered by orjson: fast, and NaN or Infinity can never be emitted."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ServiceError(Exception):
    """An error a client may see: a message and an HTTP status."""

    status_code = 400
    message = "bad request"

    def __init__(
        self,
        message: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.status_code = status_code or self.status_code
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(ServiceError):
    status_code = 400
    message = "bad request"


class Unauthorized(ServiceError):
    status_code = 401
    message = "not authenticated"

    def __init__(self, message: str | None = None, error: str = "invalid_token") -> None:
        challenge = f'{BEARER_CHALLENGE}, error="{error}"' if error else BEARER_CHALLENGE
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ServiceError):
    status_code = 403
    message = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    message = "not found"


class Conflict(ServiceError):
    status_code = 409
    message = "conflict"


class TooManyRequests(ServiceError):
    status_code = 429
    message = "rate limit exceeded"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(ServiceError):
    status_code = 503
    message = "service unavailable"

    def __init__(self, message: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def error_body(message: Any) -> dict[str, Any]:
    return {"detail": message}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route, so the OpenAPI document lists its real errors."""
    return {status: {"description": _REASONS.get(status, "error")} for status in statuses}


_REASONS = {
    400: "Bad request",
    401: "Missing, malformed, expired or revoked token",
    403: "Token lacks the required scope or role",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Request body or parameters failed validation",
    429: "Rate limit exceeded",
    503: "A dependency is unavailable",
}


def _clean_validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    # The offending input is never echoed back: it may be a password or plaintext.
    return [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in errors
    ]


async def _service_error(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, ServiceError)
    return JsonResponse(error_body(exc.message), exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    return JsonResponse(error_body(_clean_validation_errors(list(exc.errors()))), 422)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str | None:
    """Every method the requested path answers. Starlette's 405 names only the
    methods of the first route whose path matched, while a path often has one
    route per method (``GET`` and ``PATCH /auth/users/me``); RFC 9110 wants all.
    Asked of the router itself (``matches``), so included routers count too."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed) or None


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """The client hung up before its body was read: nobody reads this answer."""
    log.debug("client disconnected before the request was read", extra={"path": request.url.path})
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):
        # FastAPI reads a declared body itself and turns the hang-up into a 400.
        return await _client_disconnected(request, exc.__cause__)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI answers a JSON body that is not UTF-8 with a bare 400, though any
        # other body that is not JSON is a 422 json_invalid: one answer for both.
        invalid = [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]
        return JsonResponse(error_body(invalid), 422)
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", BEARER_CHALLENGE)
    if exc.status_code == 405 and (allow := _allowed_methods(request)):
        headers["Allow"] = allow
    detail = exc.detail if isinstance(exc.detail, str) else "error"
    return JsonResponse(error_body(detail), exc.status_code, headers=headers)


async def _unexpected_error(_: Request, exc: Exception) -> JsonResponse:
    log.error("unhandled error", exc_info=exc)
    return JsonResponse(error_body("internal error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected_error)
