"""Serving logic, no HTTP: the registry of loaded models, prediction and the
per-worker switch of serving versions."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from modelgate_common import (
    PREDICTIONS,
    CheckResult,
    Conflict,
    NotFound,
    Principal,
    ServiceUnavailable,
    audit,
    audit_request,
)
from starlette.concurrency import run_in_threadpool

from .runtime import LoadedModel, load_model
from .store import (
    ModelRefused,
    load_public_key,
    model_names,
    valid_name,
    valid_version,
    versions_of,
)

log = logging.getLogger("modelgate.inference")


# --- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs to pick a model; replaced whole, never mutated, so a
    request sees either the old or the new serving version, never a mix."""

    models: Mapping[str, Mapping[str, LoadedModel]] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=dict)


class ModelRegistry:
    def __init__(self, store: Path, public_key_path: Path, *, bounds_margin: float, max_batch: int):
        self.store = store
        self.public_key_path = public_key_path
        self.bounds_margin = bounds_margin
        self.max_batch = max_batch
        self.snapshot = Snapshot()
        self.refused: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # reading (hot path: one attribute read, two dict lookups)

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        snap = self.snapshot
        versions = snap.models.get(name)
        if versions is None:
            raise NotFound("model not found")
        model = versions.get(version or snap.defaults[name])
        if model is None:
            raise NotFound("model version not found or not loaded")
        return model

    def default_version(self, name: str) -> str | None:
        return self.snapshot.defaults.get(name)

    def known(self, name: str) -> bool:
        """Served, or present in the store but refused."""
        return name in self.snapshot.models or any(n == name for n, _ in self.refused)

    # loading (startup and admin reloads; runs in a thread)

    def _public_key(self) -> Ed25519PublicKey:
        try:
            return load_public_key(self.public_key_path)
        except (OSError, ValueError) as exc:
            raise ModelRefused(
                f"model-signing public key unusable ({type(exc).__name__})"
            ) from None

    def _load(self, name: str, version: str, key: Ed25519PublicKey) -> LoadedModel:
        try:
            model = load_model(
                self.store / name / version,
                key,
                bounds_margin=self.bounds_margin,
                max_batch=self.max_batch,
            )
        except ModelRefused as exc:
            self._refuse(name, version, exc.reason)
            raise
        except Exception as exc:  # anything else while loading is a refusal too, never a crash
            reason = f"load failed ({type(exc).__name__})"
            self._refuse(name, version, reason)
            raise ModelRefused(reason) from exc
        self.refused.pop((name, version), None)
        log.info(
            "model loaded",
            extra={"model": name, "version": version, "runtime": model.runtime.kind},
        )
        audit("model_verified", model=name, version=version, runtime=model.runtime.kind)
        return model

    def _refuse(self, name: str, version: str, reason: str) -> None:
        self.refused[(name, version)] = reason
        log.error("model refused", extra={"model": name, "version": version, "reason": reason})
        audit("model_refused", model=name, version=version, reason=reason)

    def scan(self) -> None:
        """Load every version in the store; the latest that loads is the default."""
        models: dict[str, dict[str, LoadedModel]] = {}
        try:
            key = self._public_key()
        except ModelRefused as exc:
            for name in model_names(self.store):
                for version in versions_of(self.store, name):
                    self._refuse(name, version, exc.reason)
            return
        for name in model_names(self.store):
            for version in versions_of(self.store, name):
                try:
                    models.setdefault(name, {})[version] = self._load(name, version, key)
                except ModelRefused:
                    continue
        defaults = {name: max(versions, key=int) for name, versions in models.items()}
        with self._lock:
            self.snapshot = Snapshot(
                MappingProxyType({n: MappingProxyType(v) for n, v in models.items()}),
                MappingProxyType(defaults),
            )

    def latest_in_store(self, name: str) -> str | None:
        versions = versions_of(self.store, name)
        return versions[-1] if versions else None

    def load_version(self, name: str, version: str) -> LoadedModel:
        """Make a version available (verifying it if it is not loaded yet)."""
        if not (valid_name(name) and valid_version(version)):
            raise NotFound("model version not found")
        loaded = self.snapshot.models.get(name, {}).get(version)
        if loaded is not None:
            return loaded
        if not (self.store / name / version).is_dir():
            raise NotFound("model version not found in the store")
        model = self._load(name, version, self._public_key())
        with self._lock:
            snap = self.snapshot
            versions = dict(snap.models.get(name, {}))
            versions[version] = model
            models = dict(snap.models)
            models[name] = MappingProxyType(versions)
            defaults = dict(snap.defaults)
            defaults.setdefault(name, version)
            self.snapshot = Snapshot(MappingProxyType(models), MappingProxyType(defaults))
        return model

    def set_default(self, name: str, version: str) -> None:
        with self._lock:
            snap = self.snapshot
            if version not in snap.models.get(name, {}):
                raise NotFound("model version not loaded")
            if snap.defaults.get(name) == version:
                return
            defaults = dict(snap.defaults)
            defaults[name] = version
            self.snapshot = Snapshot(snap.models, MappingProxyType(defaults))
        log.info("serving version switched", extra={"model": name, "version": version})

    # readiness

    async def health(self) -> CheckResult:
        snap = self.snapshot
        serving = ", ".join(
            f"{name}:{version} ({snap.models[name][version].runtime.kind})"
            for name, version in sorted(snap.defaults.items())
        )
        # A refused version whose folder was removed since is no longer news.
        refused = "; ".join(
            f"{n}:{v} refused: {why}"
            for (n, v), why in sorted(self.refused.items())
            if (self.store / n / v).exists()
        )
        if not snap.defaults:
            return CheckResult("fail", refused or "no models in the store")
        if refused:
            return CheckResult("degraded", f"serving {serving}; {refused}")
        return CheckResult("ok", f"serving {serving}")


# --- prediction ------------------------------------------------------------------------------


async def predict(
    model: LoadedModel, X: np.ndarray, probabilities: bool, offload_rows: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Small batches run inline (microseconds); big ones in a thread, where ONNX
    Runtime releases the GIL and the event loop keeps serving."""
    if len(X) >= offload_rows:
        return await run_in_threadpool(model.runtime.predict, X, probabilities)
    return model.runtime.predict(X, probabilities)


def audit_prediction(
    principal: Principal,
    model: LoadedModel,
    rows: int,
    started: float,
    endpoint: str,
    probabilities: bool,
) -> None:
    PREDICTIONS.labels(model.name, model.version).inc(rows)
    # The request's one log line is this audit event (with the access fields).
    audit_request(
        "prediction",
        user=principal.subject,
        model=model.name,
        version=model.version,
        rows=rows,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        endpoint=endpoint,
        probabilities=probabilities,
    )


# --- switching versions in every worker ------------------------------------------------------


class VersionSync:
    """Keeps every worker of every process on the same serving version.

    A model an admin never loaded serves the newest version in the store at
    start. An admin's choice is kept in a Redis hash (and outlives restarts
    while Redis keeps its data); a load request
    verifies the version in the worker that received it, writes the hash, and
    publishes a message; every worker (that one included) applies the hash and
    acknowledges on a list named by the request, which the requester counts
    against the number of subscribers PUBLISH reached. Workers also re-read
    the hash every ``poll_seconds``, which heals a missed message and brings a
    restarted worker in line.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        redis: aioredis.Redis,
        *,
        namespace: str = "mg:inference",
        poll_seconds: float = 2.0,
        ack_seconds: float = 10.0,
    ) -> None:
        self.registry = registry
        self.redis = redis
        self.pins_key = f"{namespace}:serving"
        self.channel = f"{namespace}:reload"
        self.ack_prefix = f"{namespace}:ack:"
        self.poll_seconds = poll_seconds
        self.ack_seconds = ack_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.in_sync = False
        self._task: asyncio.Task[None] | None = None
        self._failed: dict[str, str] = {}
        self._apply_lock = asyncio.Lock()
        self._stopping = False

    async def start(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # Redis down: serve the latest versions, retry in the loop
            log.warning("version sync unavailable at start", extra={"reason": type(exc).__name__})
        self._task = asyncio.create_task(self._listen(), name="version-sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        # A cancel that lands while redis-py's read timeout fires is swallowed on
        # Python 3.11 (asyncio.timeout), so cancel until the task is really done.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "version sync ended with an error", extra={"reason": repr(task.exception())}
            )

    async def _listen(self) -> None:
        while not self._stopping:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self.sync()  # catch up on anything missed while away
                while not self._stopping:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.poll_seconds
                    )
                    ack = None
                    if message is not None and message.get("type") == "message":
                        ack = message["data"].decode("ascii", "replace")[:64]
                    await self.sync(ack=ack)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.in_sync:
                    log.warning("version sync lost", extra={"reason": type(exc).__name__})
                self.in_sync = False
                await asyncio.sleep(self.poll_seconds)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # closing a broken connection may fail too
                    log.debug("pubsub close failed")

    async def sync(self, *, ack: str | None = None) -> None:
        """Apply the serving versions in Redis to this worker."""
        async with self._apply_lock:
            pins = await self.redis.hgetall(self.pins_key)
            failures = []
            for raw_name, raw_version in pins.items():
                name, version = _text(raw_name), _text(raw_version)
                if self.registry.default_version(name) == version:
                    self._failed.pop(name, None)
                    continue
                try:
                    await run_in_threadpool(self.registry.load_version, name, version)
                    self.registry.set_default(name, version)
                    self._failed.pop(name, None)
                except (ModelRefused, NotFound) as exc:
                    reason = getattr(exc, "reason", None) or getattr(exc, "message", "")
                    # A pin to a version removed from the store names nothing to serve;
                    # it must not fail the switches of other models.
                    if (self.registry.store / name / version).is_dir():
                        failures.append(f"{name}:{version}: {reason}")
                    if self._failed.get(name) != version:
                        log.error(
                            "cannot switch to the serving version",
                            extra={"model": name, "version": version, "reason": reason},
                        )
                    self._failed[name] = version
            self.in_sync = True
            if ack:
                key = self.ack_prefix + ack
                status = "ok" if not failures else "failed: " + "; ".join(failures)
                await self.redis.rpush(key, f"{self.worker_id} {status}")
                await self.redis.expire(key, 300)

    async def request_load(self, name: str, version: str | None) -> dict[str, Any]:
        """Verify ``version`` (default: the newest in the store) here, then switch
        every worker to it and wait for their acknowledgements."""
        if version is None:
            version = self.registry.latest_in_store(name)
            if version is None:
                raise NotFound("model not found in the store")
        try:
            await run_in_threadpool(self.registry.load_version, name, version)
        except ModelRefused as exc:
            raise Conflict(f"version {version} refused: {exc.reason}") from None
        request_id = uuid.uuid4().hex
        try:
            await self.redis.hset(self.pins_key, name, version)
            # This worker switches now; every subscribed worker (this one included,
            # when subscribed) acknowledges; one that is not subscribed right now
            # catches up from the hash within poll_seconds of reconnecting.
            self.registry.set_default(name, version)
            receivers = int(await self.redis.publish(self.channel, request_id))
            acks = await self._wait_for_acks(self.ack_prefix + request_id, receivers)
        except (OSError, aioredis.RedisError):
            raise ServiceUnavailable("cannot reach the other workers now; try again") from None
        failed = [a for a in acks if not a.endswith(" ok")]
        result = {
            "model": name,
            "version": version,
            "workers": receivers,
            "switched": len(acks) - len(failed),
            "failed": failed,
        }
        if len(acks) < receivers or failed:
            log.error("not every worker switched", extra=result)
            raise ServiceUnavailable(
                f"{len(acks) - len(failed)} of {receivers} workers switched to version "
                f"{version}; the rest retry every {self.poll_seconds:g}s"
            )
        audit("model_loaded", model=name, version=version, workers=receivers)
        return result

    async def _wait_for_acks(self, key: str, receivers: int) -> list[str]:
        deadline = time.monotonic() + self.ack_seconds
        while True:
            acks = [_text(a) for a in await self.redis.lrange(key, 0, -1)]
            if len(acks) >= receivers or time.monotonic() > deadline:
                return acks
            await asyncio.sleep(0.02)


def _text(value: bytes | str) -> str:
    """Redis answers bytes (the client is not set to decode)."""
    return value.decode() if isinstance(value, bytes) else value
