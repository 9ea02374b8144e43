"""`modelgate keys`: rotate and retire the stack's keys.

Every command edits a file in secrets/ atomically; running services notice the change
on their next request, so no restart is needed.
"""

from __future__ import annotations

from typing import Annotated

import typer
from modelgate_common import audit
from modelgate_crypto.fernet_keyring import KeyringError, add_key, load_keyring, retire_key

from ._fernet import keyring_path
from ._paths import ProjectPaths

app = typer.Typer(help="Rotate and retire signing and encryption keys.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command("list-fernet")
def list_fernet() -> None:
    """List the Fernet keyring's keys (ids and creation times, never key material)."""
    try:
        keyring = load_keyring(keyring_path(ProjectPaths.from_env()))
    except KeyringError as exc:
        raise _fail(str(exc)) from None
    for position, key in enumerate(keyring.keys):
        role = "newest: encrypts and decrypts" if position == 0 else "decrypts only"
        typer.echo(f"{key.id:>4}  {key.created}  {role}")


@app.command("rotate-fernet")
def rotate_fernet() -> None:
    """Add a new newest Fernet key. New ciphertexts use it; old ones keep decrypting."""
    path = keyring_path(ProjectPaths.from_env())
    try:
        key = add_key(path)
        ids = load_keyring(path).ids
    except KeyringError as exc:
        raise _fail(str(exc)) from None
    audit("key_rotated", kind="fernet", key_id=key.id)
    typer.echo(f"added Fernet key {key.id}; keys now {ids} (newest first)")
    typer.echo("re-encrypt old ciphertexts with POST /crypto/rotate before retiring old keys")


@app.command("retire-fernet")
def retire_fernet(
    key_id: Annotated[
        int | None, typer.Option("--key-id", help="the key to retire; default the oldest")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Remove an old Fernet key (never the newest). Ciphertexts under it stop decrypting."""
    path = keyring_path(ProjectPaths.from_env())
    try:
        keyring = load_keyring(path)
    except KeyringError as exc:
        raise _fail(str(exc)) from None
    target = keyring.keys[-1].id if key_id is None else key_id
    if target not in keyring.ids:
        raise _fail(f"no Fernet key with id {target}; keys are {keyring.ids}")
    if target == keyring.newest.id:
        raise _fail(f"key {target} is the newest key and cannot be retired; rotate first")
    if not yes:
        typer.confirm(
            f"Retire Fernet key {target}? Ciphertexts not yet rotated off it will never "
            "decrypt again.",
            abort=True,
        )
    try:
        retired = retire_key(path, target)
        ids = load_keyring(path).ids
    except KeyringError as exc:
        raise _fail(str(exc)) from None
    audit("key_retired", kind="fernet", key_id=retired.id)
    typer.echo(f"retired Fernet key {retired.id}; keys now {ids} (newest first)")
