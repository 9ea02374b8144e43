"""modelgate's shared library: what every service needs, written once."""

from ._app import create_service_app
from ._errors import (
    BadRequest,
    Conflict,
    Forbidden,
    JsonResponse,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    error_responses,
    install_error_handlers,
)
from ._files import write_private, write_public
from ._health import CheckResult, HealthChecks
from ._logging import audit, configure_logging, request_id_var
from ._metrics import (
    AUTH_FAILURES,
    DECRYPTION_FAILURES,
    LOGINS,
    PREDICTIONS,
    RATE_LIMIT_FALLBACK,
    RATE_LIMITED,
)
from ._ratelimit import (
    PredictionLimits,
    RateLimitHeadersMiddleware,
    RowsQuota,
    SharedRateLimiter,
    Verdict,
    login_rate_limit,
    rate_limit,
)
from ._redis import create_redis, redis_ok
from ._resources import shared_resources
from ._security import (
    ADMIN_SCOPES,
    ALGORITHM,
    ROLES,
    USER_SCOPES,
    KeySet,
    Principal,
    TokenVerifier,
    authenticate,
    bearer_scheme,
    revoked_jti_key,
    revoked_subject_key,
)
from ._settings import CommonSettings, RateLimitSettings, read_secret
from ._worker import DrainingUvicornWorker

__all__ = [
    "ADMIN_SCOPES",
    "ALGORITHM",
    "AUTH_FAILURES",
    "DECRYPTION_FAILURES",
    "LOGINS",
    "PREDICTIONS",
    "RATE_LIMITED",
    "RATE_LIMIT_FALLBACK",
    "ROLES",
    "USER_SCOPES",
    "BadRequest",
    "CheckResult",
    "CommonSettings",
    "Conflict",
    "DrainingUvicornWorker",
    "Forbidden",
    "HealthChecks",
    "JsonResponse",
    "KeySet",
    "NotFound",
    "PredictionLimits",
    "Principal",
    "RateLimitHeadersMiddleware",
    "RateLimitSettings",
    "RowsQuota",
    "ServiceError",
    "ServiceUnavailable",
    "SharedRateLimiter",
    "TokenVerifier",
    "TooManyRequests",
    "Unauthorized",
    "Verdict",
    "audit",
    "authenticate",
    "bearer_scheme",
    "configure_logging",
    "create_redis",
    "create_service_app",
    "error_responses",
    "install_error_handlers",
    "login_rate_limit",
    "rate_limit",
    "read_secret",
    "redis_ok",
    "request_id_var",
    "revoked_jti_key",
    "revoked_subject_key",
    "shared_resources",
    "write_private",
    "write_public",
]
