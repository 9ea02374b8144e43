"""`modelgate user …` and `modelgate keys …-jwt`, on a real SQLite file and a real Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from auth_testlib import open_databases
from modelgate_auth.main import build_service
from modelgate_auth.service import InvalidCredentials
from modelgate_cli._auth import auth_settings
from modelgate_cli._paths import ProjectPaths
from modelgate_cli.main import app
from modelgate_common import revoked_subject_key
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

runner = CliRunner()
PASSWORD = "cli-user-password-1"


@pytest.fixture
def project(initialised_project: Path) -> Path:
    return initialised_project


def _cli(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input)


def _login_ok(username: str, password: str) -> bool:
    """Whether the password grant accepts the pair. Only the service's refusal of the
    credentials counts as "no": any other exception (a crash) fails the test."""
    service, _ = build_service(auth_settings(ProjectPaths.from_env()))
    try:
        service.login(username, password, "", None)
    except InvalidCredentials:
        return False
    finally:
        service.engine.dispose()
    return True


def test_a_crashing_sign_in_is_not_taken_for_a_refusal(project: Path) -> None:
    """The negative checks below (``not _login_ok(...)``) must not pass because the code
    crashed: a sign-in that fails for another reason than the credentials raises."""
    _first_admin(project)
    password = (project / "secrets" / "admin_password").read_text().strip()
    assert _login_ok("admin", password)
    assert not _login_ok("admin", "not-the-admin-password")
    service, _ = build_service(auth_settings(ProjectPaths.from_env()))
    try:
        with service.engine.begin() as conn:
            conn.execute(text("DROP TABLE refresh_tokens"))  # issuing a token now crashes
    finally:
        service.engine.dispose()
    with pytest.raises(OperationalError):
        _login_ok("admin", password)


def _first_admin(project: Path) -> None:
    """The first admin is made by the service's first start; make it as the service would."""
    service, _ = build_service(auth_settings(ProjectPaths.from_env()))
    try:
        password = (project / "secrets" / "admin_password").read_text().strip()
        assert service.ensure_first_admin(password)
    finally:
        service.engine.dispose()


def test_init_creates_the_jwt_signing_key_once(project: Path) -> None:
    jwks = json.loads((project / "secrets" / "jwks.json").read_text())
    assert len(jwks["keys"]) == 1
    kid = jwks["keys"][0]["kid"]
    private = project / "secrets" / "jwt" / f"{kid}.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    again = _cli("init")
    assert "JWT" not in again.output
    assert json.loads((project / "secrets" / "jwks.json").read_text()) == jwks


def test_user_add_list_and_login(project: Path) -> None:
    result = _cli("user", "add", "carol", "--full-name", "<b>Carol</b>", "--password-stdin",
                  input=PASSWORD + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    listed = _cli("user", "list")
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert any(line.split()[:3] == ["carol", "user", "active"] for line in lines)
    assert "Carol" in listed.output and "<b>" not in listed.output
    assert open_databases(project) == []  # each command closed the database it opened
    assert _login_ok("carol", PASSWORD)


def test_user_add_refuses_bad_input(project: Path) -> None:
    bad_name = _cli("user", "add", "Bad Name", "--password-stdin", input=PASSWORD + "\n")
    assert bad_name.exit_code == 2
    assert bad_name.output.startswith("error: username")
    short = _cli("user", "add", "dan", "--password-stdin", input="shortpw\n")
    assert short.exit_code == 2
    assert "shortpw" not in short.output
    role = _cli("user", "add", "dan", "--role", "root", "--password-stdin", input=PASSWORD + "\n")
    assert role.exit_code == 2
    _cli("user", "add", "dan", "--password-stdin", input=PASSWORD + "\n")
    duplicate = _cli("user", "add", "dan", "--password-stdin", input=PASSWORD + "\n")
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.output


def test_generated_password_is_printed_only_with_show(project: Path) -> None:
    hidden = _cli("user", "add", "erin", "--generate")
    assert hidden.exit_code == 2
    assert "--show" in hidden.output
    shown = _cli("user", "add", "erin", "--generate", "--show")
    assert shown.exit_code == 0, shown.output
    password = shown.output.split("password: ", 1)[1].strip()
    assert len(password) >= 12
    assert _login_ok("erin", password)


def test_set_role_disable_enable_remove(project: Path, redis_server: Any) -> None:
    _first_admin(project)
    _cli("user", "add", "frank", "--password-stdin", input=PASSWORD + "\n")
    assert _cli("user", "set-role", "frank", "admin").exit_code == 0
    assert "admin" in _cli("user", "list").output.split("frank", 1)[1].splitlines()[0]
    assert _cli("user", "set-role", "frank", "king").exit_code == 2

    disabled = _cli("user", "disable", "frank")
    assert disabled.exit_code == 0
    assert "revoked" in disabled.output
    client = redis.Redis.from_url(redis_server.url)
    try:
        # The CLI pushed the revocation itself: every service sees it at once.
        assert client.get(revoked_subject_key("frank")) is not None
    finally:
        client.close()
    assert not _login_ok("frank", PASSWORD)
    assert _cli("user", "enable", "frank").exit_code == 0
    assert _login_ok("frank", PASSWORD)

    new_password = "a-new-password-for-frank"
    changed = _cli("user", "set-password", "frank", "--password-stdin", input=new_password + "\n")
    assert changed.exit_code == 0 and new_password not in changed.output
    assert _login_ok("frank", new_password) and not _login_ok("frank", PASSWORD)

    assert _cli("user", "remove", "frank", "--yes").exit_code == 0
    assert "frank" not in _cli("user", "list").output
    missing = _cli("user", "remove", "frank", "--yes")
    assert missing.exit_code == 1
    assert missing.output.strip() == "error: no such user"
    assert _cli("user", "disable", "nobody").exit_code == 1


def test_last_admin_cannot_be_removed_from_the_cli(project: Path) -> None:
    _first_admin(project)
    result = _cli("user", "remove", "admin", "--yes")
    assert result.exit_code == 1
    assert "last active admin" in result.output
    assert "admin" in _cli("user", "list").output


def test_revocation_is_kept_when_redis_is_down(project: Path, redis_server: Any) -> None:
    _cli("user", "add", "gina", "--password-stdin", input=PASSWORD + "\n")
    redis_server.stop()
    result = _cli("user", "disable", "gina")
    assert result.exit_code == 0
    assert "Redis did not answer" in result.output
    settings = auth_settings(ProjectPaths.from_env())
    service, _ = build_service(settings)
    try:
        with service.engine.connect() as conn:
            keys = conn.execute(text("SELECT key FROM revocations")).scalars().all()
    finally:
        service.engine.dispose()
    assert revoked_subject_key("gina") in keys


def test_keys_rotate_list_and_retire_jwt(project: Path) -> None:
    first = json.loads((project / "secrets" / "jwks.json").read_text())["keys"][0]["kid"]
    rotated = _cli("keys", "rotate-jwt")
    assert rotated.exit_code == 0, rotated.output
    kids = [k["kid"] for k in json.loads((project / "secrets" / "jwks.json").read_text())["keys"]]
    assert kids[1] == first and len(kids) == 2
    listed = _cli("keys", "list-jwt").output.splitlines()
    assert listed[0].startswith(kids[0]) and "signs" in listed[0]
    assert listed[1].startswith(first) and "verifies only" in listed[1]
    assert "PRIVATE" not in rotated.output + "".join(listed)

    newest = _cli("keys", "retire-jwt", kids[0], "--force")
    assert newest.exit_code == 1
    assert "newest" in newest.output
    too_early = _cli("keys", "retire-jwt", first)
    assert too_early.exit_code == 1
    assert "may still be valid" in too_early.output
    retired = _cli("keys", "retire-jwt", "--force")  # default: the oldest
    assert retired.exit_code == 0, retired.output
    remaining = json.loads((project / "secrets" / "jwks.json").read_text())["keys"]
    assert [k["kid"] for k in remaining] == [kids[0]]
    assert not (project / "secrets" / "jwt" / f"{first}.pem").exists()


def test_operator_changes_land_in_the_audit_trail_without_secrets(project: Path) -> None:
    assert _cli("user", "add", "auditee", "--password-stdin", input=PASSWORD + "\n").exit_code == 0
    assert _cli("user", "set-role", "auditee", "admin").exit_code == 0
    assert _cli("user", "add", "other", "--password-stdin", input=PASSWORD + "\n").exit_code == 0
    disabled = _cli("user", "disable", "other")
    assert disabled.exit_code == 0, disabled.output
    assert _cli("keys", "rotate-jwt").exit_code == 0
    assert _cli("keys", "rotate-fernet").exit_code == 0
    assert _cli("keys", "retire-fernet", "--yes").exit_code == 0
    trail = (project / "var" / "log" / "audit.jsonl").read_text()
    events = [json.loads(line) for line in trail.splitlines()]
    names = {e["audit"] for e in events}
    assert {"user_created", "user_updated", "key_rotated", "key_retired"} <= names
    assert {e["kind"] for e in events if e["audit"] == "key_rotated"} == {"jwt", "fernet"}
    assert all(e["service"] == "cli" for e in events)
    assert PASSWORD not in trail
    keyring = (project / "secrets" / "fernet_keyring.json").read_text()
    assert not any(k in trail for k in json.loads(keyring).get("keys", []) if isinstance(k, str))
