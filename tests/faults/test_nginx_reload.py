"""`nginx -s reload` under traffic: new workers take over, old ones finish what
they hold, no request fails.

Idempotent requests ride keep-alive connections and are retried once on a
transport error, as HTTP clients do when an old worker closes an idle
connection just as a request is sent on it (the keep-alive race RFC 9112
§9.3.1 describes). POST requests are never retried: each uses a fresh
connection, which the listening socket hands to a live worker, so no race can
reach them and every one must succeed on its only attempt.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.faults._traffic import Call, Traffic, all_served

if TYPE_CHECKING:
    from tests.conftest import NativeStack

pytestmark = [pytest.mark.faults, pytest.mark.native]

MIX = [
    Call("GET", "/healthz", frozenset({200})),
    Call("GET", "/v2/health/live", frozenset({200})),
    Call("GET", "/v1/models", frozenset({401})),
    Call("POST", "/crypto/encrypt", frozenset({401}), False, {"json": {"plaintext": "x"}}),
    Call("GET", "/nowhere", frozenset({404})),
]


def _nginx_workers(master: psutil.Process) -> set[int]:
    return {child.pid for child in master.children()}


def test_nginx_reload_under_traffic_no_failed_request(
    native_stack: NativeStack, var_dir: Path, traffic: Callable[..., Traffic]
) -> None:
    master = psutil.Process(native_stack.pid("nginx"))
    old = _nginx_workers(master)
    assert old
    conf_dir = var_dir / "nginx"
    with traffic(MIX, threads=4) as flow:
        flow.wait_for(50)
        reload = subprocess.run(
            ["nginx", "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf"), "-s", "reload"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert reload.returncode == 0, reload.stderr
        # Every old worker has handed over and exited; traffic goes on on new ones.
        deadline = time.monotonic() + 30
        while _nginx_workers(master) & old:
            assert time.monotonic() < deadline, "old nginx workers did not exit"
            time.sleep(0.05)
        flow.wait_for(100)
    assert native_stack.pid("nginx") == master.pid  # reloaded, not restarted
    all_served(flow)
