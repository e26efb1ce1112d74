"""A pickle-free container for a JSON header plus named numeric arrays.

blob = encode_arrays({"kind": "softmax"}, {"W": w, "b": b})
meta, arrays = decode_arrays(blob)
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from crypto.errors import Error

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
    return _MAGIC + struct.pack(">I", len(head)) + head + b"".join(chunks)


def decode_arrays(data: bytes, *, max_bytes: int = 512 * 1024 * 1024) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Decode a container, checking sizes; never unpickles."""
    if not isinstance(data, bytes) or len(data) > max_bytes or not data.startswith(_MAGIC):
        raise CodecError("not an array container (bad magic or too large)")
    (hlen,) = struct.unpack(">I", data[4:8])
    try:
        head = json.loads(data[8 : 8 + hlen])
        meta, index = head["meta"], head["arrays"]
    except (ValueError, KeyError, TypeError):
        raise CodecError("array container header is malformed") from None
    pos = 8 + hlen
    arrays: dict[str, np.ndarray] = {}
    for entry in index:
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise CodecError("array entry is malformed") from None
        if any(s < 0 for s in shape):
            raise CodecError("negative array dimension")
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if pos + nbytes > len(data):
            raise CodecError(f"array {entry.get('name')!r} is truncated")
        arrays[str(entry["name"])] = (
            np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=pos)
            .reshape(shape)
            .astype(dtype.newbyteorder("="))
        )
        pos += nbytes
    if pos != len(data):
        raise CodecError("trailing bytes after the arrays")
    return meta, arrays
