"""In-process cost of the inference service, without network, TLS or nginx.

Drives the ASGI app directly (real Redis for the revocation check, real token
verification, audit to a file) and reports the single-row latency of each
endpoint shape and the rows/s of the batch endpoint.

    redis-server --port 6399 --save '' &
    MG_REDIS_URL=redis://127.0.0.1:6399/0 .venv/bin/python bench/inprocess_inference.py

Needs a Redis without ACL users at MG_REDIS_URL (the stack's own lets in only its
services); builds the demo models in a temporary folder.
BENCH_N sets the request count;
BENCH_LOGS=1 keeps the service's log lines (access and audit, as a worker writes them:
stderr goes to a file in the temporary folder) instead of switching logging off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson


async def call(
    app: Any, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


CPU: dict[str, float] = {}  # CPU seconds of this process per request, by path


async def measure(
    app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]], n: int
) -> list[float]:
    for _ in range(min(200, n)):
        status, out = await call(app, "POST", path, body, headers)
        assert status == 200, out
    times = []
    cpu = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        await call(app, "POST", path, body, headers)
        times.append(time.perf_counter() - t)
    CPU[path] = (time.process_time() - cpu) / n
    return times


def run() -> None:
    from modelgate_common.testing import TokenFactory
    from modelgate_inference.builder import build_demo
    from modelgate_inference.config import InferenceSettings
    from modelgate_inference.main import create_app
    from modelgate_inference.store import ensure_signing_key

    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-"))
    ensure_signing_key(tmp / "model_signing_key", tmp / "model_signing_key.pub")
    for name in ("iris", "breast_cancer"):
        build_demo(tmp / "store", tmp / "model_signing_key", name)
    tokens = TokenFactory(tmp)
    logs = bool(os.environ.get("BENCH_LOGS"))
    if logs:  # the lines go where supervisord would take them: a file
        stderr = os.open(tmp / "stderr.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(stderr, 2)
    common = tokens.settings(
        redis_url=os.environ.get("MG_REDIS_URL", "redis://127.0.0.1:6391/0"),
        var_dir=tmp / "var", secrets_dir=tmp, environment="production",
        log_level="INFO" if logs else "WARNING",
    )  # fmt: skip
    settings = InferenceSettings(
        common=common, model_store=tmp / "store", redis_namespace="bench:inference"
    )
    app = create_app(settings)
    headers = [
        (b"authorization", f"Bearer {tokens.mint()}".encode()),
        (b"content-type", b"application/json"),
    ]
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    rng = np.random.default_rng(0)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    features = list(row)

    def batch(n: int) -> bytes:
        rows = np.round(rng.uniform(low, high, size=(n, 4)), 1)
        return orjson.dumps(
            {"instances": [dict(zip(features, r.tolist(), strict=True)) for r in rows]}
        )

    async def go() -> None:
        lifespan_q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        done: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await lifespan_q.put({"type": "lifespan.startup"})

        async def receive() -> dict[str, Any]:
            return await lifespan_q.get()

        async def send(message: dict[str, Any]) -> None:
            await done.put(message)

        task = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        )
        started = await done.get()
        assert started["type"] == "lifespan.startup.complete", started
        n = int(os.environ.get("BENCH_N", "3000"))
        shapes = {
            "/predict (seed)": ("/predict", orjson.dumps(row)),
            "/v1/models/iris/predict (1 row)": (
                "/v1/models/iris/predict",
                orjson.dumps({"instances": [row]}),
            ),
            "/v2/models/iris/infer (1 row)": (
                "/v2/models/iris/infer",
                orjson.dumps(
                    {
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [1, 4],
                                "datatype": "FP64",
                                "data": list(row.values()),
                            }
                        ]
                    }
                ),
            ),
        }
        print(f"single row, {n} sequential requests each (ms):")
        for label, (path, body) in shapes.items():
            t = sorted(await measure(app, path, body, headers, n))
            p50, p99 = t[len(t) // 2] * 1e3, t[int(len(t) * 0.99)] * 1e3
            mean = statistics.fmean(t) * 1e3
            cpu = CPU[path] * 1e3
            print(f"  {label:36s} p50 {p50:.3f}  p99 {p99:.3f}  mean {mean:.3f}  cpu {cpu:.3f}")
        print("batch endpoint /v1/models/iris/predict:")
        for size in (100, 1000):
            body = batch(size)
            t = await measure(app, "/v1/models/iris/predict", body, headers, max(50, n // 20))
            mean = statistics.fmean(t)
            cpu = CPU["/v1/models/iris/predict"]
            print(
                f"  {size:5d} rows: {mean * 1e3:.2f} ms per request, {size / mean:,.0f} rows/s; "
                f"cpu {cpu * 1e3:.2f} ms, {size / cpu:,.0f} rows per cpu-second"
            )
        await lifespan_q.put({"type": "lifespan.shutdown"})
        await task

    if not logs:
        logging.disable(logging.INFO)
    asyncio.run(go())


if __name__ == "__main__":
    sys.exit(run())
