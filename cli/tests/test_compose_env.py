"""`modelgate init`'s compose step: .env for compose, and files the containers can read."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from modelgate_cli._compose import (
    CONTAINER_UID,
    container_user,
    ensure_compose_env,
    update_env_file,
)
from modelgate_cli._paths import ProjectPaths


def paths_in(root: Path) -> ProjectPaths:
    return ProjectPaths(
        root=root,
        certs=root / "certs",
        secrets=root / "secrets",
        model_store=root / "model_store",
        var=root / "var",
    )


def test_containers_never_run_as_root() -> None:
    assert container_user(0, 0) == (CONTAINER_UID, CONTAINER_UID)
    assert container_user(1000, 100) == (1000, 100)


def test_env_file_keeps_other_settings_and_is_idempotent(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MG_HTTPS_PORT=9443\nMG_UID=5\n# note\n")
    assert update_env_file(env, {"MG_UID": "1000", "MG_GID": "100"}) is True
    assert env.read_text() == "MG_HTTPS_PORT=9443\n# note\nMG_UID=1000\nMG_GID=100\n"
    assert update_env_file(env, {"MG_UID": "1000", "MG_GID": "100"}) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="run as root, init hands files to uid 10001")
def test_root_hands_the_containers_files_over_and_keeps_the_ca_key(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    for folder in (paths.secrets / "jwt", paths.certs, paths.model_store / "iris" / "1"):
        folder.mkdir(parents=True)
    for path in (
        paths.secrets / "jwt" / "k1.pem",
        paths.secrets / "admin_password",
        paths.certs / "server-key.pem",
        paths.certs / "ca-key.pem",
        paths.model_store / "iris" / "1" / "manifest.json",
    ):
        path.write_text("x")
        path.chmod(0o600)

    made = ensure_compose_env(paths)

    assert len(made) == 2
    for path in (
        paths.secrets,
        paths.secrets / "jwt" / "k1.pem",
        paths.secrets / "admin_password",
        paths.certs / "server-key.pem",
        paths.model_store / "iris" / "1" / "manifest.json",
    ):
        assert path.stat().st_uid == CONTAINER_UID, path
        assert path.stat().st_mode & 0o077 == 0 or path.is_dir(), path
    assert (paths.certs / "ca-key.pem").stat().st_uid == 0
    assert (tmp_path / ".env").read_text() == f"MG_UID={CONTAINER_UID}\nMG_GID={CONTAINER_UID}\n"
    assert ensure_compose_env(paths) == []


def test_the_nginx_image_has_a_default_for_every_template_placeholder() -> None:
    """The container renders nginx/ with envsubst and refuses to start on a placeholder
    left unset: each one the templates use needs a default in nginx/entrypoint.sh."""
    root = Path(__file__).resolve().parents[2]
    templates = [
        root / "nginx" / "nginx.conf.template",
        *(root / "nginx" / "snippets").glob("*.conf"),
    ]
    used: set[str] = set()
    for template in templates:
        used |= set(re.findall(r"\$\{(MG_[A-Z0-9_]+)\}", template.read_text()))
    entrypoint = (root / "nginx" / "entrypoint.sh").read_text()
    defaulted = set(re.findall(r'^: "\$\{(MG_[A-Z0-9_]+):=', entrypoint, re.MULTILINE))
    # Or set by the script from another setting (MG_NGINX_DOCS from MG_PUBLIC_DOCS).
    defaulted |= set(re.findall(r"^\s*(?:[^#\n]*\)\s*)?(MG_[A-Z0-9_]+)=", entrypoint, re.M))
    exported = set(re.findall(r"MG_[A-Z0-9_]+", entrypoint[entrypoint.index("export ") :]))
    assert used - defaulted == set()
    assert defaulted - exported == set()
