"""The one pure ASGI middleware around every service: request id, body-size cap,
rate-limit headers, metrics and the request's log line."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._admission import _Exchange, _exchange
from ._logging import AUDIT_LOGGER, request_audit_var, request_id_var
from ._metrics import LATENCY, RATE_LIMITED, REQUESTS, service_name
from ._worker import drain_state

access_log = logging.getLogger("modelgate.access")
audit_log = logging.getLogger(AUDIT_LOGGER)

# fullmatch: "$" alone would let a value end in a line break.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
_JSON = [(b"content-type", b"application/json")]
_TOO_LARGE = b'{"detail":"request body too large"}'


class ServiceMiddleware:
    """For every HTTP request, in one layer:

    - adopts nginx's ``X-Request-ID`` (or makes one) and echoes it on the answer, with
      ``Connection: close`` while the worker drains;
    - refuses bodies over ``max_body_bytes`` with 413 JSON, counting bytes as they
      arrive (nginx enforces the same cap first; this guards a service reached directly);
    - adds the ``RateLimit-*`` (and rows quota) headers the admission checks of this
      request recorded, whatever response class the route returned, and counts refusals
      by route and policy (``modelgate_rate_limited_total``);
    - counts the request and its latency, and logs one line for it: an access line
      (``modelgate.access``), or, when the route audited the request
      (``audit_request``), the audit event with the same access fields.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.service = service_name()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id: str | None = None
        too_big = False
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if request_id is None:  # the first one counts, even when it is refused
                    candidate = value.decode("latin-1")
                    request_id = candidate if _REQUEST_ID.fullmatch(candidate) else ""
            elif name == b"content-length":
                try:
                    too_big = too_big or int(value) > limit
                except ValueError:
                    too_big = True
        request_id = request_id or uuid.uuid4().hex
        id_header = (b"x-request-id", request_id.encode())
        rid_token = request_id_var.set(request_id)
        audit_fields: dict[str, Any] = {}
        audit_token = request_audit_var.set(audit_fields)
        exchange = _Exchange()
        exchange_token = _exchange.set(exchange)
        status = 500
        received = 0
        answered = False  # this middleware sent the 413; the app's own answer is dropped
        response_started = False

        async def reject_too_large() -> None:
            nonlocal status, answered
            answered = True
            status = 413
            headers = [*_JSON, (b"content-length", str(len(_TOO_LARGE)).encode()), id_header]
            if drain_state.active:
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": _TOO_LARGE})

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not answered and not response_started:
                        await reject_too_large()
                    return {"type": "http.disconnect"}
            return message

        async def wrapped_send(message: Message) -> None:
            nonlocal status, response_started
            if answered:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                if exchange.headers:
                    present = {name.lower() for name, _ in headers}
                    for name, value in exchange.headers.items():
                        key = name.lower().encode("latin-1")
                        if key not in present:
                            headers.append((key, value.encode("latin-1")))
                if exchange.refused_by is not None and status == 429:
                    route = getattr(scope.get("route"), "path", "unmatched")
                    RATE_LIMITED.labels(self.service, route, exchange.refused_by).inc()
                headers.append(id_header)
                if drain_state.active:  # stopping: nginx must not reuse this connection
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            if too_big:
                await reject_too_large()
            else:
                await self.app(scope, limited_receive, wrapped_send)
        finally:
            elapsed = time.perf_counter() - started
            template = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(self.service, template, scope["method"], str(status)).inc()
            LATENCY.labels(self.service, template).observe(elapsed)
            client = scope.get("client")
            access = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "client": client[0] if client else None,
            }
            if audit_fields:
                audit_log.info("request", extra={**audit_fields, **access})
            else:
                access_log.info("request", extra=access)
            _exchange.reset(exchange_token)
            request_audit_var.reset(audit_token)
            request_id_var.reset(rid_token)
