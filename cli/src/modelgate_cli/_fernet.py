"""The Fernet keyring of the crypto service, from the operator's side."""

from __future__ import annotations

import os
from pathlib import Path

from modelgate_crypto.fernet_keyring import KEYRING_FILENAME, create_keyring

from ._paths import ProjectPaths


def keyring_path(paths: ProjectPaths) -> Path:
    """Where the crypto service reads its keyring (``MG_CRYPTO_KEYRING_FILE`` moves it)."""
    configured = os.environ.get("MG_CRYPTO_KEYRING_FILE")
    return Path(configured) if configured else paths.secrets / KEYRING_FILENAME


def ensure_fernet_keyring(paths: ProjectPaths) -> list[str]:
    path = keyring_path(paths)
    if create_keyring(path):
        return [f"Fernet keyring ({path.name})"]
    return []
