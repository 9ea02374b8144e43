"""Revocations: written to the database in the same transaction as the change that
caused them, then pushed to Redis, where every service's verifier looks.

The database copy is what makes a revocation outlive a Redis restart: each
worker pushes revocations it has not pushed yet every few seconds (so those
made by the CLI or during a Redis outage arrive too), and pushes all live ones
again whenever Redis has lost its marker key (a restart without persistence) or
any live revocation key (deleted by hand, or by whoever reached Redis): every
sync counts the live keys present in Redis with one EXISTS.

"Not pushed yet" is a time window, not an id cursor: PostgreSQL hands out ids when
rows are inserted, not when they commit, so a revocation with a lower id can become
visible after one with a higher id was already read. Each periodic push re-reads
every revocation written since ``SYNC_OVERLAP`` seconds before the previous read
began; a transaction that commits within that overlap (auth transactions take
milliseconds) is never stepped over. Pushing a revocation twice is harmless.
Writers on other hosts must keep their clocks within the overlap (NTP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import redis
import redis.asyncio as aioredis
from modelgate_common import (
    REVOKED_INDEX,
    REVOKED_SUBJECT_PREFIX,
    revoked_jti_key,
    revoked_subject_key,
)
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .db import Revocation

log = logging.getLogger("modelgate.auth.revocation")

SYNC_MARKER = "mg:auth:revocations-synced"
SYNC_OVERLAP = 60  # seconds re-read by every periodic push
# Sets each key (a subject cut-off only ever forward) and lists it in the index.
_REVOKE = (Path(__file__).parent / "revoke.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class PendingRevocation:
    key: str
    value: str
    expires_at: int


def revoke_jti(session: Session, jti: str, expires_at: int) -> PendingRevocation:
    """Revoke one access token until it would have expired anyway."""
    return _add(session, PendingRevocation(revoked_jti_key(jti), "1", expires_at))


def revoke_subject(
    session: Session, subject: str, cutoff: int, expires_at: int
) -> PendingRevocation:
    """Revoke every token of ``subject`` issued at or before ``cutoff``."""
    return _add(session, PendingRevocation(revoked_subject_key(subject), str(cutoff), expires_at))


def _add(session: Session, item: PendingRevocation) -> PendingRevocation:
    session.add(
        Revocation(
            key=item.key,
            value=item.value,
            expires_at=item.expires_at,
            created_at=int(time.time()),
        )
    )
    return item


def live_subject_cutoff(session: Session, subject: str, now: int) -> int:
    """The latest live subject cutoff (0 when none): a re-created user name must not
    inherit, nor be caught by, the revocation of a deleted namesake."""
    values = session.scalars(
        select(Revocation.value).where(
            Revocation.key == revoked_subject_key(subject), Revocation.expires_at > now
        )
    ).all()
    return max((int(v) for v in values), default=0)


class RevocationPublisher:
    def __init__(self, redis_client: aioredis.Redis, sessions: sessionmaker[Session]) -> None:
        self.redis = redis_client
        self.sessions = sessions
        # Revocations written at or after this time may not be in Redis yet.
        self._pushed_since = 0

    async def push(self, items: Iterable[PendingRevocation]) -> bool:
        """Push now (best effort: the periodic sync retries what fails)."""
        items = list(items)
        if not items:
            return True
        try:
            await _push_async(self.redis, items)
        except (redis.RedisError, OSError) as exc:
            log.warning("revocation not pushed yet", extra={"reason": type(exc).__name__})
            return False
        return True

    def _live_rows(self) -> list[tuple[PendingRevocation, int]]:
        """Every live revocation with the time it was written, in id order."""
        now = int(time.time())
        with self.sessions() as session:
            rows = session.execute(
                select(
                    Revocation.key, Revocation.value, Revocation.expires_at, Revocation.created_at
                )
                .where(Revocation.expires_at > now)
                .order_by(Revocation.id)
            ).all()
            return [(PendingRevocation(r[0], r[1], r[2]), r[3]) for r in rows]

    def prune(self) -> int:
        """Delete revocations whose tokens have all expired."""
        with self.sessions.begin() as session:
            result = session.execute(
                delete(Revocation).where(Revocation.expires_at <= int(time.time()))
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def sync(self) -> int:
        """Push what Redis may lack; return how many revocations were pushed."""
        try:
            full = not await self.redis.exists(SYNC_MARKER)
        except (redis.RedisError, OSError):
            return 0
        started = int(time.time())
        # anyio, not asyncio.to_thread: a cancelled sync waits for its thread, so the
        # connection is back in the pool before the engine is disposed at shutdown.
        live = await anyio.to_thread.run_sync(self._live_rows)
        try:
            if not full:
                keys = list(dict.fromkeys(item.key for item, _ in live))
                present = await self.redis.exists(*keys) if keys else 0
                if present < len(keys):
                    full = True
                    log.warning(
                        "revocations missing from redis: pushing every live one",
                        extra={"missing": len(keys) - present},
                    )
            since = 0 if full else self._pushed_since
            rows = [item for item, created_at in live if created_at >= since]
            await _push_async(self.redis, rows)
            if full:
                await self.redis.set(SYNC_MARKER, str(int(time.time())))
        except (redis.RedisError, OSError) as exc:
            log.warning("revocation sync failed", extra={"reason": type(exc).__name__})
            return 0
        self._pushed_since = max(self._pushed_since, started - SYNC_OVERLAP)
        if full:
            log.info("revocations pushed to redis", extra={"count": len(rows)})
        return len(rows)


def _script_call(items: Iterable[PendingRevocation]) -> tuple[list[str], list[str | int]] | None:
    """KEYS and ARGV of ``revoke.lua`` for the live ``items``; None when none is live."""
    now = int(time.time())
    live = [item for item in items if item.expires_at > now]
    if not live:
        return None
    args: list[str | int] = [REVOKED_SUBJECT_PREFIX, REVOKED_INDEX]
    for item in live:
        args += [item.value, item.expires_at]
    return [item.key for item in live], args


async def _push_async(client: aioredis.Redis, items: list[PendingRevocation]) -> None:
    call = _script_call(items)
    if call is not None:
        await client.register_script(_REVOKE)(keys=call[0], args=call[1])


def push_sync(client: redis.Redis, items: Iterable[PendingRevocation]) -> bool:
    """The CLI's immediate push (the running service's sync would also deliver it)."""
    call = _script_call(items)
    if call is None:
        return True
    try:
        client.register_script(_REVOKE)(keys=call[0], args=call[1])
    except (redis.RedisError, OSError):
        return False
    return True
