"""What the auth service writes to its logs about sign-in attempts and database errors:
never a password, even one typed into the user-name field, and never the parameters of
a failed SQL statement (password and token hashes)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from auth_testlib import login
from fastapi.testclient import TestClient
from modelgate_auth.config import AuthSettings
from modelgate_auth.db import create_db_engine, upgrade_schema
from modelgate_auth.main import build_service
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

HASHED_NAME = re.compile(r"^unknown:[0-9a-f]{24}$")


def _audit(settings: AuthSettings) -> tuple[str, list[dict[str, Any]]]:
    raw = (settings.common.log_dir / "audit.jsonl").read_text()
    return raw, [json.loads(line) for line in raw.splitlines()]


def test_a_failed_statement_never_carries_its_parameters(settings: AuthSettings) -> None:
    """A database error's message (what a 500's traceback logs) names no parameter:
    here the password hash of a duplicate user row."""
    engine = create_db_engine(settings.database)
    try:
        upgrade_schema(engine)
        secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$" + secrets.token_hex(16)
        insert = text(
            "INSERT INTO users (uid, username, password_hash, role, disabled, created_at, "
            "updated_at, revoked_before, legacy_owner_keys) "
            "VALUES (:uid, 'carol', :hash, 'user', false, 1, 1, 0, false)"
        )
        with engine.begin() as conn:
            conn.execute(insert, {"uid": secrets.token_hex(16), "hash": secret_hash})
        with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
            conn.execute(insert, {"uid": secrets.token_hex(16), "hash": secret_hash})
        assert secret_hash not in str(caught.value)
        assert secret_hash not in repr(caught.value)
    finally:
        engine.dispose()


def test_an_unknown_user_name_is_audited_as_a_keyed_hash(
    client: TestClient, settings: AuthSettings, make_user: Any
) -> None:
    make_user("alice")
    typed_password = "Tr0ub4dor&3-typed-into-the-name-field"
    for name, password in [
        (typed_password, "anything-at-all"),
        ("nobody", "anything-at-all"),
        ("nobody", "something-else"),
        ("alice", "not-the-right-password"),
    ]:
        assert login(client, name, password).json()["error"] == "invalid_grant"
    assert login(client, typed_password, "x" * 12, scope="zzz").json()["error"] == "invalid_scope"
    raw, events = _audit(settings)
    assert typed_password not in raw
    assert "nobody" not in raw
    failed = [e for e in events if e.get("audit") == "login_failed"]
    assert [e["reason"] for e in failed] == [
        "unknown_user",
        "unknown_user",
        "unknown_user",
        "bad_password",
    ]
    typed, nobody, nobody_again, alice = (e["user"] for e in failed)
    assert alice == "alice"  # a known user as it is
    assert all(HASHED_NAME.match(name) for name in (typed, nobody, nobody_again))
    assert nobody == nobody_again != typed  # attempts on one name still group
    # Keyed: not the plain hash anyone could compute from a list of guesses.
    plain = hashlib.sha256(b"nobody").hexdigest()
    assert plain[:24] not in raw
    refused = [e for e in events if e.get("audit") == "login_refused"]
    assert [e["user"] for e in refused] == [typed]


def test_the_hashing_key_is_made_once_and_kept(settings: AuthSettings, tmp_path: Path) -> None:
    """Every worker, replica and restart hashes a name alike (the key lives in the user
    database), and another database gets another key."""
    first, _ = build_service(settings)
    second, _ = build_service(settings)
    other_settings = settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'other.db'}"}
    )
    other, _ = build_service(other_settings)
    try:
        name = first.audit_name("nobody", known=False)
        assert HASHED_NAME.match(name)
        assert second.audit_name("nobody", known=False) == name
        assert other.audit_name("nobody", known=False) != name
        assert first.audit_name("alice", known=True) == "alice"
    finally:
        for service in (first, second, other):
            service.engine.dispose()
