"""`modelgate client …` on a real SQLite file and a real Redis: the secret shown once
with --show, the client usable for the client_credentials grant, revocation pushed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from modelgate_auth.clients import ClientAuthFailed, ClientService
from modelgate_auth.main import build_service
from modelgate_cli._auth import auth_settings
from modelgate_cli._paths import ProjectPaths
from modelgate_cli.main import app
from modelgate_common import revoked_subject_key
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def project(initialised_project: Path) -> Path:
    return initialised_project


def _cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _field(output: str, name: str) -> str:
    match = re.search(rf"^{name}: (\S+)$", output, flags=re.M)
    assert match, output
    return match.group(1)


def _token_ok(client_id: str, secret: str) -> bool:
    service, _ = build_service(auth_settings(ProjectPaths.from_env()))
    clients = ClientService(service)
    try:
        clients.token(clients.authenticate(client_id, secret, None), "", None)
    except ClientAuthFailed:
        return False
    finally:
        service.engine.dispose()
    return True


def test_add_needs_show_and_prints_the_secret_once(project: Path) -> None:
    refused = _cli("client", "add", "nightly", "--scope", "models:predict")
    assert refused.exit_code == 2
    assert "--show" in refused.output
    assert "nightly" not in _cli("client", "list").output
    added = _cli("client", "add", "nightly", "--scope", "models:predict", "--show")
    assert added.exit_code == 0, added.output
    client_id, secret = _field(added.output, "client_id"), _field(added.output, "client_secret")
    assert _token_ok(client_id, secret)
    listed = _cli("client", "list")
    assert client_id in listed.output and "active" in listed.output
    assert secret not in listed.output
    audit = (project / "var" / "log" / "audit.jsonl").read_text()
    assert secret not in audit
    events = [json.loads(line) for line in audit.splitlines()]
    assert any(e.get("audit") == "client_created" and e.get("actor") == "cli" for e in events)


def test_bad_arguments_are_one_line_errors(project: Path) -> None:
    for args in (
        ("client", "add", "x", "--scope", "models:read", "--show"),
        ("client", "add", "okname", "--scope", "users:admin", "--show"),
    ):
        result = _cli(*args)
        assert result.exit_code == 2
        assert result.output.startswith("error: ")
    missing = _cli("client", "disable", "nobody")
    assert missing.exit_code == 1
    assert "no such client" in missing.output


def test_rotate_disable_enable_remove_by_name_or_id(project: Path) -> None:
    added = _cli("client", "add", "job", "--scope", "models:read", "--show")
    client_id, secret = _field(added.output, "client_id"), _field(added.output, "client_secret")
    rotated = _cli("client", "rotate-secret", "job", "--show")
    assert rotated.exit_code == 0, rotated.output
    new = _field(rotated.output, "client_secret")
    assert "existing tokens of the client are revoked" in rotated.output
    assert not _token_ok(client_id, secret) and _token_ok(client_id, new)
    assert _cli("client", "disable", client_id).exit_code == 0
    assert "disabled" in _cli("client", "list").output
    assert not _token_ok(client_id, new)
    assert _cli("client", "enable", "job").exit_code == 0
    assert _token_ok(client_id, new)
    removed = _cli("client", "remove", "job", "--yes")
    assert removed.exit_code == 0, removed.output
    assert "job" not in _cli("client", "list").output
    # The cut-off is in Redis at once, where every service's verifier looks.
    settings = auth_settings(ProjectPaths.from_env())
    store = redis.Redis.from_url(settings.common.redis_url)
    try:
        assert store.get(revoked_subject_key(f"client:{client_id}")) is not None
    finally:
        store.close()
