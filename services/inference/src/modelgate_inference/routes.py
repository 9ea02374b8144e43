"""HTTP routes of the inference service: translate HTTP to calls of plain logic.

Bodies are read as bytes and validated in one pass by the schema compiled from
the model's manifest (see ``schemas``); responses are built as plain dicts and
rendered by orjson, numpy arrays included.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.routing import APIRoute
from modelgate_common import (
    Admission,
    Forbidden,
    JsonResponse,
    Prediction,
    Principal,
    ServiceError,
    authenticate,
    bearer_scheme,
    error_responses,
    verify_bearer,
)
from pydantic import BaseModel, ConfigDict, Field

from .responses import (
    InferenceResponseOut,
    LiveOut,
    LoadOut,
    ModelList,
    ModelMetadataOut,
    ModelOut,
    ModelReadyOut,
    PredictionsOut,
    ReadyOut,
    SeedPredictionOut,
    ServerMetadataOut,
)
from .runtime import LoadedModel
from .schemas import (
    INPUT_TENSOR,
    OUTPUT_PROBABILITIES,
    InferenceRequest,
    inputs_to_matrix,
    parse_inference_request,
    requested_outputs,
)
from .service import ModelRegistry, VersionSync, audit_prediction, predict
from .store import NAME_PATTERN, VERSION_PATTERN

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="model name", examples=["iris"])]
ModelVersion = Annotated[
    str, Path(pattern=VERSION_PATTERN, description="model version", examples=["1"])
]
# One iris flower (the demo model), as the request examples in the document.
_IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
SERVER_NAME = "modelgate"
SERVER_VERSION = "0.1.0"


class Json(JsonResponse):
    """JSON by orjson, numpy arrays written directly (no per-item Python objects)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class UnsupportedMediaType(ServiceError):
    status_code = 415
    message = "send the body as application/json"


def _answers(body: type[BaseModel], *errors: int) -> dict[int | str, dict[str, Any]]:
    """``responses=``: the shape of the 200 body (documentation only, see
    ``responses``) and the errors the route can answer."""
    return {200: {"model": body}, **error_responses(*errors)}


# --- dependencies ----------------------------------------------------------------------------

Reader = Annotated[Principal, Security(authenticate, scopes=["models:read"])]
Admin = Annotated[Principal, Security(authenticate, scopes=["models:admin"])]


_PREDICT_SCOPES = ("models:predict",)


async def predictor(
    request: Request,
    token: Annotated[str | None, Security(bearer_scheme, scopes=list(_PREDICT_SCOPES))],
) -> AsyncIterator[Prediction]:
    """A token with ``models:predict``, its prediction admitted in one Redis call.

    The token is verified here rather than by ``authenticate`` (the same checks and
    the same OpenAPI security entry, one level of dependency solving less); its
    revocation is looked up with the request limit and the rows quota once the batch
    is validated (``_run``). A request that fails before that is admitted on its way
    out, and a 401 or 429 then replaces its error, as if the checks had come first."""
    principal = await verify_bearer(request, token, _PREDICT_SCOPES, pending_revocation=True)
    admission: Admission = request.app.state.admission
    async with admission.prediction(principal) as prediction:
        yield prediction


Predictor = Annotated[Prediction, Depends(predictor)]
_prediction = asynccontextmanager(predictor)
# The parameters a prediction route may declare besides the request and its Predictor,
# with the patterns their Path/Query declarations give them.
_PATTERNS = {"name": re.compile(NAME_PATTERN), "version": re.compile(VERSION_PATTERN)}


class _Route(APIRoute):
    """A route of this service. A route that takes a ``Predictor`` is served without
    FastAPI's dependency solving when its parameters are plainly valid: the path's
    ``name`` and ``version`` and the query's single ``version`` must match their
    patterns; then the handler reads the bearer token as ``bearer_scheme`` does, enters
    ``predictor`` itself and calls the endpoint. Anything else (a parameter that does not
    match, a repeated query parameter, dependency overrides) takes FastAPI's own handler,
    so errors for bad input are FastAPI's. The document (OpenAPI) is built from the
    declarations as for any route; only the work per request differs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        solved = super().get_route_handler()
        if not any(d.call is predictor for d in self.dependant.dependencies):
            return solved
        path = [field.name for field in self.dependant.path_params]
        query = [field.name for field in self.dependant.query_params]
        if not set(path) | set(query) <= _PATTERNS.keys():
            raise TypeError(f"{self.path}: a prediction route takes name and version only")
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await solved(request)
            arguments: dict[str, str | None] = {}
            for name in path:
                value = request.path_params[name]
                if not _PATTERNS[name].fullmatch(value):
                    return await solved(request)
                arguments[name] = value
            for name in query:
                values = request.query_params.getlist(name)
                if len(values) > 1 or (values and not _PATTERNS[name].fullmatch(values[0])):
                    return await solved(request)
                arguments[name] = values[0] if values else None
            token = await bearer_scheme(request)
            async with _prediction(request, token) as prediction:
                response: Response = await endpoint(
                    request=request, prediction=prediction, **arguments
                )
            return response

        return handler


router = APIRouter(route_class=_Route)


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def _json_body(request: Request) -> bytes:
    """The raw body; a missing Content-Type is JSON (as Open Inference Protocol clients send it)."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType()
    if "inference-header-content-length" in request.headers:
        raise UnsupportedMediaType("binary tensor data is not supported; send JSON tensors")
    return await request.body()


def _allow_probabilities(request: Request, principal: Principal) -> None:
    scope: str = request.app.state.settings.probability_scope
    if scope not in principal.scopes:
        raise Forbidden(f"probabilities need the scope {scope}")


def _json_array(values: Any) -> Any:
    """orjson writes numeric numpy arrays itself; labels of other kinds go as lists."""
    return values if values.dtype.kind in "iuf" else values.tolist()


async def _run(
    request: Request, prediction: Prediction, model: LoadedModel, X: Any, probabilities: bool
) -> tuple[Principal, Any, Any]:
    """Admit the validated batch (revocation, request, rows), then predict."""
    principal = await prediction.admit(len(X))
    labels, proba = await predict(model, X, probabilities, request.app.state.settings.offload_rows)
    return principal, labels, proba


# --- v1 --------------------------------------------------------------------------------------


def _describe(model: LoadedModel, default: bool) -> dict[str, Any]:
    manifest = model.manifest
    return {
        "version": model.version,
        "default": default,
        "created": manifest.created,
        "description": manifest.description,
        "task": manifest.task,
        "estimator": manifest.estimator,
        "runtime": model.runtime.kind,
        "runtime_reason": manifest.runtime_reason,
        "prediction_dtype": model.prediction_dtype,
        "input_schema": {"features": model.schema.describe()},
        "classes": list(manifest.classes),
        "class_names": manifest.class_names,
        "metrics": manifest.metrics,
    }


def _describe_model(registry: ModelRegistry, name: str) -> dict[str, Any]:
    snap = registry.snapshot
    default = snap.defaults[name]
    return {
        "name": name,
        "default_version": default,
        "versions": [
            _describe(snap.models[name][v], v == default)
            for v in sorted(snap.models[name], key=int)
        ],
    }


@router.get("/v1/models", tags=["v1"], responses=_answers(ModelList, 401, 403))
async def list_models(request: Request, _: Reader) -> Json:
    registry = _registry(request)
    names = sorted(registry.snapshot.models)
    return Json({"models": [_describe_model(registry, n) for n in names]})


@router.get("/v1/models/{name}", tags=["v1"], responses=_answers(ModelOut, 401, 403, 404, 422))
async def get_model(request: Request, name: ModelName, _: Reader) -> Json:
    registry = _registry(request)
    registry.get(name)
    return Json(_describe_model(registry, name))


@router.post(
    "/v1/models/{name}/predict",
    tags=["v1"],
    responses=_answers(PredictionsOut, 401, 403, 404, 413, 415, 422, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["instances"],
                        "additionalProperties": False,
                        "properties": {
                            "instances": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "object", "description": "feature: number"},
                            },
                            "probabilities": {"type": "boolean", "default": False},
                        },
                        "examples": [{"instances": [_IRIS]}],
                    }
                }
            },
        }
    },
)
async def predict_v1(
    request: Request,
    name: ModelName,
    prediction: Predictor,
    version: Annotated[str | None, Query(pattern=VERSION_PATTERN)] = None,
) -> Json:
    """Predict a batch: `{"instances": [{feature: number, ...}, ...], "probabilities": false}`."""
    started = time.perf_counter()
    model = _registry(request).get(name, version)
    X, probabilities = model.schema.parse_v1(await _json_body(request))
    if probabilities:
        _allow_probabilities(request, prediction.principal)
    principal, labels, proba = await _run(request, prediction, model, X, probabilities)
    body: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "predictions": _json_array(labels),
    }
    if proba is not None:
        body["classes"] = model.schema.classes
        body["probabilities"] = proba
    audit_prediction(principal, model, len(X), started, "v1", probabilities)
    return Json(body)


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Annotated[str, Field(pattern=VERSION_PATTERN)] | None = None


@router.post(
    "/v1/models/{name}/load",
    tags=["v1"],
    responses=_answers(LoadOut, 401, 403, 404, 422, 503),
)
async def load_version(
    request: Request, name: ModelName, _: Admin, payload: LoadRequest | None = None
) -> Json:
    """Verify a version (default: the newest in the store) and make it the serving
    version in every worker, atomically per worker; answers once all switched."""
    sync: VersionSync = request.app.state.version_sync
    result = await sync.request_load(name, payload.version if payload else None)
    return Json(result)


# --- the seed's alias ------------------------------------------------------------------------


@router.post(
    "/predict",
    tags=["seed"],
    responses=_answers(SeedPredictionOut, 401, 403, 404, 413, 415, 422, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
                        "properties": {
                            f: {"type": "number"}
                            for f in ("sepal_length", "sepal_width", "petal_length", "petal_width")
                        },
                        "examples": [_IRIS],
                    }
                }
            },
        }
    },
)
async def predict_seed(request: Request, prediction: Predictor) -> Json:
    """The seed tutorial's call: one iris flower in, `{"prediction": int}` out."""
    started = time.perf_counter()
    model = _registry(request).get(request.app.state.settings.seed_model)
    X = model.schema.parse_row(await _json_body(request))
    principal, labels, _ = await _run(request, prediction, model, X, False)
    audit_prediction(principal, model, 1, started, "seed", False)
    return Json({"prediction": labels.tolist()[0], "model": model.name, "version": model.version})


# --- Open Inference Protocol v2 --------------------------------------------------------------


@router.get("/v2", tags=["v2"], responses=_answers(ServerMetadataOut, 401, 403))
async def server_metadata(_: Reader) -> Json:
    return Json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


@router.get("/v2/health/live", tags=["v2"], responses=_answers(LiveOut))
async def server_live() -> Json:
    """Public, as the protocol intends for orchestrators' probes."""
    return Json({"live": True})


@router.get(
    "/v2/health/ready",
    tags=["v2"],
    responses={
        **_answers(ReadyOut),
        503: {"description": "no model serves", "model": ReadyOut},
    },
)
async def server_ready(request: Request) -> Json:
    """Public: ready when at least one model serves (no names are revealed)."""
    ready = bool(_registry(request).snapshot.defaults)
    return Json({"ready": ready}, status_code=200 if ready else 503)


def _v2_metadata(model: LoadedModel) -> dict[str, Any]:
    schema = model.schema
    n_features = len(schema.features)
    if schema.tabular:  # one tensor per feature, BYTES for strings, described in parameters
        inputs = [
            {
                "name": feature["name"],
                "datatype": "BYTES" if feature["type"] == "string" else "FP64",
                "shape": [-1],
                "parameters": {
                    key: ",".join(value) if isinstance(value, list) else value
                    for key, value in feature.items()
                    if key != "name"
                },
            }
            for feature in schema.describe()
        ]
    else:
        inputs = [{"name": INPUT_TENSOR, "datatype": "FP64", "shape": [-1, n_features]}]
    outputs = [{"name": schema.output_name, "datatype": model.prediction_dtype, "shape": [-1]}]
    parameters = {"task": schema.task, "features": ",".join(schema.features)}
    if not schema.regression:
        outputs.append(
            {
                "name": OUTPUT_PROBABILITIES,
                "datatype": model.runtime.probability_dtype,
                "shape": [-1, len(schema.classes)],
            }
        )
        parameters["classes"] = ",".join(str(c) for c in schema.classes)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": model.runtime.kind,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": parameters,
    }


# Each route with a {version} has a handler of its own: one handler for both paths
# would publish ``version`` as nullable, and a path parameter never is.
@router.get(
    "/v2/models/{name}", tags=["v2"], responses=_answers(ModelMetadataOut, 401, 403, 404, 422)
)
async def model_metadata(request: Request, name: ModelName, _: Reader) -> Json:
    return _model_metadata(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}",
    tags=["v2"],
    responses=_answers(ModelMetadataOut, 401, 403, 404, 422),
)
async def model_version_metadata(
    request: Request, name: ModelName, version: ModelVersion, _: Reader
) -> Json:
    return _model_metadata(request, name, version)


def _model_metadata(request: Request, name: str, version: str | None) -> Json:
    registry = _registry(request)
    model = registry.get(name, version)
    body = _v2_metadata(model)
    if version is None:
        body["versions"] = sorted(registry.snapshot.models[name], key=int)
    return Json(body)


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "The model (version) is known but not ready", "model": ModelReadyOut}
}


@router.get(
    "/v2/models/{name}/ready",
    tags=["v2"],
    responses={**_answers(ModelReadyOut, 401, 403, 404, 422), **_NOT_READY},
)
async def model_ready(request: Request, name: ModelName, _: Reader) -> Json:
    return _model_ready(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    tags=["v2"],
    responses={**_answers(ModelReadyOut, 401, 403, 404, 422), **_NOT_READY},
)
async def model_version_ready(
    request: Request, name: ModelName, version: ModelVersion, _: Reader
) -> Json:
    return _model_ready(request, name, version)


def _model_ready(request: Request, name: str, version: str | None) -> Json:
    registry = _registry(request)
    try:
        model = registry.get(name, version)
    except ServiceError:
        if not registry.known(name):
            raise
        return Json({"name": name, "ready": False}, status_code=503)
    return Json({"name": name, "version": model.version, "ready": True})


def _json_body_of(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its JSON body itself: the model's own
    JSON Schema, definitions inlined, so the document says exactly what is accepted."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    body = {**inline(schema), "examples": [example]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


_INFER_BODY = _json_body_of(
    InferenceRequest,
    {
        "inputs": [
            {
                "name": INPUT_TENSOR,
                "shape": [1, 4],
                "datatype": "FP64",
                "data": list(_IRIS.values()),
            }
        ]
    },
)


@router.post(
    "/v2/models/{name}/infer",
    tags=["v2"],
    responses=_answers(InferenceResponseOut, 401, 403, 404, 413, 415, 422, 429),
    openapi_extra=_INFER_BODY,
)
async def infer(request: Request, name: ModelName, prediction: Predictor) -> Json:
    """JSON tensors in: one tensor `input` of shape [rows, features] (FP64/FP32/INT*)
    or one tensor per feature; outputs `label` (default) and `probabilities`."""
    return await _infer(request, name, None, prediction)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    tags=["v2"],
    responses=_answers(InferenceResponseOut, 401, 403, 404, 413, 415, 422, 429),
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    request: Request, name: ModelName, version: ModelVersion, prediction: Predictor
) -> Json:
    """As `/v2/models/{name}/infer`, for one version of the model."""
    return await _infer(request, name, version, prediction)


async def _infer(request: Request, name: str, version: str | None, prediction: Prediction) -> Json:
    started = time.perf_counter()
    model = _registry(request).get(name, version)
    payload = parse_inference_request(await _json_body(request))
    X = inputs_to_matrix(payload, model.schema)
    want_label, want_proba = requested_outputs(payload, model.schema)
    if want_proba:
        _allow_probabilities(request, prediction.principal)
    principal, labels, proba = await _run(request, prediction, model, X, want_proba)
    outputs: list[dict[str, Any]] = []
    if want_label:
        outputs.append(
            {
                "name": model.schema.output_name,
                "datatype": model.prediction_dtype,
                "shape": [len(X)],
                "data": _json_array(labels),
            }
        )
    if proba is not None:
        outputs.append(
            {
                "name": OUTPUT_PROBABILITIES,
                "datatype": model.runtime.probability_dtype,
                "shape": list(proba.shape),
                "data": proba.reshape(-1),
            }
        )
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": outputs,
    }
    if payload.id is not None:
        body["id"] = payload.id
    audit_prediction(principal, model, len(X), started, "v2", want_proba)
    return Json(body)
