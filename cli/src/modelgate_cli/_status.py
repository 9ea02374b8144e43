"""What runs, what is ready, what is degraded; and the checks before a start."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass

import httpx

from ._certs import tls_hostnames
from ._paths import ProjectPaths

SERVICES = ("auth", "inference", "crypto")


@dataclass
class ComponentStatus:
    name: str
    state: str  # ok | degraded | fail | down
    detail: str


def _port(name: str, default: str) -> int:
    return int(os.environ.get(name, default))


def _host(name: str, default: str) -> str:
    # Where each part is reached: the native stack's loopback, or its name on the compose
    # network (`docker compose run --rm cli status` sets MG_NGINX_HOST, MG_AUTH_HOST, ...).
    return os.environ.get(f"MG_{name.upper()}_HOST") or default


def stack_status(paths: ProjectPaths, timeout: float = 2.0) -> list[ComponentStatus]:
    results: list[ComponentStatus] = []
    https_port = _port("MG_HTTPS_PORT", "8443")
    # nginx's certificate is checked for its first name, wherever nginx is reached.
    server_name = str(tls_hostnames()[0].value)
    try:
        with httpx.Client(verify=str(paths.certs / "ca.pem"), timeout=timeout) as client:
            answer = client.get(
                f"https://{_host('nginx', server_name)}:{https_port}/healthz",
                extensions={"sni_hostname": server_name},
            )
        state = "ok" if answer.status_code == 200 else "fail"
        results.append(ComponentStatus("nginx", state, f"HTTPS {https_port}: {answer.status_code}"))
    except (httpx.HTTPError, OSError) as exc:
        results.append(
            ComponentStatus("nginx", "down", f"HTTPS {https_port}: {type(exc).__name__}")
        )
    defaults = {"auth": "8101", "inference": "8102", "crypto": "8103"}
    with httpx.Client(timeout=timeout) as client:
        for service in SERVICES:
            port = _port(f"MG_{service.upper()}_PORT", defaults[service])
            try:
                host = _host(service, "127.0.0.1")
                body = client.get(f"http://{host}:{port}/health/ready").json()
                failing = [
                    f"{name}: {check['status']} {check.get('detail', '')}".strip()
                    for name, check in body.get("checks", {}).items()
                    if check["status"] != "ok"
                ]
                results.append(ComponentStatus(service, body["status"], "; ".join(failing)))
            except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                results.append(
                    ComponentStatus(service, "down", f"port {port}: {type(exc).__name__}")
                )
    return results


def wait_ready(paths: ProjectPaths, seconds: float) -> list[ComponentStatus]:
    deadline = time.monotonic() + seconds
    while True:
        statuses = stack_status(paths)
        if all(s.state in ("ok", "degraded") for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.25)


def preflight_problems() -> list[str]:
    problems = []
    for binary, package in (("nginx", "nginx"), ("redis-server", "redis-server")):
        if shutil.which(binary) is None:
            problems.append(f"{binary} is not installed (apt-get install {package})")
    ports = {
        name: _port(name, default)
        for name, default in (
            ("MG_HTTPS_PORT", "8443"),
            ("MG_HTTP_PORT", "8080"),
            ("MG_REDIS_PORT", "6391"),
            ("MG_AUTH_PORT", "8101"),
            ("MG_INFERENCE_PORT", "8102"),
            ("MG_CRYPTO_PORT", "8103"),
        )
    }
    for name, port in ports.items():
        with socket.socket() as probe:
            # As nginx, gunicorn and Redis bind: connections of a stack just stopped
            # (TIME_WAIT) do not hold the port; only a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                probe.listen()
            except OSError:
                problems.append(f"port {port} ({name}) is already in use; set {name} to another")
    return problems
