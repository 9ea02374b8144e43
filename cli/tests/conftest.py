"""CLI tests that need the auth service's test helpers: the throwaway PostgreSQL cluster
(pg_testlib) and the in-process auth settings (auth_testlib) live with the auth tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modelgate_cli.main import app
from typer.testing import CliRunner

_AUTH_TESTS = str(Path(__file__).resolve().parents[2] / "services" / "auth" / "tests")
if _AUTH_TESTS not in sys.path:
    sys.path.append(_AUTH_TESTS)

from pg_testlib import postgres  # noqa: E402, F401 (the session fixture)


@pytest.fixture
def initialised_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: Any
) -> Iterator[Path]:
    """A project folder made by `modelgate init` (fast argon2), with a real Redis that
    knows the ACL users init made."""
    monkeypatch.setenv("MG_ROOT", str(tmp_path))
    for name in ("MG_CERTS_DIR", "MG_SECRETS_DIR", "MG_MODEL_STORE", "MG_VAR_DIR", "MG_JWKS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MG_REDIS_URL", redis_server.url)
    for name, value in (("TIME_COST", "1"), ("MEMORY_KIB", "1024"), ("PARALLELISM", "1")):
        monkeypatch.setenv(f"MG_AUTH_ARGON2_{name}", value)
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    # The CLI signs in to Redis as auth, with the password init made.
    redis_server.add_users((tmp_path / "secrets" / "redis_users.acl").read_text())
    yield tmp_path
