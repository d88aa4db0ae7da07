"""Error codes of the accounts domain (keys and admin reuse them)."""

from __future__ import annotations

from ollama_web.core.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    UnauthenticatedError,
)


class InvalidCredentialsError(UnauthenticatedError):
    """Wrong password or unknown user: one answer for both."""

    code = "INVALID_CREDENTIALS"


class InvalidApiKeyError(UnauthenticatedError):
    code = "INVALID_API_KEY"


class ApiKeyRevokedError(UnauthenticatedError):
    code = "API_KEY_REVOKED"


class ApiKeyExpiredError(UnauthenticatedError):
    code = "API_KEY_EXPIRED"


class AccountDisabledError(ForbiddenError):
    code = "ACCOUNT_DISABLED"


class CsrfTokenInvalidError(ForbiddenError):
    code = "CSRF_TOKEN_INVALID"


class CrossSiteRequestError(ForbiddenError):
    code = "CROSS_SITE_REQUEST"


class SetupAlreadyCompletedError(ConflictError):
    code = "SETUP_ALREADY_COMPLETED"


class UsernameTakenError(ConflictError):
    code = "USERNAME_TAKEN"


class LastAdminError(ConflictError):
    code = "LAST_ADMIN"


class InvalidCurrentPasswordError(BadRequestError):
    code = "INVALID_CURRENT_PASSWORD"
