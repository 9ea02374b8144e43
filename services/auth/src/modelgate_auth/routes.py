"""HTTP routes of the auth service: translate HTTP to calls of plain logic.

Route paths are the public paths (nginx passes /auth/… and /token unchanged).
The logic is synchronous (database, argon2): it runs in worker threads, the
password work under a small concurrency limit, so the event loop never blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Form, Query, Request, Response, Security, status
from modelgate_common import (
    Forbidden,
    NotFound,
    Principal,
    SharedRateLimiter,
    Unauthorized,
    authenticate,
    error_responses,
    login_rate_limit,
)
from slowapi.util import get_remote_address

from .db import User
from .keys import KeyStore
from .revocation import RevocationPublisher
from .schemas import (
    PASSWORD_MAX,
    SCOPE_MAX,
    LogoutRequest,
    RefreshRequest,
    SelfUpdate,
    TokenResponse,
    UserCreate,
    UserOut,
    UserUpdate,
)
from .service import AuthService, RefreshRejected, TokenPair

router = APIRouter()

T = TypeVar("T")

CurrentPrincipal = Annotated[Principal, Security(authenticate)]
# Client IP and user-name failure budgets, spent before the password check (429/503).
SignInLimited = Annotated[None, Depends(login_rate_limit)]


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
@router.post(
    "/auth/token",
    response_model=TokenResponse,
    responses=error_responses(400, 401, 422, 429, 503),
    tags=["tokens"],
    summary="OAuth2 password grant",
)
@router.post("/token", response_model=TokenResponse, include_in_schema=False)
async def token(
    request: Request,
    response: Response,
    _: SignInLimited,
    service: Service,
    username: Annotated[str, Form(min_length=1, max_length=256)],
    password: Annotated[str, Form(min_length=1, max_length=PASSWORD_MAX)],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
    scope: Annotated[str, Form(max_length=SCOPE_MAX, pattern=r"^[a-z:_ ]*$")] = "",
    client_id: Annotated[str | None, Form(max_length=256)] = None,
    client_secret: Annotated[str | None, Form(max_length=256)] = None,
) -> TokenResponse:
    """Exchange a user name and password for an access token and a refresh token.
    ``scope`` (space-separated) narrows the token to fewer scopes than the role has."""
    pair = await _run_hashing(
        request, service.login, username, password, scope, _client_ip(request)
    )
    return _token_response(pair, response)


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
    spent one revokes every token of its family."""
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
    limiter: SharedRateLimiter | None = None
    if body.password is not None:
        # Checking the current password is a password guess like a sign-in: a stolen
        # access token must not become an unthrottled oracle for it.
        limiter = request.app.state.ratelimiter
        await limiter.check_login(get_remote_address(request), principal.subject)
    try:
        outcome = await _run_hashing(
            request,
            service.update_self,
            principal.subject,
            body.full_name,
            "full_name" in body.model_fields_set,
            body.password.get_secret_value() if body.password else None,
            body.current_password.get_secret_value() if body.current_password else None,
        )
    except Forbidden:
        if limiter is not None:
            await limiter.record_login_failure(principal.subject)
        raise
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
