"""Microsoft SEAL objects to and from bytes (TenSEAL's ``sealapi`` reads and writes files only).

    data = seal_to_bytes(ciphertext)                          # SEAL's own serialization
    ct = seal_from_bytes(sealapi.Ciphertext(), data, seal_context, max_bytes=8 << 20)

The bytes cross through a scratch file in a private directory (mode 0700, in RAM under
``/dev/shm`` where available), one per process and thread, removed at exit; the file itself is
deleted after every transfer, so no serialized object (a secret key included) outlives the
call on disk. SEAL validates what it loads against the context it is given.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
from typing import Any, TypeVar

from crypto.errors import CryptoError

__all__ = ["SealBridgeError", "scratch_path", "seal_from_bytes", "seal_to_bytes"]

_TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_scratch: dict[tuple[int, int], str] = {}
_T = TypeVar("_T")


class SealBridgeError(CryptoError, ValueError):
    """Bytes do not load as the expected SEAL object (malformed, or another context)."""

    hint: str = (
        "The serialized object is damaged or was made under other encryption parameters; "
        "serialize it again with the context it will be used with."
    )


def scratch_path() -> str:
    """This process's and thread's scratch file (its directory is private, mode 0700)."""
    key = (os.getpid(), threading.get_ident())
    path = _scratch.get(key)
    if path is None:
        directory = tempfile.mkdtemp(prefix="he-", dir=_TMP_ROOT)
        atexit.register(shutil.rmtree, directory, True)
        path = _scratch[key] = os.path.join(directory, "obj")
    return path


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def seal_to_bytes(obj: Any) -> bytes:
    """``obj.save(path)`` for any SEAL object (ciphertext, keys, parameters), as bytes."""
    path = scratch_path()
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        _discard(path)


def seal_from_bytes(obj: _T, data: bytes, *context: Any, max_bytes: int) -> _T:
    """``obj.load(*context, path)`` from ``data`` (1..``max_bytes`` bytes); returns ``obj``.

    Raises :class:`SealBridgeError` (a ``ValueError``) if the bytes are out of bounds or SEAL
    refuses them."""
    if not isinstance(data, bytes) or not 0 < len(data) <= max_bytes:
        raise SealBridgeError(f"a serialized SEAL object is 1..{max_bytes} bytes")
    path = scratch_path()
    try:
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            obj.load(*context, path)  # type: ignore[attr-defined]
        except Exception as exc:  # SEAL raises plain RuntimeError/ValueError
            raise SealBridgeError(f"not a valid SEAL object for this context: {exc}") from None
    finally:
        _discard(path)
    return obj
