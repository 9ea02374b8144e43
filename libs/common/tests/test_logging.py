"""The service log written by the service itself: batched by a thread, flushed on
stop, rotated by size or by whoever renames the file, one line per request."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from modelgate_common import LogFileHandler, request_id_var
from modelgate_common._logging import JsonFormatter

ROOT = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def logger(tmp_path: Path) -> Iterator[tuple[logging.Logger, LogFileHandler]]:
    handler = LogFileHandler(tmp_path / "log" / "svc.jsonl", flush_seconds=60)
    handler.setFormatter(JsonFormatter("svc"))
    log = logging.getLogger("modelgate.test.file")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield log, handler
    finally:
        log.removeHandler(handler)
        handler.close()


def test_lines_wait_in_memory_until_a_flush_and_keep_their_request_id(
    logger: tuple[logging.Logger, LogFileHandler],
) -> None:
    log, handler = logger
    token = request_id_var.set("req-0123456789")
    try:
        log.info("first", extra={"n": 1})
    finally:
        request_id_var.reset(token)
    log.info("second", extra={"n": 2})  # outside any request
    assert not handler.path.exists()  # a batch waits up to flush_seconds (60 s here)
    handler.flush()
    got = lines(handler.path)
    assert [(e["msg"], e["n"], e["request_id"]) for e in got] == [
        ("first", 1, "req-0123456789"),
        ("second", 2, "-"),
    ]
    assert got[0]["service"] == "svc" and got[0]["pid"] == os.getpid()


def test_close_writes_what_is_queued(logger: tuple[logging.Logger, LogFileHandler]) -> None:
    log, handler = logger
    for n in range(500):
        log.info("line", extra={"n": n})
    handler.close()
    assert [e["n"] for e in lines(handler.path)] == list(range(500))


def test_a_renamed_file_is_followed_by_a_new_one_at_the_path(
    logger: tuple[logging.Logger, LogFileHandler],
) -> None:
    log, handler = logger
    log.info("before")
    handler.flush()
    moved = handler.path.with_name("svc.jsonl.old")
    handler.path.rename(moved)  # what logrotate does
    log.info("after")
    handler.flush()
    assert [e["msg"] for e in lines(moved)] == ["before"]
    assert [e["msg"] for e in lines(handler.path)] == ["after"]


def test_past_max_bytes_the_file_is_renamed_and_old_copies_shift(tmp_path: Path) -> None:
    path = tmp_path / "svc.jsonl"
    handler = LogFileHandler(path, flush_seconds=60, max_bytes=1000)
    handler.setFormatter(JsonFormatter("svc"))
    log = logging.getLogger("modelgate.test.rotate")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for batch in range(13):
            log.info("x" * 1000, extra={"batch": batch})
            handler.flush()  # every batch passes the cap: one rotation each
    finally:
        log.removeHandler(handler)
        handler.close()
    assert not path.exists() or path.stat().st_size == 0
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted(f"svc.jsonl.{n}" for n in range(1, 11))
    assert lines(tmp_path / "svc.jsonl.1")[0]["batch"] == 12  # the newest
    assert lines(tmp_path / "svc.jsonl.10")[0]["batch"] == 3  # the oldest kept


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_line_logged_just_before_sigterm_is_in_the_file(tmp_path: Path) -> None:
    """The real gunicorn, the stack's gunicorn.conf.py, a preloaded app and a worker,
    lines that would wait 60 s in memory: a graceful stop writes them."""
    port = _free_port()
    env = {
        **os.environ,
        "MG_SERVICE": "logtest",
        "MG_LOGTEST_PORT": str(port),
        "MG_WORKERS": "1",
        "MG_DRAIN_SECONDS": "0",
        "MG_VAR_DIR": str(tmp_path / "var"),
        "MG_SECRETS_DIR": str(tmp_path),
        "MG_LOG_TO": "file",
        "MG_LOG_FLUSH_SECONDS": "60",
        "PYTHONPATH": str(TESTS),
    }
    env.pop("MG_SOCKET_DIR", None)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    out = (tmp_path / "stderr.log").open("wb")
    server = subprocess.Popen(
        [gunicorn, "-c", ROOT / "deploy" / "gunicorn.conf.py", "log_app:create_app()"],
        env=env,
        cwd=tmp_path,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/note", headers={"X-Request-ID": "note-0123456789"}
                )
                break
            except httpx.TransportError:
                assert server.poll() is None, (tmp_path / "stderr.log").read_text()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        assert response.status_code == 200
        log = tmp_path / "var" / "log" / "logtest.jsonl"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        out.close()
    mine = [e for e in lines(log) if e["request_id"] == "note-0123456789"]
    assert [(e["logger"], e["msg"]) for e in mine] == [
        ("logtest", "noted"),
        ("modelgate.access", "request"),
    ]
    assert mine[1]["status"] == 200 and mine[1]["path"] == "/note"
    master = [e["msg"] for e in lines(log) if e["pid"] == server.pid]
    assert master[-1] == "Shutting down: Master"  # the master's last line, at its exit
