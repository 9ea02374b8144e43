"""Settings shared by every service: where files live, Redis, identity of tokens.

Each service has its own settings class (its own env prefix) that holds a
``CommonSettings`` read from the ``MG_`` prefix, so a value every service needs
is configured once.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Literal

from limits import parse_many
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "changethis", "secret", "password"})


def _check_limit(value: str) -> str:
    # parse_many raises ValueError on anything but "<n>/<period>" or "<n> per <m> <period>"
    if len(parse_many(value)) != 1:
        raise ValueError("give exactly one limit, e.g. 5/minute")
    return value


class RateLimitSettings(BaseSettings):
    """Every application-level limit (env prefix ``MG_RATELIMIT_``).

    A limit is written ``<count>/<period>`` or ``<count> per <n> <period>``
    (``5/minute``, ``100 per 1 hour``). Tiers map a token role to its own limit,
    as JSON: ``MG_RATELIMIT_PREDICT_TIERS='{"admin": "100/minute"}'``.
    """

    model_config = SettingsConfigDict(env_prefix="MG_RATELIMIT_", extra="ignore")

    login: str = Field("5/minute", description="POST /auth/token and /token per client IP")
    login_failures: str = Field(
        "100/hour", description="failed password checks per user name, any client"
    )
    predict: str = Field("10/minute", description="predict requests per token subject")
    predict_tiers: dict[str, str] = Field(
        default_factory=lambda: {"admin": "100/minute"},
        description="predict limit per role as JSON, overriding `predict`; default "
        '{"admin": "100/minute"}',
    )
    predict_rows_per_day: int = Field(
        10_000, gt=0, description="predicted rows per subject per rolling day (batches count)"
    )
    predict_rows_tiers: dict[str, int] = Field(
        default_factory=dict,
        description='rows per day per role as JSON (e.g. {"admin": 100000}); default none',
    )
    crypto: str = Field("60/minute", description="crypto requests per token subject")
    crypto_tiers: dict[str, str] = Field(
        default_factory=dict,
        description="crypto limit per role as JSON, overriding `crypto`; default none",
    )
    breaker_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="after a Redis failure a worker counts in memory (login: refuses) for this "
        "long before it tries Redis again",
    )

    _limit = field_validator("login", "login_failures", "predict", "crypto")(_check_limit)

    @field_validator("predict_tiers", "crypto_tiers")
    @classmethod
    def _check_tiers(cls, value: dict[str, str]) -> dict[str, str]:
        for limit in value.values():
            _check_limit(limit)
        return value

    @field_validator("predict_rows_tiers")
    @classmethod
    def _check_row_tiers(cls, value: dict[str, int]) -> dict[str, int]:
        if any(rows <= 0 for rows in value.values()):
            raise ValueError("a rows-per-day tier must be positive")
        return value


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_", extra="ignore")

    environment: Literal["production", "development"] = Field(
        "production", description="production hides /docs and /openapi.json"
    )
    log_level: str = Field("INFO", description="Python log level of every service")
    log_to: Literal["stderr", "file"] = Field(
        "stderr",
        description="where a service writes its JSON log lines: stderr (containers: "
        "`docker logs`, `kubectl logs`) or its own file var/log/<service>.jsonl, written in "
        "batches by a thread of each process (the native stack under supervisord)",
    )
    log_flush_seconds: float = Field(
        0.2, gt=0, le=60, description="log_to=file: longest a line waits in memory"
    )
    log_max_bytes: int = Field(
        50 * 1024 * 1024,
        ge=0,
        description="log_to=file: past this size the log file is renamed <name>.1 (up to "
        ".10 kept); 0 never renames (rotation left to logrotate, which may rename it any time)",
    )
    secrets_dir: Path = Field(Path("secrets"), description="folder of generated secrets")
    var_dir: Path = Field(Path("var"), description="runtime folder: data, logs, pid files")
    redis_url: str = Field("redis://127.0.0.1:6391/0", description="shared Redis")
    redis_username: str | None = Field(
        None,
        description="Redis ACL user this process signs in as (auth, inference, crypto: every "
        "stack sets it); unset or empty: no sign-in (a Redis without ACL users, as in tests)",
    )
    redis_password_file: Path | None = Field(
        None,
        description="that user's password file; default secrets_dir/redis_<user>_password, "
        "written by `modelgate init`",
    )
    redis_connect_timeout: float = Field(0.25, gt=0, le=5, description="seconds")
    redis_socket_timeout: float = Field(0.5, gt=0, le=5, description="seconds")
    jwt_issuer: str = Field("modelgate-auth", description="iss of every access token")
    jwt_audience: str = Field("modelgate", description="aud of every access token")
    jwt_leeway: int = Field(30, ge=0, le=30, description="clock skew accepted, seconds")
    jwks_file: Path | None = Field(
        None, description="public keys (JWKS) for token verification; default secrets_dir/jwks.json"
    )
    revocation_fail_open: bool = Field(
        True,
        description="when Redis is unreachable, accept signed, unexpired tokens that the "
        "worker's copy of the revocation set does not list (readiness reports degraded) "
        "instead of refusing every request",
    )
    revocation_mirror_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="each worker copies the live revocation set from Redis this often; the "
        "copy keeps revoked tokens refused while Redis cannot answer",
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="largest request body accepted")
    ratelimit: RateLimitSettings = Field(
        default_factory=RateLimitSettings, description="read from MG_RATELIMIT_* variables"
    )

    @field_validator("redis_username")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    def redis_credentials(self) -> dict[str, Any]:
        """``username`` and ``password`` for a Redis client; empty without a Redis user."""
        if self.redis_username is None:
            return {}
        user = self.redis_username
        path = self.redis_password_file or self.secrets_dir / f"redis_{user}_password"
        return {"username": self.redis_username, "password": read_secret(path).get_secret_value()}

    @property
    def jwks_path(self) -> Path:
        return self.jwks_file or self.secrets_dir / "jwks.json"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    def logging_options(self, service: str) -> dict[str, Any]:
        """``configure_logging``'s arguments for ``service``."""
        return {
            "level": self.log_level,
            "audit_file": self.log_dir / "audit.jsonl",
            "log_file": self.log_dir / f"{service}.jsonl" if self.log_to == "file" else None,
            "flush_seconds": self.log_flush_seconds,
            "max_bytes": self.log_max_bytes,
        }

    @property
    def docs_enabled(self) -> bool:
        return self.environment == "development"


def private_file_problem(st: os.stat_result) -> str | None:
    """Why a secret file with this ``stat`` (symlinks followed) is too open, or None.

    Never world-accessible, never group-writable. Group-readable only for a group this
    process runs in: Kubernetes mounts a Secret's files 0440 with the pod's ``fsGroup``,
    which it adds to the container's groups; a group the process is not in is refused.
    """
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return "readable by others; chmod 600 it"
    if mode & 0o030:
        return "writable or executable by its group; chmod 600 it (or 440)"
    if mode & 0o040 and st.st_gid not in {os.getegid(), *os.getgroups()}:
        return "readable by a group this process is not in; chmod 600 it"
    return None


def read_secret(path: Path) -> SecretStr:
    """Read a secret file; refuse a missing, loosely-permitted or placeholder value."""
    if not path.is_file():
        raise RuntimeError(f"secret file {path} is missing; run `modelgate init`")
    problem = private_file_problem(path.stat())
    if problem:
        raise RuntimeError(f"secret file {path} is {problem}")
    value = path.read_text(encoding="utf-8").strip()
    if value.lower() in PLACEHOLDER_SECRETS:
        raise RuntimeError(f"secret file {path} holds a placeholder value")
    return SecretStr(value)


def refuse_placeholder(value: SecretStr) -> SecretStr:
    if value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError("a placeholder value is not a secret")
    return value
