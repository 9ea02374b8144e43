"""Admission: every limit of every service, through one API.

``await admission.admit(policy, who, cost=…)`` spends ``cost`` of ``who``'s budget under
a policy of ``POLICIES`` and returns the ``Verdict``, or raises the policy's refusal
(429, or 503 for a policy that refuses while Redis is unreachable). Per-subject
routes use it through one dependency, ``admitted(policy, scopes)``; a password or
client-secret check through ``async with admission.sign_in(…)``; predictions through
``async with admission.prediction(principal)``, which charges the request, the rows
and looks the token's revocation up in ONE Redis call.

Counters live in Redis, so a limit holds across every worker of every service:

- sliding windows (per-subject limits, the rows quota) are modelgate's own algorithm,
  in ``sliding_window.lua`` and, for the per-worker fallback, ``LocalWindows`` (the
  same arithmetic), with modelgate's own keys
  ``mg:rl:<service>:<policy>:<period>:<cur|prev>:<who>``;
- moving windows (sign-in: exact, no burst at a window edge) use the ``limits``
  library's ``MovingWindowRateLimiter`` through its public API on its Redis storage.

When Redis is unreachable a policy either refuses (``outage="refuse"``: sign-in, 503)
or counts in this worker alone (``outage="per-worker"``); a circuit breaker keeps the
worker off Redis for ``breaker_seconds`` after a failure, then the next request tries
again and shared counting resumes by itself. ``/health/ready`` reports ``degraded``
while a worker counts alone. The client address is the TCP peer uvicorn resolved from
nginx's ``X-Forwarded-For`` (trusted from nginx's address only), never a header the
client wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from fastapi import Request, Security
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ._errors import ServiceUnavailable, TooManyRequests, Unauthorized
from ._health import CheckResult
from ._logging import audit
from ._metrics import RATE_LIMIT_FALLBACK, service_name
from ._redis import CircuitBreaker
from ._security import Principal, TokenVerifier, authenticate, count_auth_failure
from ._settings import RateLimitSettings

log = logging.getLogger("modelgate.admission")


# -- the policies ---------------------------------------------------------------------------
def _fixed(field: str) -> Callable[[RateLimitSettings, str | None], str]:
    return lambda s, role: str(getattr(s, field))


def _tiered(field: str) -> Callable[[RateLimitSettings, str | None], str]:
    def limit(s: RateLimitSettings, role: str | None) -> str:
        tiers: Mapping[str, str] = getattr(s, f"{field}_tiers")
        return tiers.get(role or "", getattr(s, field))

    return limit


def _rows_per_day(s: RateLimitSettings, role: str | None) -> str:
    return f"{s.predict_rows_tiers.get(role or '', s.predict_rows_per_day)}/day"


@dataclass(frozen=True, slots=True)
class Policy:
    """What is counted, keyed by what, and what happens when Redis cannot count."""

    service: str  # whose key space the counters live in
    key: Literal["client address", "user name", "subject"]
    window: Literal["moving", "sliding"]
    limit: Callable[[RateLimitSettings, str | None], str]  # (settings, role) -> "5/minute"
    outage: Literal["refuse", "per-worker"]
    refusal: str  # the 429's detail
    # The headers of the verdict: "none" for a budget only ever tested, whose refusal
    # carries the headers of the request's other budget.
    headers: Literal["ratelimit", "rows quota", "none"] = "ratelimit"


POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "login": Policy(
            "auth", "client address", "moving", _fixed("login"), "refuse",
            "too many sign-in attempts; retry later",
        ),
        "login_failures": Policy(
            "auth", "user name", "moving", _fixed("login_failures"), "refuse",
            "too many failed sign-ins for this user; retry later", "none",
        ),
        "predict": Policy(
            "inference", "subject", "sliding", _tiered("predict"), "per-worker",
            "rate limit exceeded; retry later",
        ),
        "predict_rows": Policy(
            "inference", "subject", "sliding", _rows_per_day, "per-worker",
            "daily prediction quota exceeded", "rows quota",
        ),
        "crypto": Policy(
            "crypto", "subject", "sliding", _tiered("crypto"), "per-worker",
            "rate limit exceeded; retry later",
        ),
    }
)  # fmt: skip


# -- what the client is told ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check, with what the client is told about its budget."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # RateLimit-Reset: seconds until the counted requests start to age out
    retry_after: int  # Retry-After of a refusal: seconds until the refused request would fit
    shared: bool  # False: counted by this worker alone (Redis unreachable)

    def headers(
        self, kind: Literal["ratelimit", "rows quota", "none"] = "ratelimit"
    ) -> dict[str, str]:
        if kind == "none":
            return {}
        if kind == "rows quota":
            return {
                "X-Quota-Rows-Limit": str(self.limit),
                "X-Quota-Rows-Remaining": str(self.remaining),
            }
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }


class _Exchange:
    """What the checks of the request being served tell the header middleware: the
    headers to add and, on a 429, which policy refused (for the metrics)."""

    __slots__ = ("headers", "refused_by")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.refused_by: str | None = None


# Set per request by the service middleware (_middleware.ServiceMiddleware); child tasks
# share the same object.
_exchange: ContextVar[_Exchange | None] = ContextVar("admission_exchange", default=None)


def _tell_client(headers: dict[str, str]) -> None:
    exchange = _exchange.get()
    if exchange is not None:
        exchange.headers.update(headers)


def _enforce(name: str, policy: Policy, verdict: Verdict) -> Verdict:
    """Tell the client its budget; raise the policy's refusal when not allowed."""
    headers = verdict.headers(policy.headers)
    if verdict.allowed:
        _tell_client(headers)
        return verdict
    exchange = _exchange.get()
    if exchange is not None:
        exchange.refused_by = name
    message = policy.refusal
    if policy.headers == "rows quota":
        message += f": {verdict.remaining} of {verdict.limit} rows left"
    error = TooManyRequests(verdict.retry_after, message)
    error.headers.update(headers)
    raise error


def _fallback_gauge(on: bool) -> None:
    RATE_LIMIT_FALLBACK.labels(service_name()).set(1 if on else 0)


# -- the sliding window: the window arithmetic, in Redis (Lua) and per worker ----------------
_HERE = Path(__file__).parent
_SLIDING_LUA = (_HERE / "sliding_window.lua").read_text(encoding="utf-8")
_ADMIT_LUA = _SLIDING_LUA + (_HERE / "admit.lua").read_text(encoding="utf-8")
_PREDICTION_LUA = _SLIDING_LUA + (_HERE / "prediction.lua").read_text(encoding="utf-8")

Window = tuple[int, int, int, int]  # previous count, previous ttl, current count, current ttl (ms)


class LocalWindows:
    """``sliding_window.lua`` for one worker's memory (the per-worker fallback): the same
    windows, shifts and weights, with deadlines instead of Redis key lifetimes."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        # key -> [previous count, previous deadline, current count, current deadline] (ms)
        self._windows: dict[str, list[int]] = {}
        self._calls = 0

    def hit(self, key: str, limit: int, period_ms: int, amount: int) -> tuple[bool, Window]:
        now = int(self._now() * 1000)
        self._calls += 1
        if self._calls % 1024 == 0:
            self._prune(now)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = [0, 0, 0, 0]
        current_ttl = window[3] - now
        if 0 < current_ttl < period_ms:  # the current window has lived one period
            window[0], window[1] = window[2], window[3]
            window[2], window[3] = 0, now + current_ttl + period_ms
        previous, current = (window[0], window[2]) if window[1] > now else (0, window[2])
        previous_ttl = max(0, window[1] - now)
        current_ttl = max(0, window[3] - now)
        if current_ttl == 0:
            current = 0
        weighted = math.floor(previous * previous_ttl / period_ms) + current
        if amount > limit or weighted + amount > limit:
            return False, (previous, previous_ttl, current, current_ttl)
        if current_ttl > 0:
            window[2] = current + amount
        else:
            window[2], window[3] = amount, now + 2 * period_ms
            current_ttl = 2 * period_ms
        return True, (previous, previous_ttl, window[2], current_ttl)

    def _prune(self, now: int) -> None:
        for key in [k for k, w in self._windows.items() if w[1] <= now and w[3] <= now]:
            del self._windows[key]


def sliding_window_times(
    limit: int,
    period: int,
    cost: int,
    previous: int,
    previous_ttl: float,
    current: int,
    current_ttl: float,
) -> tuple[int, float, float]:
    """(remaining, seconds until the current window ends, seconds until ``cost`` fits)
    for the sliding window counter (times in seconds): the previous window's count
    weighs in proportion to its remaining time, and the current window becomes the
    previous one when it ends."""
    weighted = math.floor(previous * previous_ttl / period) + current
    remaining = max(0, limit - weighted)
    window_end = current_ttl - period if current_ttl > period else float(period)
    if cost > limit:
        return remaining, window_end, 2.0 * period  # never fits
    room = limit - cost - current  # what the decaying previous window may still weigh
    if room >= 0:
        if previous == 0 or math.floor(previous * previous_ttl / period) <= room:
            return remaining, window_end, 0.0
        # floor(previous * (ttl - t) / period) <= room  once  t > ttl - period * (room+1) / previous
        return remaining, window_end, previous_ttl - period * (room + 1) / previous
    # The current window's count must first become the (decaying) previous one.
    after_shift = period - period * (limit - cost + 1) / current
    return remaining, window_end, max(0.0, window_end) + max(0.0, after_shift)


def _verdict(
    limit: int, period: int, allowed: bool, remaining: int, reset: float, retry: float, shared: bool
) -> Verdict:
    """A verdict in whole seconds from a window's remaining budget and its times."""
    return Verdict(
        allowed=allowed,
        limit=limit,
        remaining=remaining,
        reset_after=max(1, min(period, math.ceil(reset))),
        retry_after=max(1, min(2 * period, math.floor(retry) + 1)),  # strictly after
        shared=shared,
    )


def _sliding_verdict(
    limit: int, period: int, cost: int, allowed: bool, window: Sequence[int], shared: bool
) -> Verdict:
    previous, previous_ttl, current, current_ttl = window
    remaining, reset, retry = sliding_window_times(
        limit,
        period,
        cost,
        previous,
        max(0, previous_ttl) / 1000,
        current,
        max(0, current_ttl) / 1000,
    )
    return _verdict(limit, period, allowed, remaining, reset, retry, shared)


def _who(policy: Policy, who: str) -> str:
    """Client-chosen strings (user names) become fixed-size, separator-free key parts."""
    if policy.key == "user name":
        return hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return who


@dataclass(frozen=True, slots=True)
class _Limit:
    """A policy's limit for one role, parsed once."""

    amount: int
    period: int  # seconds
    item: RateLimitItem

    def keys(self, name: str, policy: Policy, who: str) -> list[str]:
        base = f"mg:rl:{policy.service}:{name}:{self.period}"
        return [f"{base}:prev:{who}", f"{base}:cur:{who}"]


# -- script calls of one event-loop turn, sent together ------------------------------------
# The budget of a batch is waited in slices, then a few loop turns read an answer that is
# already there (see ScriptPipeline._answer).
_SLICES = 10
_GRACE_TURNS = 4
_Call = tuple[AsyncScript, Sequence[str], Sequence[int | str], "asyncio.Future[Any]"]


class ScriptPipeline:
    """The script calls that the concurrent requests of one worker make in one event-loop
    turn, sent as ONE pipelined write (auto-pipelining, as ioredis does it): one system
    call and one read for the whole batch instead of a round trip each, and the same
    replies and errors as separate calls (a pipeline without MULTI runs each command on
    its own). At most ``max_batch`` calls go in one write; more go in the next, on
    another connection.

    The time budget measures Redis's answer, not the queue: it starts when the batch is
    sent, not when a caller queued its call, and when it runs out, the answer may be
    waiting unread because the worker's event loop was busy with other requests (a
    loaded machine): the loop then gets a few turns to read it before the calls fail.
    A Redis that does not answer fails every call of the batch with ``TimeoutError``, a
    broken connection with its error, as each call alone would have failed; the caller
    applies its outage policy. A script Redis does not know (NOSCRIPT, after a restart)
    is loaded and the calls that hit it are sent again."""

    def __init__(self, client: aioredis.Redis, budget: float, max_batch: int = 128) -> None:
        self._client = client
        self._budget = budget
        self._max_batch = max_batch
        self._batch: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[int | str]
    ) -> Any:
        """The reply of ``script`` run on ``keys`` and ``args`` (raises what Redis or the
        connection raised, or ``TimeoutError``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((script, keys, args, future))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)  # once every request ready in this turn has run
        elif len(self._batch) >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._answer(self._execute(batch))
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                scripts = {batch[i][0].sha: batch[i][0].script for i in missing}
                for text in scripts.values():
                    await self._answer(self._client.script_load(text))
                again = await self._answer(self._execute([batch[i] for i in missing]))
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            for (*_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # the caller went away (its request was cancelled)
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except Exception as exc:  # no answer (timeout, connection): every call failed
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:  # cancelled (the worker stops): no caller waits forever
            for *_, future in batch:
                if not future.done():
                    future.set_exception(ConnectionError("the script call was abandoned"))

    async def aclose(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._client.connection_pool.disconnect()

    async def _execute(self, calls: Sequence[_Call]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def _answer(self, awaitable: Awaitable[Any]) -> Any:
        """``awaitable``'s result within the budget, counted from now in time the event
        loop was free to read the answer. The budget is waited in ``_SLICES`` slices; a
        slice's timer that fires late (the loop was busy with other requests) counts for
        the slice only, and an answer that arrived meanwhile is read in the next few
        turns, so a stalled loop stretches the wait (to at most ``_SLICES`` stalls) but
        is never taken for a Redis that does not answer."""
        task = asyncio.ensure_future(awaitable)
        step = self._budget / _SLICES
        try:
            for _ in range(_SLICES):
                done, _ = await asyncio.wait({task}, timeout=step)
                if done:
                    break
            for _ in range(_GRACE_TURNS):
                if task.done():
                    break
                await asyncio.sleep(0)  # one turn: the loop reads the sockets that are ready
        finally:
            if not task.done():  # timed out, or this send was cancelled
                task.cancel()  # redis-py closes a connection cancelled mid-reply
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            raise TimeoutError(f"no answer from Redis within {self._budget:g} s")
        return task.result()


# -- the admission of one worker ------------------------------------------------------------


class SignInExemption(Protocol):
    """The service's say on a sign-in whose user name has spent its failure budget.

    The budget stops guessing spread over many addresses, but anyone can spend it, so the
    service may let the real user through (e.g. from an address that user signed in from
    before). Passed to ``Admission.sign_in`` by the service's sign-in route."""

    async def allows(self, username: str, client_ip: str) -> bool:
        """May this attempt reach the password check although the name's budget is spent?"""
        ...

    async def failed(self, username: str, client_ip: str) -> None:
        """The attempt's password check failed (after the name's failure was counted)."""
        ...

    async def audit_name(self, username: str) -> str:
        """The user name as the audit log may show it (never what a stranger typed)."""
        ...


def _connection_pool(
    redis_url: str,
    credentials: Mapping[str, Any] | None,
    connect_timeout: float | None,
    socket_timeout: float | None,
) -> aioredis.ConnectionPool:
    # One retry without delay: a connection that died with a Redis restart is replaced
    # at once; a Redis that is really gone costs two fast failures, then the breaker.
    return aioredis.ConnectionPool.from_url(
        redis_url,
        **(credentials or {}),
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


class Admission:
    """Every limit of one worker: Redis-backed, with the per-worker fallback."""

    def __init__(
        self,
        settings: RateLimitSettings,
        redis_url: str,
        verifier: TokenVerifier | None = None,
        connect_timeout: float = 0.25,
        socket_timeout: float = 0.5,
        credentials: Mapping[str, Any] | None = None,
        *,
        policies: Mapping[str, Policy] = POLICIES,
    ) -> None:
        self.settings = settings
        self.policies = policies
        self.verifier = verifier
        self._pool = _connection_pool(redis_url, credentials, connect_timeout, socket_timeout)
        # One bound for a whole check, however many round trips or reconnects it takes.
        self._budget = max(connect_timeout, socket_timeout)
        self._client = aioredis.Redis(connection_pool=self._pool)
        # The sliding-window scripts (every per-subject limit, every prediction) go through
        # the script pipeline, on connections of their own without timeouts of redis-py's:
        # the pipeline's budget bounds a batch, connecting included (see ScriptPipeline).
        self._scripts = ScriptPipeline(
            aioredis.Redis(connection_pool=_connection_pool(redis_url, credentials, None, None)),
            self._budget,
        )
        self._admit_script = self._client.register_script(_ADMIT_LUA)
        self._prediction_script = self._client.register_script(_PREDICTION_LUA)
        self._moving = MovingWindowRateLimiter(
            RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="mg:rl",
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
            )
        )
        self._local = LocalWindows()
        self.breaker = CircuitBreaker(settings.breaker_seconds)
        self._limits: dict[tuple[str, str | None], _Limit] = {}

    def limit(self, name: str, role: str | None = None) -> _Limit:
        cached = self._limits.get((name, role))
        if cached is None:
            policy = self.policies[name]
            parsed = parse(policy.limit(self.settings, role))
            item = type(parsed)(parsed.amount, parsed.multiples, namespace=policy.service)
            cached = self._limits[(name, role)] = _Limit(parsed.amount, item.get_expiry(), item)
        return cached

    # -- the public API ---------------------------------------------------------------------
    async def admit(
        self, name: str, who: str, *, cost: int = 1, role: str | None = None
    ) -> Verdict:
        """Spend ``cost`` of ``who``'s budget under the policy ``name``: the verdict when
        it fits (its headers go to the client), else the policy's 429; 503 when Redis
        is unreachable and the policy refuses then."""
        policy = self.policies[name]
        verdict = await self._count(name, policy, _who(policy, who), cost, role, charge=True)
        return _enforce(name, policy, verdict)

    async def fits(self, name: str, who: str, *, role: str | None = None) -> Verdict:
        """Would one more fit under a moving-window policy? Spends nothing; raises as
        ``admit`` does when it would not."""
        policy = self.policies[name]
        verdict = await self._count(name, policy, _who(policy, who), 1, role, charge=False)
        return _enforce(name, policy, verdict)

    async def spend(self, name: str, who: str, *, cost: int = 1) -> None:
        """Count ``cost`` without asking for a verdict (a failed sign-in); nothing
        is counted while Redis is unreachable and the policy refuses anyway."""
        policy = self.policies[name]
        try:
            await self._count(name, policy, _who(policy, who), cost, None, charge=True)
        except ServiceUnavailable:
            pass  # the next attempt is refused with 503 until Redis is back

    def prediction(self, principal: Principal) -> Prediction:
        """``async with admission.prediction(principal) as p: … await p.admit(rows)``."""
        return Prediction(self, principal)

    @asynccontextmanager
    async def sign_in(
        self,
        client: str,
        user: str,
        failures: tuple[type[Exception], ...],
        exemption: SignInExemption | None = None,
    ) -> AsyncIterator[None]:
        """A password check: the client's ``login`` budget and the user name's
        ``login_failures`` budget before it (a refused attempt never reaches the
        password; ``exemption`` may let one past a spent name budget), one failure
        counted when the block raises one of ``failures``."""
        try:
            await self.admit("login", client)
        except TooManyRequests:
            audit("login_throttled", reason="client", client_ip=client)
            raise
        try:
            await self.fits("login_failures", user)
        except TooManyRequests:
            if exemption is None or not await exemption.allows(user, client):
                name = await exemption.audit_name(user) if exemption else user[:64]
                audit("login_throttled", reason="user", user=name, client_ip=client)
                raise
        try:
            yield
        except failures:
            await self.spend("login_failures", user)
            if exemption is not None:
                await exemption.failed(user, client)
            raise

    # -- counting -------------------------------------------------------------------------
    async def _count(
        self, name: str, policy: Policy, who: str, cost: int, role: str | None, *, charge: bool
    ) -> Verdict:
        limit = self.limit(name, role)
        if not self.breaker.open:
            try:
                if policy.window == "moving":
                    async with asyncio.timeout(self._budget):
                        verdict = await self._moving_window(limit, name, who, cost, charge)
                else:  # bounded by the script pipeline's budget
                    verdict = await self._shared_window(limit, name, policy, who, cost)
            except Exception as exc:  # any storage failure: apply the outage policy
                self._store_failed(exc)
            else:
                self._store_answered()
                return verdict
        if policy.outage == "refuse" or policy.window == "moving":
            raise ServiceUnavailable(
                "sign-in is temporarily unavailable",
                retry_after=max(1, math.ceil(self.breaker.retry_in)),
            )
        return self._local_window(limit, name, policy, who, cost)

    async def _moving_window(
        self, limit: _Limit, name: str, who: str, cost: int, charge: bool
    ) -> Verdict:
        allowed = await self._moving.hit(limit.item, name, who, cost=cost) if charge else None
        stats = await self._moving.get_window_stats(limit.item, name, who)
        remaining = max(0, stats.remaining)
        # The oldest counted request ages out at reset_time: one slot frees up then.
        reset = stats.reset_time - time.time()
        return _verdict(
            limit.amount,
            limit.period,
            remaining >= cost if allowed is None else allowed,
            remaining,
            reset,
            reset,
            shared=True,
        )

    async def _shared_window(
        self, limit: _Limit, name: str, policy: Policy, who: str, cost: int
    ) -> Verdict:
        keys = limit.keys(name, policy, who)
        args = [limit.amount, limit.period * 1000, cost]
        reply = await self._scripts.call(self._admit_script, keys, args)
        allowed, *window = (int(v) for v in reply)
        return _sliding_verdict(limit.amount, limit.period, cost, bool(allowed), window, True)

    def _local_window(
        self, limit: _Limit, name: str, policy: Policy, who: str, cost: int
    ) -> Verdict:
        key = limit.keys(name, policy, who)[1]
        allowed, window = self._local.hit(key, limit.amount, limit.period * 1000, cost)
        return _sliding_verdict(limit.amount, limit.period, cost, allowed, window, False)

    def _store_failed(self, exc: Exception) -> None:
        if self.breaker.trip():
            _fallback_gauge(True)
            log.warning(
                "rate-limit store unreachable: counting per worker, login refused",
                extra={"reason": type(exc).__name__, "retry_in_s": self.breaker.cooldown},
            )

    def _store_answered(self) -> None:
        if self.breaker.close():
            _fallback_gauge(False)
            log.info("rate-limit store reachable again: shared counting resumed")

    async def _admit_prediction(self, principal: Principal, rows: int) -> Principal:
        """A prediction's request, rows and the token's revocation in one Redis call;
        the same answers, counts and outage policies as the checks one by one."""
        verifier = self.verifier
        try:
            keys = verifier.revocation_keys(principal) if verifier is not None else None
            if keys is None and verifier is not None:
                principal = verifier.revocation_unavailable(principal)
            if self.breaker.open:
                if keys is not None:
                    principal = await verifier.check_revocation(principal)  # type: ignore[union-attr]
                await self._admit_prediction_apart(principal, rows)
                return principal
            request = self.limit("predict", principal.role)
            quota = self.limit("predict_rows", principal.role)
            script_keys = [
                *request.keys("predict", self.policies["predict"], principal.subject),
                *quota.keys("predict_rows", self.policies["predict_rows"], principal.subject),
                *(keys or ()),
            ]
            args = [
                request.amount,
                request.period * 1000,
                quota.amount,
                quota.period * 1000,
                rows,
                principal.issued_at,
            ]
            try:
                reply = await self._scripts.call(self._prediction_script, script_keys, args)
            except Exception as exc:  # any storage failure: both outage policies
                self._store_failed(exc)
                if keys is not None:
                    principal = verifier.revocation_failed(exc, principal)  # type: ignore[union-attr]
                await self._admit_prediction_apart(principal, rows)
                return principal
        except Unauthorized as exc:
            count_auth_failure(exc)
            raise
        self._store_answered()
        if keys is not None:
            principal = verifier.revocation_answered(principal)  # type: ignore[union-attr]
        values = [int(v) for v in reply]
        if values[0] == -1:
            revoked = Unauthorized("token has been revoked")
            count_auth_failure(revoked)
            raise revoked
        _enforce(
            "predict",
            self.policies["predict"],
            _sliding_verdict(request.amount, request.period, 1, bool(values[0]), values[1:5], True),
        )
        if rows:
            _enforce(
                "predict_rows",
                self.policies["predict_rows"],
                _sliding_verdict(
                    quota.amount, quota.period, rows, bool(values[5]), values[6:10], True
                ),
            )
        return principal

    async def _admit_prediction_apart(self, principal: Principal, rows: int) -> None:
        await self.admit("predict", principal.subject, role=principal.role)
        if rows:
            await self.admit("predict_rows", principal.subject, cost=rows, role=principal.role)

    # -- health and shutdown ------------------------------------------------------------
    async def probe(self) -> bool:
        """Can this worker count in Redis now? Pings it unless the breaker is open."""
        if self.breaker.open:
            return False
        try:
            async with asyncio.timeout(self._budget):
                ok = bool(await self._client.ping())
        except Exception:
            ok = False
        if ok:
            self._store_answered()
        elif self.breaker.trip():
            _fallback_gauge(True)
        return ok

    async def health(self) -> CheckResult:
        if await self.probe():
            return CheckResult("ok", "shared counters in redis")
        return CheckResult(
            "degraded", "redis unreachable: per-worker in-memory limits, sign-in refused"
        )

    async def aclose(self) -> None:
        await self._scripts.aclose()
        await self._pool.aclose()


class Prediction:
    """One prediction's admission: ``admit(rows)`` once the batch is validated (before the
    model runs) charges the request and the rows and looks the token's revocation up, in
    one Redis call, and returns the principal with its revocation known. A request that
    fails before it is admitted on the way out (the request alone), and a 401 or 429
    then replaces its failure: the answers are those of checks made first."""

    __slots__ = ("_admission", "admitted", "principal")

    def __init__(self, admission: Admission, principal: Principal) -> None:
        self._admission = admission
        self.principal = principal
        self.admitted = False

    async def admit(self, rows: int) -> Principal:
        self.admitted = True
        self.principal = await self._admission._admit_prediction(self.principal, rows)
        return self.principal

    async def __aenter__(self) -> Prediction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not self.admitted:
            await self.admit(0)


# -- FastAPI ----------------------------------------------------------------------------------
def _admission(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


def admitted(policy: str, scopes: Sequence[str] = ()) -> Callable[..., Awaitable[Principal]]:
    """The dependency of a route limited per token subject: a verified principal holding
    ``scopes`` (the route's security requirement), with one request of its ``policy``
    budget spent. Use it as ``Annotated[Principal, Depends(admitted("crypto", [...]))]``."""
    if POLICIES[policy].key != "subject":
        raise ValueError(f"{policy} is not counted per token subject")
    # A default, not an Annotated[...] string: annotations are resolved from module
    # globals, where this closure's ``scopes`` is not.
    authenticated = Security(authenticate, scopes=list(scopes))

    async def dependency(request: Request, principal: Principal = authenticated) -> Principal:
        await _admission(request).admit(policy, principal.subject, role=principal.role)
        return principal

    dependency.__name__ = f"{policy}_admission"
    return dependency
