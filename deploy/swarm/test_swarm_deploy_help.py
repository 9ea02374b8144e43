"""deploy.sh explains itself without a swarm: --help prints its header comment, no code."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).with_name("deploy.sh")


def test_help_is_the_header_comment_and_nothing_else() -> None:
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    header = []
    for line in SCRIPT.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line.removeprefix("#").removeprefix(" "))
    assert done.stdout.splitlines() == header
    assert "set -euo pipefail" not in done.stdout


def test_an_unknown_argument_is_refused() -> None:
    done = subprocess.run([SCRIPT, "--bogus"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unknown argument --bogus" in done.stderr
