"""A prediction's revocation lookup, request limit and rows quota in ONE Redis round
trip (``Admission.prediction``), against a real Redis and two app instances ("workers",
each with its own limiter and connection pool): exact counts across them, the answers
and their order as when the checks were separate calls, and the outage policy."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from inference_testdata import ROW
from modelgate_common import (
    REVOKED_INDEX,
    RateLimitSettings,
    revoked_jti_key,
    revoked_subject_key,
)
from modelgate_common.testing import TokenFactory
from modelgate_inference.config import InferenceSettings
from modelgate_inference.main import create_app
from prometheus_client import REGISTRY

pytestmark = pytest.mark.anyio

LIMITS = RateLimitSettings(
    login="100/minute",
    login_failures="100/hour",
    predict="4/minute",
    predict_tiers={"admin": "8/minute"},
    predict_rows_per_day=100,
    crypto="100/minute",
    breaker_seconds=0.2,
)
V1 = "/v1/models/iris/predict"


class Workers:
    """Two inference apps on one Redis; requests alternate between them."""

    def __init__(self, apps: list[FastAPI], tokens: TokenFactory, redis_url: str) -> None:
        self.apps = apps
        self.tokens = tokens
        self.redis_url = redis_url
        self._next = itertools.count()

    async def post(
        self, token: str, rows: int = 1, path: str = V1, worker: int | None = None, **kw: Any
    ) -> httpx.Response:
        app = self.apps[next(self._next) % len(self.apps) if worker is None else worker]
        transport = httpx.ASGITransport(app=app)
        body = kw.pop("json", {"instances": [ROW] * rows})
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as c:
            return await c.post(path, json=body, headers={"authorization": f"Bearer {token}"}, **kw)


@asynccontextmanager
async def workers(
    make_settings: Callable[..., InferenceSettings],
    tokens: TokenFactory,
    tmp_path: Path,
    redis_url: str,
    **common: Any,
) -> AsyncIterator[Workers]:
    settings = make_settings(
        common=tokens.settings(
            var_dir=tmp_path / "var", redis_url=redis_url, ratelimit=LIMITS, **common
        )
    )
    apps = [create_app(settings) for _ in range(2)]
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield Workers(apps, tokens, redis_url)


@pytest.fixture
async def pair(
    make_settings: Callable[..., InferenceSettings],
    tokens: TokenFactory,
    tmp_path: Path,
    redis_url: str,
) -> AsyncIterator[Workers]:
    # Redis answers count here, not how fast a loaded machine returns to them: the longest
    # timeouts the settings allow (a slow answer would read as an outage, counted per worker).
    timeouts = {"redis_connect_timeout": 5, "redis_socket_timeout": 5}
    async with workers(make_settings, tokens, tmp_path, redis_url, **timeouts) as w:
        yield w


def refusals(limit: str) -> float:
    labels = {"service": "service", "route": "/v1/models/{name}/predict", "limit": limit}
    return REGISTRY.get_sample_value("modelgate_rate_limited_total", labels) or 0.0


def subject() -> str:
    return f"user-{time.monotonic_ns()}"  # the session's Redis is shared: fresh counters


async def test_a_prediction_is_one_redis_round_trip(pair: Workers) -> None:
    token = pair.tokens.mint(subject(), role="admin")
    client = aioredis.from_url(pair.redis_url)
    try:
        assert (await pair.post(token, rows=5)).status_code == 200  # script loaded
        await client.config_resetstat()
        response = await pair.post(token, rows=7)
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    assert response.status_code == 200
    assert response.headers["ratelimit-remaining"] == "6"
    assert response.headers["x-quota-rows-remaining"] == "88"
    # Commands a script runs are counted under their own names (GET, PTTL, INCRBY...);
    # the only command the worker sent is one EVALSHA: no MGET for the revocation.
    calls = {name: int(value["calls"]) for name, value in stats.items()}
    assert calls["cmdstat_evalsha"] == 1
    assert "cmdstat_mget" not in calls
    assert "cmdstat_eval" not in calls


async def test_request_limit_is_exact_across_two_workers(pair: Workers) -> None:
    token = pair.tokens.mint(subject())
    before = refusals("predict")
    responses = await asyncio.gather(*(pair.post(token) for _ in range(12)))
    assert sorted(r.status_code for r in responses) == [200] * 4 + [429] * 8
    assert refusals("predict") - before == 8
    for response in responses:
        assert response.headers["ratelimit-limit"] == "4"
        if response.status_code == 429:
            assert 50 <= int(response.headers["retry-after"]) <= 61
            assert response.headers["ratelimit-remaining"] == "0"
            assert "x-quota-rows-remaining" not in response.headers  # no rows charged
    # The admin tier's larger budget.
    admin = pair.tokens.mint(subject(), role="admin")
    statuses = [(await pair.post(admin)).status_code for _ in range(9)]
    assert statuses == [200] * 8 + [429]


async def test_rows_quota_is_exact_across_two_workers(pair: Workers) -> None:
    token = pair.tokens.mint(subject(), role="admin")
    before = refusals("predict_rows"), refusals("predict")
    responses = await asyncio.gather(*(pair.post(token, rows=30) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 5
    assert refusals("predict_rows") - before[0] == 5
    remaining = sorted(int(r.headers["x-quota-rows-remaining"]) for r in responses)
    assert remaining == [10] * 6 + [40, 70]  # refusals report what is left, charge nothing
    # A refused batch still spent its request (8 a minute): all 8 are gone.
    assert (await pair.post(token, rows=1)).status_code == 429
    assert refusals("predict") - before[1] == 1


async def test_rows_refusal_charges_nothing_and_a_fitting_batch_passes(pair: Workers) -> None:
    token = pair.tokens.mint(subject(), role="admin")
    first = await pair.post(token, rows=60)
    assert (first.status_code, first.headers["x-quota-rows-remaining"]) == (200, "40")
    assert first.headers["ratelimit-remaining"] == "7"
    refused = await pair.post(token, rows=60)
    assert refused.status_code == 429
    assert "quota" in refused.json()["detail"]
    assert refused.headers["x-quota-rows-remaining"] == "40"
    assert refused.headers["ratelimit-remaining"] == "6"  # the request itself was counted
    assert (await pair.post(token, rows=40)).status_code == 200
    assert (await pair.post(token, rows=1)).status_code == 429


async def test_failed_requests_spend_a_request_and_a_spent_budget_answers_429_first(
    pair: Workers,
) -> None:
    """The request is counted on the way out when the body fails validation (or the
    model is unknown), as when it was counted before the body was read; once the
    budget is spent, the answer is the 429, whatever else is wrong."""
    token = pair.tokens.mint(subject())
    bad = await pair.post(token, json={"instances": [{"sepal_length": "x"}]})
    assert bad.status_code == 422
    assert bad.headers["ratelimit-remaining"] == "3"
    assert "x-quota-rows-remaining" not in bad.headers
    unknown = await pair.post(token, path="/v1/models/nope/predict")
    assert (unknown.status_code, unknown.headers["ratelimit-remaining"]) == (404, "2")
    seed = await pair.post(token, path="/predict", json=ROW)
    assert (seed.status_code, seed.headers["ratelimit-remaining"]) == (200, "1")
    v2 = await pair.post(token, path="/v2/models/iris/infer", json={"inputs": []})
    assert (v2.status_code, v2.headers["ratelimit-remaining"]) == (422, "0")
    assert v2.json()["error"]  # the v2 error field is still there
    for path, body, params in (
        (V1, {"instances": [{"sepal_length": "x"}]}, None),
        ("/v1/models/nope/predict", {"instances": [ROW]}, None),
        (V1, {"instances": [ROW]}, {"version": "not-a-version"}),
        ("/v2/models/iris/infer", {"inputs": []}, None),
        (V1, {"instances": [ROW]}, None),
    ):
        refused = await pair.post(token, path=path, json=body, params=params)
        assert refused.status_code == 429, (path, refused.text)
        assert "rate limit" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1


async def test_revoked_token_is_401_whatever_else_and_charges_nothing(pair: Workers) -> None:
    name = subject()
    client = aioredis.from_url(pair.redis_url)
    jti = uuid.uuid4().hex
    revoked = pair.tokens.mint(name, role="admin", jti=jti)
    try:
        await client.set(revoked_jti_key(jti), "1", ex=60)
        for path, body in (
            (V1, {"instances": [ROW]}),
            (V1, {"instances": [{"sepal_length": "x"}]}),
            ("/v1/models/nope/predict", {"instances": [ROW]}),
            (V1, {"instances": [ROW], "probabilities": True}),
        ):
            response = await pair.post(revoked, path=path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["detail"] == "token has been revoked"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "ratelimit-remaining" not in response.headers
        # A token lacking the predict scope is still a 401 when revoked (not a 403).
        narrow_jti = uuid.uuid4().hex
        narrow = pair.tokens.mint(name, scope="models:read", jti=narrow_jti)
        assert (await pair.post(narrow)).status_code == 403  # not revoked: the scope
        await client.set(revoked_jti_key(narrow_jti), "1", ex=60)
        assert (await pair.post(narrow)).status_code == 401
        # Nothing was charged: another token of the same subject has its whole budget.
        fresh = await pair.post(pair.tokens.mint(name, role="admin"), rows=10)
        assert fresh.status_code == 200
        assert fresh.headers["ratelimit-remaining"] == "7"
        assert fresh.headers["x-quota-rows-remaining"] == "90"
        # A subject revoked up to a time: tokens issued then or before are refused.
        cutoff = int(time.time())
        await client.set(revoked_subject_key(name), str(cutoff), ex=60)
        old = pair.tokens.mint(name, role="admin", iat=cutoff, nbf=cutoff)
        assert (await pair.post(old)).status_code == 401
        newer = pair.tokens.mint(name, role="admin", iat=cutoff + 1, nbf=cutoff)
        assert (await pair.post(newer)).status_code == 200
    finally:
        await client.aclose()


async def test_redis_outage_counts_per_worker_and_follows_the_revocation_policy(
    make_settings: Callable[..., InferenceSettings],
    tokens: TokenFactory,
    tmp_path: Path,
    redis_server: Any,
) -> None:
    async with workers(make_settings, tokens, tmp_path, redis_server.url) as pair:
        token = tokens.mint(subject())
        assert (await pair.post(token, worker=0)).status_code == 200  # shared: 3 left
        redis_server.stop()
        per_worker = [
            [(await pair.post(token, worker=worker)).status_code for _ in range(6)]
            for worker in (0, 1)
        ]
        # Fail-open (the default): accepted unrevoked-unchecked; 4 a minute per worker.
        assert per_worker == [[200] * 4 + [429] * 2] * 2
        for app in pair.apps:
            assert app.state.verifier.revocation_degraded
        redis_server.start()
        await asyncio.sleep(LIMITS.breaker_seconds + 0.05)
        fresh = tokens.mint(subject())
        statuses = [(await pair.post(fresh)).status_code for _ in range(6)]
        assert statuses == [200] * 4 + [429] * 2  # shared again: 4, not 4 per worker
        for app in pair.apps:
            assert not app.state.verifier.revocation_degraded

    async with workers(
        make_settings, tokens, tmp_path, redis_server.url, revocation_fail_open=False
    ) as pair:
        token = tokens.mint(subject())
        assert (await pair.post(token)).status_code == 200
        redis_server.stop()
        for _ in range(3):  # the failing call, then the breaker: both refuse
            refused = await pair.post(token, worker=0)
            assert refused.status_code == 401
            assert refused.json()["detail"] == "token cannot be checked now"
        redis_server.start()


async def test_revoked_tokens_stay_refused_while_redis_is_down(
    make_settings: Callable[..., InferenceSettings],
    tokens: TokenFactory,
    tmp_path: Path,
    redis_server: Any,
) -> None:
    """Each worker keeps the live revocation set it last read from Redis and checks
    against it when Redis cannot answer, under the fail-open policy too."""
    async with workers(make_settings, tokens, tmp_path, redis_server.url) as pair:
        name, other = subject(), subject()
        logged_out_jti = uuid.uuid4().hex
        logged_out = tokens.mint(name, jti=logged_out_jti)
        cutoff = int(time.time())
        before_cutoff = tokens.mint(other, iat=cutoff, nbf=cutoff)
        after_cutoff = tokens.mint(other, iat=cutoff + 1, nbf=cutoff)
        expires = cutoff + 600
        client = aioredis.from_url(pair.redis_url)
        try:
            # What the auth service writes: each key and its member of the index.
            for key, value in (
                (revoked_jti_key(logged_out_jti), "1"),
                (revoked_subject_key(other), str(cutoff)),
            ):
                await client.set(key, value, exat=expires)
                await client.zadd(REVOKED_INDEX, {f"{key} {value}": expires})
        finally:
            await client.aclose()
        for app in pair.apps:
            assert await app.state.verifier.refresh_mirror()
        redis_server.stop()
        try:
            for worker in (0, 1):
                # The failing call, then the open breaker: both answer from the copy.
                for _ in range(2):
                    assert (await pair.post(logged_out, worker=worker)).status_code == 401
                    assert (await pair.post(before_cutoff, worker=worker)).status_code == 401
                assert (await pair.post(after_cutoff, worker=worker)).status_code == 200
        finally:
            redis_server.start()
