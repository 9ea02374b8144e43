"""The shared app factory: JSON errors, request ids, body cap, health, docs policy."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.testclient import TestClient
from modelgate_common import (
    CheckResult,
    CommonSettings,
    NotFound,
    Principal,
    TokenVerifier,
    audit,
    authenticate,
    configure_logging,
    create_service_app,
    read_secret,
    request_id_var,
)
from modelgate_common._logging import JsonFormatter, configure_audit
from modelgate_common._middleware import ServiceMiddleware
from modelgate_common.testing import TokenFactory
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    password: str
    count: int


def build(settings: CommonSettings, factory: TokenFactory | None = None) -> FastAPI:
    router = APIRouter()

    @router.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"count": body.count}

    @router.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @router.get("/thing")
    async def get_thing() -> dict[str, str]:
        return {}

    @router.patch("/thing")
    async def patch_thing() -> dict[str, str]:
        return {}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    @router.get("/missing")
    async def missing() -> None:
        raise NotFound("no such model")

    @router.get("/private")
    async def private(
        principal: Principal = Security(authenticate, scopes=["models:predict"]),
    ) -> dict[str, str]:
        return {"sub": principal.subject}

    @router.get("/admin")
    async def admin(
        principal: Principal = Security(authenticate, scopes=["users:admin"]),
    ) -> dict[str, str]:
        return {"sub": principal.subject}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.verifier = TokenVerifier(settings, None)
        app.state.verifier.keyset.load()

        async def degraded() -> CheckResult:
            return CheckResult("degraded", "fallback in use")

        app.state.health.add("thing", degraded)
        yield

    return create_service_app(title="t", settings=settings, lifespan=lifespan, routers=[router])


@pytest.fixture
def factory(tmp_path: Path) -> TokenFactory:
    return TokenFactory(tmp_path)


@pytest.fixture
def client(factory: TokenFactory) -> TestClient:
    app = build(factory.settings(max_body_bytes=1000, environment="production"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_validation_error_is_422_without_echoing_input(client: TestClient) -> None:
    response = client.post("/echo", json={"password": "hunter2-secret", "count": "7", "x": 1})
    assert response.status_code == 422
    assert "hunter2-secret" not in response.text
    locs = {tuple(e["loc"]) for e in response.json()["detail"]}
    assert ("body", "count") in locs and ("body", "x") in locs


def test_body_that_is_not_utf8_is_422_like_any_body_that_is_not_json(
    client: TestClient,
) -> None:
    """FastAPI alone answers 400 for JSON that is not UTF-8 (tests/security/test_fuzz.py)."""
    for raw in (b"\xff\xfe{", b"{nope"):
        response = client.post("/echo", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, raw
        assert [e["type"] for e in response.json()["detail"]] == ["json_invalid"]


def test_405_allow_names_every_method_of_the_path(client: TestClient) -> None:
    """One route per method on a path: the 405 still lists them all (RFC 9110 15.5.6)."""
    for method in ("OPTIONS", "PUT", "DELETE"):
        response = client.request(method, "/thing")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, PATCH"
    assert client.delete("/echo").headers["allow"] == "POST"


def test_unexpected_error_reveals_nothing(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "secret internals" in caplog.text  # logged for operators, not sent


def test_service_error_and_unknown_route_are_json(client: TestClient) -> None:
    assert client.get("/missing").json() == {"detail": "no such model"}
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    assert client.delete("/echo").status_code == 405


def test_body_cap_by_length_and_by_stream(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * 2000).status_code == 413

    def chunks():
        for _ in range(30):
            yield b"x" * 100

    response = client.post("/echo", content=chunks())
    assert response.status_code == 413
    assert response.json() == {"detail": "request body too large"}


def test_request_id_adopted_or_generated(client: TestClient) -> None:
    assert client.get("/health/live").headers["x-request-id"] != ""
    given = "abcdef0123456789"
    assert (
        client.get("/health/live", headers={"x-request-id": given}).headers["x-request-id"] == given
    )
    forged = client.get("/health/live", headers={"x-request-id": "bad id\r\nx"})
    assert forged.headers["x-request-id"] != "bad id\r\nx"


def test_health_reports_degraded_but_ready(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"


def test_docs_hidden_in_production(client: TestClient, factory: TokenFactory) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 404
    with TestClient(build(factory.settings(environment="development"))) as dev:
        assert dev.get("/openapi.json").status_code == 200


def test_authentication_and_scopes(client: TestClient, factory: TokenFactory) -> None:
    missing = client.get("/private")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    bad = client.get("/private", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    token = factory.mint("alice")
    assert client.get("/private", headers={"authorization": f"Bearer {token}"}).json() == {
        "sub": "alice"
    }
    assert client.get(f"/private?access_token={token}").status_code == 401
    denied = client.get("/admin", headers={"authorization": f"Bearer {token}"})
    assert denied.status_code == 403
    assert "insufficient_scope" in denied.headers["www-authenticate"]


def test_read_secret_refuses_placeholders_and_loose_modes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("changeme\n")
    path.chmod(0o600)
    with pytest.raises(RuntimeError, match="placeholder"):
        read_secret(path)
    path.write_text("a-real-secret-value\n")
    path.chmod(0o644)
    with pytest.raises(RuntimeError, match="readable"):
        read_secret(path)
    path.chmod(0o600)
    assert read_secret(path).get_secret_value() == "a-real-secret-value"
    with pytest.raises(RuntimeError, match="missing"):
        read_secret(tmp_path / "absent")


def test_metrics_count_requests_and_auth_failures(client: TestClient) -> None:
    def sample(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = client.get("/metrics").text
    client.get("/private", headers={"authorization": "Bearer nope"})
    client.get("/health/live")
    after = client.get("/metrics").text
    failures = 'modelgate_auth_failures_total{reason="malformed token"'
    assert sample(after, failures) == sample(before, failures) + 1
    live = 'modelgate_http_requests_total{method="GET",route="/health/live"'
    assert sample(after, live) == sample(before, live) + 1


def test_a_log_record_stays_one_line_whatever_a_client_sends() -> None:
    """U+0085, U+2028 and U+2029 in a fuzzed path split access-log records for line
    readers (found by tests/security/test_fuzz.py); escaped, the JSON is the same."""
    path = "/v2/models/a\x85b\u2028c\u2029d\x1ce\nf"
    record = logging.makeLogRecord({"msg": "request", "path": path})
    line = JsonFormatter("t").format(record)
    assert line.splitlines() == [line]
    assert json.loads(line)["path"] == path


def _hang_up_while_the_body_is_read(app: FastAPI, path: str) -> list[int]:
    """Send half a body, then ``http.disconnect`` (what uvicorn tells the app when wrk
    or nginx drops the connection); the statuses the app tried to send."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
    }  # fmt: skip
    messages = iter(
        [{"type": "http.request", "body": b'{"password": "x",', "more_body": True}]
        + [{"type": "http.disconnect"}] * 10
    )
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    asyncio.run(app(scope, receive, send))  # raises if the exception escaped the app
    return statuses


@pytest.mark.parametrize("path", ["/raw", "/echo"])
def test_client_hanging_up_mid_body_is_no_error(
    factory: TokenFactory, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """No traceback, no error line, no 500 in the metrics: a 499 in the access line.
    ``/raw`` reads the body itself; ``/echo`` lets FastAPI read it (which turns the
    hang-up into a 400 of its own)."""
    app = build(factory.settings(max_body_bytes=1000))

    def count(status: str) -> float:
        labels = {"service": "service", "route": path, "method": "POST", "status": status}
        return REGISTRY.get_sample_value("modelgate_http_requests_total", labels) or 0.0

    before = {status: count(status) for status in ("499", "500", "400")}
    with caplog.at_level(logging.DEBUG):
        statuses = _hang_up_while_the_body_is_read(app, path)
    assert statuses == [499]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)
    assert [r.status for r in caplog.records if r.name == "modelgate.access"] == [499]  # type: ignore[attr-defined]
    assert count("499") == before["499"] + 1
    assert (count("500"), count("400")) == (before["500"], before["400"])


def test_an_audit_event_is_formatted_once_for_stderr_and_the_audit_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelgate_common import _logging

    dumps = []
    real = _logging.orjson.dumps
    monkeypatch.setattr(_logging.orjson, "dumps", lambda *a, **k: dumps.append(1) or real(*a, **k))
    configure_logging("t", "INFO", tmp_path / "audit.jsonl")
    try:
        audit("prediction", user="alice", rows=3)
        for handler in logging.getLogger(_logging.AUDIT_LOGGER).handlers:
            handler.flush()
        in_file = (tmp_path / "audit.jsonl").read_text().splitlines()
        on_stderr = [line for line in capsys.readouterr().err.splitlines() if '"audit"' in line]
    finally:
        configure_audit(JsonFormatter("t"), None)  # release the file
    assert len(dumps) == 1
    assert in_file == on_stderr
    entry = json.loads(in_file[0])
    assert (entry["audit"], entry["user"], entry["rows"]) == ("prediction", "alice", 3)
    assert not any(key.startswith("_") for key in entry)


def test_request_id_with_a_line_break_at_its_end_is_replaced() -> None:
    """An ASGI server that passes a header value ending in a line break (HTTP parsers
    refuse one; other servers and in-process callers may not) gets a fresh id: the
    given one is never echoed nor logged with its break."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(request_id_var.get())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for given in (b"abcdefgh\n", b"abcdefgh\r\n"):
        headers = [(b"x-request-id", given)]
        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
        asyncio.run(ServiceMiddleware(app, max_body_bytes=1024)(scope, receive, send))
        echoed = dict(sent[-2]["headers"])[b"x-request-id"]
        assert echoed == seen[-1].encode()
        assert b"\n" not in echoed and len(echoed) == 32, echoed
