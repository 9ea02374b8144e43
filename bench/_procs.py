"""Background processes the benchmark starts, and CPU/memory sampling of them."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


class Background:
    """One process (and its process group) the benchmark started, stopped by its id."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log: Path,
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            # The process group is the one start_new_session created for this
            # process alone: it holds only what this process started.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_file.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def require_free(*ports: int) -> None:
    """Refuse to start a target on a port something else already answers on: the
    benchmark would measure that other server."""
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise BenchError(f"port {port} is already in use; stop what listens there")


def wait_http(
    url: str,
    *,
    timeout: float,
    verify: ssl.SSLContext | bool = True,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Poll ``url`` until it answers 200; returns the seconds it took."""
    start = time.monotonic()
    with httpx.Client(verify=verify, timeout=2.0) as client:
        while True:
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            if not alive():
                raise BenchError(f"process serving {url} exited before it was ready")
            if time.monotonic() - start > timeout:
                raise BenchError(f"{url} not ready after {timeout:.0f} s")
            time.sleep(0.2)


def label_of(proc: psutil.Process) -> str:
    """A short role name for a stack process, from its command line."""
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    for service in ("auth", "inference", "crypto"):
        if f"modelgate_{service}" in cmd:
            return service
    if "gunicorn" in cmd and "ceiling_app" not in cmd:
        # The stack's gunicorn configuration picks the service's app from MG_SERVICE.
        try:
            service = proc.environ().get("MG_SERVICE", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            service = ""
        if service in ("auth", "inference", "crypto"):
            return service
    for needle, label in (
        ("ceiling_app", "ceiling"),
        ("seed_app", "seed"),
        ("redis-server", "redis"),
        ("supervisord", "supervisord"),
        ("nginx", "nginx"),
        ("mlserver", "mlserver"),
        ("wrk", "wrk"),
    ):
        if needle in cmd or needle in name:
            return label
    if "multiprocessing" in cmd or "python" in name:
        return "mlserver-worker" if "mlserver" in cmd else name
    return name


@dataclass
class ProcStat:
    pid: int
    label: str
    cpu_s: float = 0.0
    rss_max: int = 0
    pss_max: int = 0
    _start_cpu: float | None = None


@dataclass
class Usage:
    """What the sampled processes used during one run."""

    wall_s: float
    procs: list[ProcStat]
    total_rss_peak: int
    total_pss_peak: int
    system_cpu_percent: float
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        mb = 1024 * 1024
        return {
            "wall_s": round(self.wall_s, 2),
            "server_cpu_percent": round(sum(p.cpu_s for p in self.procs) / self.wall_s * 100, 1),
            "machine_cpu_percent": round(self.system_cpu_percent, 1),
            "total_rss_mb_peak": round(self.total_rss_peak / mb, 1),
            "total_pss_mb_peak": round(self.total_pss_peak / mb, 1),
            "by_role": self.per_label,
            "processes": [
                {
                    "pid": p.pid,
                    "role": p.label,
                    "cpu_percent": round(p.cpu_s / self.wall_s * 100, 1),
                    "rss_mb_peak": round(p.rss_max / mb, 1),
                    "pss_mb_peak": round(p.pss_max / mb, 1),
                }
                for p in sorted(self.procs, key=lambda p: (p.label, p.pid))
            ],
        }


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class Sampler:
    """Samples CPU time and memory of process trees while a load run goes on.

    CPU is measured as the CPU time each process used between start and stop
    (so a process at 100% of one core reads 100); memory as the peak RSS and
    PSS seen at any sample (PSS counts pages shared between the workers of one
    server once, RSS counts them in every worker).
    """

    def __init__(self, roots: Iterable[int], interval: float = 1.0) -> None:
        self._roots = [psutil.Process(pid) for pid in roots]
        self._interval = interval
        self._stats: dict[int, ProcStat] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._total_rss = 0
        self._total_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def processes(self) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for root in self._roots:
            try:
                found.append(root)
                found.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return found

    def _sample(self) -> None:
        rss_total = pss_total = 0
        for proc in self.processes():
            try:
                stat = self._stats.get(proc.pid)
                if stat is None:
                    stat = self._stats[proc.pid] = ProcStat(proc.pid, label_of(proc))
                    self._procs[proc.pid] = proc
                    stat._start_cpu = _cpu(proc)
                mem = proc.memory_full_info()
                stat.rss_max = max(stat.rss_max, mem.rss)
                stat.pss_max = max(stat.pss_max, getattr(mem, "pss", mem.rss))
                stat.cpu_s = _cpu(proc) - (stat._start_cpu or 0.0)
                rss_total += mem.rss
                pss_total += getattr(mem, "pss", mem.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self._total_rss = max(self._total_rss, rss_total)
        self._total_pss = max(self._total_pss, pss_total)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._sys0 = psutil.cpu_times()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.monotonic() - self._t0
        sys1 = psutil.cpu_times()
        busy = (sum(sys1) - sys1.idle - sys1.iowait) - (
            sum(self._sys0) - self._sys0.idle - self._sys0.iowait
        )
        self._system_cpu = busy / self.wall * 100

    def usage(self) -> Usage:
        mb = 1024 * 1024
        per_label: dict[str, dict[str, float]] = {}
        for stat in self._stats.values():
            entry = per_label.setdefault(
                stat.label, {"processes": 0, "cpu_percent": 0.0, "rss_mb_peak": 0.0}
            )
            entry["processes"] += 1
            entry["cpu_percent"] = round(entry["cpu_percent"] + stat.cpu_s / self.wall * 100, 1)
            entry["rss_mb_peak"] = round(entry["rss_mb_peak"] + stat.rss_max / mb, 1)
        return Usage(
            wall_s=self.wall,
            procs=list(self._stats.values()),
            total_rss_peak=self._total_rss,
            total_pss_peak=self._total_pss,
            system_cpu_percent=self._system_cpu,
            per_label=per_label,
        )
