"""Request and response bodies of the auth service. Requests are strict: unknown
fields, wrong types and out-of-range values are 422."""

from __future__ import annotations

import html
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Literal

import nh3
from modelgate_common import ADMIN_SCOPES
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


# -- service accounts (OAuth2 clients) -------------------------------------------------
# Every scope but user management: a machine client never administers accounts.
CLIENT_SCOPES: tuple[str, ...] = tuple(s for s in ADMIN_SCOPES if s != "users:admin")
CLIENT_NAME_PATTERN = r"^[A-Za-z0-9_.-]{3,64}$"
CLIENT_ID_PATTERN = r"^[0-9a-f]{24}$"
CLIENT_SECRET_MAX = 128


def _not_an_id(name: str) -> str:
    # The CLI names a client by its id or its name, the id first: a name shaped like an
    # id could stand for another client.
    if is_valid_client_id(name):
        raise ValueError("a client name cannot look like a client id (24 hex digits)")
    return name


ClientName = Annotated[
    str,
    Field(pattern=CLIENT_NAME_PATTERN, examples=["nightly-scoring"]),
    AfterValidator(_not_an_id),
]
ClientScope = Literal[CLIENT_SCOPES]  # type: ignore[valid-type]
ClientScopes = Annotated[
    list[ClientScope],
    Field(min_length=1, max_length=len(CLIENT_SCOPES), description="scopes its tokens may carry"),
]

_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)


def is_valid_client_id(client_id: str) -> bool:
    return bool(_CLIENT_ID.match(client_id))


def canonical_scopes(scopes: list[str]) -> str:
    """Space-separated, in the order of CLIENT_SCOPES, each once."""
    return " ".join(s for s in CLIENT_SCOPES if s in set(scopes))


class ClientCreate(_Strict):
    name: ClientName
    scopes: ClientScopes


class ClientUpdate(_Strict):
    """What an admin may change of a client. Fields left out are unchanged; disabling,
    new scopes and a new secret revoke every token the client holds."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: ClientName | None = None
    scopes: ClientScopes | None = None
    disabled: bool | None = None
    rotate_secret: Annotated[
        bool | None, Field(description="true: a new secret, shown once in the answer")
    ] = None

    @model_validator(mode="after")
    def _not_empty(self) -> ClientUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        return self


class ClientOut(BaseModel):
    client_id: str
    name: str
    scopes: list[str]
    disabled: bool
    created_at: datetime
    updated_at: datetime
    client_secret: str | None = Field(
        default=None, description="only when created or rotated: shown once, stored hashed"
    )


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
