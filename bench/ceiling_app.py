"""The insecure ceiling of `make bench`: the stack's own model runtime with
nothing around it.

It loads models exactly as the inference service does (its ``ModelRegistry``:
signed store, the same ONNX Runtime session settings) and answers
``POST /v1/models/{name}/predict`` with the same body and response shapes, but
with no authentication, no rate limiting, no audit, no schema validation, no
request-id or access-log middleware. The benchmark serves it with the stack's
own gunicorn configuration behind the stack's own nginx configuration (TLS,
headers, limits), so the only difference from the full stack is the security
work inside the service. Never deploy it.

    MG_SERVICE=ceiling MG_CEILING_PORT=8220 gunicorn -c deploy/gunicorn.conf.py \
        --pythonpath bench "ceiling_app:create_app()"
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from modelgate_inference.config import InferenceSettings
from modelgate_inference.service import ModelRegistry, predict


def create_app() -> FastAPI:
    settings = InferenceSettings()
    registry = ModelRegistry(
        settings.model_store,
        settings.public_key_path,
        bounds_margin=settings.bounds_margin,
        max_batch=settings.max_batch,
    )
    registry.scan()
    if not registry.snapshot.defaults:
        raise RuntimeError(f"no model loads from {settings.model_store}: {registry.refused}")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/models/{name}/predict")
    async def predict_v1(name: str, request: Request) -> Response:
        model = registry.get(name)
        instances = orjson.loads(await request.body())["instances"]
        X = np.array(list(map(model.schema.row_values, instances)), dtype=np.float64)
        X = X.reshape(len(instances), len(model.schema.features))
        labels, _ = await predict(model, X, False, settings.offload_rows)
        body: dict[str, Any] = {
            "model": model.name,
            "version": model.version,
            "predictions": labels,
        }
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    @app.get("/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    # What the benchmark polls through nginx: the gateway's /healthz asks auth and crypto
    # too, which the ceiling does not run; /v2 reaches the inference upstream alone.
    @app.get("/v2/health/ready")
    async def protocol_ready() -> dict[str, bool]:
        return {"ready": True}

    return app
