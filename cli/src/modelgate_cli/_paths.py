"""Where the project's generated files live; every path can be moved by env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path
    certs: Path
    secrets: Path
    model_store: Path
    var: Path

    @classmethod
    def from_env(cls) -> ProjectPaths:
        root = Path(os.environ.get("MG_ROOT", ".")).resolve()
        return cls(
            root=root,
            certs=Path(os.environ.get("MG_CERTS_DIR", root / "certs")),
            secrets=Path(os.environ.get("MG_SECRETS_DIR", root / "secrets")),
            model_store=Path(os.environ.get("MG_MODEL_STORE", root / "model_store")),
            var=Path(os.environ.get("MG_VAR_DIR", root / "var")),
        )
