"""SEAL ciphertexts to and from bytes, and the ``CTS1`` bundle of several in one message part.

Bundle frame (:mod:`crypto.framing`): ``b"CTS1" | u32 count | count × u32 length | the
ciphertexts``, nothing after the last one.
"""

from __future__ import annotations

from typing import Any

import tenseal.sealapi as seal

from crypto.framing import FrameReader, FrameWriter
from crypto.seal_bridge import seal_from_bytes, seal_to_bytes

__all__ = ["ciphertext_from_bytes", "ciphertext_to_bytes", "pack_blobs", "unpack_blobs"]

_BLOBS_MAGIC = b"CTS1"
#: The largest serialized ciphertext accepted by default.
MAX_CIPHERTEXT_BYTES = 8 * 1024 * 1024


def ciphertext_to_bytes(ct: Any) -> bytes:
    """Serialize a SEAL ciphertext (SEAL's own format)."""
    return seal_to_bytes(ct)


def ciphertext_from_bytes(seal_context: Any, data: bytes, *, max_bytes: int = MAX_CIPHERTEXT_BYTES) -> Any:
    """Load a SEAL ciphertext, validated against ``seal_context`` (SEAL checks parameters);
    raises ``ValueError`` (:class:`crypto.seal_bridge.SealBridgeError`) if it does not load."""
    return seal_from_bytes(seal.Ciphertext(), data, seal_context, max_bytes=max_bytes)


def pack_blobs(blobs: list[bytes]) -> bytes:
    """Several ciphertexts as one message part (count, lengths, then the bytes)."""
    frame = FrameWriter(_BLOBS_MAGIC).uint(len(blobs), 4)
    for blob in blobs:
        frame.uint(len(blob), 4)
    for blob in blobs:
        frame.raw(blob)
    return frame.to_bytes()


def unpack_blobs(data: bytes, *, max_count: int = 4096) -> list[bytes]:
    """Inverse of :func:`pack_blobs`, size-checked (raises ``ValueError``:
    :class:`crypto.framing.FrameError`)."""
    reader = FrameReader(data, magic=_BLOBS_MAGIC, what="ciphertext bundle")
    count = reader.uint(4, field="count")
    if not 1 <= count <= max_count:
        reader.fail("ciphertext bundle has a bad count")
    lengths = reader.lengths(count, 4)
    if sum(lengths) != reader.remaining:
        reader.fail("ciphertext bundle has the wrong length")
    return reader.parts(lengths, field="ciphertext")
