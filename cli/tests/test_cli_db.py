"""`modelgate db upgrade` / `modelgate db current` on a real SQLite file (the auth
tests run the same migrations against PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from auth_testlib import open_databases
from modelgate_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MG_ROOT", str(tmp_path))
    for name in ("MG_SECRETS_DIR", "MG_VAR_DIR", "MG_AUTH_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_db_current_then_upgrade(project: Path) -> None:
    before = runner.invoke(app, ["db", "current"])
    assert before.exit_code == 1
    assert "empty (newest: 0004)" in before.output
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "empty -> 0004" in upgraded.output
    assert (project / "var" / "data" / "users.db").exists()
    after = runner.invoke(app, ["db", "current"])
    assert after.exit_code == 0
    assert ": 0004 (newest: 0004)" in after.output
    assert open_databases(project) == []  # each command closed the database it opened
