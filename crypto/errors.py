"""Errors raised by the ``crypto`` package.

Every failure a caller can cause is a named subclass of :class:`CryptoError`, whose
:meth:`CryptoError.diagnostics` returns the message plus a hint on how to fix it::

    try:
        verify_envelope(envelope, key)
    except CryptoError as exc:
        print(exc.diagnostics())
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CryptoError",
    "EncodingError",
    "Error",
    "KeyFormatError",
    "LogError",
    "LogRangeError",
    "ProofError",
    "SignatureError",
]


class Error(Exception):
    """The one error root of the whole project (``crypto``, ``enclave``, ``models`` and every
    part of ``appliance``, its SDK included).

    Every error carries a ``title`` (what kind of failure; the class name unless a class sets
    one), a ``detail`` (this failure, the message) and a ``hint`` (what to do; per class, or
    given per raise). :meth:`diagnostics` renders the three for people; the appliance puts
    ``title``/``detail``/``hint`` in its problem documents and job failure reasons, and the CLI
    prints ``diagnostics()``. It lives in ``crypto`` because that is the one package every
    other package may import (``crypto`` imports none of them)."""

    title: str = ""
    hint: str = "See the message above."

    def __init__(self, detail: str = "", *, hint: str | None = None) -> None:
        detail = detail or self.title or type(self).__name__
        super().__init__(detail)
        self.detail = detail
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        """The detail (the name the library errors used)."""
        return self.detail

    def diagnostics(self) -> str:
        """The title and detail, then a hint on what to do."""
        text = f"{self.title or type(self).__name__}: {self.detail}"
        return text + (f"\nHint: {self.hint}" if self.hint else "")


class CryptoError(Error):
    """Base class of every error raised by ``crypto``; ``diagnostics()`` explains the fix."""

    hint: str = "See the message above; this is an error of the crypto layer."


class SignatureError(CryptoError):
    """A signed envelope is malformed, signed by an unknown key, or its signature is invalid."""

    hint: str = (
        "The signed object was altered, or it was signed by a key you do not trust. "
        "Obtain the original object and check that the pinned public key is the signer's."
    )


class ProofError(CryptoError):
    """A Merkle inclusion or consistency proof does not verify, or is malformed."""

    hint: str = (
        "The log entry, the proof or the tree head was altered, or they belong to different "
        "tree sizes. Fetch a fresh proof for the exact tree size of the checkpoint you trust."
    )


class KeyFormatError(CryptoError):
    """Key material cannot be parsed, or is not of the expected algorithm (Ed25519)."""

    hint: str = (
        "Pass an Ed25519 key in PEM form (PKCS#8 private key or SubjectPublicKeyInfo "
        "public key), as written by crypto.keys."
    )


class EncodingError(CryptoError, ValueError):
    """A value cannot be encoded canonically (NaN/infinity, non-string keys, bad types)."""

    hint: str = (
        "Canonical JSON accepts only dicts with string keys, lists, strings, ints, finite "
        "floats, booleans and None."
    )


class LogError(CryptoError):
    """The transparency log cannot perform the operation (corrupt storage, wrong origin)."""

    hint: str = (
        "Check that the log database belongs to this appliance and was not edited by hand."
    )


class LogRangeError(LogError, IndexError):
    """An index or tree size lies outside the current log."""

    hint: str = (
        "Ask for an index below the tree size, and a tree size no larger than the log."
    )


class BundleError(CryptoError):
    """A verification bundle is not shaped as ``crypto.bundle`` writes it."""

    hint: str = (
        "A bundle is JSON with exactly the keys 'envelope', 'log' and 'public_key'; "
        "fetch it again from the appliance rather than editing it."
    )
