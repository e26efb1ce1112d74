"""Errors of the appliance service; each maps to an RFC 9457 problem document.

Every failure a user can cause has a name, an HTTP status and a hint on how to fix it.
:class:`Error` is the one root of every error the project raises (service, audits, models,
crypto, enclave, confidential parties, codecs and the SDK): catch it to catch them all, and
print ``diagnostics()`` (title, detail, hint) to a person.
"""

from __future__ import annotations

from typing import Any

from crypto.errors import Error

__all__ = ["ApplianceError", "Error"]


class ApplianceError(Error):
    """Base class of the service's errors: ``status`` and ``slug`` give the problem type,
    ``title``/``detail``/``hint`` the rest of the problem document."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"
    hint: str = ""

    def __init__(self, detail: str = "", *, hint: str | None = None, **extra: Any) -> None:
        super().__init__(detail, hint=hint)
        self.extra = extra

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://audit-appliance.dev/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.hint:
            body["hint"] = self.hint
        body.update(self.extra)
        return body


class BadRequest(ApplianceError):
    status, slug, title = 400, "bad-request", "Bad request"


class ValidationFailed(ApplianceError):
    status, slug, title = 422, "validation-failed", "Request validation failed"


class Unauthorized(ApplianceError):
    status, slug, title = 401, "unauthorized", "Missing or invalid token"
    hint = "Send 'Authorization: Bearer <token>'; create one with 'appliance tokens create'."


class Forbidden(ApplianceError):
    status, slug, title = 403, "forbidden", "Role not allowed"


class NotFound(ApplianceError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ApplianceError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ApplianceError):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(ApplianceError):
    status, slug, title = 410, "gone", "Gone"


class PayloadTooLarge(ApplianceError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ApplianceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class UnprocessableInput(ApplianceError):
    status, slug, title = 422, "unprocessable-input", "Input refused"


class TooManyRequests(ApplianceError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(ApplianceError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class JobFailed(ApplianceError):
    """Raised inside a job to fail it with a reason a user can act on."""

    status, slug, title = 422, "job-failed", "Job failed"


class JobCancelled(ApplianceError):
    status, slug, title = 409, "job-cancelled", "Job cancelled"
