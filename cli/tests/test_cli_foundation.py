"""The foundation commands of `modelgate`: init, render-nginx, preflight, config-reference."""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from modelgate_cli._render import render_text
from modelgate_cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MG_ROOT", str(tmp_path))
    for name in ("MG_CERTS_DIR", "MG_SECRETS_DIR", "MG_MODEL_STORE", "MG_VAR_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_certificates_are_valid_and_short_lived(project: Path) -> None:
    from modelgate_cli._certs import ensure_certificates

    ensure_certificates(project / "certs")
    pem = (project / "certs" / "server.pem").read_bytes()
    cert = x509.load_pem_x509_certificates(pem)[0]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=366)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    context = ssl.create_default_context(cafile=str(project / "certs" / "ca.pem"))
    assert context.cert_store_stats()["x509_ca"] == 1
    for key in ("ca-key.pem", "server-key.pem"):
        assert (project / "certs" / key).stat().st_mode & 0o777 == 0o600
    assert ensure_certificates(project / "certs") == []  # idempotent


def test_init_creates_admin_password_once(project: Path) -> None:
    first = runner.invoke(app, ["init"])
    assert first.exit_code == 0, first.output
    password = (project / "secrets" / "admin_password").read_text()
    assert password.strip() not in first.output  # never printed
    assert (project / "secrets" / "admin_password").stat().st_mode & 0o777 == 0o600
    assert (project / "secrets").stat().st_mode & 0o777 == 0o700
    runner.invoke(app, ["init"])
    assert (project / "secrets" / "admin_password").read_text() == password


def test_init_creates_the_database_secrets_once(project: Path) -> None:
    first = runner.invoke(app, ["init"])
    assert first.exit_code == 0, first.output
    password = (project / "secrets" / "postgres_password").read_text()
    url = (project / "secrets" / "database_url").read_text()
    assert len(password) == 48 and password not in first.output
    assert url == f"postgresql+psycopg://modelgate:{password}@postgres:5432/modelgate"
    for name in ("postgres_password", "database_url"):
        assert (project / "secrets" / name).stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["init"])
    assert "database_url" not in again.output
    assert (project / "secrets" / "database_url").read_text() == url


def test_render_replaces_only_our_placeholders() -> None:
    text = render_text("listen ${MG_A}; set $host ${MG_B};", {"MG_A": "1", "MG_B": "x"})
    assert text == "listen 1; set $host x;"
    with pytest.raises(KeyError, match="MG_MISSING"):
        render_text("${MG_MISSING}", {})


@pytest.mark.parametrize("upstreams", ["static", "dns"])
def test_rendered_nginx_config_is_valid(
    project: Path, monkeypatch: pytest.MonkeyPatch, upstreams: str
) -> None:
    """Both ways of finding the services: fixed upstreams (native, compose) and names
    re-resolved through DNS (Swarm)."""
    import shutil

    from modelgate_cli._certs import ensure_certificates
    from modelgate_cli._paths import ProjectPaths
    from modelgate_cli._render import render_nginx

    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (make system-deps)")
    ensure_certificates(project / "certs")
    monkeypatch.setenv("MG_NGINX_UPSTREAMS", upstreams)
    conf = render_nginx(ProjectPaths.from_env(), source=ROOT / "nginx")
    result = subprocess.run(
        ["nginx", "-t", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "${" not in conf.read_text()
    assert f"snippets/upstreams-{upstreams}.conf;" in conf.read_text()


def test_preflight_reports_a_busy_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("MG_HTTPS_PORT", str(busy.getsockname()[1]))
        result = runner.invoke(app, ["preflight"])
    assert result.exit_code == 1
    assert "MG_HTTPS_PORT" in result.output


def test_preflight_ignores_connections_of_a_stopped_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port whose listener is gone but whose last connections sit in TIME_WAIT is free:
    `make down && make up` must work at once."""
    import socket

    with socket.socket() as listener:
        # As nginx, gunicorn and Redis do; their connections' TIME_WAIT inherits it.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server side closes first: its end goes to TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as probe:
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))  # what a naive check sees
    monkeypatch.setenv("MG_HTTPS_PORT", str(port))
    result = runner.invoke(app, ["preflight"])
    assert "MG_HTTPS_PORT" not in result.output


def test_configuration_reference_is_current() -> None:
    generated = runner.invoke(app, ["config-reference"]).output
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == generated, (
        "docs/configuration.md is stale: run `.venv/bin/modelgate config-reference > "
        "docs/configuration.md`"
    )


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "prepare", "status", "preflight", "render-nginx", "config-reference"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output
