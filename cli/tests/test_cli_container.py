"""The CLI image's entry point (compose's `init` and `cli`) and the certificate's names.

The entry point changes owners, so most of these run as root (as CI does); the compose
tier (tests/compose/test_compose_fresh_clone.py) runs it for real in its container.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from modelgate_cli import container
from modelgate_cli._certs import ensure_certificates, tls_hostnames
from modelgate_cli._docs import SERVICES, UI_FILES

ROOT = Path(__file__).resolve().parents[2]
OWNER = 4242  # the project folder's owner
_warm = False
CONTAINERS = (10001, 10001)  # MG_UID, MG_GID

as_root = pytest.mark.skipif(os.getuid() != 0, reason="changes file owners: needs root")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder other users can reach (pytest's own are root's alone). The entry point's
    child runs as another user, who may not read an interpreter installed in root's home:
    what it imports is imported here first, by a whole init (the fork inherits it)."""
    global _warm
    folder = Path(tempfile.mkdtemp(prefix="modelgate-container-", dir="/var/tmp"))
    if not _warm:
        from modelgate_cli._init import run_init
        from modelgate_cli._paths import ProjectPaths
        from modelgate_cli.main import app
        from typer.testing import CliRunner

        run_init(ProjectPaths(folder, folder / "c", folder / "s", folder / "m", folder / "v"))
        env = {"MG_ROOT": str(folder), "MG_SECRETS_DIR": str(folder / "s")}
        env["MG_VAR_DIR"] = str(folder / "v")
        listed = CliRunner().invoke(app, ["user", "list"], env=env)
        assert listed.exit_code == 0, listed.output
        shutil.rmtree(folder)
        folder.mkdir()
        _warm = True
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def names(server_pem: Path) -> set[str]:
    cert = x509.load_pem_x509_certificates(server_pem.read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in san}


# --- MG_TLS_HOSTNAMES -------------------------------------------------------------------------


def test_tls_hostnames_default_and_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MG_TLS_HOSTNAMES", raising=False)
    assert {str(n.value) for n in tls_hostnames()} == {"localhost", "127.0.0.1"}
    found = tls_hostnames(" gateway.lan , 192.168.1.20,::1,,Example.ORG ")
    assert [type(n) for n in found] == [x509.DNSName, x509.IPAddress, x509.IPAddress, x509.DNSName]
    assert str(found[3].value) == "example.org"


@pytest.mark.parametrize(
    "bad", ["gate way", "bad_name.lan", "-lead.lan", "a" * 64 + ".lan", "x/y", "999.1.1.1.1"]
)
def test_tls_hostnames_refuses_what_is_no_host(bad: str) -> None:
    with pytest.raises(ValueError, match="MG_TLS_HOSTNAMES"):
        tls_hostnames(bad)


def test_tls_hostnames_refuses_an_empty_list() -> None:
    with pytest.raises(ValueError, match="no host"):
        tls_hostnames(" , ,")


def test_changed_names_reissue_the_server_certificate_under_the_same_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure_certificates(certs, "localhost,127.0.0.1")
    ca = (certs / "ca.pem").read_bytes()
    assert names(certs / "server.pem") == {"localhost", "127.0.0.1"}
    assert ensure_certificates(certs, "localhost,127.0.0.1") == []
    made = ensure_certificates(certs, "localhost,127.0.0.1,gateway.lan")
    assert made == ["server certificate for localhost, 127.0.0.1, gateway.lan"]
    assert names(certs / "server.pem") == {"localhost", "127.0.0.1", "gateway.lan"}
    assert (certs / "ca.pem").read_bytes() == ca


def test_init_refuses_bad_hostnames_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelgate_cli.main import app
    from typer.testing import CliRunner

    monkeypatch.setenv("MG_ROOT", str(tmp_path))
    monkeypatch.setenv("MG_TLS_HOSTNAMES", "not a host")
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 2
    assert "MG_TLS_HOSTNAMES: 'not a host' is neither a host name nor an IP address" in (
        result.output
    )
    assert "Traceback" not in result.output


# --- the copies each service reads --------------------------------------------------------------


def project_files(project: Path) -> None:
    (project / "certs").mkdir(parents=True)
    (project / "secrets" / "jwt").mkdir(parents=True)
    for relative, text in {
        "certs/server.pem": "cert",
        "certs/server-key.pem": "key",
        "certs/ca-key.pem": "ca key",
        "secrets/jwks.json": "{}",
        "secrets/admin_password": "pw",
        "secrets/jwt/k1.pem": "k1",
        "secrets/jwt/k2.pem": "k2",
        "secrets/fernet_keyring.json": "ring",
        "secrets/model_signing_key": "private",
        "secrets/model_signing_key.pub": "public",
        "secrets/postgres_password": "pg",
        "secrets/database_url": "postgresql://",
        "secrets/redis_auth_password": "auth's",
        "secrets/redis_inference_password": "inference's",
        "secrets/redis_crypto_password": "crypto's",
        "secrets/redis_users.acl": "user auth on #...",
    }.items():
        (project / relative).write_text(text)
        (project / relative).chmod(0o600)


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@as_root
def test_publish_gives_each_mounted_service_its_own_files(tmp_path: Path) -> None:
    project, publish = tmp_path / "project", tmp_path / "publish"
    project_files(project)
    for service in ("nginx", "auth", "inference", "crypto", "redis"):
        (publish / service).mkdir(parents=True)
    done = container.publish(project, publish, *CONTAINERS)
    # No PostgreSQL volume mounted.
    assert done == ["nginx", "auth", "inference", "crypto", "redis"]
    assert listing(publish / "nginx") == {"server.pem", "server-key.pem"}
    assert listing(publish / "auth") == {
        "jwks.json",
        "admin_password",
        "jwt",
        "jwt/k1.pem",
        "jwt/k2.pem",
        "redis_auth_password",
    }
    assert listing(publish / "inference") == {
        "jwks.json",
        "model_signing_key.pub",
        "redis_inference_password",
    }
    assert listing(publish / "crypto") == {
        "jwks.json",
        "fernet_keyring.json",
        "redis_crypto_password",
    }
    # Redis gets the users' digests, never a service's password.
    assert listing(publish / "redis") == {"redis_users.acl"}
    assert (publish / "inference" / "redis_inference_password").read_text() == "inference's"
    for path in publish.rglob("*"):
        expected = 0o500 if path.is_dir() else 0o400
        assert owner_and_mode(path) == (*CONTAINERS, expected), path
    assert (publish / "crypto" / "fernet_keyring.json").read_text() == "ring"


@as_root
def test_publish_with_postgresql_gives_auth_its_url(tmp_path: Path) -> None:
    project, publish = tmp_path / "project", tmp_path / "publish"
    project_files(project)
    for service in ("auth", "postgres"):
        (publish / service).mkdir(parents=True)
    container.publish(project, publish, *CONTAINERS)
    assert "database_url" in listing(publish / "auth")
    assert listing(publish / "postgres") == {"postgres_password"}


@as_root
def test_publish_follows_rotations_atomically_and_leaves_unchanged_files_alone(
    tmp_path: Path,
) -> None:
    project, publish = tmp_path / "project", tmp_path / "publish"
    project_files(project)
    (publish / "auth").mkdir(parents=True)
    (publish / "crypto").mkdir(parents=True)
    container.publish(project, publish, *CONTAINERS)
    jwks_inode = (publish / "auth" / "jwks.json").stat().st_ino
    ring_inode = (publish / "crypto" / "fernet_keyring.json").stat().st_ino

    (project / "secrets" / "fernet_keyring.json").write_text("rotated ring")
    (project / "secrets" / "jwt" / "k1.pem").unlink()  # a retired signing key
    (project / "secrets" / "jwt" / "k3.pem").write_text("k3")
    container.publish(project, publish, *CONTAINERS)

    assert (publish / "crypto" / "fernet_keyring.json").read_text() == "rotated ring"
    assert (publish / "crypto" / "fernet_keyring.json").stat().st_ino != ring_inode
    assert (publish / "auth" / "jwks.json").stat().st_ino == jwks_inode
    assert listing(publish / "auth" / "jwt") == {"k2.pem", "k3.pem"}
    assert not [p for p in publish.rglob(".*")]  # no staging file left


def _owned_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *services: str
) -> tuple[Path, Path, Path]:
    """A project folder owned by OWNER, publish folders for ``services`` and a var folder,
    wired into the container entry point, whose containers' user is CONTAINERS and whose
    TLS host names are the default ones; (project, publish, var)."""
    project, publish, var = tmp_path / "project", tmp_path / "publish", tmp_path / "var"
    for folder in ("certs", "secrets", "model_store"):
        (project / folder).mkdir(parents=True)
    os.chown(project, OWNER, OWNER)
    for folder in project.iterdir():
        os.chown(folder, OWNER, OWNER)
    for service in services:
        (publish / service).mkdir(parents=True)
    (var / "data").mkdir(parents=True)
    monkeypatch.setattr(container, "PROJECT", project)
    monkeypatch.setattr(container, "PUBLISH", publish)
    monkeypatch.setattr(container, "VAR", var)
    monkeypatch.setenv("MG_UID", str(CONTAINERS[0]))
    monkeypatch.setenv("MG_GID", str(CONTAINERS[1]))
    monkeypatch.delenv("MG_TLS_HOSTNAMES", raising=False)
    return project, publish, var


@as_root
def test_entry_point_runs_init_as_the_project_owner_and_hands_out_copies(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = open_tmp
    project, publish, var = _owned_project(
        tmp_path, monkeypatch, "nginx", "auth", "inference", "crypto", "redis"
    )
    (var / "redis").mkdir()  # Redis's volume, as the image made it: another user's
    os.chown(var / "redis", 999, 999)

    assert container.main(["init"]) == 0

    password = project / "secrets" / "admin_password"
    assert owner_and_mode(password) == (OWNER, OWNER, 0o600)
    assert owner_and_mode(project / "certs" / "ca-key.pem") == (OWNER, OWNER, 0o600)
    assert (project / "certs" / "ca.pem").stat().st_uid == OWNER
    assert all(p.stat().st_uid == OWNER for p in (project / "model_store").rglob("*"))
    assert not (project / ".env").exists()  # the native init's compose settings: not here
    copy = publish / "auth" / "admin_password"
    assert copy.read_bytes() == password.read_bytes()
    assert owner_and_mode(copy) == (*CONTAINERS, 0o400)
    assert owner_and_mode(var / "log" / "audit.jsonl") == (*CONTAINERS, 0o660)
    assert owner_and_mode(var / "data") == (*CONTAINERS, 0o700)
    assert owner_and_mode(var / "redis") == (*CONTAINERS, 0o700)
    # Each service signs in to Redis with its own password, Redis knows their digests.
    for service in ("auth", "inference", "crypto"):
        own = publish / service / f"redis_{service}_password"
        assert own.read_bytes() == (project / "secrets" / own.name).read_bytes(), service
        assert owner_and_mode(own) == (*CONTAINERS, 0o400), service
    acl = publish / "redis" / "redis_users.acl"
    assert acl.read_bytes() == (project / "secrets" / "redis_users.acl").read_bytes()
    assert owner_and_mode(acl) == (*CONTAINERS, 0o400)

    # Idempotent: nothing is made again, nothing overwritten.
    before = password.read_bytes()
    assert container.main(["init"]) == 0
    assert password.read_bytes() == before


@as_root
def test_entry_point_runs_user_commands_as_the_containers_user(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _, _, var = _owned_project(open_tmp, monkeypatch, "auth")
    monkeypatch.setenv("MG_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens
    monkeypatch.delenv("MG_AUTH_DATABASE_URL", raising=False)
    monkeypatch.delenv("MG_AUTH_DATABASE_URL_FILE", raising=False)
    assert container.main(["init"]) == 0
    capfd.readouterr()

    assert container.main(["user", "add", "carol", "--generate", "--show"]) == 0
    out = capfd.readouterr().out
    assert "created user carol" in out and "password: " in out
    databases = [p for p in (var / "data").rglob("*") if p.is_file()]
    assert databases and all(p.stat().st_uid == 10001 for p in databases)
    assert container.main(["user", "add", "carol", "--generate", "--show"]) == 1
    assert capfd.readouterr().err == "error: user already exists\n"

    assert container.main(["no-such-command"]) == 2


@as_root
def test_init_writes_the_docs_nginx_serves_while_the_switch_is_on(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tmp_path = open_tmp
    project, _, _ = _owned_project(tmp_path, monkeypatch, "nginx")
    shutil.copytree(ROOT / "nginx", project / "nginx")  # the clone's, which `docs` reads
    ui, docs = tmp_path / "swagger-ui", tmp_path / "docs"
    ui.mkdir()
    docs.mkdir()
    for name in UI_FILES:
        (ui / name).write_text(f"/* {name} */")
    monkeypatch.setattr(container, "DOCS", docs)
    monkeypatch.setenv("MG_SWAGGER_UI_DIR", str(ui))
    for service in SERVICES:  # imported here: the child that builds the document inherits it
        importlib.import_module(f"modelgate_{service}.main")

    monkeypatch.setenv("MG_PUBLIC_DOCS", "1")
    assert container.main(["init"]) == 0
    site = docs / "site"
    assert "/predict" in json.loads((site / "openapi.json").read_text())["paths"]
    assert (site / "ui" / "swagger-ui-bundle.js").read_text() == "/* swagger-ui-bundle.js */"
    # Written by the project's owner, readable by nginx's user (any other).
    assert owner_and_mode(site / "openapi.json") == (OWNER, OWNER, 0o644)
    assert owner_and_mode(site / "ui" / "index.html")[2] & 0o004
    assert owner_and_mode(site / "ui")[2] & 0o005 == 0o005

    # Off: no site left for nginx to serve.
    monkeypatch.setenv("MG_PUBLIC_DOCS", "0")
    assert container.main(["init"]) == 0
    assert list(docs.iterdir()) == []

    capfd.readouterr()
    monkeypatch.setenv("MG_PUBLIC_DOCS", "sometimes")
    assert container.main(["init"]) == 2
    assert "MG_PUBLIC_DOCS must be 1 or 0, not 'sometimes'" in capfd.readouterr().err


@as_root
def test_the_containers_user_is_never_root(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MG_UID", "0")
    assert container.main(["init"]) == 2
    assert "MG_UID must not be 0" in capfd.readouterr().err


def test_a_certificate_of_another_ca_is_never_replaced(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    ensure_certificates(theirs, "real.example.org")
    ensure_certificates(ours, "localhost")
    for name in ("server.pem", "server-key.pem"):
        (ours / name).write_bytes((theirs / name).read_bytes())
    assert ensure_certificates(ours, "localhost,gateway.lan") == []
    assert (ours / "server.pem").read_bytes() == (theirs / "server.pem").read_bytes()
