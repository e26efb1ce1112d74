"""Length-prefixed binary framing: one writer and one bounded reader for the project's formats.

Every binary format of the appliance (sealed blobs ``SEAL1``, wrapped secrets ``WRAP1``,
encrypted datasets ``EDS1``, enclave messages ``ENC1``, array containers ``ARR1``,
ciphertext bundles ``CTS1``, refined models ``RMOD1``) is a magic, then big-endian unsigned
integers, length-prefixed fields and fixed-size fields, in an order each format fixes::

    blob = FrameWriter(b"DEMO1\\x00").uint(7, 2).prefixed(b"payload", 4).raw(nonce).to_bytes()

    reader = FrameReader(blob, magic=b"DEMO1\\x00", error=DemoFormatError, what="demo blob")
    version = reader.uint(2)
    payload = reader.prefixed(4, limit=1024)
    nonce = reader.take(12)
    reader.end()                                   # nothing may follow

The reader never allocates more than the input it holds: every length is checked against the
caller's limit and against the bytes that remain *before* anything is sliced, and every
failure (wrong magic, truncation, a length over its limit, malformed JSON, trailing bytes) is
raised as the format's own error class (``error``, default :class:`FrameError`) with a message
that names the format (``what``) — never ``struct.error``, ``IndexError`` or ``KeyError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from crypto.errors import CryptoError

__all__ = ["FrameError", "FrameReader", "FrameWriter", "read_exact", "split_parts"]

#: Widths (bytes) of the big-endian unsigned integers the formats use.
_WIDTHS = (1, 2, 4, 8)


class FrameError(CryptoError, ValueError):
    """Bytes are not a well-formed frame of the expected format."""

    hint: str = (
        "The data was truncated, altered or is of another format; obtain it again from its "
        "producer rather than editing it."
    )


def _check_width(width: int) -> None:
    if width not in _WIDTHS:
        raise ValueError(f"integer width must be one of {_WIDTHS}, got {width}")


class FrameWriter:
    """Builds a frame: the magic, then fields in call order (methods chain)."""

    def __init__(self, magic: bytes) -> None:
        self._parts: list[bytes] = [bytes(magic)]

    def uint(self, value: int, width: int) -> FrameWriter:
        """A big-endian unsigned integer of ``width`` bytes (1, 2, 4 or 8)."""
        _check_width(width)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << (8 * width):
            raise FrameError(f"{value!r} does not fit an unsigned {8 * width}-bit field")
        self._parts.append(value.to_bytes(width, "big"))
        return self

    def raw(self, data: bytes) -> FrameWriter:
        """Bytes written as they are (fixed-size fields, or a body whose lengths are elsewhere)."""
        self._parts.append(bytes(data))
        return self

    def prefixed(self, data: bytes, width: int) -> FrameWriter:
        """``len(data)`` as a ``width``-byte integer, then ``data``."""
        self.uint(len(data), width)
        return self.raw(data)

    def to_bytes(self) -> bytes:
        """The frame."""
        return b"".join(self._parts)


class FrameReader:
    """Reads a frame written by :class:`FrameWriter`, bounded and with clean errors.

    The constructor checks the type, the total size (``max_bytes``) and the magic. ``error``
    is the exception class (or factory taking a message) raised on every failure, ``what`` the
    name of the format in messages ("sealed blob", "array container" …).
    """

    def __init__(
        self,
        data: bytes,
        *,
        magic: bytes,
        error: Callable[[str], Exception] = FrameError,
        what: str = "frame",
        max_bytes: int | None = None,
    ) -> None:
        self._error, self.what = error, what
        if not isinstance(data, bytes):
            self.fail(f"a {what} must be bytes, got {type(data).__name__}")
        if max_bytes is not None and len(data) > max_bytes:
            self.fail(f"the {what} is larger than {max_bytes} bytes")
        if not data.startswith(magic):
            self.fail(f"not a {what} (bad magic)")
        self._data = data
        self.pos = len(magic)

    def fail(self, message: str) -> NoReturn:
        """Raise the format's error with ``message``."""
        raise self._error(message)

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self.pos

    def take(self, n: int, *, limit: int | None = None, field: str = "field") -> bytes:
        """The next ``n`` bytes; an error if fewer remain or ``n`` exceeds ``limit``."""
        if n < 0:
            self.fail(f"the {self.what} {field} has a negative length")
        if limit is not None and n > limit:
            self.fail(f"the {self.what} {field} of {n} bytes exceeds the limit of {limit}")
        if n > self.remaining:
            self.fail(f"the {self.what} is truncated ({field}: {n} bytes needed, {self.remaining} left)")
        out = self._data[self.pos : self.pos + n]
        self.pos += n
        return out

    def view(self, n: int, *, field: str = "field") -> memoryview:
        """Like :meth:`take`, without copying (a view of the input)."""
        start = self.pos
        if n < 0 or n > self.remaining:
            self.fail(f"the {self.what} is truncated ({field}: {n} bytes needed, {self.remaining} left)")
        self.pos += n
        return memoryview(self._data)[start : start + n]

    def uint(self, width: int, *, field: str = "length") -> int:
        """A big-endian unsigned integer of ``width`` bytes."""
        _check_width(width)
        return int.from_bytes(self.take(width, field=field), "big")

    def prefixed(self, width: int, *, limit: int, field: str = "field") -> bytes:
        """A ``width``-byte length, then that many bytes (at most ``limit``)."""
        return self.take(self.uint(width, field=field), limit=limit, field=field)

    def json_object(self, width: int, *, limit: int, field: str = "header") -> dict[str, Any]:
        """A length-prefixed JSON object (UTF-8); anything else is an error."""
        raw = self.prefixed(width, limit=limit, field=field)
        try:
            value = json.loads(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.fail(f"the {self.what} {field} is not JSON")
        if not isinstance(value, dict):
            self.fail(f"the {self.what} {field} must be a JSON object")
        return value

    def lengths(self, count: int, width: int, *, field: str = "lengths") -> list[int]:
        """``count`` lengths of ``width`` bytes each (the table of a bundle)."""
        if count < 0 or count * width > self.remaining:
            self.fail(f"the {self.what} is truncated ({field})")
        return [self.uint(width, field=field) for _ in range(count)]

    def parts(self, lengths: Sequence[int], *, field: str = "part") -> list[bytes]:
        """Consecutive fields of the given lengths (checked together before any is sliced)."""
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in lengths):
            self.fail(f"the {self.what} {field} lengths must be non-negative integers")
        if sum(lengths) > self.remaining:
            self.fail(f"the {self.what} is truncated ({field}s: {sum(lengths)} bytes needed, "
                      f"{self.remaining} left)")
        return [self.take(n, field=field) for n in lengths]

    def rest(self, *, min_bytes: int = 0, field: str = "body") -> bytes:
        """Everything that remains (at least ``min_bytes``)."""
        if self.remaining < min_bytes:
            self.fail(f"the {self.what} is truncated ({field}: at least {min_bytes} bytes needed)")
        return self.take(self.remaining, field=field)

    def end(self) -> None:
        """Require that the whole frame was consumed."""
        if self.remaining:
            self.fail(f"{self.remaining} trailing bytes after the {self.what}")

    def consumed(self) -> bytes:
        """The bytes read so far, magic included (e.g. a header used as associated data)."""
        return self._data[: self.pos]


def split_parts(body: bytes, lengths: object, *, error: Callable[[str], Exception] = FrameError,
                what: str = "frame") -> list[bytes]:
    """Split ``body`` into parts of ``lengths``, which must cover it exactly."""
    if (
        not isinstance(lengths, list)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths)
        or sum(lengths) != len(body)
    ):
        raise error(f"{what} 'parts' does not match the body length")
    parts, pos = [], 0
    for n in lengths:
        parts.append(body[pos : pos + n])
        pos += n
    return parts


def read_exact(stream: IO[bytes], n: int, *, on_eof: Callable[[], Exception]) -> bytes:
    """Exactly ``n`` bytes from ``stream`` (read in chunks; ``n`` is bounded by the caller);
    raises ``on_eof()`` if the stream ends first."""
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise on_eof()
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
