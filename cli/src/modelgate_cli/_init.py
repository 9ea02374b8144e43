"""`modelgate init`: everything a first start needs, created only when missing.

Each step is idempotent and reports what it made. Services add their own
steps (signing keys, keyrings, demo models) to ``INIT_STEPS``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from modelgate_common import write_private

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
    ensure_models,
]


def run_init(paths: ProjectPaths) -> list[str]:
    made: list[str] = []
    for step in INIT_STEPS:
        made += step(paths)
    # Last, whatever steps are added above: it must see every file they made.
    made += ensure_compose_env(paths)
    return made
