"""Drive wrk with bench/predict.lua and read the JSON line its done() hook prints."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _procs import BenchError, Sampler

LUA = Path(__file__).with_name("predict.lua")
MARK = "BENCH_JSON "


@dataclass(frozen=True)
class Client:
    """Load-tool settings: the same for every target of one `make bench` run."""

    threads: int = 2
    connections: int = 64
    warmup_s: int = 5
    duration_s: int = 20
    timeout_s: int = 10

    def as_dict(self) -> dict[str, object]:
        return {
            "tool": wrk_version(),
            "threads": self.threads,
            "connections": self.connections,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class Load:
    """What one run sends: where, in which body format, with which tokens."""

    url: str
    body: str  # seed | v1 | v2
    rows: int = 1
    tokens: Path | None = None
    v2_input: str = "input-0"
    bodies: Path | None = None  # prepared v1 bodies, one a line (models other than iris)


def wrk_version() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return out.split("[")[0].strip() or "wrk"


def once(client: Client, load: Load, seconds: int, roots: Iterable[int]) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        BENCH_FORMAT=load.body,
        BENCH_ROWS=str(load.rows),
        BENCH_TOKENS=str(load.tokens or ""),
        BENCH_V2_INPUT=load.v2_input,
        BENCH_BODIES=str(load.bodies or ""),
    )
    argv = [
        "wrk",
        f"-t{client.threads}",
        f"-c{client.connections}",
        f"-d{seconds}s",
        f"--timeout={client.timeout_s}s",
        "-s",
        str(LUA),
        load.url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    with Sampler(roots) as sampler:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        raise BenchError(f"wrk printed no result line: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(MARK) :])
    requests, duration, errors = result["requests"], result["duration_s"], result["errors"]
    result["rps"] = round(requests / duration, 1) if duration else 0.0
    result["rows_per_s"] = round(requests * load.rows / duration, 1) if duration else 0.0
    result["socket_errors"] = (
        errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    )
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    usage = sampler.usage().as_dict()
    usage["client_cpu_percent"] = round(client_cpu / wall * 100, 1)
    result["usage"] = usage
    return result


def measure(client: Client, load: Load, roots: Iterable[int]) -> dict[str, Any]:
    """A warm-up run (reported, not scored), then the measured run."""
    roots = list(roots)
    warm = once(client, load, client.warmup_s, roots) if client.warmup_s > 0 else None
    result = once(client, load, client.duration_s, roots)
    result["rows_per_request"] = load.rows
    if warm is not None:
        result["warmup"] = {
            "requests": warm["requests"],
            "non2xx": warm["non2xx"],
            "socket_errors": warm["socket_errors"],
        }
    return result
