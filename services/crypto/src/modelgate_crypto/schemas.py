"""Request and response bodies. Strict: unknown fields and wrong types are 422."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# 100 years: a bound that no real expiry needs, so absurd values are refused as input.
MAX_TTL_SECONDS = 100 * 365 * 86_400


def _whole_number(value: object) -> object:
    """JSON has one number type: 60.0 is the integer 60, as JSON Schema (and so the
    OpenAPI document's ``"type": "integer"``) reads it. 1.5, "60" and true stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Seconds = Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS), BeforeValidator(_whole_number)]


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
    ttl: Seconds | None = Field(
        None,
        description="refuse a ciphertext encrypted more than this many seconds ago",
    )


class DecryptResponse(_Strict):
    plaintext: str


class RotateRequest(_Strict):
    ciphertext: str = Field(description="a Fernet token made for the caller, under any key")


class RotateResponse(_Strict):
    ciphertext: str = Field(description="the same plaintext under the newest key")
