"""The examples in docs/api.md run against the live stack exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def run(args: list[str], base_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BASE": base_url}
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


def test_python_example_runs(base_url: str) -> None:
    (example,) = blocks("python")
    result = run([sys.executable, "-c", example], base_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("iris")
    assert lines[0].endswith("[2]")  # 6.7, 3.0, 5.2, 2.3 is virginica
    assert "2" in lines[1]
