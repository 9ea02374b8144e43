"""Request and response bodies. Strict: unknown fields and wrong types are 422."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# 100 years: a bound that no real expiry needs, so absurd values are refused as input.
MAX_TTL_SECONDS = 100 * 365 * 86_400


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EncryptRequest(_Strict):
    plaintext: str = Field(
        description="UTF-8 text, up to MG_CRYPTO_MAX_PLAINTEXT_BYTES bytes (64 KiB by "
        "default); the empty string is allowed"
    )


class EncryptResponse(_Strict):
    ciphertext: str = Field(description="a Fernet token bound to the caller")


class DecryptRequest(_Strict):
    ciphertext: str = Field(description="a Fernet token made for the caller")
    ttl: int | None = Field(
        None,
        ge=1,
        le=MAX_TTL_SECONDS,
        description="refuse a ciphertext encrypted more than this many seconds ago",
    )


class DecryptResponse(_Strict):
    plaintext: str


class RotateRequest(_Strict):
    ciphertext: str = Field(description="a Fernet token made for the caller, under any key")


class RotateResponse(_Strict):
    ciphertext: str = Field(description="the same plaintext under the newest key")
