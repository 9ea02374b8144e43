"""Admission against a real Redis: exact counts across "workers" (two app instances
with their own admission and connection pool, as two gunicorn workers have), keys,
headers, the sliding window's semantics in Redis and per worker, and the outage
policy (the real Redis stopped and started)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import JSONResponse
from modelgate_common import (
    POLICIES,
    Admission,
    CommonSettings,
    LocalWindows,
    Principal,
    RateLimitSettings,
    ScriptPipeline,
    Unauthorized,
    admitted,
    create_service_app,
    shared_resources,
    sliding_window_times,
)
from modelgate_common.testing import TokenFactory
from prometheus_client import REGISTRY
from pydantic import ValidationError
from slowapi.util import get_remote_address

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Module level: annotations are resolved from the module's globals.
Predictor = Annotated[Principal, Depends(admitted("predict", scopes=["models:predict"]))]


class Checks:
    """Counts what reached the "password check" and the "model" of the test routes."""

    def __init__(self) -> None:
        self.passwords = 0
        self.predictions = 0


def build(settings: CommonSettings, checks: Checks) -> FastAPI:
    router = APIRouter()

    @router.post("/auth/token")
    async def token(
        request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()]
    ) -> JSONResponse:
        admission: Admission = request.app.state.admission
        async with admission.sign_in(get_remote_address(request), username, (Unauthorized,)):
            checks.passwords += 1
            await asyncio.sleep(0.01)  # the hash takes time: requests overlap
            if password != PASSWORD:
                raise Unauthorized("invalid user name or password", error="")
        # A route that returns a Response itself still gets the RateLimit headers.
        return JSONResponse({"access_token": f"token-for-{username}"})

    @router.post("/predict")
    async def predict(request: Request, rows: int, principal: Predictor) -> dict[str, Any]:
        admission: Admission = request.app.state.admission
        await admission.admit("predict_rows", principal.subject, cost=rows, role=principal.role)
        checks.predictions += rows
        return {"sub": principal.subject, "rows": rows}

    @router.post("/crypto/encrypt", dependencies=[Depends(admitted("crypto"))])
    async def encrypt() -> dict[str, str]:
        return {"ciphertext": "x"}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with shared_resources(app, settings):
            yield

    return create_service_app(title="t", settings=settings, lifespan=lifespan, routers=[router])


class Stack:
    """Two workers (apps) sharing one Redis; requests alternate between them."""

    def __init__(self, apps: list[FastAPI], checks: Checks, factory: TokenFactory) -> None:
        self.apps = apps
        self.checks = checks
        self.factory = factory
        self._next = itertools.count()

    def client(self, worker: int | None = None, ip: str = "127.0.0.2") -> httpx.AsyncClient:
        index = next(self._next) % len(self.apps) if worker is None else worker
        transport = httpx.ASGITransport(app=self.apps[index], client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://worker")

    async def login(
        self, username: str = "alice", password: str = "wrong", ip: str = "127.0.0.2", **kw: Any
    ) -> httpx.Response:
        async with self.client(ip=ip) as c:
            return await c.post(
                "/auth/token", data={"username": username, "password": password}, **kw
            )

    async def predict(self, token: str, rows: int = 1, worker: int | None = None) -> httpx.Response:
        async with self.client(worker) as c:
            return await c.post(
                "/predict", params={"rows": rows}, headers={"authorization": f"Bearer {token}"}
            )

    async def ready(self, worker: int) -> dict[str, Any]:
        async with self.client(worker) as c:
            body: dict[str, Any] = (await c.get("/health/ready")).json()
            return body


@pytest.fixture
def limits() -> RateLimitSettings:
    return RateLimitSettings(
        login="5/minute",
        login_failures="3/hour",
        predict="4/minute",
        predict_tiers={"admin": "8/minute"},
        predict_rows_per_day=100,
        crypto="2/minute",
        breaker_seconds=0.2,
    )


@asynccontextmanager
async def running(
    tmp_path: Path, redis_url: str, limits: RateLimitSettings, workers: int = 2
) -> AsyncIterator[Stack]:
    factory = TokenFactory(tmp_path)
    # The longest Redis timeouts the settings allow: a check that outlives the timeout is
    # an outage (503 for sign-in, per-worker counting), and on a loaded machine the event
    # loop of 30 concurrent requests can take longer than the default half second to get
    # back to a Redis answer. The counts these tests check must not depend on that. The
    # outages here are a stopped Redis and a closed port, which fail at once; a Redis that
    # hangs past the timeout is test_security's test.
    settings = factory.settings(
        redis_url=redis_url, ratelimit=limits, redis_connect_timeout=5, redis_socket_timeout=5
    )
    checks = Checks()
    apps = [build(settings, checks) for _ in range(workers)]
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield Stack(apps, checks, factory)


@pytest.fixture
async def stack(
    tmp_path: Path, redis_server: Any, limits: RateLimitSettings
) -> AsyncIterator[Stack]:
    async with running(tmp_path, redis_server.url, limits) as s:
        yield s


# -- login ------------------------------------------------------------------------------
async def test_concurrent_logins_exactly_the_limit_reach_the_password_check(
    stack: Stack,
) -> None:
    responses = await asyncio.gather(*(stack.login(username=f"bob{i}") for i in range(30)))
    assert sorted(r.status_code for r in responses) == [401] * 5 + [429] * 25
    assert stack.checks.passwords == 5
    refused = [r for r in responses if r.status_code == 429]
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["content-type"] == "application/json"
        assert "detail" in response.json()


async def test_login_budget_is_per_client_ip(stack: Stack) -> None:
    # Which address a request has is gunicorn's decision (X-Forwarded-For believed only from
    # nginx), tested on real processes: tests/security/test_forwarded_for.py.
    users = (f"user{i}" for i in range(100))
    for i in range(5):
        response = await stack.login(next(users), ip="127.0.0.2")
        assert response.status_code == 401
        assert response.headers["ratelimit-limit"] == "5"
        assert response.headers["ratelimit-remaining"] == str(4 - i)
    refused = await stack.login(next(users), ip="127.0.0.2")
    assert refused.status_code == 429
    assert stack.checks.passwords == 5
    other = await stack.login(next(users), password=PASSWORD, ip="127.0.0.3")
    assert other.status_code == 200
    assert other.headers["ratelimit-remaining"] == "4"
    assert int(other.headers["ratelimit-reset"]) >= 1
    assert stack.checks.passwords == 6


async def test_user_name_failure_budget_locks_that_name_from_every_client(stack: Stack) -> None:
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert (await stack.login("carol", ip=ip)).status_code == 401
    locked = await stack.login("carol", password=PASSWORD, ip="127.0.0.5")
    assert locked.status_code == 429
    assert "failed sign-ins" in locked.json()["detail"]
    assert int(locked.headers["retry-after"]) > 60
    assert stack.checks.passwords == 3  # the right password never reached the check
    # Successes do not count as failures; other names are unaffected.
    for ip in ("127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"):
        assert (await stack.login("dave", password=PASSWORD, ip=ip)).status_code == 200


# -- per-subject limits -------------------------------------------------------------------
def refusals(limit: str) -> float:
    labels = {"service": "service", "route": "/predict", "limit": limit}
    return REGISTRY.get_sample_value("modelgate_rate_limited_total", labels) or 0.0


async def test_subject_limit_is_exact_across_workers(stack: Stack) -> None:
    token = stack.factory.mint("erin")
    before = refusals("predict")
    responses = await asyncio.gather(*(stack.predict(token) for _ in range(12)))
    assert sorted(r.status_code for r in responses) == [200] * 4 + [429] * 8
    assert refusals("predict") - before == 8
    for response in responses:
        assert response.headers["ratelimit-limit"] == "4"
        if response.status_code == 429:
            # The window started just now: the next request fits when it has ended.
            assert 50 <= int(response.headers["retry-after"]) <= 61
            assert response.headers["ratelimit-remaining"] == "0"
    # Another subject has its own budget; the admin tier has a larger one.
    assert (await stack.predict(stack.factory.mint("frank"))).status_code == 200
    admin = stack.factory.mint("root", role="admin")
    admin_statuses = [(await stack.predict(admin)).status_code for _ in range(9)]
    assert admin_statuses == [200] * 8 + [429]


async def test_each_check_is_one_round_trip_on_modelgates_own_keys(
    stack: Stack, redis_server: Any
) -> None:
    """A prediction here costs two Redis script calls (request limit, rows quota),
    counted under keys named by service, policy, period and subject."""
    token = stack.factory.mint("olga", role="admin")
    client = aioredis.from_url(redis_server.url)
    try:
        assert (await stack.predict(token, rows=5)).status_code == 200  # scripts loaded
        await client.config_resetstat()
        response = await stack.predict(token, rows=7)
        stats = await client.info("commandstats")
        requests = await client.get("mg:rl:inference:predict:60:cur:olga")
        rows = await client.get("mg:rl:inference:predict_rows:86400:cur:olga")
    finally:
        await client.aclose()
    assert response.status_code == 200
    # Commands a script runs are counted too (GET, PTTL, INCRBY...), under their names.
    calls = {name: int(value["calls"]) for name, value in stats.items()}
    assert calls["cmdstat_evalsha"] == 2
    assert "cmdstat_eval" not in calls
    assert (int(requests), int(rows)) == (2, 12)
    assert response.headers["ratelimit-remaining"] == "6"
    assert response.headers["x-quota-rows-remaining"] == "88"


async def test_crypto_limit_and_token_required(stack: Stack) -> None:
    async with stack.client() as c:
        assert (await c.post("/crypto/encrypt")).status_code == 401
        headers = {"authorization": f"Bearer {stack.factory.mint('gina')}"}
        statuses = [
            (await c.post("/crypto/encrypt", headers=headers)).status_code for _ in range(3)
        ]
    assert statuses == [200, 200, 429]


async def test_daily_rows_quota_is_exact_and_refusals_cost_nothing(stack: Stack) -> None:
    token = stack.factory.mint("hank", role="admin")  # 8 requests a minute: room to test rows
    first = await stack.predict(token, rows=60)
    assert first.status_code == 200
    assert first.headers["x-quota-rows-limit"] == "100"
    assert first.headers["x-quota-rows-remaining"] == "40"
    assert first.headers["ratelimit-limit"] == "8"
    refused = await stack.predict(token, rows=60)
    assert refused.status_code == 429
    assert refused.headers["x-quota-rows-remaining"] == "40"
    assert "quota" in refused.json()["detail"]
    assert (await stack.predict(token, rows=40)).status_code == 200
    assert (await stack.predict(token, rows=1)).status_code == 429
    assert stack.checks.predictions == 100
    # A batch larger than the whole quota is refused for another subject too, not a 500.
    assert (
        await stack.predict(stack.factory.mint("hal", role="admin"), rows=101)
    ).status_code == 429


async def test_rows_quota_exact_under_concurrency(stack: Stack) -> None:
    token = stack.factory.mint("ivan", role="admin")
    responses = await asyncio.gather(*(stack.predict(token, rows=30) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 5
    assert stack.checks.predictions == 90


# -- Redis outage -----------------------------------------------------------------------
async def wait_ready(stack: Stack, worker: int, status: str) -> dict[str, Any]:
    for _ in range(100):
        body = await stack.ready(worker)
        if body["checks"]["rate_limits"]["status"] == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {worker} never reported rate_limits {status}: {body}")


async def test_outage_refuses_login_falls_back_per_worker_and_recovers(
    stack: Stack, redis_server: Any
) -> None:
    token = stack.factory.mint("judy")
    assert (await stack.predict(token, worker=0)).status_code == 200  # shared: 3 left
    redis_server.stop()

    login = await stack.login("judy", password=PASSWORD)
    assert login.status_code == 503
    assert int(login.headers["retry-after"]) >= 1
    assert stack.checks.passwords == 0

    # Each worker now counts for itself: 4 a minute per worker, never a 500.
    per_worker = []
    for worker in (0, 1):
        statuses = [(await stack.predict(token, worker=worker)).status_code for _ in range(6)]
        per_worker.append(statuses)
    assert per_worker == [[200] * 4 + [429] * 2] * 2
    fallback = REGISTRY.get_sample_value("modelgate_rate_limit_fallback", {"service": "service"})
    assert fallback == 1
    for worker in (0, 1):
        body = await wait_ready(stack, worker, "degraded")
        assert body["status"] == "degraded"
        assert "per-worker" in body["checks"]["rate_limits"]["detail"]

    redis_server.start()
    for worker in (0, 1):
        await wait_ready(stack, worker, "ok")
    fallback = REGISTRY.get_sample_value("modelgate_rate_limit_fallback", {"service": "service"})
    assert fallback == 0
    # Shared counting again: alternating workers, a fresh subject gets 4, not 4 per worker.
    fresh = stack.factory.mint("judy2")
    statuses = [(await stack.predict(fresh)).status_code for _ in range(6)]
    assert statuses == [200] * 4 + [429] * 2
    assert (await stack.login("judy", password=PASSWORD)).status_code == 200


async def test_dead_redis_before_first_request_is_not_a_500(
    tmp_path: Path, limits: RateLimitSettings
) -> None:
    # Nothing listens on this port: the stack starts with Redis already gone.
    async with running(tmp_path, "redis://127.0.0.1:1/0", limits, workers=1) as stack:
        assert (await stack.login()).status_code == 503
        token = stack.factory.mint("kim")
        statuses = [(await stack.predict(token)).status_code for _ in range(5)]
        assert statuses == [200] * 4 + [429]
        assert (await stack.ready(0))["checks"]["rate_limits"]["status"] == "degraded"


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # (previous, previous_ttl, current, current_ttl) -> (remaining, reset, retry)
        ((0, 0.0, 0, 0.0), (10, 60.0, 0.0)),
        ((0, 0.0, 3, 110.0), (7, 50.0, 0.0)),
        # Full current window, 1 s old: wait for it to end, then a moment of decay.
        ((0, 0.0, 10, 119.0), (0, 59.0, 59.0)),
        # Previous window of 10 with 30 s left, current empty: weighs 5, fits now.
        ((10, 30.0, 0, 90.0), (5, 30.0, 0.0)),
        # Previous 10 with 54 s left plus current 5: weighs 9+5; fits once it weighs 4.
        ((10, 54.0, 5, 114.0), (0, 54.0, 24.0)),
    ],
)
def test_sliding_window_times(
    window: tuple[int, float, int, float], expected: tuple[int, float, float]
) -> None:
    remaining, reset, retry = sliding_window_times(10, 60, 1, *window)
    assert (remaining, reset, retry) == pytest.approx(expected)


# -- settings ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["five per minute", "5/fortnight", "5/minute;10/hour", ""])
def test_malformed_limits_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        RateLimitSettings(login=bad)
    with pytest.raises(ValidationError):
        RateLimitSettings(predict_tiers={"admin": bad})


def test_limits_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_RATELIMIT_LOGIN", "7 per 2 minutes")
    monkeypatch.setenv("MG_RATELIMIT_PREDICT_TIERS", '{"user": "20/minute"}')
    monkeypatch.setenv("MG_RATELIMIT_PREDICT_ROWS_PER_DAY", "500")
    settings = CommonSettings().ratelimit
    assert settings.login == "7 per 2 minutes"
    assert settings.predict_tiers == {"user": "20/minute"}
    assert settings.predict_rows_per_day == 500
    assert settings.crypto == "60/minute"


@pytest.fixture(autouse=True)
def _no_leaked_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("LOGIN", "PREDICT", "PREDICT_TIERS", "CRYPTO", "PREDICT_ROWS_PER_DAY"):
        monkeypatch.delenv(f"MG_RATELIMIT_{name}", raising=False)
    yield


# -- the sliding window's semantics: the Redis script and the per-worker copy agree ------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Starting states as (previous count, previous ttl ms, current count, current ttl ms), away
# from a weight boundary (Redis time moves between calls). The
# current window's ttl counts down from two periods (120 s for 60 s).
STATES = [
    pytest.param((0, 0, 0, 0), id="empty"),
    pytest.param((0, 0, 4, 100_000), id="current-only"),
    pytest.param((10, 30_500, 0, 0), id="previous-half-gone"),
    pytest.param((10, 54_500, 5, 114_000), id="both"),
    # The current window has lived more than one period: the next call shifts it.
    pytest.param((0, 0, 10, 59_000), id="shift"),
]


def _local_with(state: tuple[int, int, int, int], clock: FakeClock) -> LocalWindows:
    windows = LocalWindows(clock)
    now = int(clock.now * 1000)
    previous, previous_ttl, current, current_ttl = state
    windows._windows["k"] = [  # the per-worker store's own representation of the state
        previous if previous_ttl else 0,
        now + previous_ttl if previous_ttl else 0,
        current if current_ttl else 0,
        now + current_ttl if current_ttl else 0,
    ]
    return windows


@pytest.mark.parametrize("state", STATES)
async def test_redis_and_per_worker_windows_admit_alike(
    stack: Stack, redis_server: Any, state: tuple[int, int, int, int]
) -> None:
    """From the same state, 12 requests of cost 1 against a limit of 10 a minute get the
    same answers in Redis and in a worker's memory, and leave the same counts."""
    admission: Admission = stack.apps[0].state.admission
    limit = admission.limit("crypto")
    previous_key, current_key = limit.keys("crypto", POLICIES["crypto"], "semantics")
    client = aioredis.from_url(redis_server.url)
    try:
        await client.delete(previous_key, current_key)
        previous, previous_ttl, current, current_ttl = state
        if previous_ttl:
            await client.set(previous_key, previous, px=previous_ttl)
        if current_ttl:
            await client.set(current_key, current, px=current_ttl)
        script = client.register_script(_sliding_lua())
        shared = []
        for _ in range(12):
            allowed, *_window = await script(keys=[previous_key, current_key], args=[10, 60_000, 1])
            shared.append(bool(allowed))
        counts = [int(await client.get(k) or 0) for k in (previous_key, current_key)]
    finally:
        await client.aclose()
    clock = FakeClock()
    local = _local_with(state, clock)
    local_answers = [local.hit("k", 10, 60_000, 1)[0] for _ in range(12)]
    assert local_answers == shared
    window = local._windows["k"]
    assert [window[0] if window[1] > clock.now * 1000 else 0, window[2]] == counts
    assert shared.count(True) == {
        "empty": 10, "current-only": 6, "previous-half-gone": 5, "both": 0, "shift": 1,
    }[_state_id(state)]  # fmt: skip


def _state_id(state: tuple[int, int, int, int]) -> str:
    return next(str(p.id) for p in STATES if p.values[0] == state)


def _sliding_lua() -> str:
    from importlib.resources import files

    package = files("modelgate_common")
    return (package / "sliding_window.lua").read_text() + (package / "admit.lua").read_text()


def test_per_worker_window_decays_and_shifts_with_time() -> None:
    clock = FakeClock()
    windows = LocalWindows(clock)
    assert [windows.hit("k", 10, 60_000, 1)[0] for _ in range(11)] == [True] * 10 + [False]
    clock.now += 61  # the window shifts: its 10 weigh 59/60 of 10 = 9
    assert [windows.hit("k", 10, 60_000, 1)[0] for _ in range(2)] == [True, False]
    clock.now += 30  # the previous window weighs floor(10 * 29/60) = 4, current 1
    assert [windows.hit("k", 10, 60_000, 1)[0] for _ in range(6)] == [True] * 5 + [False]
    clock.now += 200  # everything has aged out
    assert windows.hit("k", 10, 60_000, 10)[0]
    assert not windows.hit("k", 10, 60_000, 11)[0]  # a cost above the limit never fits


# -- the script pipeline: concurrent calls in one write, the budget from the write ----------
def _principal(subject: str) -> Principal:
    now = int(time.time())
    return Principal(
        subject=subject,
        role="user",
        scopes=frozenset({"models:predict"}),
        token_id=f"jti-{subject}",
        issued_at=now,
        expires_at=now + 600,
        user_id="u" * 32,
    )


async def _our_connections(client: aioredis.Redis) -> int:
    """Connections to Redis other than ``client``'s own."""
    return len(await client.client_list()) - 1


async def test_concurrent_checks_of_one_worker_share_one_connection(
    redis_server: Any, limits: RateLimitSettings
) -> None:
    client = aioredis.from_url(redis_server.url)
    admission = Admission(limits, redis_server.url)
    try:
        verdicts = await asyncio.gather(*(admission.admit("crypto", f"c{i}") for i in range(40)))
        await admission.prediction(_principal("warm")).admit(1)  # the script loaded
        await client.config_resetstat()
        predictions = [admission.prediction(_principal(f"p{i}")) for i in range(40)]
        await asyncio.gather(*(p.admit(2) for p in predictions))
        stats = await client.info("commandstats")
        connections = await _our_connections(client)
        counted = await client.mget([f"mg:rl:inference:predict:60:cur:p{i}" for i in range(40)])
    finally:
        await admission.aclose()
        await client.aclose()
    assert all(v.shared and v.allowed and v.remaining == 1 for v in verdicts)
    # 40 requests at once: 40 script calls, each its own, over one connection (without
    # the pipeline, each would take a connection of its own from the pool).
    assert int(stats["cmdstat_evalsha"]["calls"]) == 40
    assert connections == 1
    assert counted == [b"1"] * 40


async def test_script_pipeline_replies_errors_and_a_forgotten_script(redis_server: Any) -> None:
    client = aioredis.from_url(redis_server.url)
    pipeline = ScriptPipeline(client, budget=5.0)
    double = client.register_script("return tonumber(ARGV[1]) * 2")
    failing = client.register_script("return redis.error_reply('refused here')")
    try:
        await client.script_flush()  # Redis knows no script: NOSCRIPT, loaded, sent again
        calls = [pipeline.call(double, [], [i]) for i in range(20)]
        calls.insert(7, pipeline.call(failing, [], []))
        replies = await asyncio.gather(*calls, return_exceptions=True)
        again = await pipeline.call(double, [], [21])  # loaded now
    finally:
        await pipeline.aclose()
        await client.aclose()
    error = replies.pop(7)
    assert isinstance(error, redis.exceptions.ResponseError)
    assert "refused here" in str(error)
    assert replies == [i * 2 for i in range(20)]
    assert again == 42


async def test_a_burst_under_a_stalled_event_loop_is_no_outage(
    redis_server: Any, limits: RateLimitSettings
) -> None:
    """300 predictions at once while the worker's event loop is blocked, turn after turn,
    for longer than the Redis budget (a worker busy with other requests on a loaded
    machine): Redis answers in time, so every call is counted in Redis, none falls back
    to counting per worker."""
    client = aioredis.from_url(redis_server.url)
    admission = Admission(limits, redis_server.url, connect_timeout=0.25, socket_timeout=0.25)
    await admission.prediction(_principal("warm")).admit(1)  # the script loaded

    async def stall() -> None:
        for _ in range(8):
            time.sleep(0.4)  # noqa: ASYNC251  # blocks the loop on purpose, longer than the budget
            await asyncio.sleep(0)

    try:
        predictions = [admission.prediction(_principal(f"b{i}")) for i in range(300)]
        results = await asyncio.gather(stall(), *(p.admit(1) for p in predictions))
        counted = await client.mget([f"mg:rl:inference:predict:60:cur:b{i}" for i in range(300)])
        health = await admission.health()
    finally:
        await admission.aclose()
        await client.aclose()
    assert [p.subject for p in results[1:]] == [f"b{i}" for i in range(300)]
    assert counted == [b"1"] * 300  # counted in Redis, not per worker
    assert health.status == "ok"


async def test_a_redis_that_never_answers_is_an_outage(limits: RateLimitSettings) -> None:
    """A Redis that accepts connections and never answers: the checks fall back to
    counting per worker (the outage policy), as with a stopped Redis."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    admission = Admission(limits, url, connect_timeout=0.2, socket_timeout=0.2)
    try:
        verdicts = await asyncio.gather(*(admission.admit("predict", "hung") for _ in range(3)))
        principal = await admission.prediction(_principal("hung2")).admit(1)
        health = await admission.health()
    finally:
        await admission.aclose()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
    assert [v.shared for v in verdicts] == [False] * 3
    assert [v.remaining for v in sorted(verdicts, key=lambda v: -v.remaining)] == [3, 2, 1]
    assert principal.subject == "hung2"
    assert health.status == "degraded"
