"""One log line per prediction: the access line and the audit event are one record."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
from inference_testdata import IRIS_SAMPLES, Audit
from modelgate_inference.config import InferenceSettings
from modelgate_inference.main import create_app

Auth = Callable[..., dict[str, str]]

pytestmark = pytest.mark.anyio


async def test_a_prediction_logs_one_line_that_is_its_audit_event(
    client: httpx.AsyncClient,
    auth: Auth,
    audit_log: Audit,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [row for row, _ in IRIS_SAMPLES]
    with caplog.at_level(logging.INFO):
        r = await client.post(
            "/v1/models/iris/predict",
            json={"instances": rows},
            headers={**auth("bob"), "X-Request-ID": "pred-0123456789"},
        )
        refused = await client.post("/v1/models/iris/predict", json={"instances": rows})
    assert r.status_code == 200 and refused.status_code == 401
    requests = [r for r in caplog.records if r.getMessage() == "request"]
    assert [(r.name, getattr(r, "audit", None), r.status) for r in requests] == [  # type: ignore[attr-defined]
        ("modelgate.audit", "prediction", 200),
        ("modelgate.access", None, 401),
    ]
    assert not [r for r in caplog.records if getattr(r, "audit", None) and r not in requests]
    [line] = [e for e in audit_log.lines() if e.get("audit") == "prediction"]
    assert line["request_id"] == r.headers["x-request-id"] == "pred-0123456789"
    assert (line["user"], line["model"], line["version"], line["rows"]) == ("bob", "iris", "1", 3)
    assert (line["method"], line["path"], line["status"]) == (
        "POST",
        "/v1/models/iris/predict",
        200,
    )
    assert line["duration_ms"] >= line["latency_ms"] >= 0 and line["client"]
    assert (line["endpoint"], line["probabilities"]) == ("v1", False)


def test_the_service_has_one_middleware_layer(
    make_settings: Callable[..., InferenceSettings],
) -> None:
    app = create_app(make_settings())
    assert [m.cls.__name__ for m in app.user_middleware] == ["ServiceMiddleware"]  # type: ignore[attr-defined]
