"""The auth service's logic: users, password grant, refresh rotation, logout,
revocation. Plain synchronous calls on the database (no HTTP); the routes run
them in a thread pool, and the CLI calls them directly.

Revocations each call makes are returned (or carried by the error) so the
caller can push them to Redis at once; they are already in the database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jose import jwt
from modelgate_common import (
    ADMIN_SCOPES,
    ALGORITHM,
    LOGINS,
    ROLE_SCOPES,
    USER_SCOPES,
    BadRequest,
    CommonSettings,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    audit,
)
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .db import RefreshFamily, RefreshToken, ServiceKey, User
from .keys import Signer
from .passwords import Passwords
from .revocation import PendingRevocation, live_subject_cutoff, revoke_jti, revoke_subject
from .schemas import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    UserCreate,
    UserUpdate,
    is_valid_username,
)

log = logging.getLogger("modelgate.auth")

BAD_CREDENTIALS = "incorrect username or password"
# The service key that turns unknown user names into keyed hashes in the audit log.
AUDIT_KEY = "audit_user_name"
UNKNOWN_USER_PREFIX = "unknown:"  # never part of a user name (USERNAME_PATTERN has no ":")
BAD_REFRESH = "refresh token is invalid, expired or revoked"


class InvalidCredentials(Unauthorized):
    def __init__(self) -> None:
        # One body for unknown user, wrong password and disabled user.
        super().__init__(BAD_CREDENTIALS, error="")


class InvalidScope(BadRequest):
    """A requested scope that cannot be granted (RFC 6749 ``invalid_scope``)."""


class RefreshRejected(Unauthorized):
    def __init__(self, revocations: Sequence[PendingRevocation] = ()) -> None:
        super().__init__(BAD_REFRESH, error="")
        self.revocations = list(revocations)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str | None
    expires_in: int
    scope: str
    subject: str
    jti: str
    user_id: str


@dataclass(slots=True)
class Outcome:
    """A change and the revocations it caused."""

    user: User | None = None
    revocations: list[PendingRevocation] = field(default_factory=list)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def scopes_for_role(role: str) -> tuple[str, ...]:
    return ROLE_SCOPES.get(role, USER_SCOPES)


KNOWN_SCOPES = frozenset(ADMIN_SCOPES)  # every scope any role has


def unknown_scopes(requested: str) -> list[str]:
    """The requested scope names that no role has (what makes a request malformed
    whoever asks and whatever the password)."""
    return sorted(set(requested.split()) - KNOWN_SCOPES)


def narrow_scope(role: str, requested: str) -> str:
    """The scopes a token gets: those of the role, narrowed to the requested ones
    (unknown or unallowed names are left out; nothing left is an error)."""
    allowed = scopes_for_role(role)
    wanted = set(requested.split())
    granted = [s for s in allowed if not wanted or s in wanted]
    if not granted:
        raise InvalidScope("invalid scope: none of the requested scopes can be granted")
    return " ".join(granted)


def subset_scope(granted: str, requested: str | None) -> str:
    """RFC 6749 §6: a refresh may ask for fewer scopes than the session has, never more."""
    if not requested:
        return granted
    have, wanted = granted.split(), set(requested.split())
    if not wanted <= set(have):
        raise InvalidScope("invalid scope: more than the session was granted")
    return " ".join(s for s in have if s in wanted)


class AuthService:
    def __init__(
        self,
        *,
        engine: Engine,
        sessions: sessionmaker[Session],
        passwords: Passwords,
        signer: Signer,
        common: CommonSettings,
        access_ttl: int,
        refresh_ttl: int,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.passwords = passwords
        self.signer = signer
        self.common = common
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._audit_key: bytes | None = None
        self._audit_key_lock = threading.Lock()

    # -- what the audit log may say about a user name -----------------------------------
    def audit_key(self) -> bytes:
        """The audit log's hashing key: 32 random bytes made once in the database, so every
        worker and replica hashes a name alike and the hash stays stable across restarts."""
        if self._audit_key is None:
            with self._audit_key_lock:
                if self._audit_key is None:
                    self._audit_key = self._load_or_create_key(AUDIT_KEY)
        return self._audit_key

    def _load_or_create_key(self, name: str) -> bytes:
        with self.sessions() as session:
            row = session.get(ServiceKey, name)
            if row is not None:
                return base64.urlsafe_b64decode(row.value)
        value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
        try:
            with self.sessions.begin() as session:
                session.add(ServiceKey(name=name, value=value, created_at=int(time.time())))
        except IntegrityError:
            pass  # another worker made it first: use theirs
        with self.sessions() as session:
            row = session.get(ServiceKey, name)
            assert row is not None
            return base64.urlsafe_b64decode(row.value)

    def audit_name(self, username: str, known: bool) -> str:
        """A user name as the audit log records it: a known user's name as it is; anything
        else (often a password typed into the wrong field) as a keyed hash, which still
        groups repeated attempts on one name but cannot be reversed or guessed offline
        without the key."""
        if known:
            return username
        data = username.encode("utf-8", "surrogatepass")
        digest = hmac.new(self.audit_key(), data, hashlib.sha256).hexdigest()
        return UNKNOWN_USER_PREFIX + digest[:24]

    # -- helpers ---------------------------------------------------------------------
    @property
    def _subject_revocation_life(self) -> int:
        # Past this, every token issued before the cutoff has expired anyway.
        return self.access_ttl + self.common.jwt_leeway

    def _user(self, session: Session, username: str) -> User | None:
        if not is_valid_username(username):
            return None
        return session.scalars(select(User).where(User.username == username)).first()

    def _require_user(self, session: Session, username: str) -> User:
        user = self._user(session, username)
        if user is None:
            raise NotFound("no such user")
        return user

    def _active_admins(self, session: Session) -> int:
        # The rows, locked (FOR UPDATE; SQLite's write lock already serializes): on
        # PostgreSQL two concurrent demotions of two admins would otherwise both see
        # two admins and leave none.
        return len(
            session.scalars(
                select(User.id)
                .where(User.role == "admin", User.disabled.is_(False))
                .with_for_update()
            ).all()
        )

    def access_token(
        self,
        subject: str,
        role: str,
        scope: str,
        revoked_before: int,
        uid: str,
        legacy_owner_keys: bool = False,
    ) -> tuple[str, str, int]:
        """A signed access token of ``subject``: (token, jti, expires_at). Every access
        token, a user's or a client's, is made here with the same claims. ``uid`` is the
        owner's immutable id, never reused (what per-owner keys are bound to)."""
        issued_at = int(time.time())
        if issued_at <= revoked_before:
            # The subject's tokens were revoked within this second: a token issued now
            # would be caught by the cutoff. Wait for the next second (rare; at most one
            # second) rather than date the token in the future, which strict verifiers refuse.
            time.sleep(min(2.0, max(0.0, revoked_before + 1 - time.time())))
            issued_at = max(int(time.time()), revoked_before + 1)
        expires_at = issued_at + self.access_ttl
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": self.common.jwt_issuer,
            "aud": self.common.jwt_audience,
            "sub": subject,
            "role": role,
            "scope": scope,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": jti,
            "uid": uid,
        }
        if legacy_owner_keys:
            claims["legacy_owner_keys"] = True
        kid, key = self.signer.current()
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid}), jti, expires_at

    def _issue(
        self, session: Session, user: User, family_id: str, scope: str, now: int
    ) -> TokenPair:
        access, jti, expires_at = self.access_token(
            user.username, user.role, scope, user.revoked_before, user.uid, user.legacy_owner_keys
        )
        refresh = secrets.token_urlsafe(32)
        session.add(
            RefreshToken(
                token_hash=hash_refresh_token(refresh),
                family_id=family_id,
                access_jti=jti,
                access_expires_at=expires_at,
                created_at=now,
                expires_at=now + self.refresh_ttl,
            )
        )
        return TokenPair(access, refresh, self.access_ttl, scope, user.username, jti, user.uid)

    def _revoke_family(
        self, session: Session, family: RefreshFamily, now: int, seen: set[str] | None = None
    ) -> list[PendingRevocation]:
        """Spend the family and revoke the access tokens issued from it still alive."""
        seen = set() if seen is None else seen
        if family.revoked_at is None:
            family.revoked_at = now
        revocations = []
        live = session.scalars(
            select(RefreshToken).where(
                RefreshToken.family_id == family.id, RefreshToken.access_expires_at > now
            )
        )
        for row in live:
            if row.access_jti not in seen:
                seen.add(row.access_jti)
                revocations.append(
                    revoke_jti(
                        session, row.access_jti, row.access_expires_at + self.common.jwt_leeway
                    )
                )
        return revocations

    def _revoke_all_of(self, session: Session, user: User, now: int) -> list[PendingRevocation]:
        """Every token of the user so far: access tokens by cutoff, refresh families spent."""
        user.revoked_before = now
        families = session.scalars(
            select(RefreshFamily).where(
                RefreshFamily.user_id == user.id, RefreshFamily.revoked_at.is_(None)
            )
        )
        for family in families:
            family.revoked_at = now
        return [revoke_subject(session, user.username, now, now + self._subject_revocation_life)]

    # -- first start -----------------------------------------------------------------
    def has_admin(self) -> bool:
        with self.sessions() as session:
            return bool(
                session.scalar(select(func.count()).select_from(User).where(User.role == "admin"))
            )

    def ensure_first_admin(self, password: str) -> bool:
        """Create ``admin`` when no admin exists; return whether it was created."""
        if self.has_admin():
            return False
        with self.sessions() as session:
            if self._user(session, "admin") is not None:
                return False
        if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            raise RuntimeError(
                f"the admin password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"
            )
        try:
            self._insert_user("admin", password, "admin", None, False)
        except Conflict:
            return False  # another worker made it first
        audit("user_created", user="admin", role="admin", actor="first-start")
        return True

    # -- users -----------------------------------------------------------------------
    def _insert_user(
        self, username: str, password: str, role: str, full_name: str | None, disabled: bool
    ) -> User:
        password_hash = self.passwords.hash(password)
        now = int(time.time())
        try:
            with self.sessions.begin() as session:
                if self._user(session, username) is not None:
                    raise Conflict("user already exists")
                user = User(
                    uid=secrets.token_hex(16),
                    username=username,
                    password_hash=password_hash,
                    role=role,
                    disabled=disabled,
                    full_name=full_name,
                    created_at=now,
                    updated_at=now,
                    revoked_before=live_subject_cutoff(session, username, now),
                )
                session.add(user)
        except IntegrityError:
            raise Conflict("user already exists") from None
        return user

    def create_user(self, data: UserCreate, actor: str) -> User:
        user = self._insert_user(
            data.username,
            data.password.get_secret_value(),
            data.role,
            data.full_name,
            data.disabled,
        )
        audit("user_created", user=user.username, role=user.role, actor=actor)
        return user

    def user_id_of(self, username: str) -> str | None:
        """The immutable id of the user of that name, None when there is none."""
        with self.sessions() as session:
            user = self._user(session, username)
            return user.uid if user is not None else None

    def get_user(self, username: str) -> User:
        with self.sessions() as session:
            return self._require_user(session, username)

    def list_users(self, offset: int = 0, limit: int = 100) -> list[User]:
        with self.sessions() as session:
            return list(
                session.scalars(select(User).order_by(User.username).offset(offset).limit(limit))
            )

    def update_user(self, username: str, data: UserUpdate, actor: str) -> Outcome:
        changes = data.model_fields_set
        new_hash = (
            self.passwords.hash(data.password.get_secret_value())
            if data.password is not None
            else None
        )
        now = int(time.time())
        outcome = Outcome()
        with self.sessions.begin() as session:
            user = self._require_user(session, username)
            role_change = data.role is not None and data.role != user.role
            disabling = data.disabled is True and not user.disabled
            if (
                user.role == "admin"
                and not user.disabled
                and (disabling or role_change)
                and self._active_admins(session) <= 1
            ):
                raise Conflict("cannot demote or disable the last active admin")
            if data.role is not None:
                user.role = data.role
            if data.disabled is not None:
                user.disabled = data.disabled
            if "full_name" in changes:
                user.full_name = data.full_name
            if new_hash is not None:
                user.password_hash = new_hash
            user.updated_at = now
            if role_change or disabling or new_hash is not None:
                outcome.revocations = self._revoke_all_of(session, user, now)
            outcome.user = user
        audit(
            "user_updated",
            user=username,
            actor=actor,
            fields=sorted(changes - {"password"}) + (["password"] if new_hash else []),
            role=outcome.user.role,
            disabled=outcome.user.disabled,
        )
        return outcome

    def update_self(
        self,
        username: str,
        full_name: str | None,
        set_full_name: bool,
        password: str | None,
        current_password: str | None,
    ) -> Outcome:
        if password is not None:
            with self.sessions() as session:
                stored = self._require_user(session, username).password_hash
            valid, _ = self.passwords.verify(current_password or "", stored)
            if not valid:
                raise Forbidden("current password is wrong")
            new_hash: str | None = self.passwords.hash(password)
        else:
            new_hash = None
        now = int(time.time())
        outcome = Outcome()
        with self.sessions.begin() as session:
            user = self._require_user(session, username)
            if set_full_name:
                user.full_name = full_name
            if new_hash is not None:
                user.password_hash = new_hash
                outcome.revocations = self._revoke_all_of(session, user, now)
            user.updated_at = now
            outcome.user = user
        audit("user_updated", user=username, actor=username, password_changed=new_hash is not None)
        return outcome

    def delete_user(self, username: str, actor: str) -> Outcome:
        now = int(time.time())
        outcome = Outcome()
        with self.sessions.begin() as session:
            user = self._require_user(session, username)
            if user.role == "admin" and not user.disabled and self._active_admins(session) <= 1:
                raise Conflict("cannot remove the last active admin")
            outcome.revocations = self._revoke_all_of(session, user, now)
            session.delete(user)
        audit("user_deleted", user=username, actor=actor)
        return outcome

    # -- housekeeping ----------------------------------------------------------------
    def prune_refresh_tokens(self) -> int:
        """Delete expired refresh tokens and the families left without any; return how
        many tokens went. (A spent token is kept until it expires: reuse detection.)"""
        now = int(time.time())
        with self.sessions.begin() as session:
            result = session.execute(delete(RefreshToken).where(RefreshToken.expires_at <= now))
            live_families = select(RefreshToken.family_id).distinct()
            session.execute(delete(RefreshFamily).where(RefreshFamily.id.not_in(live_families)))
            return int(getattr(result, "rowcount", 0) or 0)

    # -- tokens ----------------------------------------------------------------------
    def login(self, username: str, password: str, scope: str, client_ip: str | None) -> TokenPair:
        # Unknown scope names are refused before the user or the password is looked at:
        # the answer is the same whatever the password, so it tells nothing about it.
        unknown = unknown_scopes(scope)
        if unknown:
            with self.sessions() as session:
                known = self._user(session, username) is not None
            audit(
                "login_refused",
                user=self.audit_name(username, known),
                reason="invalid_scope",
                scope=" ".join(unknown)[:128],
                client_ip=client_ip,
            )
            LOGINS.labels("invalid_scope").inc()
            raise InvalidScope("invalid scope: " + " ".join(unknown)[:128])
        with self.sessions() as session:
            user = self._user(session, username)
        if user is None:
            self.passwords.dummy_verify(password)
            audit(
                "login_failed",
                user=self.audit_name(username, known=False),
                reason="unknown_user",
                client_ip=client_ip,
            )
            LOGINS.labels("unknown_user").inc()
            raise InvalidCredentials()
        valid, new_hash = self.passwords.verify(password, user.password_hash)
        if not valid or user.disabled:
            reason = "disabled" if valid else "bad_password"
            audit("login_failed", user=username, reason=reason, client_ip=client_ip)
            LOGINS.labels(reason).inc()
            raise InvalidCredentials()
        try:
            granted = narrow_scope(user.role, scope)
        except BadRequest:
            # Known scopes the role lacks: only the right password gets here, and it is
            # audited like a sign-in, so it is no quieter a test of a password than a 200.
            audit("login_refused", user=username, reason="scope_not_granted", client_ip=client_ip)
            LOGINS.labels("scope_not_granted").inc()
            raise
        now = int(time.time())
        with self.sessions.begin() as session:
            current = session.get(User, user.id)
            # Disabled, given another role or a new password since the password was
            # checked: a token signed now would postdate that change's revocation cutoff
            # (and carry the scopes of the role the user had).
            if (
                current is None
                or current.disabled
                or current.role != user.role
                or current.revoked_before != user.revoked_before
            ):
                raise InvalidCredentials()
            if new_hash is not None:
                current.password_hash = new_hash
            family = RefreshFamily(
                id=uuid.uuid4().hex, user_id=current.id, scope=granted, created_at=now
            )
            session.add(family)
            pair = self._issue(session, current, family.id, granted, now)
        audit("login", user=username, client_ip=client_ip, jti=pair.jti, scope=granted)
        LOGINS.labels("success").inc()
        return pair

    def refresh(
        self, refresh_token: str, client_ip: str | None, scope: str | None = None
    ) -> TokenPair:
        token_hash = hash_refresh_token(refresh_token)
        now = int(time.time())
        revocations: list[PendingRevocation] = []
        with self.sessions.begin() as session:
            # FOR UPDATE: on PostgreSQL concurrent uses of one token wait here and then
            # see it spent (SQLite's write lock, taken at BEGIN, already serializes them).
            row = session.get(RefreshToken, token_hash, with_for_update=True)
            if row is None:
                raise RefreshRejected()
            family = session.get(RefreshFamily, row.family_id)
            user = session.get(User, family.user_id) if family is not None else None
            if family is None or user is None:
                raise RefreshRejected()
            if row.used_at is not None:
                # A spent token again: someone holds a copy. End the whole session.
                revocations = self._revoke_family(session, family, now)
                reuse = True
            else:
                reuse = False
                if family.revoked_at is not None or row.expires_at <= now or user.disabled:
                    raise RefreshRejected()
                granted = subset_scope(narrow_scope(user.role, family.scope), scope)
                row.used_at = now
                pair = self._issue(session, user, family.id, granted, now)
        if reuse:
            audit("refresh_reuse", user=user.username, family=family.id, client_ip=client_ip)
            raise RefreshRejected(revocations)
        audit("refresh", user=user.username, client_ip=client_ip, jti=pair.jti)
        return pair

    def logout(
        self, subject: str, jti: str, expires_at: int, refresh_token: str | None
    ) -> list[PendingRevocation]:
        """Revoke the access token and its refresh family (and, if given, the family of
        ``refresh_token``, when it belongs to the same user)."""
        now = int(time.time())
        with self.sessions.begin() as session:
            revocations = [revoke_jti(session, jti, expires_at + self.common.jwt_leeway)]
            seen = {jti}
            family_ids = set(
                session.scalars(
                    select(RefreshToken.family_id).where(RefreshToken.access_jti == jti)
                )
            )
            if refresh_token:
                row = session.get(RefreshToken, hash_refresh_token(refresh_token))
                if row is not None:
                    family_ids.add(row.family_id)
            for family_id in family_ids:
                family = session.get(RefreshFamily, family_id)
                if family is None:
                    continue
                owner = session.get(User, family.user_id)
                if owner is None or owner.username != subject:
                    continue
                revocations += self._revoke_family(session, family, now, seen)
        audit("logout", user=subject, jti=jti)
        return revocations

    # -- RFC 7009 revocation ---------------------------------------------------------
    def revoke_refresh_token(
        self, refresh_token: str, client_ip: str | None
    ) -> list[PendingRevocation] | None:
        """Revoke the session (refresh family) of a refresh token: the token, those
        rotated from it and the access tokens issued beside them. None when no such
        refresh token exists (the caller answers 200 all the same, RFC 7009 §2.2)."""
        now = int(time.time())
        with self.sessions.begin() as session:
            row = session.get(RefreshToken, hash_refresh_token(refresh_token))
            family = session.get(RefreshFamily, row.family_id) if row is not None else None
            if family is None:
                return None
            owner = session.get(User, family.user_id)
            revocations = self._revoke_family(session, family, now)
        audit(
            "token_revoked",
            kind="refresh_token",
            user=owner.username if owner else None,
            family=family.id,
            client_ip=client_ip,
        )
        return revocations

    def revoke_access_token(
        self, subject: str, jti: str, expires_at: int, client_ip: str | None
    ) -> list[PendingRevocation]:
        """Revoke one (verified) access token until it would have expired anyway."""
        with self.sessions.begin() as session:
            revocations = [revoke_jti(session, jti, expires_at + self.common.jwt_leeway)]
        audit("token_revoked", kind="access_token", subject=subject, jti=jti, client_ip=client_ip)
        return revocations
