"""`modelgate init`: everything a first start needs, created only when missing.

Each step is idempotent and reports what it made. Services add their own
steps (signing keys, keyrings, demo models) to ``INIT_STEPS``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path

from modelgate_common import read_secret, write_private

from ._auth import ensure_jwt_signing_key
from ._certs import ensure_certificates
from ._compose import ensure_compose_env
from ._fernet import ensure_fernet_keyring
from ._paths import ProjectPaths
from .models import ensure_models


def ensure_admin_password(paths: ProjectPaths) -> list[str]:
    path: Path = paths.secrets / "admin_password"
    if path.exists():
        return []
    # No trailing newline: `curl --data-urlencode password@secrets/admin_password` sends
    # the file byte for byte.
    write_private(path, secrets.token_urlsafe(24))
    return ["admin password (secrets/admin_password)"]


def ensure_database_secrets(paths: ProjectPaths) -> list[str]:
    """The PostgreSQL password and the URL auth connects with, for the stacks that keep
    users in PostgreSQL (deploy/compose/postgres.yaml, deploy/swarm/). Unused otherwise."""
    made = []
    password_path: Path = paths.secrets / "postgres_password"
    if not password_path.exists():
        write_private(password_path, secrets.token_hex(24))
        made.append("PostgreSQL password (secrets/postgres_password)")
    url_path: Path = paths.secrets / "database_url"
    if not url_path.exists():
        password = password_path.read_text(encoding="utf-8").strip()
        write_private(
            url_path, f"postgresql+psycopg://modelgate:{password}@postgres:5432/modelgate"
        )
        made.append("auth's PostgreSQL URL (secrets/database_url)")
    return made


# The Redis ACL users: one per service, each with its own password, only modelgate's keys
# (mg:*) and no administrative or dangerous command (FLUSHALL, KEYS, CONFIG, ACL, DEBUG...).
# Only inference may use pub/sub (its model-version channel). Every user may write the
# revocation keys: the rate-limit scripts read them, and Redis asks write access of every key
# a script names; auth's periodic sync restores any that go missing. Unauthenticated
# connections may only PING (health checks).
REDIS_USERS: dict[str, str] = {
    "auth": "~mg:* +@all -@dangerous",
    "inference": "~mg:* &mg:inference:* +@all -@dangerous",
    "crypto": "~mg:* +@all -@dangerous",
}
REDIS_ACL_FILE = "redis_users.acl"


def redis_acl(passwords: dict[str, str]) -> str:
    """Redis's ACL file for these passwords: SHA-256 digests only, never a password."""
    lines = ["user default on nopass resetkeys resetchannels -@all +ping"]
    for user, rules in REDIS_USERS.items():
        digest = hashlib.sha256(passwords[user].encode("utf-8")).hexdigest()
        lines.append(f"user {user} on #{digest} resetkeys resetchannels {rules}")
    return "\n".join(lines) + "\n"


def ensure_redis_credentials(paths: ProjectPaths) -> list[str]:
    """A password per service's Redis user (never overwritten) and Redis's ACL file,
    rewritten whenever it does not match the passwords."""
    made = []
    passwords = {}
    for user in REDIS_USERS:
        path: Path = paths.secrets / f"redis_{user}_password"
        if not path.exists():
            write_private(path, secrets.token_urlsafe(32))
            made.append(f"Redis password of {user} (secrets/redis_{user}_password)")
        passwords[user] = read_secret(path).get_secret_value()
    acl_path: Path = paths.secrets / REDIS_ACL_FILE
    acl = redis_acl(passwords)
    if not acl_path.exists() or acl_path.read_text(encoding="utf-8") != acl:
        write_private(acl_path, acl)
        made.append(f"Redis ACL users (secrets/{REDIS_ACL_FILE})")
    return made


def ensure_layout(paths: ProjectPaths) -> list[str]:
    for folder in (paths.certs, paths.secrets, paths.model_store, paths.var / "log"):
        folder.mkdir(parents=True, exist_ok=True)
    paths.secrets.chmod(0o700)
    return []


INIT_STEPS: list[Callable[[ProjectPaths], list[str]]] = [
    ensure_layout,
    lambda paths: ensure_certificates(paths.certs),
    ensure_admin_password,
    ensure_jwt_signing_key,
    ensure_fernet_keyring,
    ensure_database_secrets,
    ensure_redis_credentials,
    ensure_models,
]


def run_init(paths: ProjectPaths, *, compose_env: bool = True) -> list[str]:
    """Every step; ``compose_env`` False inside the compose stack's init container."""
    made: list[str] = []
    for step in INIT_STEPS:
        made += step(paths)
    # Last, whatever steps are added above: it must see every file they made.
    if compose_env:
        made += ensure_compose_env(paths)
    return made
