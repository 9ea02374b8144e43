"""The examples in docs/api.md run against the live stack exactly as written."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import bearer

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def run(
    args: list[str], base_url: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BASE": base_url, **(extra or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_curl_examples_run(base_url: str) -> None:
    # Our own loopback source address, so the example's login does not share a
    # rate-limit bucket with other tests; the commands themselves are unchanged.
    script = 'set -euo pipefail\ncurl() { command curl --interface 127.0.0.201 "$@"; }\n'
    script += "\n".join(blocks("sh"))
    result = run(["bash", "-c", script], base_url)
    assert result.returncode == 0, result.stderr
    assert '"prediction":' in result.stdout
    assert '"predictions":' in result.stdout
    assert '"plaintext":"hello"' in result.stdout
    assert '"iris"' in result.stdout
    # The machine-client section: discovery, the client's prediction, its revocation.
    assert '"token_endpoint":"' in result.stdout
    assert '"prediction":1' in result.stdout


def test_python_example_runs(base_url: str) -> None:
    example = blocks("python")[0]
    result = run([sys.executable, "-c", example], base_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("iris")
    assert lines[0].endswith("[2]")  # 6.7, 3.0, 5.2, 2.3 is virginica
    assert "2" in lines[1]


def test_machine_client_python_example_runs(
    base_url: str, client: httpx.Client, admin_token: str
) -> None:
    body = {"name": f"docs-{secrets.token_hex(4)}", "scopes": ["models:read", "models:predict"]}
    created = client.post("/auth/clients", json=body, headers=bearer(admin_token))
    assert created.status_code == 201, created.text
    account = created.json()
    try:
        env = {"MG_CLIENT_ID": account["client_id"], "MG_CLIENT_SECRET": account["client_secret"]}
        result = run([sys.executable, "-c", blocks("python")[1]], base_url, env)
    finally:
        client.delete(f"/auth/clients/{account['client_id']}", headers=bearer(admin_token))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["models:read models:predict", "[2]"]
