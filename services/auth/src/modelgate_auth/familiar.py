"""Familiar addresses: where each user signed in successfully before, so that strangers
who spend a user name's failure budget cannot lock the real user out.

The per-name failure budget (``MG_RATELIMIT_LOGIN_FAILURES``, 100 an hour) stops guessing
spread over many addresses, but anyone can spend it, the admin's included. When it is
spent, an attempt still reaches the password check if it comes from an address the user
signed in from within ``familiar_address_days`` and that address has failed fewer than
``familiar_address_failures`` password checks for this user in the last hour. A guesser
from anywhere else meets the cap as before; a guesser who shares a familiar address
(the same NAT) gets a small budget of its own there, and every other limit still holds
(the per-address sign-in rate, nginx's ``limit_req``).

State, in Redis, keyed by the user's immutable id (a re-created user name starts with
no familiar address):

- ``mg:auth:familiar:<uid>``: a sorted set of address digests scored by the time of the
  last successful sign-in from each; the newest ``familiar_addresses_kept`` are kept and
  the key expires ``familiar_address_days`` after the last success.
- ``mg:auth:familiar-fail:<uid>:<address digest>``: failed password checks from a familiar
  address, in a window of one hour from the first; a success there clears it.

Addresses are stored as keyed digests (the audit key), not as they are. When Redis
cannot answer, nothing is familiar: the cap holds, as it does for everyone (sign-in is
refused anyway while the limits cannot be counted).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import anyio
import redis.asyncio as aioredis
from modelgate_common import audit

from .service import AuthService

log = logging.getLogger("modelgate.auth")

FAILURE_WINDOW = 3600  # seconds

# The start of _ALLOWS and _FAILED: 0 unless the address (ARGV[1]) is in the familiar
# set (KEYS[1]) with a success no older than ARGV[2].
_UNLESS_FAMILIAR = """
local seen = redis.call('zscore', KEYS[1], ARGV[1])
if not seen or tonumber(seen) < tonumber(ARGV[2]) then
    return 0
end
"""
# KEYS: familiar set, failure counter. ARGV: address digest, oldest accepted score, limit.
# 1 when the address is familiar and under its failure limit.
_ALLOWS = (
    _UNLESS_FAMILIAR
    + """local failures = tonumber(redis.call('get', KEYS[2]) or '0')
if failures >= tonumber(ARGV[3]) then
    return 0
end
return 1
"""
)
# KEYS: familiar set, failure counter. ARGV: address digest, oldest accepted score, window.
# Counts a failure only from a familiar address (nothing is written for other addresses).
_FAILED = (
    _UNLESS_FAMILIAR
    + """local count = redis.call('incr', KEYS[2])
if count == 1 then
    redis.call('expire', KEYS[2], tonumber(ARGV[3]))
end
return count
"""
)
# KEYS: familiar set, failure counter. ARGV: address digest, now, kept, life (s).
_REMEMBER = """
redis.call('zadd', KEYS[1], tonumber(ARGV[2]), ARGV[1])
redis.call('zremrangebyrank', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('expire', KEYS[1], tonumber(ARGV[4]))
redis.call('del', KEYS[2])
return 1
"""


class FamiliarAddresses:
    """The auth service's ``SignInExemption`` (see ``modelgate_common``)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        service: AuthService,
        *,
        days: int,
        kept: int,
        failures: int,
    ) -> None:
        self.service = service
        self.life = days * 86_400
        self.kept = kept
        self.failures = failures
        self._allows = redis.register_script(_ALLOWS)
        self._failed = redis.register_script(_FAILED)
        self._remember = redis.register_script(_REMEMBER)

    def _address(self, client_ip: str) -> str:
        data = client_ip.encode("utf-8", "surrogatepass")
        return hmac.new(self.service.audit_key(), data, hashlib.sha256).hexdigest()[:32]

    def _keys(self, uid: str, address: str) -> list[str]:
        return [f"mg:auth:familiar:{uid}", f"mg:auth:familiar-fail:{uid}:{address}"]

    async def _uid(self, username: str) -> str | None:
        return await anyio.to_thread.run_sync(self.service.user_id_of, username)

    # -- SignInExemption -------------------------------------------------------------
    async def allows(self, username: str, client_ip: str) -> bool:
        uid = await self._uid(username)
        if uid is None:
            return False
        address = self._address(client_ip)
        try:
            allowed = await self._allows(
                keys=self._keys(uid, address),
                args=[address, int(time.time()) - self.life, self.failures],
            )
        except Exception as exc:  # Redis cannot answer: nothing is familiar
            log.warning("familiar addresses unreadable", extra={"reason": type(exc).__name__})
            return False
        if not int(allowed):
            return False
        audit("login_familiar_address", user=username, client_ip=client_ip)
        return True

    async def failed(self, username: str, client_ip: str) -> None:
        uid = await self._uid(username)
        if uid is None:
            return
        address = self._address(client_ip)
        try:
            await self._failed(
                keys=self._keys(uid, address),
                args=[address, int(time.time()) - self.life, FAILURE_WINDOW],
            )
        except Exception as exc:  # the per-name budget still counted this failure
            log.warning("familiar addresses unwritable", extra={"reason": type(exc).__name__})

    async def audit_name(self, username: str) -> str:
        known = await self._uid(username) is not None
        return self.service.audit_name(username, known)

    # -- after a successful sign-in ----------------------------------------------------
    async def remember(self, uid: str, client_ip: str) -> None:
        address = self._address(client_ip)
        try:
            await self._remember(
                keys=self._keys(uid, address),
                # Microseconds: sign-ins within one second still keep their order.
                args=[address, f"{time.time():.6f}", self.kept, self.life],
            )
        except Exception as exc:  # the sign-in stands; the address is just not remembered
            log.warning("familiar addresses unwritable", extra={"reason": type(exc).__name__})
