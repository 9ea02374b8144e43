"""The database URL may come from a file (an orchestrator secret), never from two places."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelgate_auth.config import AuthSettings
from pydantic import ValidationError


def test_database_url_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql+psycopg://modelgate:s3cret@db:5432/modelgate\n")
    secret.chmod(0o600)
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
    secret.chmod(0o600)
    with pytest.raises(ValueError, match="is empty"):
        _ = AuthSettings(database_url_file=secret).database


def test_sqlite_file_is_the_default(tmp_path: Path) -> None:
    settings = AuthSettings(common={"var_dir": tmp_path})
    assert settings.database == f"sqlite:///{(tmp_path / 'data' / 'users.db').resolve()}"


@pytest.mark.parametrize("mode", [0o644, 0o620])
def test_a_database_url_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """The URL holds the database password: a file others can read or its group change
    is refused, as every secret file is."""
    secret = tmp_path / "database_url"
    secret.write_text("postgresql+psycopg://modelgate:s3cret@db:5432/modelgate\n")
    secret.chmod(mode)
    with pytest.raises(ValueError, match="MG_AUTH_DATABASE_URL_FILE"):
        _ = AuthSettings(database_url_file=secret).database
