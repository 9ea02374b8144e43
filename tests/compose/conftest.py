"""The compose stack's own checks: how its containers run, and what survives a restart.

`make test-compose` (deploy/compose/test-compose.sh) runs them after the shared suites,
with MG_STACK=compose, MG_COMPOSE_COMMAND and COMPOSE_PROJECT_NAME set. The native
`make test` deselects them (marker ``compose``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_client, run_command


class ComposeProject:
    """The running compose project, seen through the docker and compose command lines."""

    def __init__(
        self, command: list[str], name: str, root: Path, env: dict[str, str] | None = None
    ) -> None:
        self.command = command
        self.name = name
        self.root = root
        self.env = env  # compose's environment; None: this process's

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        argv = [*self.command, *args]
        if check:
            return run_command(argv, cwd=self.root, timeout=timeout, env=self.env)
        done = subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        return done.stdout

    def exited(self, service: str) -> dict[str, Any]:
        """``docker inspect`` of a one-shot service's container (``init``), run or not."""
        ids = run_command(
            [
                "docker",
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={self.name}",
                "--filter",
                f"label=com.docker.compose.service={service}",
                "--filter",
                "label=com.docker.compose.oneoff=False",
            ]
        ).split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return dict(json.loads(run_command(["docker", "inspect", ids[0]]))[0])

    def running(self) -> dict[str, dict[str, Any]]:
        """``docker inspect`` of every running container of the project, by service name."""
        ids = run_command(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.name}"]
        ).split()
        if not ids:
            return {}
        inspected = json.loads(run_command(["docker", "inspect", *ids]))
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def containers(self) -> dict[str, dict[str, Any]]:
        """Like ``running()``, and at least one must run."""
        found = self.running()
        assert found, f"no container of compose project {self.name} runs"
        return found

    def network(self, name: str) -> dict[str, Any]:
        return json.loads(run_command(["docker", "network", "inspect", f"{self.name}_{name}"]))[0]

    def exec(
        self, service: str, *argv: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        container = self.containers()[service]["Id"]
        done = subprocess.run(
            ["docker", "exec", container, *argv], capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{service}: {' '.join(argv)}: {done.stdout}{done.stderr}")
        return done

    def cli(self, *args: str) -> str:
        """`docker compose run --rm cli <args>`: the operator CLI on the stack's own data."""
        return self.compose("run", "--rm", "-T", "cli", *args)

    def stop(self, service: str) -> None:
        self.compose("stop", service)

    def start(self, service: str) -> None:
        self.compose("start", service)

    def wait_healthy(self, base_url: str, ca_file: str, timeout: float = 180) -> None:
        """Until every container reports healthy and nginx answers /healthz."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {
                service: c["State"].get("Health", {}).get("Status", c["State"]["Status"])
                for service, c in self.containers().items()
            }
            if set(states.values()) == {"healthy"}:
                try:
                    with make_client(base_url, ca_file) as client:
                        if client.get("/healthz").status_code == 200:
                            return
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        raise AssertionError(f"compose stack not healthy within {timeout} s: {states}")


@pytest.fixture(scope="session")
def compose_project() -> ComposeProject:
    if os.environ.get("MG_STACK") != "compose":
        pytest.fail("these tests drive the compose stack: run them with make test-compose")
    command = shlex.split(os.environ.get("MG_COMPOSE_COMMAND", "docker compose"))
    name = os.environ["COMPOSE_PROJECT_NAME"]
    return ComposeProject(command, name, Path(__file__).resolve().parents[2])
