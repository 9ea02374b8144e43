"""The HTTP surface in-process: v1, the seed alias, Open Inference Protocol v2,
scopes, audit lines, and readiness with a refused model."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import joblib
import jsonschema_rs
import numpy as np
import pytest
from inference_testdata import IRIS_FEATURES, IRIS_SAMPLES, Audit, Serve
from modelgate_inference.config import InferenceSettings
from modelgate_inference.main import create_app
from prometheus_client import REGISTRY

pytestmark = pytest.mark.anyio

Auth = Callable[..., dict[str, str]]


def sklearn_iris(store: Path):  # type: ignore[no-untyped-def]
    return joblib.load(store / "iris" / "1" / "model.joblib")


# --- v1 --------------------------------------------------------------------------------------


async def test_v1_predicts_known_iris_classes(client: httpx.AsyncClient, auth: Auth) -> None:
    body = {"instances": [row for row, _ in IRIS_SAMPLES]}
    r = await client.post("/v1/models/iris/predict", json=body, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "iris",
        "version": "1",
        "predictions": [cls for _, cls in IRIS_SAMPLES],
    }


async def test_v1_batch_equals_the_models_own_predictions(
    client: httpx.AsyncClient, auth: Auth, store: Path
) -> None:
    rng = np.random.default_rng(3)
    X = np.round(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(1000, 4)), 2)
    body = {"instances": [dict(zip(IRIS_FEATURES, row, strict=True)) for row in X.tolist()]}
    r = await client.post("/v1/models/iris/predict", json=body, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == sklearn_iris(store).predict(X).tolist()


async def test_v1_probabilities(client: httpx.AsyncClient, auth: Auth, store: Path) -> None:
    row = IRIS_SAMPLES[1][0]
    body = {"instances": [row], "probabilities": True}
    r = await client.post("/v1/models/iris/predict", json=body, headers=auth(role="analyst"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["classes"] == [0, 1, 2]
    expected = sklearn_iris(store).predict_proba(np.array([list(row.values())]))
    assert np.allclose(answer["probabilities"], expected, atol=1e-5)


async def test_probabilities_need_the_configured_scope(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    """By default an ordinary user's token gets labels only; probabilities need
    models:probabilities, which only the analyst and admin roles carry."""
    body = {"instances": [IRIS_SAMPLES[0][0]], "probabilities": True}
    for headers in (auth(), auth(role="analyst", scope="models:read models:predict")):
        r = await client.post("/v1/models/iris/predict", json=body, headers=headers)
        assert r.status_code == 403, r.text
        assert "models:probabilities" in r.json()["detail"]
        labels = {"instances": body["instances"]}
        r = await client.post("/v1/models/iris/predict", json=labels, headers=headers)
        assert r.status_code == 200 and "probabilities" not in r.json()
    for role in ("analyst", "admin"):
        r = await client.post("/v1/models/iris/predict", json=body, headers=auth(role=role))
        assert r.status_code == 200, r.text
        assert r.json()["probabilities"][0][0] == pytest.approx(1.0, abs=1e-5)


async def test_probability_scope_is_configurable(
    make_settings: Callable[..., InferenceSettings], served: Serve, auth: Auth
) -> None:
    app = create_app(make_settings(probability_scope="models:admin"))
    body = {"instances": [IRIS_SAMPLES[0][0]], "probabilities": True}
    async with served(app) as c:
        r = await c.post("/v1/models/iris/predict", json=body, headers=auth())
        assert r.status_code == 403
        r = await c.post("/v1/models/iris/predict", json=body, headers=auth(role="admin"))
        assert r.status_code == 200


async def test_v1_lists_models_with_schema_and_classes(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    r = await client.get("/v1/models", headers=auth())
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"iris", "breast_cancer"}
    iris = models["iris"]
    assert iris["default_version"] == "1"
    version = iris["versions"][0]
    assert version["classes"] == [0, 1, 2]
    assert version["class_names"] == ["setosa", "versicolor", "virginica"]
    features = version["input_schema"]["features"]
    assert [f["name"] for f in features] == IRIS_FEATURES
    # the training range 4.3..7.9 widened by half its span on each side
    assert features[0]["min"] == pytest.approx(2.5) and features[0]["max"] == pytest.approx(9.7)
    assert version["runtime"] == "onnxruntime"
    r = await client.get("/v1/models/iris", headers=auth())
    assert r.status_code == 200 and r.json()["name"] == "iris"


async def test_breast_cancer_model_serves(client: httpx.AsyncClient, auth: Auth) -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    r = await client.get("/v1/models/breast_cancer", headers=auth())
    names = [f["name"] for f in r.json()["versions"][0]["input_schema"]["features"]]
    assert names[0] == "mean_radius" and len(names) == 30
    rows = [dict(zip(names, x, strict=True)) for x in data.data[:20].tolist()]
    r = await client.post(
        "/v1/models/breast_cancer/predict", json={"instances": rows}, headers=auth()
    )
    assert r.status_code == 200
    assert r.json()["predictions"] == data.target[:20].tolist()


# --- the seed alias --------------------------------------------------------------------------


async def test_seed_predict(client: httpx.AsyncClient, auth: Auth) -> None:
    for row, cls in IRIS_SAMPLES:
        r = await client.post("/predict", json=row, headers=auth())
        assert r.status_code == 200, r.text
        assert r.json() == {"prediction": cls, "model": "iris", "version": "1"}
        assert isinstance(r.json()["prediction"], int)


# --- v2 --------------------------------------------------------------------------------------


def v2_body(rows: list[dict[str, float]], **extra: object) -> dict[str, object]:
    data = [row[f] for row in rows for f in IRIS_FEATURES]
    tensor = {"name": "input", "shape": [len(rows), 4], "datatype": "FP64", "data": data}
    return {"inputs": [tensor], **extra}


async def test_v2_infer(client: httpx.AsyncClient, auth: Auth) -> None:
    rows = [row for row, _ in IRIS_SAMPLES]
    body = v2_body(rows, id="req-1", parameters={"trace": True})
    r = await client.post("/v2/models/iris/infer", json=body, headers=auth())
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == "iris" and answer["model_version"] == "1"
    assert answer["id"] == "req-1"
    assert answer["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [3], "data": [0, 1, 2]}
    ]


async def test_v2_infer_without_content_type_reads_json(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    body = json.dumps(v2_body([IRIS_SAMPLES[2][0]])).encode()
    headers = auth()
    r = await client.post("/v2/models/iris/versions/1/infer", content=body, headers=headers)
    assert "content-type" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2]


async def test_v2_infer_per_feature_tensors_and_nested_data(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    rows = [row for row, _ in IRIS_SAMPLES]
    per_feature = {
        "inputs": [
            {"name": f, "shape": [3, 1], "datatype": "FP32", "data": [[row[f]] for row in rows]}
            for f in reversed(IRIS_FEATURES)
        ]
    }
    r = await client.post("/v2/models/iris/infer", json=per_feature, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [0, 1, 2]
    nested = {
        "inputs": [
            {
                "name": "input",
                "shape": [3, 4],
                "datatype": "FP64",
                "data": [[row[f] for f in IRIS_FEATURES] for row in rows],
            }
        ]
    }
    r = await client.post("/v2/models/iris/infer", json=nested, headers=auth())
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0, 1, 2]


async def test_v2_requested_outputs(client: httpx.AsyncClient, auth: Auth) -> None:
    body = v2_body([IRIS_SAMPLES[0][0]], outputs=[{"name": "probabilities"}])
    r = await client.post("/v2/models/iris/infer", json=body, headers=auth(role="analyst"))
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [1, 3]
    assert output["data"][0] == pytest.approx(1.0, abs=1e-5)
    r = await client.post("/v2/models/iris/infer", json=body, headers=auth())
    assert r.status_code == 403 and "models:probabilities" in r.json()["error"]


async def test_v2_metadata_and_readiness(client: httpx.AsyncClient, auth: Auth) -> None:
    r = await client.get("/v2", headers=auth())
    assert r.status_code == 200 and r.json()["name"] == "modelgate"
    r = await client.get("/v2/models/iris", headers=auth())
    assert r.status_code == 200
    meta = r.json()
    assert meta["name"] == "iris" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    r = await client.get("/v2/models/iris/versions/1", headers=auth())
    assert r.status_code == 200 and r.json()["versions"] == ["1"]
    r = await client.get("/v2/models/iris/ready", headers=auth())
    assert r.status_code == 200 and r.json()["ready"] is True
    r = await client.get("/v2/models/iris/versions/1/ready", headers=auth())
    assert r.status_code == 200
    r = await client.get("/v2/models/iris/versions/7/ready", headers=auth())
    assert r.status_code == 503 and r.json()["ready"] is False
    r = await client.get("/v2/models/unknown/ready", headers=auth())
    assert r.status_code == 404 and r.json()["error"] == "model not found"


async def test_path_parameters_in_the_document_are_never_nullable(
    make_settings: Callable[..., InferenceSettings],
) -> None:
    """One handler for both /v2/models/{name}… and …/versions/{version}… published
    ``version`` as string-or-null (found by tests/security/test_fuzz.py)."""
    document = create_app(make_settings()).openapi()
    checked = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "path":
                    continue
                checked += 1
                assert parameter["required"] is True, (path, parameter)
                assert parameter["schema"].get("type") == "string", (path, parameter)
                assert "anyOf" not in parameter["schema"], (path, parameter)
    assert checked >= 10


async def test_every_answer_has_the_documented_shape(
    client: httpx.AsyncClient, auth: Auth, make_settings: Callable[..., InferenceSettings]
) -> None:
    """Bodies are built as plain dicts, so nothing but this (and the fuzzer in
    tests/security/test_fuzz.py) holds them to the shapes the document publishes."""
    document = create_app(make_settings()).openapi()
    rows = [row for row, _ in IRIS_SAMPLES]
    listing = (await client.get("/v1/models", headers=auth())).json()["models"]
    cancer = next(m for m in listing if m["name"] == "breast_cancer")["versions"][0]
    cancer_row = {f["name"]: f["min"] for f in cancer["input_schema"]["features"]}
    outputs = [{"name": "label"}, {"name": "probabilities"}]
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("/v1/models", "/v1/models", None),
        ("/v1/models/{name}", "/v1/models/iris", None),
        ("/v1/models/{name}/predict", "/v1/models/iris/predict", {"instances": rows}),
        (
            "/v1/models/{name}/predict",
            "/v1/models/breast_cancer/predict?version=1",
            {"instances": [cancer_row], "probabilities": True},
        ),
        ("/predict", "/predict", rows[0]),
        ("/v2", "/v2", None),
        ("/v2/health/live", "/v2/health/live", None),
        ("/v2/health/ready", "/v2/health/ready", None),
        ("/v2/models/{name}", "/v2/models/iris", None),
        ("/v2/models/{name}/versions/{version}", "/v2/models/iris/versions/1", None),
        ("/v2/models/{name}/ready", "/v2/models/iris/ready", None),
        ("/v2/models/{name}/versions/{version}/ready", "/v2/models/iris/versions/7/ready", None),
        ("/v2/models/{name}/infer", "/v2/models/iris/infer", v2_body(rows, id="r")),
        (
            "/v2/models/{name}/versions/{version}/infer",
            "/v2/models/iris/versions/1/infer",
            v2_body(rows, outputs=outputs),
        ),
    ]
    analyst = auth(role="analyst")  # some calls ask for probabilities
    for template, url, body in calls:
        if body is None:
            response = await client.get(url, headers=analyst)
            method = "get"
        else:
            response = await client.post(url, json=body, headers=analyst)
            method = "post"
        documented = document["paths"][template][method]["responses"]
        assert str(response.status_code) in documented, (url, response.status_code)
        schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
        assert schema, f"{template}: {response.status_code} has no documented shape"
        validator = jsonschema_rs.validator_for({**schema, "components": document["components"]})
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, (url, errors, response.text[:300])


async def test_v2_health_is_public(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/health/live")
    assert r.status_code == 200 and r.json() == {"live": True}
    r = await client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


# --- authentication and scopes ---------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/iris", None),
    ("POST", "/v1/models/iris/predict", {"instances": [IRIS_SAMPLES[0][0]]}),
    ("POST", "/predict", IRIS_SAMPLES[0][0]),
    ("GET", "/v2", None),
    ("GET", "/v2/models/iris", None),
    ("GET", "/v2/models/iris/ready", None),
    ("POST", "/v2/models/iris/infer", v2_body([IRIS_SAMPLES[0][0]])),
    ("POST", "/v1/models/iris/load", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_every_route_but_health_needs_a_token(
    client: httpx.AsyncClient, method: str, path: str, body: object
) -> None:
    r = await client.request(method, path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.request(method, path, json=body, headers={"Authorization": "Bearer x.y.z"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "scope"),
    [
        ("GET", "/v1/models", None, "models:predict"),
        ("POST", "/v1/models/iris/predict", {"instances": [IRIS_SAMPLES[0][0]]}, "models:read"),
        ("POST", "/predict", IRIS_SAMPLES[0][0], "models:read"),
        ("POST", "/v2/models/iris/infer", v2_body([IRIS_SAMPLES[0][0]]), "models:read"),
        ("GET", "/v2/models/iris", None, "models:predict"),
        ("POST", "/v1/models/iris/load", {}, "models:read models:predict"),
    ],
)
async def test_scopes_are_enforced(
    client: httpx.AsyncClient, auth: Auth, method: str, path: str, body: object, scope: str
) -> None:
    r = await client.request(method, path, json=body, headers=auth(scope=scope))
    assert r.status_code == 403
    assert "insufficient_scope" in r.headers["www-authenticate"]


async def test_unknown_model_or_version_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    body = {"instances": [IRIS_SAMPLES[0][0]]}
    r = await client.post("/v1/models/nope/predict", json=body, headers=auth())
    assert r.status_code == 404
    r = await client.post("/v1/models/iris/predict?version=9", json=body, headers=auth())
    assert r.status_code == 404
    r = await client.post("/v2/models/iris/versions/9/infer", json=v2_body([]), headers=auth())
    assert r.status_code == 404


# --- audit -----------------------------------------------------------------------------------


async def test_each_prediction_is_audited_without_inputs(
    client: httpx.AsyncClient, auth: Auth, audit_log: Audit
) -> None:
    distinctive = {"sepal_length": 5.4321, "sepal_width": 3.1234, "petal_length": 1.9876}
    rows = [row | distinctive for row, _ in IRIS_SAMPLES]
    await client.post("/v1/models/iris/predict", json={"instances": rows}, headers=auth("bob"))
    await client.post("/predict", json=rows[0], headers=auth("carol"))
    await client.post("/v2/models/iris/infer", json=v2_body(rows[:2]), headers=auth("dave"))
    lines = [line for line in audit_log.lines() if line.get("audit") == "prediction"]
    assert [(a["user"], a["rows"], a["endpoint"]) for a in lines] == [
        ("bob", 3, "v1"),
        ("carol", 1, "seed"),
        ("dave", 2, "v2"),
    ]
    for line in lines:
        assert line["model"] == "iris" and line["version"] == "1"
        assert line["latency_ms"] >= 0
    raw = audit_log.raw()
    for value in ("5.4321", "3.1234", "1.9876", "sepal"):
        assert value not in raw  # never the inputs


# --- refused models --------------------------------------------------------------------------


async def test_refused_model_shows_in_readiness_and_the_rest_serves(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    store: Path,
    auth: Auth,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"

    class Marker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    evil = store / "evil" / "1"
    evil.mkdir(parents=True)
    shutil.copy(store / "iris" / "1" / "manifest.json", evil)
    shutil.copy(store / "iris" / "1" / "manifest.sig", evil)
    (evil / "model.joblib").write_bytes(pickle.dumps(Marker()))
    async with served(create_app(make_settings())) as c:
        r = await c.get("/health/ready")
        assert r.status_code == 200  # degraded, not failed: the others serve
        check = r.json()["checks"]["models"]
        assert check["status"] == "degraded"
        assert "evil:1 refused: manifest is for iris/1" in check["detail"]
        r = await c.post("/predict", json=IRIS_SAMPLES[0][0], headers=auth())
        assert r.status_code == 200
        r = await c.post("/v1/models/evil/predict", json={"instances": []}, headers=auth())
        assert r.status_code == 404
        r = await c.get("/v2/models/evil/ready", headers=auth())
        assert r.status_code == 503 and r.json()["ready"] is False
    assert not marker.exists()


async def test_no_public_key_refuses_everything_and_readiness_fails(
    make_settings: Callable[..., InferenceSettings], served: Serve, tmp_path: Path, auth: Auth
) -> None:
    app = create_app(make_settings(signing_public_key=tmp_path / "absent.pub"))
    async with served(app) as c:
        r = await c.get("/health/ready")
        assert r.status_code == 503
        assert "public key" in r.json()["checks"]["models"]["detail"]
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503
        r = await c.post("/predict", json=IRIS_SAMPLES[0][0], headers=auth())
        assert r.status_code == 404


@pytest.mark.parametrize("path", ["/v1/models/iris/predict", "/v2/models/iris/infer", "/predict"])
async def test_client_hanging_up_mid_body_is_no_error(
    make_settings: Callable[..., InferenceSettings],
    auth: Auth,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    """wrk or nginx dropping a connection while the body is read: no traceback, no
    error line, no 500 in the metrics, no prediction; one access line with 499."""
    app = create_app(make_settings())
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
            *((k.lower().encode(), v.encode()) for k, v in auth().items()),
        ],
    }  # fmt: skip
    messages = iter(
        [{"type": "http.request", "body": b'{"instances": [', "more_body": True}]
        + [{"type": "http.disconnect"}] * 10
    )
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def count(status: str) -> float:
        labels = {"method": "POST", "status": status}
        return sum(
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "modelgate_http_requests"
            for sample in metric.samples
            if sample.name.endswith("_total")
            and labels.items() <= sample.labels.items()
            and sample.labels["route"].endswith(path.rsplit("/", 1)[1])
        )

    before = (count("499"), count("500"))
    async with app.router.lifespan_context(app):
        with caplog.at_level(logging.DEBUG):
            await app(scope, receive, send)  # raises if the exception escaped the app
    assert statuses == [499]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)
    assert (count("499"), count("500")) == (before[0] + 1, before[1])
    assert not any(getattr(r, "audit", None) == "prediction" for r in caplog.records)


async def test_prediction_routes_answer_alike_with_and_without_dependency_solving(
    make_settings: Callable[..., InferenceSettings], auth: Auth, served: Serve
) -> None:
    """The prediction routes serve plainly valid requests without FastAPI's dependency
    solving and hand anything else to it; a dependency override makes FastAPI solve
    every request. Both ways give the same status, body and headers for valid and
    invalid input alike."""
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    v1_body = json.dumps({"instances": [row]})
    v2_body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64",
                                      "data": list(row.values())}]})  # fmt: skip
    user, analyst = auth("ana"), auth("ana", role="analyst")
    calls: list[tuple[str, str, dict[str, str]]] = [
        ("/v1/models/iris/predict", v1_body, user),
        ("/v1/models/iris/predict?version=1", v1_body, user),
        ("/v1/models/iris/predict?version=1&other=x", v1_body, user),
        ("/v1/models/iris/predict?version=1&version=1", v1_body, user),
        ("/v1/models/iris/predict?version=01", v1_body, user),
        ("/v1/models/iris/predict?version=", v1_body, user),
        ("/v1/models/iris/predict?version=7", v1_body, user),
        ("/v1/models/Iris/predict", v1_body, user),
        ("/v1/models/iris%0A/predict", v1_body, user),
        ("/v1/models/nothing/predict", v1_body, user),
        ("/v1/models/iris/predict", v1_body, {}),
        ("/v1/models/iris/predict", v1_body, {"Authorization": "Basic abc"}),
        ("/v1/models/iris/predict", v1_body, {"Authorization": "Bearer not-a-token"}),
        ("/v1/models/iris/predict", v1_body, auth("ana", scope="models:read")),
        ("/v1/models/iris/predict", '{"instances": []}', user),
        ("/v1/models/iris/predict", "not json", user),
        ("/v1/models/iris/predict", json.dumps({"instances": [row], "probabilities": True}), user),
        (
            "/v1/models/iris/predict",
            json.dumps({"instances": [row], "probabilities": True}),
            analyst,
        ),
        ("/predict", json.dumps(row), user),
        ("/predict", json.dumps({**row, "extra": 1}), user),
        ("/v2/models/iris/infer", v2_body, user),
        ("/v2/models/iris/infer", "[]", user),
        ("/v2/models/iris/versions/1/infer", v2_body, user),
        ("/v2/models/iris/versions/0/infer", v2_body, user),
        ("/v2/models/iris/versions/9/infer", v2_body, user),
        ("/v2/models/Iris/versions/1/infer", v2_body, {}),
    ]

    async def answers(solve_everything: bool) -> list[tuple[int, Any, dict[str, str]]]:
        app = create_app(make_settings())
        if solve_everything:
            app.dependency_overrides[_unused_dependency] = _unused_dependency
        out = []
        async with served(app) as client:
            for url, body, headers in calls:
                response = await client.post(
                    url, content=body, headers={**headers, "content-type": "application/json"}
                )
                kept = {
                    k: v
                    for k, v in response.headers.items()
                    if k not in ("x-request-id", "ratelimit-remaining", "ratelimit-reset",
                                 "x-quota-rows-remaining")
                }  # fmt: skip
                out.append((response.status_code, response.json(), kept))
        return out

    lean, solved = await answers(False), await answers(True)
    for call, mine, fastapis in zip(calls, lean, solved, strict=True):
        assert mine == fastapis, call
    statuses = {status for status, _, _ in lean}
    assert {200, 401, 403, 404, 422} <= statuses


def _unused_dependency() -> None:
    """Overridden by a test only to make FastAPI solve every request's dependencies."""
