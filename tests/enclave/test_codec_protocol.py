"""The array container and the frame protocol reject malformed input with clean errors."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from enclave.codec import CodecError, decode_arrays, encode_arrays
from enclave.errors import EnclaveCrashedError, ProtocolError
from enclave.protocol import encode_frame, read_frame


def test_codec_roundtrip_and_refusals() -> None:
    arrays = {"W": np.arange(6.0).reshape(2, 3), "y": np.array([1, 2, 3], dtype=np.int64)}
    blob = encode_arrays({"kind": "softmax"}, arrays)
    meta, out = decode_arrays(blob)
    assert meta == {"kind": "softmax"} and np.array_equal(out["W"], arrays["W"])
    with pytest.raises(CodecError, match="truncated"):
        decode_arrays(blob[:-1])
    with pytest.raises(CodecError, match="trailing"):
        decode_arrays(blob + b"\0")
    with pytest.raises(CodecError):
        decode_arrays(b"PK\x03\x04 a pickle or zip")
    with pytest.raises(CodecError, match="dtype"):
        encode_arrays({}, {"o": np.array([object()])})
    with pytest.raises(CodecError):
        decode_arrays(blob, max_bytes=10)


def test_frames_roundtrip_and_refusals() -> None:
    frame = encode_frame({"op": "x"}, [b"ab", b"", b"cde"], max_body=100)
    header, parts, n = read_frame(io.BytesIO(frame), max_body=100)
    assert header == {"op": "x"} and parts == [b"ab", b"", b"cde"] and n == len(frame)
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame({}, [b"x" * 101], max_body=100)
    with pytest.raises(ProtocolError, match="exceeds"):
        read_frame(io.BytesIO(frame), max_body=2)
    with pytest.raises(ProtocolError, match="magic"):
        read_frame(io.BytesIO(b"XXXX" + frame[4:]), max_body=100)
    with pytest.raises(EnclaveCrashedError):
        read_frame(io.BytesIO(frame[:-1]), max_body=100)
    bad_parts = frame.replace(b'"parts":[2,0,3]', b'"parts":[2,0,2]')
    with pytest.raises(ProtocolError, match="parts"):
        read_frame(io.BytesIO(bad_parts), max_body=100)


def test_codec_refuses_overflowing_shapes() -> None:
    head = json.dumps({"meta": {}, "arrays": [{"name": "a", "dtype": "float64", "shape": [2**62, 4]}]}).encode()
    forged = b"ARR1" + struct.pack(">I", len(head)) + head + bytes(16)
    with pytest.raises(CodecError, match="truncated"):
        decode_arrays(forged)
