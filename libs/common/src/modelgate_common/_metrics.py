"""Prometheus metrics shared by every service.

Under gunicorn every worker is a process, so the metrics are kept in
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by
deploy/gunicorn.conf.py) and ``/metrics`` sums them over the workers. Served
on the internal network only: nginx never routes ``/metrics``.
"""

from __future__ import annotations

import os

from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from starlette.responses import Response

REQUESTS = Counter(
    "modelgate_http_requests_total",
    "HTTP requests answered, by route template and status",
    ["service", "route", "method", "status"],
)
LATENCY = Histogram(
    "modelgate_http_request_duration_seconds",
    "Time to answer, by route template",
    ["service", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
AUTH_FAILURES = Counter(
    "modelgate_auth_failures_total",
    "Requests refused for authentication, by reason",
    ["service", "reason"],
)
RATE_LIMITED = Counter(
    "modelgate_rate_limited_total",
    "Requests refused by a rate limit or quota, by route",
    ["service", "route", "limit"],
)
RATE_LIMIT_FALLBACK = Gauge(
    "modelgate_rate_limit_fallback",
    "1 while a worker counts in memory because Redis is unreachable",
    ["service"],
    multiprocess_mode="max",
)
PREDICTIONS = Counter(
    "modelgate_predictions_total",
    "Rows predicted, by model and version",
    ["model", "version"],
)
DECRYPTION_FAILURES = Counter(
    "modelgate_decryption_failures_total",
    "Decryptions refused, by reason class",
    ["reason"],
)
LOGINS = Counter(
    "modelgate_logins_total",
    "Password logins, by outcome",
    ["outcome"],
)


def service_name() -> str:
    return os.environ.get("MG_SERVICE", "service")


def _registry() -> CollectorRegistry | None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return registry
    return None  # single process: the default registry


metrics_router = APIRouter(include_in_schema=False)


@metrics_router.get("/metrics")
async def metrics() -> Response:
    registry = _registry()
    body = generate_latest(registry) if registry is not None else generate_latest()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
