"""The auth service from the operator's side: `modelgate user …`, the JWT commands of
`modelgate keys …`, and the first-run signing key.

Every command works on the user database and key files directly, through the
auth service's own logic (no HTTP). Revocations it causes are written to the
database and pushed to Redis at once when Redis answers; otherwise the running
auth service pushes them within seconds. Nothing secret is printed unless
``--show`` asks for it.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import redis
import typer
from modelgate_auth.config import AuthSettings
from modelgate_auth.keys import KeyStore, KeyStoreError
from modelgate_auth.main import build_service
from modelgate_auth.revocation import PendingRevocation, push_sync
from modelgate_auth.schemas import PASSWORD_MAX, PASSWORD_MIN, UserCreate, UserUpdate
from modelgate_auth.service import AuthService
from modelgate_common import CommonSettings, ServiceError, audit
from pydantic import ValidationError

from ._paths import ProjectPaths
from .keys import app as keys_app

user_app = typer.Typer(help="Manage users (works on the database directly).", no_args_is_help=True)

ACTOR = "cli"


def auth_settings(paths: ProjectPaths) -> AuthSettings:
    # The CLI writes revocations as the auth service does, so it signs in to Redis as auth
    # unless MG_REDIS_USERNAME says otherwise (empty: no sign-in).
    common = CommonSettings(
        secrets_dir=paths.secrets,
        var_dir=paths.var,
        redis_username=os.environ.get("MG_REDIS_USERNAME", "auth"),
    )
    return AuthSettings(common=common)


def _keystore(settings: AuthSettings) -> KeyStore:
    return KeyStore(settings.jwt_keys_path, settings.common.jwks_path, settings.jwt_key_bits)


def ensure_jwt_signing_key(paths: ProjectPaths) -> list[str]:
    """`modelgate init` step: the first RS256 signing key and the public JWKS."""
    kid = _keystore(auth_settings(paths)).ensure()
    return [f"JWT signing key {kid} (secrets/jwt/, secrets/jwks.json)"] if kid else []


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "input"
    return f"{field}: {first.get('msg', 'invalid')}"


@contextmanager
def _service() -> Iterator[tuple[AuthService, AuthSettings]]:
    settings = auth_settings(ProjectPaths.from_env())
    service, _ = build_service(settings)
    try:
        yield service, settings
    except ServiceError as exc:
        raise _fail(exc.message) from None
    except ValidationError as exc:
        raise _fail(_validation_message(exc), 2) from None
    finally:
        service.engine.dispose()


def _push(
    settings: AuthSettings, revocations: list[PendingRevocation], holder: str = "user"
) -> None:
    if not revocations:
        return
    client = redis.Redis.from_url(
        settings.common.redis_url,
        **settings.common.redis_credentials(),
        socket_connect_timeout=settings.common.redis_connect_timeout,
        socket_timeout=settings.common.redis_socket_timeout,
    )
    try:
        pushed = push_sync(client, revocations)
    finally:
        client.close()
    if pushed:
        typer.echo(f"existing tokens of the {holder} are revoked")
    else:
        typer.echo(
            f"existing tokens of the {holder} are revoked in the database; Redis did not answer, "
            "so the running auth service will push the revocation within "
            f"{settings.revocation_sync_interval:g} s"
        )


def _read_password(password_stdin: bool, generate: bool, show: bool) -> str:
    if password_stdin and generate:
        raise _fail("choose one of --password-stdin and --generate", 2)
    if generate:
        if not show:
            raise _fail("a generated password is only useful when shown: add --show", 2)
        return secrets.token_urlsafe(24)
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise _fail("no terminal to ask for a password: use --password-stdin or --generate", 2)
    return str(
        typer.prompt(
            f"Password ({PASSWORD_MIN}-{PASSWORD_MAX} characters)",
            hide_input=True,
            confirmation_prompt=True,
        )
    )


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from the first line of stdin")
]
Generate = Annotated[bool, typer.Option("--generate", help="generate a random password")]
Show = Annotated[bool, typer.Option("--show", help="print the generated password")]


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="3-32 characters of a-z 0-9 _ . -")],
    role: Annotated[
        str, typer.Option(help="user, analyst (also gets class probabilities) or admin")
    ] = "user",
    full_name: Annotated[str | None, typer.Option(help="display name (HTML is removed)")] = None,
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
    show: Show = False,
) -> None:
    """Create a user. The password is asked for (hidden) unless --password-stdin or
    --generate --show."""
    password = _read_password(password_stdin, generate, show)
    with _service() as (service, _):
        try:
            data = UserCreate.model_validate(
                {"username": username, "password": password, "role": role, "full_name": full_name}
            )
        except ValidationError as exc:
            raise _fail(_validation_message(exc), 2) from None
        user = service.create_user(data, actor=ACTOR)
    typer.echo(f"created {user.role} {user.username}")
    if generate and show:
        typer.echo(f"password: {password}")


@user_app.command("list")
def user_list() -> None:
    """List users: name, role, state, full name."""
    with _service() as (service, _):
        users = service.list_users(0, 1_000_000)
    typer.echo(f"{'USERNAME':<32} {'ROLE':<7} {'STATE':<9} FULL NAME")
    for user in users:
        state = "disabled" if user.disabled else "active"
        typer.echo(f"{user.username:<32} {user.role:<7} {state:<9} {user.full_name or ''}")


@user_app.command("set-role")
def user_set_role(
    username: str,
    role: Annotated[
        str, typer.Argument(help="user, analyst (also gets class probabilities) or admin")
    ],
) -> None:
    """Change a user's role; their existing tokens are revoked."""
    with _service() as (service, settings):
        try:
            update = UserUpdate.model_validate({"role": role})
        except ValidationError as exc:
            raise _fail(_validation_message(exc), 2) from None
        outcome = service.update_user(username, update, actor=ACTOR)
        typer.echo(f"{username} is now {role}")
        _push(settings, outcome.revocations)


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable a user: no more logins, existing tokens revoked."""
    with _service() as (service, settings):
        outcome = service.update_user(username, UserUpdate(disabled=True), actor=ACTOR)
        typer.echo(f"disabled {username}")
        _push(settings, outcome.revocations)


@user_app.command("enable")
def user_enable(username: str) -> None:
    """Enable a disabled user again."""
    with _service() as (service, _):
        service.update_user(username, UserUpdate(disabled=False), actor=ACTOR)
    typer.echo(f"enabled {username}")


@user_app.command("set-password")
def user_set_password(
    username: str,
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
    show: Show = False,
) -> None:
    """Set a user's password; their existing tokens are revoked."""
    password = _read_password(password_stdin, generate, show)
    with _service() as (service, settings):
        try:
            update = UserUpdate.model_validate({"password": password})
        except ValidationError as exc:
            raise _fail(_validation_message(exc), 2) from None
        outcome = service.update_user(username, update, actor=ACTOR)
        typer.echo(f"password of {username} changed")
        if generate and show:
            typer.echo(f"password: {password}")
        _push(settings, outcome.revocations)


@user_app.command("remove")
def user_remove(
    username: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a user; their existing tokens are revoked."""
    if not yes:
        typer.confirm(f"Remove user {username}?", abort=True)
    with _service() as (service, settings):
        outcome = service.delete_user(username, actor=ACTOR)
        typer.echo(f"removed {username}")
        _push(settings, outcome.revocations)


# -- keys: JWT signing keys (registered on `modelgate keys`) ------------------------------
@keys_app.command("list-jwt")
def list_jwt() -> None:
    """List the JWT signing keys, newest (signing) first; never key material."""
    store = _keystore(auth_settings(ProjectPaths.from_env()))
    for info in store.describe():
        role = "newest: signs and verifies" if info.signing else "verifies only"
        private = "" if info.has_private_key else " (no private key)"
        typer.echo(f"{info.kid}  {role}{private}")


@keys_app.command("rotate-jwt")
def rotate_jwt() -> None:
    """Add a new JWT signing key. New tokens use it within a second; tokens signed by
    older keys keep verifying until they expire."""
    settings = auth_settings(ProjectPaths.from_env())
    store = _keystore(settings)
    try:
        kid = store.rotate()
    except (KeyStoreError, OSError) as exc:
        raise _fail(str(exc)) from None
    audit("key_rotated", kind="jwt", key_id=kid)
    typer.echo(f"added JWT signing key {kid}; keys now {store.kids()} (newest first)")
    wait = settings.access_token_ttl + settings.common.jwt_leeway
    typer.echo(f"retire older keys with `modelgate keys retire-jwt` after {wait} s")


@keys_app.command("retire-jwt")
def retire_jwt(
    kid: Annotated[str | None, typer.Argument(help="the key to retire; default the oldest")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="retire even if its tokens may still be valid")
    ] = False,
) -> None:
    """Stop trusting an old JWT signing key and delete it (never the newest key)."""
    settings = auth_settings(ProjectPaths.from_env())
    store = _keystore(settings)
    kids = store.kids()
    target = kid if kid is not None else (kids[-1] if kids else "")
    try:
        store.retire(
            target, min_age=settings.access_token_ttl + settings.common.jwt_leeway, force=force
        )
    except (KeyStoreError, OSError) as exc:
        raise _fail(str(exc)) from None
    audit("key_retired", kind="jwt", key_id=target)
    typer.echo(f"retired JWT signing key {target}; keys now {store.kids()} (newest first)")
