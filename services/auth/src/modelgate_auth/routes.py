"""HTTP routes of the auth service: translate HTTP to calls of plain logic.

Route paths are the public paths (nginx passes /auth/… and /token unchanged).
The logic is synchronous (database, argon2): it runs in worker threads, the
password work under a small concurrency limit, so the event loop never blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response, Security, status
from modelgate_common import (
    ADMIN_SCOPES,
    Admission,
    Forbidden,
    NotFound,
    Principal,
    TokenVerifier,
    Unauthorized,
    authenticate,
    error_responses,
)
from slowapi.util import get_remote_address

from .clients import CLIENT_ROLE, ClientAuthFailed, ClientOutcome, ClientService, client_subject
from .db import Client, User
from .familiar import FamiliarAddresses
from .keys import KeyStore
from .oauth import (
    INVALID_GRANT,
    INVALID_SCOPE,
    UNAUTHORIZED_CLIENT,
    UNSUPPORTED_GRANT_TYPE,
    UNSUPPORTED_TOKEN_TYPE,
    ClientCredentials,
    FormField,
    OAuthError,
    client_credentials,
    form_schema,
    invalid_client,
    read_form,
    require,
)
from .revocation import RevocationPublisher
from .schemas import (
    PASSWORD_MAX,
    SCOPE_MAX,
    ClientCreate,
    ClientOut,
    ClientUpdate,
    LogoutRequest,
    RefreshRequest,
    SelfUpdate,
    TokenResponse,
    UserCreate,
    UserOut,
    UserUpdate,
)
from .service import AuthService, InvalidCredentials, InvalidScope, RefreshRejected, TokenPair

router = APIRouter()

T = TypeVar("T")

CurrentPrincipal = Annotated[Principal, Security(authenticate)]


async def _admin(
    principal: Annotated[Principal, Security(authenticate, scopes=["users:admin"])],
) -> Principal:
    if not principal.is_admin:  # the scope is only ever granted to admins; belt and braces
        raise Forbidden("admin role required")
    return principal


AdminPrincipal = Annotated[Principal, Depends(_admin)]


def _service(request: Request) -> AuthService:
    return request.app.state.auth_service


Service = Annotated[AuthService, Depends(_service)]


def _clients(request: Request) -> ClientService:
    return request.app.state.client_service


Clients = Annotated[ClientService, Depends(_clients)]


async def _run(request: Request, fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


async def _run_hashing(request: Request, fn: Callable[..., T], *args: Any) -> T:
    limiter: anyio.CapacityLimiter = request.app.state.hash_limiter
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)


async def _push(request: Request, revocations: list[Any]) -> None:
    publisher: RevocationPublisher = request.app.state.revocations
    await publisher.push(revocations)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _user_out(user: User) -> UserOut:
    return UserOut.model_validate(
        {
            "username": user.username,
            "role": user.role,
            "disabled": user.disabled,
            "full_name": user.full_name,
            "created_at": user.created_at,
            "updated_at": user.updated_at,
        }
    )


def _token_response(pair: TokenPair, response: Response) -> TokenResponse:
    # RFC 6749 5.1: token responses are never cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        scope=pair.scope,
    )


# -- tokens ---------------------------------------------------------------------------
TOKEN_FORM = (
    FormField("grant_type", 64, "password (the default), refresh_token or client_credentials"),
    FormField("username", 256, "password grant: the user name"),
    FormField("password", PASSWORD_MAX, "password grant: the password"),
    FormField("refresh_token", 256, "refresh_token grant: the refresh token"),
    FormField(
        "scope",
        SCOPE_MAX,
        "space-separated scopes: fewer than the role (password grant), the session "
        "(refresh_token) or the client (client_credentials) has",
    ),
    FormField("client_id", 256, "client_secret_post: the client's id"),
    FormField("client_secret", 256, "client_secret_post: the client's secret"),
)


@router.post(
    "/auth/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 429, 503),
    tags=["tokens"],
    summary="OAuth2 token endpoint",
    openapi_extra=form_schema(TOKEN_FORM),
)
@router.post(
    "/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    include_in_schema=False,
)
async def token(
    request: Request, response: Response, service: Service, clients: Clients
) -> TokenResponse:
    """RFC 6749 token endpoint. ``grant_type=password`` (the default when left out)
    exchanges a user name and password for an access and a refresh token;
    ``refresh_token`` rotates a refresh token (the presented one is spent; presenting a
    spent one revokes its whole session); ``client_credentials`` gives a service account
    (authenticated by ``client_secret_basic`` or ``client_secret_post``) an access token
    with its scopes, or fewer. Errors carry ``error`` and ``error_description``
    (RFC 6749 §5.2) beside ``detail``."""
    form = await read_form(request, TOKEN_FORM)
    grant = form.get("grant_type", "password")
    client = client_credentials(request, form)
    if grant == "password":
        await _no_confidential_client(request, clients, client)
        pair = await _password_grant(request, service, form)
    elif grant == "refresh_token":
        await _no_confidential_client(request, clients, client)
        pair = await _refresh_grant(request, service, form)
    elif grant == "client_credentials":
        pair = await _client_credentials_grant(request, clients, form, client)
    else:
        raise OAuthError(
            UNSUPPORTED_GRANT_TYPE,
            "grant_type must be password, refresh_token or client_credentials",
        )
    return _token_response(pair, response)


async def authenticate_client(
    request: Request, clients: ClientService, credentials: ClientCredentials
) -> Client:
    """A client's secret checked under the sign-in limits: the client address's budget
    and a failure budget per client id (``client:<id>``, which no user name can be),
    both spent before the hash is verified, as for a password."""
    if credentials.secret is None:
        raise invalid_client("client authentication is required", credentials.basic)
    admission: Admission = request.app.state.admission
    identity = client_subject(credentials.client_id)
    try:
        async with admission.sign_in(get_remote_address(request), identity, (ClientAuthFailed,)):
            return await _run_hashing(
                request,
                clients.authenticate,
                credentials.client_id,
                credentials.secret,
                _client_ip(request),
            )
    except ClientAuthFailed as exc:
        raise invalid_client(exc.message, credentials.basic) from None


async def _no_confidential_client(
    request: Request, clients: ClientService, credentials: ClientCredentials | None
) -> None:
    """User grants are for public clients: a client id alone is accepted (it carries no
    privilege); a client that authenticates is a service account, which has only the
    client_credentials grant."""
    if credentials is None or credentials.secret is None:
        return
    await authenticate_client(request, clients, credentials)
    raise OAuthError(UNAUTHORIZED_CLIENT, "a service account signs in with client_credentials")


async def _client_credentials_grant(
    request: Request,
    clients: ClientService,
    form: dict[str, str],
    credentials: ClientCredentials | None,
) -> TokenPair:
    if credentials is None:
        raise invalid_client("client authentication is required", basic=False)
    client = await authenticate_client(request, clients, credentials)
    try:
        return await _run(
            request, clients.token, client, form.get("scope", ""), _client_ip(request)
        )
    except InvalidScope as exc:
        raise OAuthError(INVALID_SCOPE, exc.message) from None
    except ClientAuthFailed as exc:  # disabled or removed a moment ago
        raise invalid_client(exc.message, credentials.basic) from None


async def _password_grant(
    request: Request, service: AuthService, form: dict[str, str]
) -> TokenPair:
    username = form.get("username", "")
    admission: Admission = request.app.state.admission
    # Addresses the user signed in from before pass a user-name budget that strangers
    # spent (see familiar.py); everyone else meets it.
    familiar: FamiliarAddresses = request.app.state.sign_in_exemption
    address = get_remote_address(request)
    # The client IP's and the user name's budgets, spent before any password check.
    try:
        async with admission.sign_in(address, username, (InvalidCredentials,), familiar):
            require(form, "username", "password")
            pair = await _run_hashing(
                request,
                service.login,
                username,
                form["password"],
                form.get("scope", ""),
                _client_ip(request),
            )
    except InvalidCredentials as exc:
        raise OAuthError(INVALID_GRANT, exc.message) from None
    except InvalidScope as exc:
        raise OAuthError(INVALID_SCOPE, exc.message) from None
    await familiar.remember(pair.user_id, address)
    return pair


async def _refresh_grant(request: Request, service: AuthService, form: dict[str, str]) -> TokenPair:
    require(form, "refresh_token")
    try:
        return await _run(
            request, service.refresh, form["refresh_token"], _client_ip(request), form.get("scope")
        )
    except RefreshRejected as exc:
        await _push(request, exc.revocations)
        raise OAuthError(INVALID_GRANT, exc.message) from None
    except InvalidScope as exc:
        raise OAuthError(INVALID_SCOPE, exc.message) from None


REVOKE_FORM = (
    FormField("token", 4096, "the refresh token or access token to revoke"),
    FormField("token_type_hint", 32, "refresh_token or access_token"),
    FormField("client_id", 256, "client_secret_post: the client's id"),
    FormField("client_secret", 256, "client_secret_post: the client's secret"),
)
TOKEN_TYPE_HINTS = ("refresh_token", "access_token")


@router.post(
    "/auth/revoke",
    status_code=status.HTTP_200_OK,
    response_class=Response,
    responses={
        200: {"description": "Revoked, or no such token"},
        **error_responses(400, 401, 429, 503),
    },
    tags=["tokens"],
    summary="OAuth2 token revocation (RFC 7009)",
    openapi_extra=form_schema(REVOKE_FORM, required=("token",)),
)
async def revoke(request: Request, service: Service, clients: Clients) -> Response:
    """Revoke a token: a refresh token ends its whole session (every token rotated from
    it and the access tokens issued beside them), an access token ends itself. A token
    that is unknown, expired or not ours is answered 200 as well (RFC 7009 §2.2). A user's
    tokens need no client authentication; a service account's tokens are revoked only
    by that client, authenticated as at the token endpoint."""
    form = await read_form(request, REVOKE_FORM)
    credentials = client_credentials(request, form)
    owner: str | None = None
    if credentials is not None and credentials.secret is not None:
        client = await authenticate_client(request, clients, credentials)
        owner = client_subject(client.client_id)
    require(form, "token")
    hint = form.get("token_type_hint")
    if hint is not None and hint not in TOKEN_TYPE_HINTS:
        raise OAuthError(
            UNSUPPORTED_TOKEN_TYPE, "token_type_hint must be refresh_token or access_token"
        )
    token = form["token"]
    ip = _client_ip(request)
    revocations: list[Any] | None = None
    if token.count(".") == 2:  # a JWT: one of our access tokens if its signature verifies
        verifier: TokenVerifier = request.app.state.verifier
        try:
            principal = verifier.verify_claims(token)
        except Unauthorized:
            principal = None
        if principal is not None:
            issued_to = principal.subject if principal.role == CLIENT_ROLE else None
            if issued_to != owner:
                raise OAuthError(UNAUTHORIZED_CLIENT, "the token was not issued to this client")
            revocations = await _run(
                request,
                service.revoke_access_token,
                principal.subject,
                principal.token_id,
                principal.expires_at,
                ip,
            )
    else:
        if owner is not None:  # refresh tokens belong to user sessions, never to a client
            raise OAuthError(UNAUTHORIZED_CLIENT, "the token was not issued to this client")
        revocations = await _run(request, service.revoke_refresh_token, token, ip)
    if revocations:
        await _push(request, revocations)
    return Response(status_code=200, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.get(
    "/.well-known/oauth-authorization-server",
    tags=["tokens"],
    summary="OAuth 2.0 authorization server metadata (RFC 8414)",
)
async def authorization_server_metadata(request: Request) -> dict[str, Any]:
    """Where the endpoints are and what they support, as absolute URLs built from the
    configured public URL (``MG_AUTH_PUBLIC_URL``)."""
    base: str = request.app.state.settings.issuer_url
    return {
        "issuer": base,
        "token_endpoint": f"{base}/auth/token",
        "jwks_uri": f"{base}/auth/.well-known/jwks.json",
        "revocation_endpoint": f"{base}/auth/revoke",
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "scopes_supported": list(ADMIN_SCOPES),
        "response_types_supported": [],
    }


@router.post(
    "/auth/refresh",
    response_model=TokenResponse,
    responses=error_responses(401, 422),
    tags=["tokens"],
)
async def refresh(
    request: Request, response: Response, service: Service, body: RefreshRequest
) -> TokenResponse:
    """A new token pair for a refresh token; the presented one is spent. Presenting a
    spent one revokes every token of its family. The same as ``grant_type=refresh_token``
    at ``/auth/token``, with a JSON body and ``{"detail": …}`` errors."""
    try:
        pair = await _run(request, service.refresh, body.refresh_token, _client_ip(request))
    except RefreshRejected as exc:
        await _push(request, exc.revocations)
        raise
    return _token_response(pair, response)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 422),
    tags=["tokens"],
)
async def logout(
    request: Request,
    service: Service,
    principal: CurrentPrincipal,
    body: LogoutRequest | None = None,
) -> Response:
    """Revoke the presented access token and its refresh family."""
    revocations = await _run(
        request,
        service.logout,
        principal.subject,
        principal.token_id,
        principal.expires_at,
        body.refresh_token if body else None,
    )
    await _push(request, revocations)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/auth/.well-known/jwks.json", tags=["tokens"])
async def jwks(request: Request) -> dict[str, Any]:
    """The public keys that verify access tokens (RFC 7517), newest first."""
    store: KeyStore = request.app.state.keystore
    keys = await anyio.to_thread.run_sync(store.read_jwks)
    public = ("kty", "use", "alg", "kid", "n", "e")
    return {"keys": [{k: entry[k] for k in public if k in entry} for entry in keys]}


# -- the caller's own account -----------------------------------------------------------
@router.get(
    "/auth/users/me", response_model=UserOut, responses=error_responses(401), tags=["users"]
)
async def me(request: Request, service: Service, principal: CurrentPrincipal) -> UserOut:
    try:
        user = await _run(request, service.get_user, principal.subject)
    except NotFound:  # deleted since the token was issued
        raise Unauthorized("token is invalid or expired") from None
    return _user_out(user)


@router.patch(
    "/auth/users/me",
    response_model=UserOut,
    # 429/503: a password change spends the sign-in budget, as /auth/token does.
    responses=error_responses(401, 403, 422, 429, 503),
    tags=["users"],
)
async def update_me(
    request: Request, service: Service, principal: CurrentPrincipal, body: SelfUpdate
) -> UserOut:
    """Change your full name or password (the current password is required; every
    session ends). Only an admin can set a role: a ``role`` here is refused."""
    if body.role is not None:
        raise Forbidden("only an admin can set a role")
    update = (
        service.update_self,
        principal.subject,
        body.full_name,
        "full_name" in body.model_fields_set,
        body.password.get_secret_value() if body.password else None,
        body.current_password.get_secret_value() if body.current_password else None,
    )
    if body.password is None:
        outcome = await _run_hashing(request, *update)
    else:
        # Checking the current password is a password guess like a sign-in: a stolen
        # access token must not become an unthrottled oracle for it.
        admission: Admission = request.app.state.admission
        client = get_remote_address(request)
        async with admission.sign_in(client, principal.subject, (Forbidden,)):
            outcome = await _run_hashing(request, *update)
    await _push(request, outcome.revocations)
    assert outcome.user is not None
    return _user_out(outcome.user)


# -- admin: user management -------------------------------------------------------------
@router.post(
    "/auth/users",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 409, 422),
    tags=["users"],
)
async def create_user(
    request: Request, service: Service, admin: AdminPrincipal, body: UserCreate
) -> UserOut:
    user = await _run_hashing(request, service.create_user, body, admin.subject)
    return _user_out(user)


@router.get(
    "/auth/users",
    response_model=list[UserOut],
    responses=error_responses(401, 403, 422),
    tags=["users"],
)
async def list_users(
    request: Request,
    service: Service,
    admin: AdminPrincipal,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[UserOut]:
    users = await _run(request, service.list_users, offset, limit)
    return [_user_out(u) for u in users]


@router.get(
    "/auth/users/{username}",
    response_model=UserOut,
    responses=error_responses(401, 403, 404, 422),
    tags=["users"],
)
async def get_user(
    request: Request,
    service: Service,
    admin: AdminPrincipal,
    username: str,
) -> UserOut:
    return _user_out(await _run(request, service.get_user, username))


@router.patch(
    "/auth/users/{username}",
    response_model=UserOut,
    responses=error_responses(401, 403, 404, 409, 422),
    tags=["users"],
)
async def update_user(
    request: Request,
    service: Service,
    admin: AdminPrincipal,
    username: str,
    body: UserUpdate,
) -> UserOut:
    """Change role, disabled flag, full name or password. A role change, disabling
    or a new password revokes every token the user holds."""
    outcome = await _run_hashing(request, service.update_user, username, body, admin.subject)
    await _push(request, outcome.revocations)
    assert outcome.user is not None
    return _user_out(outcome.user)


@router.delete(
    "/auth/users/{username}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 409),
    tags=["users"],
)
async def delete_user(
    request: Request, service: Service, admin: AdminPrincipal, username: str
) -> Response:
    outcome = await _run(request, service.delete_user, username, admin.subject)
    await _push(request, outcome.revocations)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- admin: service accounts (OAuth2 clients) --------------------------------------------
def _client_out(client: Client, secret: str | None = None) -> ClientOut:
    return ClientOut.model_validate(
        {
            "client_id": client.client_id,
            "name": client.name,
            "scopes": client.scopes.split(),
            "disabled": client.disabled,
            "created_at": client.created_at,
            "updated_at": client.updated_at,
            "client_secret": secret,
        }
    )


def _with_secret(outcome: ClientOutcome, response: Response) -> ClientOut:
    if outcome.secret is not None:
        response.headers["Cache-Control"] = "no-store"
    return _client_out(outcome.client, outcome.secret)


@router.post(
    "/auth/clients",
    response_model=ClientOut,
    response_model_exclude_none=True,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 409, 422),
    tags=["clients"],
)
async def create_client(
    request: Request,
    response: Response,
    clients: Clients,
    admin: AdminPrincipal,
    body: ClientCreate,
) -> ClientOut:
    """Register a service account with the scopes its tokens may carry. The answer holds
    its ``client_secret``: shown this once, stored only as a hash."""
    outcome = await _run_hashing(request, clients.create, body, admin.subject)
    return _with_secret(outcome, response)


@router.get(
    "/auth/clients",
    response_model=list[ClientOut],
    response_model_exclude_none=True,
    responses=error_responses(401, 403, 422),
    tags=["clients"],
)
async def list_clients(
    request: Request,
    clients: Clients,
    admin: AdminPrincipal,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ClientOut]:
    return [_client_out(c) for c in await _run(request, clients.list, offset, limit)]


@router.get(
    "/auth/clients/{client_id}",
    response_model=ClientOut,
    response_model_exclude_none=True,
    responses=error_responses(401, 403, 404),
    tags=["clients"],
)
async def get_client(
    request: Request, clients: Clients, admin: AdminPrincipal, client_id: str
) -> ClientOut:
    return _client_out(await _run(request, clients.get, client_id))


@router.patch(
    "/auth/clients/{client_id}",
    response_model=ClientOut,
    response_model_exclude_none=True,
    responses=error_responses(401, 403, 404, 409, 422),
    tags=["clients"],
)
async def update_client(
    request: Request,
    response: Response,
    clients: Clients,
    admin: AdminPrincipal,
    client_id: str,
    body: ClientUpdate,
) -> ClientOut:
    """Rename, change scopes, disable or enable, or ``rotate_secret`` (the new secret is in
    the answer, shown once). New scopes, disabling and a new secret revoke every token
    the client holds."""
    outcome = await _run_hashing(request, clients.update, client_id, body, admin.subject)
    await _push(request, outcome.revocations)
    return _with_secret(outcome, response)


@router.delete(
    "/auth/clients/{client_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404),
    tags=["clients"],
)
async def delete_client(
    request: Request, clients: Clients, admin: AdminPrincipal, client_id: str
) -> Response:
    """Remove a service account; every token it holds is revoked."""
    outcome = await _run(request, clients.delete, client_id, admin.subject)
    await _push(request, outcome.revocations)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
