"""The Swarm tier's own checks: replicas, limits and revocations shared across them,
a killed replica and a rolling update under traffic.

`make test-swarm` (deploy/swarm/test-swarm.sh) runs them after the shared suites, with
MG_STACK=swarm and MG_STACK_NAME set. `make test` and `make test-compose` deselect them
(marker ``swarm``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import run_command


class SwarmStack:
    """The deployed stack, seen through the docker command line."""

    def __init__(self, name: str) -> None:
        self.name = name

    def service(self, service: str) -> str:
        return f"{self.name}_{service}"

    def containers(self, service: str) -> list[str]:
        """Ids of the service's running containers (its replicas on this node)."""
        return run_command(
            [
                "docker", "ps", "-q",
                "--filter", f"label=com.docker.swarm.service.name={self.service(service)}",
                "--filter", "status=running",
            ]
        ).split()  # fmt: skip

    def healthy_containers(self, service: str) -> list[str]:
        ids = self.containers(service)
        if not ids:
            return []
        inspected = json.loads(run_command(["docker", "inspect", *ids]))
        healthy = [c for c in inspected if c["State"].get("Health", {}).get("Status") == "healthy"]
        return [c["Id"] for c in healthy]

    def address(self, container: str, network: str = "edge") -> str:
        """The container's address on one of the stack's networks."""
        networks = json.loads(run_command(["docker", "inspect", container]))[0]["NetworkSettings"]
        return str(networks["Networks"][f"{self.name}_{network}"]["IPAddress"])

    def call(
        self, container: str, method: str, path: str, token: str, body: Any = None
    ) -> tuple[int, Any]:
        """A request to this one replica's own port, from inside its container (no
        nginx, no balancing): ``(status, parsed JSON body)``."""
        script = (
            "import json, sys, urllib.request, urllib.error\n"
            "method, path, token, body = sys.argv[1:5]\n"
            "data = body.encode() if body != 'null' else None\n"
            "req = urllib.request.Request('http://127.0.0.1:8000' + path, data=data,"
            " method=method, headers={'Authorization': 'Bearer ' + token,"
            " 'Content-Type': 'application/json'})\n"
            "try:\n"
            "    answer = urllib.request.urlopen(req, timeout=10)\n"
            "except urllib.error.HTTPError as error:\n"
            "    answer = error\n"
            "print(json.dumps([answer.status, json.loads(answer.read() or b'null')]))\n"
        )
        out = run_command(
            ["docker", "exec", container, "python3", "-c", script,
             method, path, token, json.dumps(body)]
        )  # fmt: skip
        status, parsed = json.loads(out)
        return int(status), parsed

    def nginx_upstreams(self, user_agent: str, count: int) -> Counter[str]:
        """Which upstream address served each of the ``count`` requests nginx logged
        with this (test-unique) User-Agent. nginx writes its JSON access log to stdout,
        buffered up to a second."""
        (nginx,) = self.containers("nginx")
        matching: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            logged = subprocess.run(
                ["docker", "logs", "--tail", "3000", nginx], capture_output=True, text=True
            ).stdout
            entries = []
            for line in logged.splitlines():
                try:  # the first line may be the tail end of a record
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            matching = [e for e in entries if e.get("user_agent") == user_agent]
            if len(matching) >= count:
                break
            time.sleep(0.5)
        assert len(matching) == count, f"nginx logged {len(matching)} of {count} requests"
        return Counter(e["upstream"].split(",")[-1].strip() for e in matching)

    def update(self, service: str, *args: str, timeout: float = 600) -> None:
        """``docker service update`` and wait until it converged."""
        run_command(
            ["docker", "service", "update", "--detach=true", *args, self.service(service)],
            timeout=120,
        )
        self.wait_converged(service, timeout)

    def wait_converged(self, service: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = run_command(
                [
                    "docker", "service", "inspect", self.service(service), "--format",
                    "{{with .UpdateStatus}}{{.State}}{{end}}|{{.Spec.Mode.Replicated.Replicas}}",
                ]
            ).strip()  # fmt: skip
            update, _, wanted = state.partition("|")
            if update in ("", "completed") and len(self.healthy_containers(service)) == int(wanted):
                return
            assert "paused" not in update and "rollback" not in update, state
            time.sleep(1)
        raise AssertionError(f"{service} did not converge within {timeout} s: {state}")


@pytest.fixture(scope="session")
def swarm_stack() -> SwarmStack:
    if os.environ.get("MG_STACK") != "swarm":
        pytest.fail("these tests drive the Swarm stack: run them with make test-swarm")
    return SwarmStack(os.environ["MG_STACK_NAME"])


@pytest.fixture(scope="session")
def replicas() -> dict[str, int]:
    """Replicas per service as deployed (deploy/swarm/stack.yaml defaults)."""
    return {
        "inference": int(os.environ.get("MG_INFERENCE_REPLICAS", "3")),
        "auth": int(os.environ.get("MG_AUTH_REPLICAS", "2")),
        "crypto": int(os.environ.get("MG_CRYPTO_REPLICAS", "2")),
    }
