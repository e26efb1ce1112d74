"""Errors of the appliance service; each maps to an RFC 9457 problem document.

Every failure a user can cause has a name, an HTTP status and a hint on how to fix it.
"""

from __future__ import annotations

from typing import Any


class ApplianceError(Exception):
    """Base class: ``status`` and ``slug`` give the problem type, ``hint`` the fix."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"
    hint: str = ""

    def __init__(self, detail: str = "", *, hint: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if hint is not None:
            self.hint = hint
        self.extra = extra

    def diagnostics(self) -> str:
        """A human explanation with the fix, for CLI output."""
        return f"{self.title}: {self.detail}" + (f"\nHint: {self.hint}" if self.hint else "")

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
