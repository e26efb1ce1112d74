"""The bytes client and server exchange: one ciphertext, a PEB1 batch, a PEW1/PEW2/PEW3 wide body.

    body = encode_blobs([ct1, ct2])                          # PEB1: count, (u32 length, bytes) each
    cts = decode_blobs(body, max_items=16, max_bytes=1 << 26)
    body = encode_wide(cts, layout=lay, count=q)             # PEW1 / 2 / 3: the layout in the header

A ciphertext is TenSEAL's CKKS vector message (:func:`vector_message`: slot count, SEAL
ciphertext, scale), so either side can open it with TenSEAL as well. Bodies are read by the
bounded :class:`crypto.framing.FrameReader`; every inconsistency is a
:class:`~crypto.ckks.CiphertextError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from crypto import packing
from crypto.ckks import CiphertextError, _encode_fields, _encode_varint, _parse_fields, _read_varint
from crypto.framing import FrameReader, FrameWriter

__all__ = [
    "WIDE_MAGICS",
    "WIDE_REGIONS_MAGIC",
    "WIDE_SPREAD_MAGIC",
    "decode_blobs",
    "decode_wide",
    "encode_blobs",
    "encode_wide",
    "is_wide_body",
    "read_vector_message",
    "vector_message",
    "wide_query_count",
]

_FRAME_MAGIC = b"PEB1"
_WIDE_MAGIC = b"PEW1"
#: A partial wide batch replicated into :func:`crypto.packing.wide_regions` regions.
WIDE_REGIONS_MAGIC = b"PEW2"
#: A partial wide batch spread over those regions: region ``j`` of ciphertext ``u`` holds
#: piece ``u * R + j`` (:func:`crypto.packing.pack_wide` with ``spread``), ``R`` times fewer
#: ciphertexts than ``PEW2``.
WIDE_SPREAD_MAGIC = b"PEW3"
WIDE_MAGICS = (_WIDE_MAGIC, WIDE_REGIONS_MAGIC, WIDE_SPREAD_MAGIC)
_WIDE_HEADER = struct.Struct(">4sIIII")  # magic, block, chunks, query count, item count


def vector_message(size: int, blob: bytes, scale: float) -> bytes:
    """TenSEAL's CKKS vector message: ``size`` slots, one serialized SEAL ciphertext, its scale."""
    return _encode_fields([(1, 2, _encode_varint(size)), (2, 2, blob), (3, 1, struct.pack("<d", scale))])


def read_vector_message(data: bytes) -> tuple[int, bytes, float]:
    """Inverse of :func:`vector_message`: ``(size, SEAL ciphertext bytes, scale)``, the
    ciphertext unchecked; raises :class:`CiphertextError` unless the message has exactly
    that layout."""
    try:
        fields = _parse_fields(data)
        if [(f, w) for f, w, _ in fields] != [(1, 2), (2, 2), (3, 1)]:
            raise ValueError("unexpected message layout")
        shape, blob, scale_raw = (v for _, _, v in fields)
        assert isinstance(shape, bytes) and isinstance(blob, bytes) and isinstance(scale_raw, bytes)
        size, end = _read_varint(shape, 0)
        if end != len(shape):
            raise ValueError("a vector has one dimension")
    except ValueError:
        raise CiphertextError("malformed or truncated ciphertext (unexpected message layout)") from None
    (scale,) = struct.unpack("<d", scale_raw)
    return size, blob, float(scale)


def _length_prefixed(header: bytes, blobs: Sequence[bytes]) -> bytes:
    """``header`` then each blob as (u32 big-endian length, bytes), by :mod:`crypto.framing`."""
    writer = FrameWriter(header)
    for blob in blobs:
        writer.prefixed(bytes(blob), 4)
    return writer.to_bytes()


def _read_length_prefixed(data: bytes, pos: int, count: int, *, body: str) -> list[bytes]:
    """Inverse of :func:`_length_prefixed` after the ``pos`` header bytes the caller has
    checked: exactly ``count`` blobs, nothing after (a :class:`CiphertextError` naming ``body``
    otherwise), read by the bounded :class:`crypto.framing.FrameReader`."""
    raw = bytes(data)
    reader = FrameReader(raw, magic=raw[:pos], error=CiphertextError, what=body)
    out = [reader.prefixed(4, limit=len(raw), field="ciphertext") for _ in range(count)]
    reader.end()
    return out


def encode_blobs(blobs: Sequence[bytes]) -> bytes:
    """Frame several ciphertexts into one body: magic, count, then (u32 length, bytes) each."""
    return _length_prefixed(_FRAME_MAGIC + struct.pack(">I", len(blobs)), blobs)


def decode_blobs(data: bytes, *, max_items: int, max_bytes: int) -> list[bytes]:
    """Inverse of :func:`encode_blobs`; raises :class:`CiphertextError` on any inconsistency."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_bytes:
        raise CiphertextError(f"batch body must be bytes of at most {max_bytes} bytes")
    if len(data) < 8 or bytes(data[:4]) != _FRAME_MAGIC:
        raise CiphertextError("batch body lacks the PEB1 header")
    (count,) = struct.unpack(">I", data[4:8])
    if not 1 <= count <= max_items:
        raise CiphertextError(f"batch holds {count} ciphertexts; allowed 1..{max_items}")
    return _read_length_prefixed(data, 8, count, body="batch body")


def is_wide_body(data: bytes) -> bool:
    """Whether ``data`` starts like a wide-layout body (``PEW1``, ``PEW2`` or ``PEW3``)."""
    return bytes(data[:4]) in WIDE_MAGICS


def encode_wide(
    blobs: Sequence[bytes], *, layout: packing.WideLayout, count: int, regions: int = 1, spread: bool = False
) -> bytes:
    """Frame a wide-layout body: magic, block, chunks, query count, then blobs.

    The header names the layout so a server refuses bodies built for another layout. The
    magic is ``PEW1`` (replies, and batches in one region), ``PEW2`` (a partial batch
    replicated into regions; their number follows from the count, see
    :func:`crypto.packing.wide_regions`) or ``PEW3`` (``spread`` over them); servers that
    predate a magic refuse it.
    """
    magic = _WIDE_MAGIC if regions == 1 else WIDE_SPREAD_MAGIC if spread else WIDE_REGIONS_MAGIC
    return _length_prefixed(_WIDE_HEADER.pack(magic, layout.block, layout.chunks, count, len(blobs)), blobs)


def decode_wide(
    data: bytes, *, layout: packing.WideLayout, items: int | None, max_bytes: int
) -> tuple[int, list[bytes]]:
    """Inverse of :func:`encode_wide`: ``(query count, blobs)``, checked against ``layout``.

    Raises :class:`CiphertextError` unless the header matches the layout, the query count
    fits its capacity, exactly ``items`` blobs follow and nothing trails them. ``items=None``
    expects a query body's own count: ``chunks``, or :func:`crypto.packing.spread_rows` for
    ``PEW3``.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_bytes:
        raise CiphertextError(f"wide body must be bytes of at most {max_bytes} bytes")
    if len(data) < _WIDE_HEADER.size or not is_wide_body(data):
        raise CiphertextError("body is not in the wide layout (no PEW1 header)")
    _, block, chunks, count, n = _WIDE_HEADER.unpack(bytes(data[: _WIDE_HEADER.size]))
    if (block, chunks) != (layout.block, layout.chunks):
        raise CiphertextError(
            f"wide body has block {block} x {chunks} chunks; this ensemble uses {layout.block} x {layout.chunks}"
        )
    if not 1 <= count <= layout.capacity:
        raise CiphertextError(f"wide body declares {count} queries; allowed 1..{layout.capacity}")
    if items is None:
        items = layout.chunks
        if bytes(data[:4]) == WIDE_SPREAD_MAGIC:
            items = packing.spread_rows(layout, packing.wide_regions(layout, count))
    if n != items:
        raise CiphertextError(f"wide body holds {n} ciphertexts, expected {items}")
    return count, _read_length_prefixed(data, _WIDE_HEADER.size, n, body="wide body")


def wide_query_count(data: bytes) -> int:
    """Query count declared in a wide body's header (0 if it is not a wide body)."""
    if len(data) < _WIDE_HEADER.size or not is_wide_body(data):
        return 0
    return int(_WIDE_HEADER.unpack(bytes(data[: _WIDE_HEADER.size]))[3])
