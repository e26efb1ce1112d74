"""Length-prefixed host/enclave messages: a JSON header plus binary parts.

Frame: ``b"ENC1" | u32 header length | u64 body length | header JSON | body``. The header is a
JSON object; its ``"parts"`` field lists the byte lengths that split the body into parts.
Headers are limited to 1 MiB, bodies to the channel's ``max_message_bytes``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import IO, Any

from enclave.errors import EnclaveCrashedError, ProtocolError

__all__ = ["MAX_HEADER_BYTES", "read_frame", "write_frame", "encode_frame"]

MAGIC = b"ENC1"
MAX_HEADER_BYTES = 1024 * 1024
_PREFIX = struct.Struct(">4sIQ")


def encode_frame(header: dict[str, Any], parts: Sequence[bytes], *, max_body: int) -> bytes:
    """Encode one frame; raise ProtocolError if it would exceed the limits."""
    header = dict(header)
    header["parts"] = [len(p) for p in parts]
    head = json.dumps(header, separators=(",", ":")).encode()
    body_len = sum(len(p) for p in parts)
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    if body_len > max_body:
        raise ProtocolError(f"message body of {body_len} bytes exceeds the limit of {max_body}")
    return b"".join([_PREFIX.pack(MAGIC, len(head), body_len), head, *parts])


def write_frame(stream: IO[bytes], header: dict[str, Any], parts: Sequence[bytes], *, max_body: int) -> int:
    """Write one frame and flush; returns the number of bytes written."""
    data = encode_frame(header, parts, max_body=max_body)
    stream.write(data)
    stream.flush()
    return len(data)


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EnclaveCrashedError("channel closed by the other side (end of stream)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes], *, max_body: int) -> tuple[dict[str, Any], list[bytes], int]:
    """Read one frame; returns (header, parts, total bytes read)."""
    prefix = _read_exact(stream, _PREFIX.size)
    magic, head_len, body_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic (desynchronised or foreign stream)")
    if head_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    if body_len > max_body:
        raise ProtocolError(f"message body of {body_len} bytes exceeds the limit of {max_body}")
    try:
        header = json.loads(_read_exact(stream, head_len))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header must be a JSON object")
    body = _read_exact(stream, body_len)
    lengths = header.pop("parts", [])
    if (
        not isinstance(lengths, list)
        or not all(isinstance(n, int) and n >= 0 for n in lengths)
        or sum(lengths) != body_len
    ):
        raise ProtocolError("frame 'parts' does not match the body length")
    parts, pos = [], 0
    for n in lengths:
        parts.append(body[pos : pos + n])
        pos += n
    return header, parts, _PREFIX.size + head_len + body_len
