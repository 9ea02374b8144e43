"""Request and response bodies of the auth service. Requests are strict: unknown
fields, wrong types and out-of-range values are 422."""

from __future__ import annotations

import html
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Literal

import nh3
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

USERNAME_PATTERN = r"^[a-z0-9_.-]{3,32}$"
PASSWORD_MIN, PASSWORD_MAX = 12, 128
FULL_NAME_MAX = 100
SCOPE_MAX = 512

_USERNAME = re.compile(USERNAME_PATTERN)


def is_valid_username(name: str) -> bool:
    return bool(_USERNAME.match(name))


def clean_text(value: str) -> str:
    """Plain text from user input: no HTML (also none hidden in entities), no
    control characters, single spaces."""
    text = value
    for _ in range(5):
        cleaned = html.unescape(nh3.clean(text, tags=set(), attributes={}))
        if cleaned == text:
            break
        text = cleaned
    else:
        raise ValueError("text keeps changing when HTML is removed")
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in " \t")
    return " ".join(text.split())


def _clean_full_name(value: str | None) -> str | None:
    if value is None:
        return None
    return clean_text(value) or None


Username = Annotated[str, Field(pattern=USERNAME_PATTERN, examples=["alice"])]
Password = Annotated[SecretStr, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
FullName = Annotated[
    str | None,
    Field(max_length=FULL_NAME_MAX, description="plain text; HTML is removed"),
    AfterValidator(_clean_full_name),
]
# analyst: a user who also receives class probabilities (scope models:probabilities)
Role = Literal["admin", "analyst", "user"]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class UserCreate(_Strict):
    username: Username
    password: Password
    role: Role = "user"
    full_name: FullName = None
    disabled: bool = False


class UserUpdate(_Strict):
    """What an admin may change. Fields left out are unchanged."""

    # The document says what the validator below enforces: at least one field.
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    role: Role | None = None
    disabled: bool | None = None
    full_name: FullName = None
    password: Password | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> UserUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        return self


class SelfUpdate(_Strict):
    """What a user may change of their own account. ``role`` is accepted by the
    schema only so that it can be refused with 403: only an admin sets roles."""

    # The document says what the validator below enforces: at least one field, and
    # a new password only together with the current one.
    model_config = ConfigDict(
        json_schema_extra={
            "minProperties": 1,
            "if": {"required": ["password"], "properties": {"password": {"type": "string"}}},
            "then": {
                "required": ["current_password"],
                "properties": {"current_password": {"type": "string"}},
            },
        }
    )

    full_name: FullName = None
    password: Password | None = None
    current_password: Annotated[SecretStr, Field(max_length=PASSWORD_MAX)] | None = None
    role: Role | None = None

    @model_validator(mode="after")
    def _check(self) -> SelfUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        if self.password is not None and self.current_password is None:
            raise ValueError("current_password is required to change the password")
        return self


class UserOut(BaseModel):
    username: str
    role: Role
    disabled: bool
    full_name: str | None
    created_at: datetime
    updated_at: datetime


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token type, not a secret)
    expires_in: int
    # None (left out of the answer) for client_credentials: RFC 6749 §4.4.3.
    refresh_token: str | None = None
    scope: str


class RefreshRequest(_Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=256)]


class LogoutRequest(_Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=256)] | None = None
