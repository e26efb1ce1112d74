"""Errors of confidential refinement (host-side orchestration and the parties' helpers)."""

from __future__ import annotations

from crypto.errors import Error

__all__ = ["ConfidentialError", "RefinementInterrupted"]


class ConfidentialError(Error):
    """Base class; ``diagnostics()`` says what to do."""

    hint: str = "Check the inputs of the confidential refinement."


class RefinementInterrupted(ConfidentialError):
    """The enclave died or refused mid-job; ``reason`` says why, ``checkpoint`` is the last
    sealed state (or None), from which :func:`run_refinement` can resume on a new enclave."""

    hint: str = (
        "Launch a new enclave on the same platform and call run_refinement(..., "
        "checkpoint=exc.checkpoint) to resume, or provision again and start over."
    )

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        checkpoint: bytes | None,
        epoch: int,
        step: int,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
