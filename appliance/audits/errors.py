"""Errors raised by the audit methods.

Every failure a caller can cause has a named subclass of :class:`AuditError`;
``diagnostics()`` gives the message and a hint on how to fix it (the project's one error
root, :class:`crypto.errors.Error`).
"""

from __future__ import annotations

from crypto.errors import Error


class AuditError(Error):
    """Base class of every error raised by :mod:`appliance.audits`; ``diagnostics()`` gives the
    message and a hint on how to fix it."""

    hint = "check the audit inputs and parameters"


class AuditInputError(AuditError, ValueError):
    """An input is missing, empty, of the wrong type or shape, or not finite."""

    hint = "pass non-empty, finite float arrays [n, C, H, W] of one shape for every dataset"


class EgressRefusedError(AuditInputError):
    """An endpoint URL is malformed or its host resolves to a non-public address."""

    hint = "use an http(s) URL whose host resolves to public addresses only"


class AuditParameterError(AuditError, ValueError):
    """A parameter is unknown or out of range."""

    hint = "see the method's `defaults()` for accepted parameters and ranges"


class QueryError(AuditError):
    """A query function (local or remote suspect) returned something unusable."""

    hint = "the suspect must return one finite row per input, of a fixed width"


class QueryBudgetExceeded(QueryError):
    """The audit would spend more queries than the endpoint's budget allows."""

    hint = "raise the endpoint's query_budget or lower the audit's rounds / sample sizes"


class RemoteEndpointError(QueryError):
    """A remote suspect endpoint failed: unreachable, HTTP error, or junk answer."""

    hint = "check that the URL answers POST {'inputs': [...]} with JSON {'outputs': [...]}"


class RemoteTimeoutError(RemoteEndpointError):
    """A remote suspect endpoint did not answer within the timeout after all retries."""

    hint = "raise timeout_s, lower max_batch, or check the endpoint's health"


class WatermarkKeyError(AuditError, ValueError):
    """The watermark key is missing or too short."""

    hint = "use the 32-byte key the appliance generated and sealed when marking the dataset"


__all__ = [
    "AuditError",
    "AuditInputError",
    "AuditParameterError",
    "EgressRefusedError",
    "QueryBudgetExceeded",
    "QueryError",
    "RemoteEndpointError",
    "RemoteTimeoutError",
    "WatermarkKeyError",
]
