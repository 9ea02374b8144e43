"""`modelgate` inside the compose stack: the entry point of the CLI image.

Compose runs it as the one-shot ``init`` service before every start and as ``cli``
(``docker compose run --rm cli user add alice``). The project folder is mounted at
/project; its certs/, secrets/ and model_store/ are the originals, the same files the
native stack uses, owned by whoever owns the project folder. The service containers run as
another, fixed user (MG_UID:MG_GID, 10001 unless set) that cannot read those 0600 files, so
they read copies: after every command this entry point copies each service's files into that
service's own volume (mounted here under /run/modelgate/publish/<service>), owned by the
containers' user, mode 0400, replaced atomically (the services notice a rotated key on their
next request, as natively).

The process starts as root with the few capabilities this needs (compose.yaml: CHOWN,
DAC_OVERRIDE, FOWNER, SETUID, SETGID) and runs the command itself in a child without them:
as the project folder's owner for what changes the project folder (init, keys, models), as
the containers' user for what works on the containers' data (users, the database, status).

With MG_PUBLIC_DOCS on, ``init`` also writes what nginx serves at /docs and /openapi.json
(``modelgate docs``: Swagger UI's files, which the image carries, and the gateway's OpenAPI
document) into the ``docs`` volume, which nginx mounts read-only; with it off, it removes
them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from ._docs import DocsError, public_docs_enabled

PROJECT = Path(os.environ.get("MG_PROJECT_DIR", "/project"))
PUBLISH = Path(os.environ.get("MG_PUBLISH_DIR", "/run/modelgate/publish"))
VAR = Path(os.environ.get("MG_VAR_DIR", "/var/lib/modelgate"))
# The docs volume; nginx serves its site/ folder (MG_DOCS_DIR in compose.yaml).
DOCS = Path(os.environ.get("MG_DOCS_PUBLISH_DIR", "/run/modelgate/docs"))

# What each service reads, by the name it reads it under (a folder is copied whole).
# database_url goes to auth only when the stack has PostgreSQL (its volume is mounted).
SERVICE_FILES: dict[str, dict[str, str]] = {
    "nginx": {"server.pem": "certs/server.pem", "server-key.pem": "certs/server-key.pem"},
    "auth": {
        "jwks.json": "secrets/jwks.json",
        "admin_password": "secrets/admin_password",
        "jwt": "secrets/jwt",
        "redis_auth_password": "secrets/redis_auth_password",
    },
    "inference": {
        "jwks.json": "secrets/jwks.json",
        "model_signing_key.pub": "secrets/model_signing_key.pub",
        "redis_inference_password": "secrets/redis_inference_password",
    },
    "crypto": {
        "jwks.json": "secrets/jwks.json",
        "fernet_keyring.json": "secrets/fernet_keyring.json",
        "redis_crypto_password": "secrets/redis_crypto_password",
    },
    # Its ACL users: each service's name and a SHA-256 digest of its password.
    "redis": {"redis_users.acl": "secrets/redis_users.acl"},
    "postgres": {"postgres_password": "secrets/postgres_password"},
}
POSTGRES_AUTH_FILES = {"database_url": "secrets/database_url"}

# Commands that work on what the containers hold (the database of users and clients,
# Redis, the services):
# run as the containers' user. Every other command runs as the project folder's owner.
CONTAINER_COMMANDS = {"user", "client", "db", "status"}


def container_user() -> tuple[int, int]:
    return int(os.environ.get("MG_UID", "10001")), int(os.environ.get("MG_GID", "10001"))


def _write_copy(source: Path, target: Path, uid: int, gid: int) -> bool:
    """Replace ``target`` with ``source``'s bytes, owned by uid:gid, mode 0400; False when
    it already held them."""
    data = source.read_bytes()
    if target.is_file() and target.read_bytes() == data:
        st = target.stat()
        if (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o400):
            return False
    staging = target.with_name(f".{target.name}.new")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o400)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staging, target)
    return True


def _publish_folder(source: Path, target: Path, uid: int, gid: int) -> None:
    target.mkdir(mode=0o500, exist_ok=True)
    os.chown(target, uid, gid)
    os.chmod(target, 0o500)
    wanted = {p.name for p in source.iterdir() if p.is_file()}
    for name in sorted(wanted):
        _write_copy(source / name, target / name, uid, gid)
    for stale in target.iterdir():
        if stale.name not in wanted:
            stale.unlink()


def publish(project: Path, publish_root: Path, uid: int, gid: int) -> list[str]:
    """Copy every mounted service's files from the project folder into its volume."""
    done = []
    for service, files in SERVICE_FILES.items():
        target_root = publish_root / service
        if not target_root.is_dir():
            continue  # not part of this stack (the PostgreSQL overlay's volume)
        os.chown(target_root, uid, gid)
        target_root.chmod(0o500)
        wanted = dict(files)
        if service == "auth" and (publish_root / "postgres").is_dir():
            wanted.update(POSTGRES_AUTH_FILES)
        for name, relative in wanted.items():
            source = project / relative
            if source.is_dir():
                _publish_folder(source, target_root / name, uid, gid)
            elif source.is_file():
                _write_copy(source, target_root / name, uid, gid)
        done.append(service)
    return done


def hand_to_containers(folder: Path, uid: int, gid: int, mode: int = 0o700) -> None:
    """The containers' writable state (database, audit log) belongs to their user."""
    if not folder.is_dir():
        return
    for path in [folder, *folder.rglob("*")]:
        st = path.lstat()
        if path.is_symlink():
            continue
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid)
    folder.chmod(mode)


def _prepare_audit_log(log_dir: Path, uid: int, gid: int) -> None:
    """The audit log is the containers' and writable by their group, which the project
    owner's commands run in: what an operator changes lands in the services' audit trail."""
    log_dir.mkdir(parents=True, exist_ok=True)
    audit_file = log_dir / "audit.jsonl"
    audit_file.touch(exist_ok=True)
    hand_to_containers(log_dir, uid, gid, 0o770)
    audit_file.chmod(0o660)


def publish_docs(
    docs_root: Path, owner: tuple[int, int], groups: list[int], env: dict[str, str]
) -> int:
    """/docs for nginx: ``modelgate docs --out <docs_root>/site`` as the project folder's
    owner (it reads nginx's template from the project folder) when MG_PUBLIC_DOCS is on,
    else no site at all; the exit status."""
    if not docs_root.is_dir():
        return 0  # no docs volume here: nothing serves /docs
    try:
        enabled = public_docs_enabled()
    except DocsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    site = docs_root / "site"
    if not enabled:
        for folder in (site, site.with_name(site.name + ".new")):
            if folder.exists():
                shutil.rmtree(folder)
        return 0
    # The owner writes it; nginx (another user) reads it: files 0644, folders 0755.
    os.chown(docs_root, *owner)
    docs_root.chmod(0o755)
    return _run_as(*owner, groups, ["docs", "--out", str(site)], env)


def _run_as(uid: int, gid: int, groups: list[int], argv: list[str], env: dict[str, str]) -> int:
    """Run the command in a forked child as uid:gid; its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.getuid() != uid or os.getgid() != gid:
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
            os.environ.update(env)
            code = _command(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except click.exceptions.Exit as stop:
            code = stop.exit_code
        except BaseException as exc:  # the child's last word, then its exit status
            print(f"error: {exc}", file=sys.stderr)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _command(argv: list[str]) -> int:
    from .main import app, report_init

    if argv == ["init"]:
        # The native `init` also writes .env for compose run on the host's files; here
        # compose runs already, and the services read the copies.
        report_init(compose_env=False)
        return 0
    app(argv, prog_name="modelgate")
    return 0


def main(argv: list[str]) -> int:
    uid, gid = container_user()
    if os.getuid() != 0:
        # Started as a user already (docker run --user ...): just the command, no copies.
        return _command(argv)
    if uid == 0:
        print("error: MG_UID must not be 0: the containers never run as root", file=sys.stderr)
        return 2
    owner = PROJECT.stat()
    paths = {
        "MG_ROOT": str(PROJECT),
        "MG_CERTS_DIR": str(PROJECT / "certs"),
        "MG_MODEL_STORE": str(PROJECT / "model_store"),
        "MG_VAR_DIR": str(VAR),
    }
    _prepare_audit_log(VAR / "log", uid, gid)
    if argv and argv[0] in CONTAINER_COMMANDS:
        # What auth itself reads: its copies of the secrets.
        env = {**paths, "MG_SECRETS_DIR": str(PUBLISH / "auth")}
        hand_to_containers(VAR / "data", uid, gid)
        status = _run_as(uid, gid, [], argv, env)
    else:
        env = {**paths, "MG_SECRETS_DIR": str(PROJECT / "secrets")}
        status = _run_as(owner.st_uid, owner.st_gid, [gid], argv, env)
        if argv == ["init"] and status == 0:
            status = publish_docs(DOCS, (owner.st_uid, owner.st_gid), [gid], env)
    publish(PROJECT, PUBLISH, uid, gid)
    hand_to_containers(VAR / "data", uid, gid)
    # Redis's append-only file (its volume, mounted here): Redis runs as the containers' user.
    hand_to_containers(VAR / "redis", uid, gid)
    _prepare_audit_log(VAR / "log", uid, gid)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
