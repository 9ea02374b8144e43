"""Settings of the auth service (env prefix `MG_AUTH_`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from modelgate_common import CommonSettings, private_file_problem
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_AUTH_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the user database; default a SQLite file "
        "var_dir/data/users.db",
    )
    database_url_file: Path | None = Field(
        default=None,
        description="file holding the database URL instead (an orchestrator secret: the URL "
        "carries the password); not together with database_url",
    )
    access_token_ttl: int = Field(
        default=900, ge=60, le=86_400, description="access token life, seconds"
    )
    refresh_token_ttl: int = Field(
        default=7 * 86_400, ge=300, le=90 * 86_400, description="refresh token life, seconds"
    )
    admin_password_file: Path | None = Field(
        default=None,
        description="password of the first admin (`admin`), read once when no admin exists; "
        "default secrets_dir/admin_password",
    )
    jwt_keys_dir: Path | None = Field(
        default=None,
        description="private RS256 signing keys, one <kid>.pem each; default secrets_dir/jwt",
    )
    jwt_key_bits: int = Field(
        default=2048, ge=2048, le=4096, description="size of new RSA signing keys"
    )
    # OWASP's first argon2id configuration (m=19 MiB, t=2, p=1): about 50 ms a hash here.
    # Stored hashes made with other parameters are upgraded at the next successful login.
    argon2_time_cost: int = Field(default=2, ge=1, le=20, description="argon2id passes")
    argon2_memory_kib: int = Field(
        default=19_456, ge=1024, le=1_048_576, description="argon2id memory per hash, KiB"
    )
    argon2_parallelism: int = Field(default=1, ge=1, le=16, description="argon2id lanes")
    argon2_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="password hashes computed at once per worker (memory bound)",
    )
    revocation_sync_interval: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="seconds between pushes of persisted revocations into Redis (after a Redis "
        "restart or outage, and for revocations made by the CLI)",
    )

    public_url: str | None = Field(
        default=None,
        description="the API's public base URL (https://host[:port][/prefix]) from which the "
        "OAuth discovery document (RFC 8414) builds its absolute URLs; default "
        "https://localhost:<MG_HTTPS_PORT>",
    )
    https_port: int = Field(
        default=8443,
        ge=1,
        le=65_535,
        validation_alias="MG_HTTPS_PORT",
        description="the API's HTTPS port (native stack), read for the default public URL",
    )

    @field_validator("public_url")
    @classmethod
    def _https_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("the public URL is https://host[:port][/prefix], no query")
        return value.rstrip("/")

    @property
    def issuer_url(self) -> str:
        return self.public_url or f"https://localhost:{self.https_port}"

    familiar_address_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="a user's successful sign-in from an address keeps it familiar this many "
        "days: from there the user signs in even when strangers have spent the user name's "
        "failure budget",
    )
    familiar_addresses_kept: int = Field(
        default=10, ge=1, le=100, description="familiar addresses remembered per user (newest)"
    )
    familiar_address_failures: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="failed sign-ins an hour from one familiar address before it, too, meets "
        "the user name's spent failure budget",
    )

    @model_validator(mode="after")
    def _one_database_setting(self) -> AuthSettings:
        if self.database_url and self.database_url_file:
            raise ValueError("set MG_AUTH_DATABASE_URL or MG_AUTH_DATABASE_URL_FILE, not both")
        return self

    @property
    def database(self) -> str:
        if self.database_url_file:
            # It holds the database password: held to the rules of every secret file.
            problem = private_file_problem(self.database_url_file.stat())
            if problem:
                raise ValueError(
                    f"{self.database_url_file} (MG_AUTH_DATABASE_URL_FILE) is {problem}"
                )
            url = self.database_url_file.read_text(encoding="utf-8").strip()
            if not url:
                raise ValueError(f"{self.database_url_file} (MG_AUTH_DATABASE_URL_FILE) is empty")
            return url
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.common.var_dir / 'data' / 'users.db').resolve()}"

    @property
    def admin_password_path(self) -> Path:
        return self.admin_password_file or self.common.secrets_dir / "admin_password"

    @property
    def jwt_keys_path(self) -> Path:
        return self.jwt_keys_dir or self.common.secrets_dir / "jwt"
