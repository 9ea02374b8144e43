"""The OAuth 2.0 protocol surface of the token and revocation endpoints: RFC 6749
§5.2 errors, strict reading of their form bodies (§3.2) and client authentication
(§2.3.1: ``client_secret_basic`` and ``client_secret_post``).

Errors at these endpoints carry ``error`` and ``error_description`` (what RFC 6749
clients read) beside ``detail`` (what every other modelgate error carries), so
clients of either kind understand them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import Request
from modelgate_common import JsonResponse, ServiceError

# RFC 6749 §5.2 (and RFC 7009 §2.2.1) error codes.
ErrorCode = str
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
UNAUTHORIZED_CLIENT = "unauthorized_client"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
INVALID_SCOPE = "invalid_scope"
UNSUPPORTED_TOKEN_TYPE = "unsupported_token_type"  # noqa: S105 (an error code)

_EMPTY_BASIC = base64.b64encode(b":").decode()
BASIC_CHALLENGE = 'Basic realm="modelgate", charset="UTF-8"'
FORM_TYPE = "application/x-www-form-urlencoded"
# A form has a handful of fields; more is not a client of ours.
_MAX_FIELDS = 32
# RFC 6749 §5.2: error_description is printable ASCII without '"' and '\\'.
_NOT_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


class OAuthError(ServiceError):
    """An RFC 6749 §5.2 error: 400 unless ``status_code`` says otherwise."""

    def __init__(
        self,
        error: ErrorCode,
        description: str,
        status_code: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, status_code, headers)
        self.error = error


def invalid_client(description: str, basic: bool) -> OAuthError:
    """RFC 6749 §5.2: 401 with a Basic challenge when the client authenticated with
    the Authorization header; 400 otherwise (a 401 must carry a challenge, and a Basic
    challenge to a browser that never sent one would open a password dialog)."""
    if basic:
        return OAuthError(
            INVALID_CLIENT, description, 401, headers={"WWW-Authenticate": BASIC_CHALLENGE}
        )
    return OAuthError(INVALID_CLIENT, description)


async def oauth_error_handler(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, OAuthError)
    description = _NOT_DESCRIPTION.sub("?", exc.message)
    body = {"error": exc.error, "error_description": description, "detail": exc.message}
    # RFC 6749 §5.1 and §5.2: token endpoint answers are never cached.
    headers = {**exc.headers, "Cache-Control": "no-store", "Pragma": "no-cache"}
    return JsonResponse(body, exc.status_code, headers=headers)


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    max_length: int
    description: str


async def read_form(request: Request, fields: Sequence[FormField]) -> dict[str, str]:
    """The known fields of an ``application/x-www-form-urlencoded`` body. RFC 6749 §3.2:
    unknown parameters are ignored, a parameter without a value counts as absent, none
    may be given twice. Anything else wrong is ``invalid_request``."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != FORM_TYPE:
        raise OAuthError(INVALID_REQUEST, f"the body must be {FORM_TYPE}")
    raw = await request.body()
    try:
        pairs = parse_qsl(
            raw.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except ValueError:  # not ASCII, not UTF-8 once decoded, or too many fields
        raise OAuthError(INVALID_REQUEST, "the body is not a valid form") from None
    known = {field.name: field for field in fields}
    values: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        field = known.get(name)
        if field is None:
            continue
        if name in seen:
            raise OAuthError(INVALID_REQUEST, f"parameter {name} is given more than once")
        seen.add(name)
        if len(value) > field.max_length:
            raise OAuthError(
                INVALID_REQUEST, f"parameter {name} is longer than {field.max_length} characters"
            )
        if value:
            values[name] = value
    return values


def require(form: dict[str, str], *names: str) -> None:
    missing = [name for name in names if name not in form]
    if missing:
        raise OAuthError(INVALID_REQUEST, f"missing parameter: {' '.join(missing)}")


def form_schema(fields: Sequence[FormField], required: Sequence[str] = ()) -> dict[str, Any]:
    """``openapi_extra`` describing the form a route reads itself with ``read_form``."""
    properties = {
        f.name: {"type": "string", "maxLength": f.max_length, "description": f.description}
        for f in fields
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return {
        "requestBody": {"required": True, "content": {FORM_TYPE: {"schema": schema}}},
    }


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What a client presented to authenticate: ``method`` is ``client_secret_basic``
    or ``client_secret_post``; ``secret`` is None for a public client (an id alone)."""

    client_id: str
    secret: str | None
    method: str

    @property
    def basic(self) -> bool:
        return self.method == "client_secret_basic"


def _from_body(form: dict[str, str]) -> ClientCredentials | None:
    if "client_id" not in form and "client_secret" not in form:
        return None
    if "client_id" not in form:
        raise invalid_client("client_secret without client_id", basic=False)
    return ClientCredentials(form["client_id"], form.get("client_secret"), "client_secret_post")


def client_credentials(request: Request, form: dict[str, str]) -> ClientCredentials | None:
    """The client authentication of a request, if any. RFC 6749 §2.3: one method only;
    Basic carries the form-urlencoded id and secret (§2.3.1). An Authorization header of
    another scheme is not client authentication (a client that sends its bearer token
    on every request, this one included) and is ignored."""
    header = request.headers.get("authorization")
    if header is not None and header.partition(" ")[0].lower() != "basic":
        header = None
    if header is not None and header.partition(" ")[2].strip() == _EMPTY_BASIC:
        # An empty id and an empty secret name no client: Swagger UI's Authorize sends
        # this when its client fields are left empty (a user signing in at /docs).
        header = None
    in_body = "client_id" in form or "client_secret" in form
    if header is None:
        return _from_body(form)
    if in_body and "client_secret" in form:
        raise OAuthError(INVALID_REQUEST, "use one client authentication method, not two")
    encoded = header.partition(" ")[2]
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("ascii")
        quoted_id, colon, quoted_secret = decoded.partition(":")
        client_id = unquote(quoted_id, errors="strict")
        secret = unquote(quoted_secret, errors="strict")
    except ValueError:  # not base64 (not even ASCII), not ASCII decoded, a bad %-escape
        raise invalid_client("malformed Basic credentials", basic=True) from None
    if not colon or not client_id:
        raise invalid_client("malformed Basic credentials", basic=True)
    if "client_id" in form and form["client_id"] != client_id:
        raise OAuthError(INVALID_REQUEST, "client_id differs from the authenticated client")
    return ClientCredentials(client_id, secret, "client_secret_basic")
