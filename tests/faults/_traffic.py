"""Tools of the fault suite: steady loopback traffic through nginx that records
every outcome, and a view of a gunicorn master and its workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from tests.conftest import make_client

if TYPE_CHECKING:
    from tests.conftest import NativeStack

SERVICE_PORTS = {"auth": "8101", "inference": "8102", "crypto": "8103"}


def service_port(service: str) -> int:
    return int(os.environ.get(f"MG_{service.upper()}_PORT", SERVICE_PORTS[service]))


@dataclass(frozen=True)
class Call:
    """One request of the traffic mix and the statuses that count as served."""

    method: str
    path: str
    ok: frozenset[int]
    idempotent: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    call: Call
    status: int | None  # None: no HTTP answer at all
    error: str = ""
    retried: bool = False

    @property
    def served(self) -> bool:
        return self.status is not None and self.status in self.call.ok


class Traffic:
    """A few threads sending a fixed mix of requests until stopped (bounded in
    count and time). Idempotent requests are retried once on a transport error,
    as HTTP clients do on a keep-alive race; other requests never are, and use a
    fresh connection each so no such race can hit them."""

    def __init__(
        self,
        base_url: str,
        ca_file: str,
        calls: list[Call],
        threads: int = 4,
        max_seconds: float = 30.0,
        max_requests: int = 5000,
    ) -> None:
        self.base_url, self.ca_file, self.calls = base_url, ca_file, calls
        self.threads = threads
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _send(self, keepalive: httpx.Client, call: Call) -> Outcome:
        attempts = 2 if call.idempotent else 1
        for attempt in range(attempts):
            try:
                if call.idempotent:
                    response = keepalive.request(call.method, call.path, **call.kwargs)
                else:
                    with make_client(self.base_url, self.ca_file) as fresh:
                        response = fresh.request(call.method, call.path, **call.kwargs)
                return Outcome(call, response.status_code, retried=attempt > 0)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
        return Outcome(call, None, error, retried=attempts > 1)

    def _run(self, offset: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with make_client(self.base_url, self.ca_file) as keepalive:
            i = offset
            while not self._stop.is_set() and time.monotonic() < deadline:
                outcome = self._send(keepalive, self.calls[i % len(self.calls)])
                i += 1
                with self._lock:
                    self.outcomes.append(outcome)
                    if len(self.outcomes) >= self.max_requests:
                        return

    def __enter__(self) -> Traffic:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.max_seconds + 15)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, more: int, timeout: float = 10.0) -> None:
        """Until `more` further requests were answered (so traffic really flows)."""
        self.wait_total(self.count() + more, timeout)

    def wait_total(self, total: int, timeout: float = 10.0) -> None:
        """Until `total` requests were answered since the traffic started (with
        max_requests=total: until it is done; `wait_for` could aim past the cap there,
        counting from a request already sent)."""
        deadline = time.monotonic() + timeout
        while self.count() < total:
            assert time.monotonic() < deadline, f"traffic stalled at {self.count()} requests"
            time.sleep(0.02)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.served]

    def summary(self) -> str:
        with self._lock:
            statuses = Counter(o.status for o in self.outcomes)
            retried = sum(o.retried for o in self.outcomes)
        return f"{len(self.outcomes)} requests, statuses {dict(statuses)}, {retried} retried"


class Gunicorn:
    """A service's gunicorn master (supervisord's child) and its workers."""

    def __init__(self, stack: NativeStack, service: str) -> None:
        self.stack, self.service = stack, service

    @property
    def master(self) -> psutil.Process:
        return psutil.Process(self.stack.pid(self.service))

    def workers(self) -> set[int]:
        return {child.pid for child in self.master.children() if child.is_running()}

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.master.pid, signum)

    def wait_workers(self, predicate: Callable[[set[int]], bool], timeout: float = 20.0) -> float:
        """Seconds until the worker set satisfies predicate."""
        start = time.monotonic()
        while not predicate(self.workers()):
            assert time.monotonic() - start < timeout, f"workers now {self.workers()}"
            time.sleep(0.05)
        return time.monotonic() - start


def expected_workers() -> int:
    return int(os.environ.get("MG_WORKERS", "2"))


def all_served(traffic: Traffic) -> None:
    print(traffic.summary())
    failures = traffic.failures()
    assert not failures, f"{len(failures)} failed of {traffic.summary()}: " + "; ".join(
        f"{o.call.method} {o.call.path} -> {o.status} {o.error}" for o in failures[:5]
    )
