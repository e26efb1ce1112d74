"""Length-prefixed host/enclave messages: a JSON header plus binary parts.

Frame: ``b"ENC1" | u32 header length | u64 body length | header JSON | body``. The header is a
JSON object; its ``"parts"`` field lists the byte lengths that split the body into parts.
Headers are limited to 1 MiB, bodies to the channel's ``max_message_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

from crypto.framing import FrameReader, FrameWriter, read_exact, split_parts
from enclave.errors import EnclaveCrashedError, ProtocolError

__all__ = ["MAX_HEADER_BYTES", "read_frame", "write_frame", "encode_frame"]

MAGIC = b"ENC1"
MAX_HEADER_BYTES = 1024 * 1024
_PREFIX_BYTES = 16  # magic, u32 header length, u64 body length


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
    frame = FrameWriter(MAGIC).uint(len(head), 4).uint(body_len, 8).raw(head)
    for part in parts:
        frame.raw(part)
    return frame.to_bytes()


def write_frame(stream: IO[bytes], header: dict[str, Any], parts: Sequence[bytes], *, max_body: int) -> int:
    """Write one frame and flush; returns the number of bytes written."""
    data = encode_frame(header, parts, max_body=max_body)
    stream.write(data)
    stream.flush()
    return len(data)


def _closed() -> Exception:
    return EnclaveCrashedError("channel closed by the other side (end of stream)")


def read_frame(stream: IO[bytes], *, max_body: int) -> tuple[dict[str, Any], list[bytes], int]:
    """Read one frame; returns (header, parts, total bytes read). Lengths are checked against
    the limits before the header or body is read."""
    prefix = FrameReader(
        read_exact(stream, _PREFIX_BYTES, on_eof=_closed),
        magic=MAGIC,
        error=ProtocolError,
        what="frame (desynchronised or foreign stream)",
    )
    head_len, body_len = prefix.uint(4), prefix.uint(8)
    if head_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    if body_len > max_body:
        raise ProtocolError(f"message body of {body_len} bytes exceeds the limit of {max_body}")
    try:
        header = json.loads(read_exact(stream, head_len, on_eof=_closed))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header must be a JSON object")
    body = read_exact(stream, body_len, on_eof=_closed)
    parts = split_parts(body, header.pop("parts", []), error=ProtocolError, what="frame")
    return header, parts, _PREFIX_BYTES + head_len + body_len
