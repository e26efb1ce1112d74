"""Errors raised by the ``crypto`` package.

Every failure a caller can cause is a named subclass of :class:`CryptoError`, whose
:meth:`CryptoError.diagnostics` returns the message plus a hint on how to fix it::

    try:
        verify_envelope(envelope, key)
    except CryptoError as exc:
        print(exc.diagnostics())
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BundleError",
    "CryptoError",
    "EncodingError",
    "HintedError",
    "KeyFormatError",
    "LogError",
    "LogRangeError",
    "ProofError",
    "SignatureError",
]


class HintedError(Exception):
    """A message plus a hint on the fix (``default_hint`` per class, or given per raise).

    The shared base of the error families of ``crypto``, ``enclave`` and
    ``appliance.confidential``; each family keeps its own base class so that catching one
    never catches another."""

    default_hint: ClassVar[str] = "See the message above."

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else type(self).default_hint

    def diagnostics(self) -> str:
        """Return a human-readable explanation: the message, then a hint on what to do."""
        return f"{type(self).__name__}: {self.message}\nHint: {self.hint}"


class CryptoError(HintedError):
    """Base class of every error raised by ``crypto``; ``diagnostics()`` explains the fix."""

    default_hint: ClassVar[str] = "See the message above; this is an error of the crypto layer."


class SignatureError(CryptoError):
    """A signed envelope is malformed, signed by an unknown key, or its signature is invalid."""

    default_hint: ClassVar[str] = (
        "The signed object was altered, or it was signed by a key you do not trust. "
        "Obtain the original object and check that the pinned public key is the signer's."
    )


class ProofError(CryptoError):
    """A Merkle inclusion or consistency proof does not verify, or is malformed."""

    default_hint: ClassVar[str] = (
        "The log entry, the proof or the tree head was altered, or they belong to different "
        "tree sizes. Fetch a fresh proof for the exact tree size of the checkpoint you trust."
    )


class KeyFormatError(CryptoError):
    """Key material cannot be parsed, or is not of the expected algorithm (Ed25519)."""

    default_hint: ClassVar[str] = (
        "Pass an Ed25519 key in PEM form (PKCS#8 private key or SubjectPublicKeyInfo "
        "public key), as written by crypto.keys."
    )


class EncodingError(CryptoError, ValueError):
    """A value cannot be encoded canonically (NaN/infinity, non-string keys, bad types)."""

    default_hint: ClassVar[str] = (
        "Canonical JSON accepts only dicts with string keys, lists, strings, ints, finite "
        "floats, booleans and None."
    )


class LogError(CryptoError):
    """The transparency log cannot perform the operation (corrupt storage, wrong origin)."""

    default_hint: ClassVar[str] = (
        "Check that the log database belongs to this appliance and was not edited by hand."
    )


class LogRangeError(LogError, IndexError):
    """An index or tree size lies outside the current log."""

    default_hint: ClassVar[str] = (
        "Ask for an index below the tree size, and a tree size no larger than the log."
    )


class BundleError(CryptoError):
    """A verification bundle is not shaped as ``crypto.bundle`` writes it."""

    default_hint: ClassVar[str] = (
        "A bundle is JSON with exactly the keys 'envelope', 'log' and 'public_key'; "
        "fetch it again from the appliance rather than editing it."
    )
