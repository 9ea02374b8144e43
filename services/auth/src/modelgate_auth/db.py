"""The user database: users, service accounts (clients), refresh-token families and
persisted revocations.

SQLAlchemy 2 with a configurable URL: a SQLite file by default, PostgreSQL when
``MG_AUTH_DATABASE_URL`` says so (``postgresql+psycopg://...``). The schema is made
and changed by the Alembic migrations in ``migrations/`` (``upgrade_schema``), which
the service runs at start; several workers starting at once take turns (SQLite's
write lock, a PostgreSQL advisory lock) and all but the first find nothing to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    create_engine,
    event,
    false,
    make_url,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key held while migrating ("mgauth" in ASCII).
_MIGRATION_LOCK = 0x6D67_6175_7468


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    full_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)
    # Tokens of this user issued at or before this time are revoked; new tokens
    # are issued strictly after it (see service.TokenIssuer).
    revoked_before: Mapped[int] = mapped_column(Integer, default=0)
    # The user's identity everywhere outside this database (the ``uid`` token claim):
    # 128 random bits, never reused, unlike ``username`` (deleted, then created again)
    # and ``id`` (SQLite may hand out a deleted row's id again).
    uid: Mapped[str] = mapped_column(String(32))
    # Set only for users that existed before ``uid``: their ciphertexts made under keys
    # derived from the user name still decrypt for them (the ``legacy_owner_keys`` claim).
    legacy_owner_keys: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_users_uid", "uid", unique=True),)


class Client(Base):
    """A service account (OAuth2 confidential client): signs in with the
    client_credentials grant, its secret stored only as an argon2id hash."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    # Space-separated: the most a token of this client may carry.
    scopes: Mapped[str] = mapped_column(String(512))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)
    # As for users: tokens issued at or before this time are revoked.
    revoked_before: Mapped[int] = mapped_column(Integer, default=0)


class RefreshFamily(Base):
    """One login session: every refresh token rotated from one password grant."""

    __tablename__ = "refresh_families"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RefreshToken(Base):
    """A refresh token, stored only as its SHA-256, with the access token issued beside it."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(
        ForeignKey("refresh_families.id", ondelete="CASCADE"), index=True
    )
    access_jti: Mapped[str] = mapped_column(String(64), index=True)
    access_expires_at: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)
    used_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Revocation(Base):
    """A revocation as it is written to Redis, kept so it survives a Redis restart."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[int] = mapped_column(Integer)
    # When it was written (the periodic push reads a time window, see revocation.py).
    created_at: Mapped[int] = mapped_column(Integer, server_default="0", index=True)

    __table_args__ = (Index("ix_revocations_expires_at", "expires_at"),)


class ServiceKey(Base):
    """A key the auth service generated for itself, made once and shared by every worker
    and replica (see ``service.AuthService.audit_key``)."""

    __tablename__ = "service_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(Integer)


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:":
        _create_private_file(Path(parsed.database))
    engine = create_engine(
        url,
        # A failed statement's message never carries its parameters (password hashes,
        # token hashes) into a log line or traceback.
        hide_parameters=True,
        pool_pre_ping=not is_sqlite,
        connect_args={"timeout": 10} if is_sqlite else {},
    )
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer; several workers and the CLI share the file.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
            # Transactions are begun by us (below), not by the driver.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # Take the write lock up front: a read-then-write transaction that started
            # on an older snapshot would otherwise fail with SQLITE_BUSY instead of waiting.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _create_private_file(path: Path) -> None:
    """The database holds password hashes: its folder is 0700 and the file 0600
    (SQLite gives its -wal and -shm files the permissions of the database file)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision``, in one transaction."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together migrate one at a time (released at commit).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), revision)


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: not created yet)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
