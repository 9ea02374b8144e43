"""Service accounts: OAuth2 confidential clients and the client_credentials grant
(RFC 6749 §4.4).

A client has a random id, a name, a secret (shown once, stored as an argon2id hash
like a password) and the scopes its tokens may carry. Its tokens have the subject
``client:<client_id>`` (a user name cannot contain ``:``, so no user can ever
share it) and the role ``client``, which is never an admin: the per-subject limits
and quotas count a client like a user, under the ``client`` tier of every tier
setting. Disabling, removing, new scopes or a new secret revoke every token the
client holds (a subject cut-off, as for users). Client tokens come without a refresh
token (§4.4.3): a client signs in again when its token expires.

Plain synchronous calls on the database, like ``AuthService``, whose sessions,
password hashing and token signing they use.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from modelgate_common import LOGINS, Conflict, NotFound, Unauthorized, audit
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Client
from .revocation import PendingRevocation, live_subject_cutoff, revoke_subject
from .schemas import (
    CLIENT_SECRET_MAX,
    ClientCreate,
    ClientUpdate,
    canonical_scopes,
    is_valid_client_id,
)
from .service import AuthService, InvalidScope, TokenPair

CLIENT_ROLE = "client"
BAD_CLIENT = "unknown client or wrong secret"


def client_subject(client_id: str) -> str:
    """The token subject of a client: never a user name (those have no ':')."""
    return f"client:{client_id}"


def client_uid(client_id: str) -> str:
    """The ``uid`` claim of a client's tokens: its client id (random, never reused) in a
    form no user id takes (those are 32 hex digits)."""
    return f"client-{client_id}"


class ClientAuthFailed(Unauthorized):
    def __init__(self) -> None:
        # One answer for an unknown client, a wrong secret and a disabled client.
        super().__init__(BAD_CLIENT, error="")


@dataclass(slots=True)
class ClientOutcome:
    """A client after a change, its new secret (only when one was made) and the
    revocations the change caused."""

    client: Client
    secret: str | None = None
    revocations: list[PendingRevocation] = field(default_factory=list)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class ClientService:
    def __init__(self, auth: AuthService) -> None:
        self.auth = auth

    # -- helpers ---------------------------------------------------------------------
    def _find(self, session: Session, client_id: str) -> Client | None:
        if not is_valid_client_id(client_id):
            return None
        return session.scalars(select(Client).where(Client.client_id == client_id)).first()

    def _require(self, session: Session, client_id: str) -> Client:
        client = self._find(session, client_id)
        if client is None:
            raise NotFound("no such client")
        return client

    def _revoke_all_of(self, session: Session, client: Client, now: int) -> PendingRevocation:
        client.revoked_before = now
        life = self.auth.access_ttl + self.auth.common.jwt_leeway
        return revoke_subject(session, client_subject(client.client_id), now, now + life)

    def resolve(self, reference: str) -> str:
        """The client id of a client named by its id or its name (the CLI's argument)."""
        with self.auth.sessions() as session:
            client = (
                self._find(session, reference)
                or session.scalars(select(Client).where(Client.name == reference)).first()
            )
        if client is None:
            raise NotFound("no such client")
        return client.client_id

    # -- management ------------------------------------------------------------------
    def create(self, data: ClientCreate, actor: str) -> ClientOutcome:
        secret = new_secret()
        secret_hash = self.auth.passwords.hash(secret)
        now = int(time.time())
        client_id = secrets.token_hex(12)
        try:
            with self.auth.sessions.begin() as session:
                if session.scalars(select(Client).where(Client.name == data.name)).first():
                    raise Conflict("a client with this name exists")
                client = Client(
                    client_id=client_id,
                    name=data.name,
                    secret_hash=secret_hash,
                    scopes=canonical_scopes(data.scopes),
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                    revoked_before=live_subject_cutoff(session, client_subject(client_id), now),
                )
                session.add(client)
        except IntegrityError:
            raise Conflict("a client with this name exists") from None
        audit(
            "client_created",
            client_id=client_id,
            client_name=data.name,
            scope=client.scopes,
            actor=actor,
        )
        return ClientOutcome(client, secret)

    def get(self, client_id: str) -> Client:
        with self.auth.sessions() as session:
            return self._require(session, client_id)

    def list(self, offset: int = 0, limit: int = 100) -> list[Client]:
        with self.auth.sessions() as session:
            return list(
                session.scalars(select(Client).order_by(Client.name).offset(offset).limit(limit))
            )

    def update(self, client_id: str, data: ClientUpdate, actor: str) -> ClientOutcome:
        secret = new_secret() if data.rotate_secret else None
        secret_hash = self.auth.passwords.hash(secret) if secret is not None else None
        now = int(time.time())
        revocations: list[PendingRevocation] = []
        try:
            with self.auth.sessions.begin() as session:
                client = self._require(session, client_id)
                if data.name is not None and data.name != client.name:
                    taken = session.scalars(select(Client).where(Client.name == data.name)).first()
                    if taken is not None:
                        raise Conflict("a client with this name exists")
                    client.name = data.name
                scopes = canonical_scopes(data.scopes) if data.scopes is not None else None
                new_scopes = scopes is not None and scopes != client.scopes
                disabling = data.disabled is True and not client.disabled
                if scopes is not None:
                    client.scopes = scopes
                if data.disabled is not None:
                    client.disabled = data.disabled
                if secret_hash is not None:
                    client.secret_hash = secret_hash
                client.updated_at = now
                if new_scopes or disabling or secret_hash is not None:
                    revocations.append(self._revoke_all_of(session, client, now))
        except IntegrityError:
            raise Conflict("a client with this name exists") from None
        changed = sorted(data.model_fields_set - {"rotate_secret"})
        audit(
            "client_updated",
            client_id=client_id,
            actor=actor,
            fields=changed + (["secret"] if secret else []),
            scope=client.scopes,
            disabled=client.disabled,
            tokens_revoked=bool(revocations),
        )
        return ClientOutcome(client, secret, revocations)

    def delete(self, client_id: str, actor: str) -> ClientOutcome:
        now = int(time.time())
        with self.auth.sessions.begin() as session:
            client = self._require(session, client_id)
            revocation = self._revoke_all_of(session, client, now)
            session.delete(client)
        audit("client_deleted", client_id=client_id, client_name=client.name, actor=actor)
        return ClientOutcome(client, None, [revocation])

    # -- authentication and the client_credentials grant ------------------------------
    def authenticate(self, client_id: str, secret: str, client_ip: str | None) -> Client:
        """The client, when the secret is right and the client enabled. Every failure
        costs one hash verification and gives one answer (no client-id oracle)."""
        with self.auth.sessions() as session:
            client = self._find(session, client_id) if len(secret) <= CLIENT_SECRET_MAX else None
        passwords = self.auth.passwords
        if client is None:
            passwords.dummy_verify(secret[:CLIENT_SECRET_MAX])
            reason = "unknown_client"
        else:
            valid, new_hash = passwords.verify(secret, client.secret_hash)
            reason = "disabled" if valid and client.disabled else "" if valid else "bad_secret"
            if not reason and new_hash is not None:
                with self.auth.sessions.begin() as session:
                    current = self._find(session, client_id)
                    if current is not None:
                        current.secret_hash = new_hash
        if reason:
            audit(
                "client_auth_failed",
                client_id=client_id[:64],
                reason=reason,
                client_ip=client_ip,
            )
            LOGINS.labels(f"client_{reason}").inc()
            raise ClientAuthFailed()
        assert client is not None
        return client

    def token(self, client: Client, scope: str, client_ip: str | None) -> TokenPair:
        """An access token for an authenticated client: its scopes, or the requested
        ones when every one of them was given to it (RFC 6749 ``invalid_scope`` else)."""
        with self.auth.sessions() as session:
            current = self._find(session, client.client_id)
        # Disabled, removed, given other scopes or a new secret since the secret was
        # checked: a token signed now would postdate that change's revocation cutoff.
        if (
            current is None
            or current.disabled
            or current.scopes != client.scopes
            or current.revoked_before != client.revoked_before
        ):
            raise ClientAuthFailed()
        allowed = current.scopes.split()
        wanted = scope.split()
        if not set(wanted) <= set(allowed):
            audit(
                "client_token_refused",
                client_id=client.client_id,
                reason="invalid_scope",
                client_ip=client_ip,
            )
            raise InvalidScope("invalid scope: more than the client was given")
        granted = " ".join(s for s in allowed if not wanted or s in wanted)
        subject = client_subject(current.client_id)
        uid = client_uid(current.client_id)
        access, jti, _ = self.auth.access_token(
            subject, CLIENT_ROLE, granted, current.revoked_before, uid
        )
        audit(
            "client_token", client_id=current.client_id, client_ip=client_ip, jti=jti, scope=granted
        )
        LOGINS.labels("client_success").inc()
        return TokenPair(access, None, self.auth.access_ttl, granted, subject, jti, uid)
