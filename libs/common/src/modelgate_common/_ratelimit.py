"""Rate limits that hold across every worker of every service.

Counters live in Redis, written through the ``limits`` library's asyncio storage
(``async+redis://`` on redis-py's asyncio client), so a check is awaited and never
blocks the event loop. A sliding-window check is ONE round trip: ``_SLIDING_HIT``
is ``limits``' own acquire script on the same keys, which also returns the
window's counts it just wrote, so the ``RateLimit-*`` numbers come from the call
that charged (not from a second ``get_sliding_window`` call). slowapi's ``Limiter`` is
not used for the checks: it drives the synchronous storage API (a blocking Redis
call inside every async route) and answers 500 when that storage fails. What
slowapi offers that fits is used: its ``get_remote_address`` key function, i.e.
the TCP peer that uvicorn resolved from nginx's ``X-Forwarded-For`` (trusted
from nginx's address only), never a header the client wrote.

Policies (defaults in ``RateLimitSettings``, each an ``MG_RATELIMIT_*`` variable):

- ``login``: per client IP, moving window (exact; no burst at a window edge).
- ``login_failures``: per user name, moving window of failed password checks.
- ``predict`` and ``crypto``: per token subject, sliding window counter (O(1)
  memory whatever the limit), with per-role tiers.
- ``predict_rows``: predicted rows per subject per rolling day (model-extraction
  defence), charged after the request body has been validated.

When Redis is unreachable, login is refused (503) and the other policies count
in a per-worker ``MemoryStorage`` instead; a circuit breaker keeps the worker off
Redis for ``breaker_seconds`` after a failure (no connection storm against a dead
server), then the next request tries again and shared counting resumes by itself.
``/health/ready`` reports ``degraded`` while a worker counts in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Security
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from slowapi.util import get_remote_address
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import ServiceUnavailable, TooManyRequests, Unauthorized
from ._health import CheckResult
from ._logging import audit
from ._metrics import RATE_LIMIT_FALLBACK, RATE_LIMITED, service_name
from ._redis import CircuitBreaker
from ._security import Principal, TokenVerifier, authenticate, count_auth_failure
from ._settings import RateLimitSettings

log = logging.getLogger("modelgate.ratelimit")

Policy = Literal["login", "login_failures", "predict", "predict_rows", "crypto"]
SubjectPolicy = Literal["predict", "crypto"]
# The service whose key space a policy's counters live in (``mg:rl:<service>/...``).
_SERVICE: dict[Policy, str] = {
    "login": "auth",
    "login_failures": "auth",
    "predict": "inference",
    "predict_rows": "inference",
    "crypto": "crypto",
}
# Exact moving windows (sign-in); every other policy is a sliding window counter.
_MOVING: frozenset[Policy] = frozenset({"login", "login_failures"})


class _Exchange:
    """What the checks of the request being served tell the header middleware: the
    headers to add and, on a 429, which limit refused (for the metrics)."""

    __slots__ = ("headers", "refused_by")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.refused_by: Policy | None = None


# Set per request by RateLimitHeadersMiddleware; child tasks share the same object.
_exchange: ContextVar[_Exchange | None] = ContextVar("ratelimit_exchange", default=None)


def _tell_client(headers: dict[str, str]) -> None:
    exchange = _exchange.get()
    if exchange is not None:
        exchange.headers.update(headers)


def _refused(policy: Policy) -> None:
    exchange = _exchange.get()
    if exchange is not None:
        exchange.refused_by = policy


def _fallback_gauge(on: bool) -> None:
    RATE_LIMIT_FALLBACK.labels(service_name()).set(1 if on else 0)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check, with what the client is told about its budget."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # RateLimit-Reset: seconds until the counted requests start to age out
    retry_after: int  # Retry-After of a refusal: seconds until the refused request would fit
    shared: bool  # False: counted by this worker alone (Redis unreachable)

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }

    def refusal(self, message: str) -> TooManyRequests:
        error = TooManyRequests(self.retry_after, message)
        error.headers.update(self.headers())
        return error


# ``limits``' acquire_sliding_window.lua (limits 4/5, async redis storage), unchanged in
# what it writes, but it returns the window it leaves behind as well as the verdict:
# {allowed, previous count, previous pttl, current count, current pttl}. The window
# shift runs first in every case (limits' sliding_window.lua does it on the read that
# followed the acquire), so a cost above the limit reads the same window as before.
_SLIDING_FUNCTION = """
local function sliding(previous_key, current_key, limit, expiry, amount)
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + expiry)
    end

    local previous_count = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = tonumber(redis.call('pttl', previous_key)) or 0
    local current_count = tonumber(redis.call('get', current_key)) or 0
    current_ttl = tonumber(redis.call('pttl', current_key)) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    if current_ttl <= 0 then
        current_ttl = 0
    end
    local weighted_count = math.floor(previous_count * previous_ttl / expiry) + current_count

    if amount > limit or (weighted_count + amount) > limit then
        return {0, previous_count, previous_ttl, current_count, current_ttl}
    end
    if redis.call('exists', current_key) == 1 then
        current_count = redis.call('incrby', current_key, amount)
        current_ttl = tonumber(redis.call('pttl', current_key))
    else
        redis.call('set', current_key, amount, 'PX', expiry * 2)
        current_count = amount
        current_ttl = expiry * 2
    end
    return {1, previous_count, previous_ttl, current_count, current_ttl}
end
"""
# KEYS: previous, current window. ARGV: limit, expiry (s), cost.
_SLIDING_HIT = (
    _SLIDING_FUNCTION
    + """
return sliding(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000, tonumber(ARGV[3]))
"""
)
# A prediction in one round trip. KEYS: the request window (previous, current), the
# rows window (previous, current) and, when given, the token's revocation keys (token
# id, subject). ARGV: request limit, request expiry (s), rows limit, rows expiry (s),
# rows (0: charge the request alone), the token's iat. Returns {-1} for a revoked token
# (nothing charged), else the request window's reply, followed by the rows window's
# when the request was allowed and rows > 0 (a refused request charges no rows; a
# refused batch still spends its request, as when the two were separate calls).
_PREDICTION = (
    _SLIDING_FUNCTION
    + """
if #KEYS == 6 then
    if redis.call('exists', KEYS[5]) == 1 then
        return {-1}
    end
    local revoked_at = redis.call('get', KEYS[6])
    if revoked_at and tonumber(ARGV[6]) <= tonumber(revoked_at) then
        return {-1}
    end
end
local request = sliding(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000, 1)
local rows = tonumber(ARGV[5])
if request[1] == 0 or rows == 0 then
    return request
end
local quota = sliding(KEYS[3], KEYS[4], tonumber(ARGV[3]), tonumber(ARGV[4]) * 1000, rows)
for _, value in ipairs(quota) do
    table.insert(request, value)
end
return request
"""
)
_KEY_PREFIX = "mg:rl"


def _sliding_keys(key: str) -> list[str]:
    """The previous and current window keys ``limits``' Redis storage uses for ``key``
    (``<prefix>:{key}/-1`` and ``<prefix>:{key}``), so its strategies read our counts."""
    current = f"{_KEY_PREFIX}:{{{key}}}"
    return [current + "/-1", current]


class _StoreDown(Exception):
    """Redis is unreachable (or the breaker says so) and the policy refuses."""


class _Counters:
    """One storage with the two strategies we use on it."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.moving: RateLimiter = MovingWindowRateLimiter(storage)
        self.sliding: RateLimiter = SlidingWindowCounterRateLimiter(storage)

    def strategy(self, policy: Policy) -> RateLimiter:
        return self.moving if policy in _MOVING else self.sliding


def _key(value: str) -> str:
    """Client-chosen strings (user names) become fixed-size, separator-free key parts."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SharedRateLimiter:
    """The limiter of one worker: Redis-backed, with a per-worker in-memory fallback."""

    def __init__(
        self,
        settings: RateLimitSettings,
        redis_url: str,
        connect_timeout: float = 0.25,
        socket_timeout: float = 0.5,
        credentials: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        # One retry without delay: a connection that died with a Redis restart is replaced
        # at once; a Redis that is really gone costs two fast failures, then the breaker.
        self._pool = aioredis.ConnectionPool.from_url(
            redis_url,
            **(credentials or {}),
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        # One bound for a whole check, however many round trips or reconnects it takes.
        self._budget = max(connect_timeout, socket_timeout)
        self._shared = _Counters(
            RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=_KEY_PREFIX,
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed through to redis-py
            )
        )
        # EVALSHA, loading the script on NOSCRIPT (a restarted Redis forgets it).
        client = aioredis.Redis(connection_pool=self._pool)
        self._sliding_hit = client.register_script(_SLIDING_HIT)
        self._prediction = client.register_script(_PREDICTION)
        self._local = _Counters(MemoryStorage())
        self.breaker = CircuitBreaker(settings.breaker_seconds)
        self._items: dict[tuple[Policy, str | None], RateLimitItem] = {}

    # -- limits ---------------------------------------------------------------------
    def item(self, policy: Policy, role: str | None = None) -> RateLimitItem:
        cached = self._items.get((policy, role))
        if cached is not None:
            return cached
        s = self.settings
        text: str
        if policy == "predict":
            text = s.predict_tiers.get(role or "", s.predict)
        elif policy == "crypto":
            text = s.crypto_tiers.get(role or "", s.crypto)
        elif policy == "predict_rows":
            text = f"{s.predict_rows_tiers.get(role or '', s.predict_rows_per_day)}/day"
        else:
            text = getattr(s, policy)
        parsed = parse(text)
        # The namespace puts every counter under its service: mg:rl:<service>/<policy>/...
        item = type(parsed)(parsed.amount, parsed.multiples, namespace=_SERVICE[policy])
        self._items[(policy, role)] = item
        return item

    # -- the storage switch ---------------------------------------------------------
    async def _run(
        self,
        policy: Policy,
        fallback: bool,
        op: Callable[[_Counters], Awaitable[Verdict]],
    ) -> Verdict:
        if not self.breaker.open:
            try:
                async with asyncio.timeout(self._budget):
                    verdict = await op(self._shared)
            except Exception as exc:  # any storage failure: apply the outage policy
                self._store_failed(exc)
            else:
                self._store_answered()
                return verdict
        if not fallback:
            raise _StoreDown
        return await op(self._local)

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

    async def hit(
        self, policy: Policy, identity: str, role: str | None = None, cost: int = 1
    ) -> Verdict:
        """Consume ``cost`` from ``identity``'s budget under ``policy`` if it fits."""
        item = self.item(policy, role)

        async def op(counters: _Counters) -> Verdict:
            if counters is self._shared and policy not in _MOVING:
                return await self._hit_sliding(policy, item, identity, cost)
            allowed = await counters.strategy(policy).hit(item, policy, identity, cost=cost)
            return await _measure(counters, policy, item, identity, allowed, cost)

        return await self._run(policy, policy not in _MOVING, op)

    async def _hit_sliding(
        self, policy: Policy, item: RateLimitItem, identity: str, cost: int
    ) -> Verdict:
        """Charge and read the shared sliding window in one round trip."""
        expiry = item.get_expiry()
        keys = _sliding_keys(item.key_for(policy, identity))
        reply = await self._sliding_hit(keys=keys, args=[item.amount, expiry, cost])
        return _sliding_reply(item, cost, [int(v) for v in reply])

    async def test(self, policy: Policy, identity: str, role: str | None = None) -> Verdict:
        """Would one more request fit? Consumes nothing."""
        item = self.item(policy, role)

        async def op(counters: _Counters) -> Verdict:
            return await _measure(counters, policy, item, identity, None, 1)

        return await self._run(policy, policy not in _MOVING, op)

    # -- policies as the routes use them ----------------------------------------------
    async def check_login(self, client_ip: str, username: str) -> Verdict:
        """Before any password check: the client's login budget and the user name's
        failure budget. Raises 429 when either is spent, 503 when Redis is unreachable."""
        try:
            verdict = await self.hit("login", client_ip)
            if not verdict.allowed:
                audit("login_throttled", reason="client", client_ip=client_ip)
                _refused("login")
                raise verdict.refusal("too many sign-in attempts; retry later")
            failures = await self.test("login_failures", _key(username))
        except _StoreDown:
            raise ServiceUnavailable(
                "sign-in is temporarily unavailable", retry_after=self._retry_after()
            ) from None
        if not failures.allowed:
            audit("login_throttled", reason="user", user=username[:64], client_ip=client_ip)
            _refused("login_failures")
            error = TooManyRequests(
                failures.retry_after, "too many failed sign-ins for this user; retry later"
            )
            error.headers.update(verdict.headers())
            raise error
        _tell_client(verdict.headers())
        return verdict

    async def record_login_failure(self, username: str) -> None:
        try:
            await self.hit("login_failures", _key(username))
        except _StoreDown:
            pass  # the next attempt is refused with 503 until Redis is back

    async def check_subject(self, policy: SubjectPolicy, principal: Principal) -> Verdict:
        verdict = await self.hit(policy, principal.subject, principal.role)
        _enforce_subject(policy, verdict)
        return verdict

    async def charge_rows(self, principal: Principal, rows: int) -> Verdict:
        verdict = await self.hit("predict_rows", principal.subject, principal.role, cost=rows)
        _enforce_rows(verdict)
        return verdict

    async def check_prediction(
        self, principal: Principal, rows: int, verifier: TokenVerifier | None
    ) -> None:
        """A prediction's checks in ONE Redis round trip: the token's revocation (when
        ``verifier`` is given), one request of the subject's ``predict`` budget and, when
        ``rows`` > 0, its daily rows. The same answers, counts and outage policies as
        ``check_revocation``, ``check_subject`` and ``charge_rows`` one after the other,
        which is what runs while either breaker is open or after the script failed."""
        try:
            keys = verifier.revocation_keys(principal) if verifier is not None else None
            if self.breaker.open:
                if keys is not None:
                    await verifier.check_revocation(principal)  # type: ignore[union-attr]
                await self._check_prediction_apart(principal, rows)
                return
            request_item = self.item("predict", principal.role)
            rows_item = self.item("predict_rows", principal.role)
            script_keys = [
                *_sliding_keys(request_item.key_for("predict", principal.subject)),
                *_sliding_keys(rows_item.key_for("predict_rows", principal.subject)),
                *(keys or ()),
            ]
            args = [
                request_item.amount,
                request_item.get_expiry(),
                rows_item.amount,
                rows_item.get_expiry(),
                rows,
                principal.issued_at,
            ]
            try:
                async with asyncio.timeout(self._budget):
                    reply = await self._prediction(keys=script_keys, args=args)
            except Exception as exc:  # any storage failure: both outage policies
                self._store_failed(exc)
                if keys is not None:
                    verifier.revocation_failed(exc)  # type: ignore[union-attr]
                await self._check_prediction_apart(principal, rows)
                return
        except Unauthorized as exc:
            count_auth_failure(exc)
            raise
        self._store_answered()
        if keys is not None:
            verifier.revocation_answered()  # type: ignore[union-attr]
        values = [int(v) for v in reply]
        if values[0] == -1:
            revoked = Unauthorized("token has been revoked")
            count_auth_failure(revoked)
            raise revoked
        _enforce_subject("predict", _sliding_reply(request_item, 1, values[:5]))
        if rows:
            _enforce_rows(_sliding_reply(rows_item, rows, values[5:]))

    async def _check_prediction_apart(self, principal: Principal, rows: int) -> None:
        await self.check_subject("predict", principal)
        if rows:
            await self.charge_rows(principal, rows)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.breaker.retry_in))

    # -- health and shutdown ------------------------------------------------------------
    async def probe(self) -> bool:
        """Can this worker count in Redis now? Pings it unless the breaker is open."""
        if self.breaker.open:
            return False
        try:
            async with asyncio.timeout(self._budget):
                ok = await self._shared.storage.check()
        except Exception:
            ok = False
        if not ok:
            if self.breaker.trip():
                _fallback_gauge(True)
        elif self.breaker.close():
            _fallback_gauge(False)
            log.info("rate-limit store reachable again: shared counting resumed")
        return ok

    async def health(self) -> CheckResult:
        if await self.probe():
            return CheckResult("ok", "shared counters in redis")
        return CheckResult(
            "degraded", "redis unreachable: per-worker in-memory limits, sign-in refused"
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
        timer = getattr(self._local.storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()


async def _measure(
    counters: _Counters,
    policy: Policy,
    item: RateLimitItem,
    identity: str,
    allowed: bool | None,
    cost: int,
) -> Verdict:
    """Remaining budget and timings after a hit (or, ``allowed=None``, without one)."""
    shared = isinstance(counters.storage, RedisStorage)
    if not isinstance(counters.strategy(policy), MovingWindowRateLimiter):
        window = await counters.storage.get_sliding_window(  # type: ignore[attr-defined]
            item.key_for(policy, identity), item.get_expiry()
        )
        return _sliding_verdict(item, cost, allowed, window, shared)
    stats = await counters.moving.get_window_stats(item, policy, identity)
    remaining = max(0, stats.remaining)
    # The oldest counted request ages out at reset_time: one slot frees up then.
    reset = retry = stats.reset_time - time.time()
    return _verdict(item, cost, allowed, remaining, reset, retry, shared)


def _sliding_verdict(
    item: RateLimitItem,
    cost: int,
    allowed: bool | None,
    window: tuple[int, float, int, float],
    shared: bool,
) -> Verdict:
    """The verdict from a sliding window's (previous, previous ttl, current, current ttl)."""
    remaining, reset, retry = _sliding_window_times(item.amount, item.get_expiry(), cost, *window)
    return _verdict(item, cost, allowed, remaining, reset, retry, shared)


def _verdict(
    item: RateLimitItem,
    cost: int,
    allowed: bool | None,
    remaining: int,
    reset: float,
    retry: float,
    shared: bool,
) -> Verdict:
    """A verdict in whole seconds, from a window's remaining budget and its times (seconds
    until it is full again, until ``cost`` fits); ``allowed`` when the caller already knows."""
    expiry = item.get_expiry()
    return Verdict(
        allowed=remaining >= cost if allowed is None else allowed,
        limit=item.amount,
        remaining=remaining,
        reset_after=max(1, min(expiry, math.ceil(reset))),
        retry_after=max(1, min(2 * expiry, math.floor(retry) + 1)),  # strictly after
        shared=shared,
    )


def _sliding_window_times(
    limit: int,
    expiry: int,
    cost: int,
    previous: int,
    previous_ttl: float,
    current: int,
    current_ttl: float,
) -> tuple[int, float, float]:
    """(remaining, seconds until the current window ends, seconds until ``cost`` fits)
    for the sliding window counter: the previous window's count weighs in proportion to
    its remaining time, and the current window becomes the previous one when it ends."""
    weighted = math.floor(previous * previous_ttl / expiry) + current
    remaining = max(0, limit - weighted)
    window_end = current_ttl - expiry if current_ttl > expiry else float(expiry)
    if cost > limit:
        return remaining, window_end, 2.0 * expiry  # never fits
    room = limit - cost - current  # what the decaying previous window may still weigh
    if room >= 0:
        if previous == 0 or math.floor(previous * previous_ttl / expiry) <= room:
            return remaining, window_end, 0.0
        # floor(previous * (ttl - t) / expiry) <= room  once  t > ttl - expiry * (room+1) / previous
        return remaining, window_end, previous_ttl - expiry * (room + 1) / previous
    # The current window's count must first become the (decaying) previous one.
    after_shift = expiry - expiry * (limit - cost + 1) / current
    return remaining, window_end, max(0.0, window_end) + max(0.0, after_shift)


def _sliding_reply(item: RateLimitItem, cost: int, reply: list[int]) -> Verdict:
    """The verdict from a sliding-window script's {allowed, previous count, previous
    pttl, current count, current pttl}."""
    allowed, previous, previous_ttl, current, current_ttl = reply
    window = (previous, max(0, previous_ttl) / 1000, current, max(0, current_ttl) / 1000)
    return _sliding_verdict(item, cost, bool(allowed), window, shared=True)


def _enforce_subject(policy: SubjectPolicy, verdict: Verdict) -> None:
    if not verdict.allowed:
        _refused(policy)
        raise verdict.refusal("rate limit exceeded; retry later")
    _tell_client(verdict.headers())


def _enforce_rows(verdict: Verdict) -> None:
    if not verdict.allowed:
        _refused("predict_rows")
        error = TooManyRequests(
            verdict.retry_after,
            f"daily prediction quota exceeded: {verdict.remaining} of {verdict.limit} rows left",
        )
        error.headers.update(_quota_headers(verdict))
        raise error
    _tell_client(_quota_headers(verdict))


def _quota_headers(verdict: Verdict) -> dict[str, str]:
    return {
        "X-Quota-Rows-Limit": str(verdict.limit),
        "X-Quota-Rows-Remaining": str(verdict.remaining),
    }


# -- FastAPI dependencies ---------------------------------------------------------------
def _limiter(request: Request) -> SharedRateLimiter:
    limiter: SharedRateLimiter = request.app.state.ratelimiter
    return limiter


async def login_rate_limit(request: Request) -> AsyncIterator[None]:
    """Dependency of the password grant: the client IP's budget and the user name's
    failure budget are checked before the route runs (so a refused attempt never
    reaches the password check); an ``Unauthorized`` from the route counts as a
    failure for that user name."""
    form = await request.form()
    username = form.get("username")
    username = username if isinstance(username, str) else ""
    limiter = _limiter(request)
    await limiter.check_login(get_remote_address(request), username)
    try:
        yield
    except Unauthorized:
        await limiter.record_login_failure(username)
        raise


@dataclass(frozen=True, slots=True)
class RowsQuota:
    """Handed to a predict route: charge the rows of a validated batch before predicting.
    Raises 429 when the subject's daily rows would be exceeded (nothing is charged then)."""

    limiter: SharedRateLimiter
    principal: Principal

    async def charge(self, rows: int) -> None:
        await self.limiter.charge_rows(self.principal, rows)


def rate_limit(
    policy: SubjectPolicy, scopes: Sequence[str] = ()
) -> Callable[..., Awaitable[RowsQuota]]:
    """A dependency that spends one request of the token subject's ``policy`` budget.

    ``scopes`` must be the scopes the route itself asks of ``authenticate``: FastAPI
    then verifies the token once for both. The result lets a predict route charge rows.
    """

    # A default, not an Annotated[...] string: annotations are resolved from module
    # globals, where this closure's ``scopes`` is not.
    authenticated = Security(authenticate, scopes=list(scopes))

    async def dependency(request: Request, principal: Principal = authenticated) -> RowsQuota:
        limiter = _limiter(request)
        await limiter.check_subject(policy, principal)
        return RowsQuota(limiter, principal)

    dependency.__name__ = f"{policy}_rate_limit"
    return dependency


class PredictionLimits:
    """The per-subject predict limit, daily rows quota and the token's revocation lookup,
    in the shape of the inference service's ``PredictionGate`` seam, in ONE Redis round
    trip per prediction: ``check_request`` (token verified but for revocation, body not
    read) defers to ``check_rows`` (batch validated, model not run) or, when the request
    fails before that, ``check_unfinished``; their 401 or 429 replaces the failure, so
    answers are those of the checks made first."""

    checks_revocation = True

    def __init__(self, app: FastAPI) -> None:
        self.app = app  # the limiter and verifier themselves are created by the lifespan

    async def check_request(self, principal: Principal, endpoint: str) -> None:
        return None

    async def check_rows(self, principal: Principal, rows: int) -> None:
        limiter: SharedRateLimiter = self.app.state.ratelimiter
        await limiter.check_prediction(principal, rows, self.app.state.verifier)

    async def check_unfinished(self, principal: Principal) -> None:
        limiter: SharedRateLimiter = self.app.state.ratelimiter
        await limiter.check_prediction(principal, 0, self.app.state.verifier)


class RateLimitHeadersMiddleware:
    """Adds the ``RateLimit-*`` (and rows quota) headers the checks of this request
    recorded, whatever response class the route returned, and counts refusals by
    route and limit (``modelgate_rate_limited_total``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()
        token = _exchange.set(exchange)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if exchange.headers:
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    for name, value in exchange.headers.items():
                        key = name.lower().encode("latin-1")
                        if key not in present:
                            headers.append((key, value.encode("latin-1")))
                    message["headers"] = headers
                if exchange.refused_by is not None and message["status"] == 429:
                    route = getattr(scope.get("route"), "path", "unmatched")
                    RATE_LIMITED.labels(service_name(), route, exchange.refused_by).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _exchange.reset(token)
