"""Pure ASGI middleware: request id, access log, body-size cap."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._logging import request_id_var
from ._metrics import LATENCY, REQUESTS, service_name
from ._worker import drain_state

access_log = logging.getLogger("modelgate.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_JSON = [(b"content-type", b"application/json")]


class RequestContextMiddleware:
    """Adopt nginx's ``X-Request-ID`` (or make one), echo it, and log one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.service = service_name()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
                if drain_state.active:  # stopping: nginx must not reuse this connection
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUESTS.labels(self.service, template, scope["method"], str(status)).inc()
            LATENCY.labels(self.service, template).observe(elapsed)
            client = scope.get("client")
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": client[0] if client else None,
                },
            )
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Refuse bodies over the cap with 413 JSON, counting bytes as they arrive.

    nginx enforces the same cap first; this guards a service reached directly.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await _reject_too_large(send)
                    return
        received = 0
        answered = False  # we sent the 413; the app's own answer is dropped
        started = False

        async def limited_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if not answered and not started:
                        answered = True
                        await _reject_too_large(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if not answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _reject_too_large(send: Send) -> None:
    body = b'{"detail":"request body too large"}'
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
