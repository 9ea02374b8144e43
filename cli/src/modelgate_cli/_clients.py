"""`modelgate client …`: service accounts (OAuth2 clients) from the operator's side.

Works on the user database directly through the auth service's own logic, like
`modelgate user …`. A client's secret is printed only with ``--show``, once, when it
is made (``add``, ``rotate-secret``); only its hash is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from modelgate_auth.clients import ClientService
from modelgate_auth.config import AuthSettings
from modelgate_auth.schemas import CLIENT_SCOPES, ClientCreate, ClientUpdate
from pydantic import ValidationError

from ._auth import ACTOR, _fail, _push, _service, _validation_message

client_app = typer.Typer(
    help="Manage service accounts (OAuth2 clients; works on the database directly).",
    no_args_is_help=True,
)

Show = Annotated[bool, typer.Option("--show", help="print the secret (shown only this once)")]
Reference = Annotated[str, typer.Argument(help="the client's id or name")]


@contextmanager
def _clients() -> Iterator[tuple[ClientService, AuthSettings]]:
    with _service() as (service, settings):
        yield ClientService(service), settings


def _need_show(show: bool) -> None:
    if not show:
        raise _fail("the secret is shown only once, when it is made: add --show", 2)


@client_app.command("add")
def client_add(
    name: Annotated[str, typer.Argument(help="3-64 characters of A-Z a-z 0-9 _ . -")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help=f"a scope its tokens may carry (repeat): {CLIENT_SCOPES}"),
    ],
    show: Show = False,
) -> None:
    """Register a service account; prints its client id and, with --show, its secret."""
    _need_show(show)
    try:
        data = ClientCreate.model_validate({"name": name, "scopes": scope})
    except ValidationError as exc:
        raise _fail(_validation_message(exc), 2) from None
    with _clients() as (clients, _):
        outcome = clients.create(data, actor=ACTOR)
    typer.echo(f"created client {outcome.client.name}")
    typer.echo(f"client_id: {outcome.client.client_id}")
    typer.echo(f"client_secret: {outcome.secret}")
    typer.echo(f"scopes: {outcome.client.scopes}")


@client_app.command("list")
def client_list() -> None:
    """List service accounts: id, name, state, scopes (never secrets)."""
    with _clients() as (clients, _):
        rows = clients.list(0, 1_000_000)
    typer.echo(f"{'CLIENT_ID':<24} {'NAME':<32} {'STATE':<9} SCOPES")
    for client in rows:
        state = "disabled" if client.disabled else "active"
        typer.echo(f"{client.client_id:<24} {client.name:<32} {state:<9} {client.scopes}")


def _update(reference: str, change: dict[str, object]) -> tuple[str, str | None]:
    update = ClientUpdate.model_validate(change)
    with _clients() as (clients, settings):
        client_id = clients.resolve(reference)
        outcome = clients.update(client_id, update, actor=ACTOR)
        _push(settings, outcome.revocations, "client")
    return outcome.client.name, outcome.secret


@client_app.command("rotate-secret")
def client_rotate_secret(reference: Reference, show: Show = False) -> None:
    """A new secret (printed with --show); the old one and every token stop working."""
    _need_show(show)
    name, secret = _update(reference, {"rotate_secret": True})
    typer.echo(f"new secret for {name}")
    typer.echo(f"client_secret: {secret}")


@client_app.command("disable")
def client_disable(reference: Reference) -> None:
    """Disable a service account: no more tokens, existing ones revoked."""
    name, _ = _update(reference, {"disabled": True})
    typer.echo(f"disabled client {name}")


@client_app.command("enable")
def client_enable(reference: Reference) -> None:
    """Enable a disabled service account again."""
    name, _ = _update(reference, {"disabled": False})
    typer.echo(f"enabled client {name}")


@client_app.command("remove")
def client_remove(
    reference: Reference,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a service account; its existing tokens are revoked."""
    if not yes:
        typer.confirm(f"Remove client {reference}?", abort=True)
    with _clients() as (clients, settings):
        client_id = clients.resolve(reference)
        outcome = clients.delete(client_id, actor=ACTOR)
        typer.echo(f"removed client {outcome.client.name}")
        _push(settings, outcome.revocations, "client")
