"""Errors raised by the ``enclave`` package (host side and inside the enclave).

try:
    client = EnclaveClient.launch(platform_dir=path)
except EnclaveError as exc:
    print(exc.diagnostics())
"""

from __future__ import annotations

from crypto.errors import Error

__all__ = [
    "EnclaveCrashedError",
    "EnclaveError",
    "EnclaveLaunchError",
    "EnclaveRemoteError",
    "PlatformError",
    "ProtocolError",
    "RefinementError",
]


class EnclaveError(Error):
    """Base class of every error raised by ``enclave``; ``diagnostics()`` explains the fix."""

    hint: str = "See the message above; this is an error of the enclave layer."


class PlatformError(EnclaveError):
    """The simulated platform folder is missing or malformed."""

    hint: str = (
        "Create the platform folder once with enclave.platform.create_platform(path) and pass "
        "the same folder to every launch."
    )


class EnclaveLaunchError(EnclaveError):
    """The enclave process could not start (bad package, failed signature check, EINIT)."""

    hint: str = (
        "Check the enclave package path, the platform folder and the enclave signing key; the "
        "enclave's stderr is included in the message."
    )


class ProtocolError(EnclaveError):
    """A message on the host/enclave channel is malformed or exceeds the size limit."""

    hint: str = (
        "Host and enclave must run the same protocol version; raise max_message_bytes only "
        "if a legitimate message is larger."
    )


class EnclaveCrashedError(EnclaveError):
    """The enclave process died (killed, crashed) while the host was waiting for it."""

    hint: str = (
        "Launch a new enclave. A refinement can resume from its last sealed checkpoint on the "
        "same platform with the same enclave build, or start over with fresh provisioning."
    )


class EnclaveRemoteError(EnclaveError):
    """The enclave refused a request; ``code`` names the failure class inside the enclave."""

    hint: str = (
        "The enclave rejected the request; the code and message say why. Secrets are never "
        "included in enclave error messages."
    )

    def __init__(self, message: str, *, code: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class RefinementError(EnclaveError):
    """A refinement request is inconsistent (shapes, order, state) and was refused."""

    hint: str = (
        "Check the refinement plan (batch sizes, dimensions, label counts) and that the host "
        "drives the steps in the order the enclave expects."
    )
