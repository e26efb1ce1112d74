"""A pickle-free container for a JSON header plus named numeric arrays.

blob = encode_arrays({"kind": "softmax"}, {"W": w, "b": b})
meta, arrays = decode_arrays(blob)

Frame (:mod:`crypto.framing`): ``b"ARR1" | u32 header length | header JSON | arrays``; the
header is ``{"meta": {...}, "arrays": [{"name", "dtype", "shape"}, ...]}`` and the arrays
follow in that order, little-endian, with nothing after the last one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from crypto.errors import Error
from crypto.framing import FrameReader, FrameWriter

__all__ = ["CodecError", "decode_arrays", "encode_arrays"]

_MAGIC = b"ARR1"
_DTYPES = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32}


class CodecError(Error, ValueError):
    """The bytes are not an array container, or an array is malformed."""


def encode_arrays(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """Encode ``meta`` (JSON-able) and little-endian arrays of the supported dtypes."""
    index = []
    chunks = []
    for name, array in arrays.items():
        arr = np.ascontiguousarray(array)
        if arr.dtype.name not in _DTYPES:
            raise CodecError(f"array {name!r} has unsupported dtype {arr.dtype}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        index.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        chunks.append(data)
    head = json.dumps({"meta": dict(meta), "arrays": index}, separators=(",", ":")).encode()
    return FrameWriter(_MAGIC).prefixed(head, 4).raw(b"".join(chunks)).to_bytes()


def _entry(entry: object) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise CodecError("array entry is malformed")
    try:
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
    except (KeyError, TypeError):
        raise CodecError(f"array {entry['name']!r} has an unsupported dtype") from None
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise CodecError(f"array {entry['name']!r} has a malformed shape")
    if any(s < 0 for s in shape):
        raise CodecError("negative array dimension")
    return entry["name"], dtype, tuple(shape)


def decode_arrays(data: bytes, *, max_bytes: int = 512 * 1024 * 1024) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Decode a container, checking sizes; never unpickles."""
    reader = FrameReader(data, magic=_MAGIC, error=CodecError, what="array container", max_bytes=max_bytes)
    head = reader.json_object(4, limit=max_bytes, field="header")
    meta, index = head.get("meta"), head.get("arrays")
    if not isinstance(meta, dict) or not isinstance(index, list):
        raise CodecError("array container header is malformed")
    arrays: dict[str, np.ndarray] = {}
    for raw_entry in index:
        name, dtype, shape = _entry(raw_entry)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if nbytes > reader.remaining:
            raise CodecError(f"array {name!r} is truncated")
        view = reader.view(nbytes, field=f"array {name!r}")
        arrays[name] = np.frombuffer(view, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    reader.end()
    return meta, arrays
