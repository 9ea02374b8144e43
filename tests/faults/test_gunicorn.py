"""gunicorn under the signals an operator (or the kernel) sends: TERM with requests
in flight, HUP under traffic, KILL of one worker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from tests.faults._traffic import (
    Call,
    Gunicorn,
    Traffic,
    all_served,
    expected_workers,
    service_port,
)

if TYPE_CHECKING:
    from tests.conftest import NativeStack

pytestmark = [pytest.mark.faults, pytest.mark.native]

SERVICES = ["inference", "crypto"]

# A route of each service that reads its whole body before answering, so a
# request whose body is still arriving is in flight inside a worker.
BODY_ROUTES = {
    "inference": ("/v1/models/iris/predict", {"instances": [{"sepal_length": 5.1}]}),
    "crypto": ("/crypto/encrypt", {"plaintext": "in flight " * 100}),
}

# What each service answers through nginx, whatever else happens (no token: the
# request still crosses nginx, a worker and the token check).
SERVED = frozenset(range(200, 500))
MIXES = {
    "inference": [
        Call("GET", "/v2/health/live", frozenset({200})),
        Call("GET", "/v2/health/ready", frozenset({200})),
        Call("GET", "/v1/models", frozenset({401})),
        Call("POST", "/v1/models/iris/predict", frozenset({401}), False, {"json": {}}),
    ],
    "crypto": [
        Call("GET", "/crypto/encrypt", frozenset({405})),
        Call("POST", "/crypto/encrypt", frozenset({401}), False, {"json": {"plaintext": "x"}}),
        Call("POST", "/crypto/decrypt", frozenset({401}), False, {"json": {"ciphertext": "x"}}),
    ],
}


def _start_slow_request(port: int, path: str, body: bytes, sent: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


def _has_answer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def _wait_refused(port: int, timeout: float = 15.0) -> None:
    """Until the service takes no new connection: master and workers got the signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"port {port} still accepts connections {timeout} s after SIGTERM")


@pytest.mark.parametrize("service", ["crypto"])
def test_sigterm_lets_in_flight_requests_complete(
    native_stack: NativeStack, gunicorn: Callable[[str], Gunicorn], service: str
) -> None:
    port = service_port(service)
    path, payload = BODY_ROUTES[service]
    body = json.dumps(payload).encode()
    in_flight = [_start_slow_request(port, path, body, sent=8) for _ in range(6)]
    try:
        time.sleep(0.3)
        assert not any(_has_answer(s) for s in in_flight), "answered before the body arrived"
        gunicorn(service).signal(signal.SIGTERM)
        _wait_refused(port)  # shutting down: no new connection, the old ones still open
        statuses = []
        for sock in in_flight:
            sock.sendall(body[8:])
            response = http.client.HTTPResponse(sock)
            response.begin()
            answer = json.loads(response.read())
            statuses.append(response.status)
            assert "detail" in answer
    finally:
        for sock in in_flight:
            sock.close()
        # gunicorn exits 0 after TERM, which supervisord takes as a wanted exit.
        native_stack.wait_state(service, {"EXITED", "STOPPED", "FATAL", "BACKOFF"})
        native_stack.start(service)
        native_stack.wait_ready()
    # Each in-flight request got the service's own complete answer (no token: 401).
    assert statuses == [401] * len(in_flight)


# A stopping worker first drains (modelgate_common._worker): it answers with
# `Connection: close` while nginx's idle upstream connections time out (1 s,
# shorter than the 2 s drain), so no request is written into a closing
# connection and a HUP fails nothing.


@pytest.mark.parametrize("service", SERVICES)
def test_hup_reload_under_traffic_no_failed_request(
    gunicorn: Callable[[str], Gunicorn], traffic: Callable[..., Traffic], service: str
) -> None:
    server = gunicorn(service)
    old = server.workers()
    assert len(old) == expected_workers()
    with traffic(MIXES[service], threads=4) as flow:
        flow.wait_for(40)
        server.signal(signal.SIGHUP)
        # New workers up, every old one gone, then more traffic on the new ones.
        server.wait_workers(lambda now: len(now) == expected_workers() and not now & old)
        flow.wait_for(80)
    assert flow.failures() == [], flow.summary()
    # After the reload, the new workers serve every request.
    with traffic(MIXES[service], threads=2, max_requests=60) as after:
        after.wait_total(60)
    all_served(after)


@pytest.mark.parametrize("service", SERVICES)
def test_sigkill_of_one_worker_is_replaced_and_service_resumes(
    gunicorn: Callable[[str], Gunicorn], traffic: Callable[..., Traffic], service: str
) -> None:
    server = gunicorn(service)
    old = server.workers()
    assert len(old) == expected_workers()
    victim = min(old)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced_in = server.wait_workers(
        lambda now: len(now) == expected_workers() and victim not in now
    )
    # Service resumes: a run of requests through nginx, every one served.
    resumed_in = None
    while resumed_in is None:
        with traffic(MIXES[service], threads=2, max_requests=40, max_seconds=10) as flow:
            flow.wait_total(40, timeout=15)
        if not flow.failures():
            resumed_in = time.monotonic() - killed_at
        assert time.monotonic() - killed_at < 20, flow.summary()
    assert replaced_in < 10, f"master took {replaced_in:.1f} s to replace the worker"
    assert resumed_in < 15, f"service resumed {resumed_in:.1f} s after the kill"
