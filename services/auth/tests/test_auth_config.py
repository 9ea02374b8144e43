"""The database URL may come from a file (an orchestrator secret), never from two places."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelgate_auth.config import AuthSettings
from pydantic import ValidationError


def test_database_url_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql+psycopg://modelgate:s3cret@db:5432/modelgate\n")
    settings = AuthSettings(database_url_file=secret)
    assert settings.database == "postgresql+psycopg://modelgate:s3cret@db:5432/modelgate"


def test_database_url_and_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("sqlite:///one.db")
    with pytest.raises(ValidationError, match="not both"):
        AuthSettings(database_url="sqlite:///other.db", database_url_file=secret)


def test_empty_database_url_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        _ = AuthSettings(database_url_file=secret).database


def test_sqlite_file_is_the_default(tmp_path: Path) -> None:
    settings = AuthSettings(common={"var_dir": tmp_path})
    assert settings.database == f"sqlite:///{(tmp_path / 'data' / 'users.db').resolve()}"
