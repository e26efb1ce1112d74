"""The enclave's binary formats on the one framing reader (ARR1, ENC1, CTS1, RMOD1), fuzzed:
they round-trip, and truncated, garbled or random input is always the format's own error."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crypto.framing import FrameError
from enclave.codec import CodecError, decode_arrays, encode_arrays
from enclave.errors import EnclaveCrashedError, ProtocolError, RefinementError
from enclave.he.ciphertexts import pack_blobs, unpack_blobs
from enclave.protocol import encode_frame, read_frame
from enclave.refine import open_refined_model

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

arrays_strategy = st.dictionaries(
    st.text(min_size=1, max_size=8),
    hnp.arrays(
        dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int32]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
    ),
    max_size=3,
)


# -- ARR1 ----------------------------------------------------------------------------------
@settings(FUZZ, max_examples=25)
@given(arrays=arrays_strategy, meta=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
       cut=st.integers(min_value=1), flip=st.integers(min_value=0))
def test_array_containers_round_trip_and_damage_is_a_codec_error(
    arrays: dict[str, np.ndarray], meta: dict[str, int], cut: int, flip: int
) -> None:
    blob = encode_arrays(meta, arrays)
    got_meta, got = decode_arrays(blob)
    assert got_meta == meta and got.keys() == arrays.keys()
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array, equal_nan=array.dtype.kind == "f")
    with pytest.raises(CodecError):
        decode_arrays(blob[: len(blob) - 1 - cut % (len(blob) - 4)])
    garbled = bytearray(blob)
    garbled[flip % len(blob)] ^= 0x5A
    try:
        decode_arrays(bytes(garbled))
    except CodecError:
        pass


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_array_containers_are_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_arrays(b"ARR1" + data)


@pytest.mark.parametrize(
    "head",
    [b"[]", b'{"meta": 1, "arrays": []}', b'{"meta": {}, "arrays": 5}', b'{"meta": {}, "arrays": [{"dtype": "int32",'
     b' "shape": []}]}', b'{"meta": {}, "arrays": [{"name": "a", "dtype": "int32", "shape": [1e400]}]}',
     b'{"meta": {}, "arrays": [{"name": "a", "dtype": "object", "shape": [1]}]}'],
)
def test_malformed_array_headers_are_a_codec_error(head: bytes) -> None:
    with pytest.raises(CodecError):
        decode_arrays(b"ARR1" + len(head).to_bytes(4, "big") + head + bytes(8))
    with pytest.raises(CodecError):
        decode_arrays(b"ARR1\x00\x00")  # shorter than its length prefix


# -- ENC1 ----------------------------------------------------------------------------------
@FUZZ
@given(header=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "parts"), st.integers(), max_size=3),
       parts=st.lists(st.binary(max_size=50), max_size=4), cut=st.integers(min_value=1))
def test_frames_round_trip_and_truncation_is_a_closed_channel(
    header: dict[str, int], parts: list[bytes], cut: int
) -> None:
    frame = encode_frame(header, parts, max_body=1000)
    assert frame[:4] == b"ENC1" and int.from_bytes(frame[8:16], "big") == sum(map(len, parts))
    assert read_frame(io.BytesIO(frame), max_body=1000) == (header, parts, len(frame))
    with pytest.raises(EnclaveCrashedError):
        read_frame(io.BytesIO(frame[: len(frame) - 1 - cut % len(frame)]), max_body=1000)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_frames_are_a_protocol_error_or_end_of_stream(data: bytes) -> None:
    try:
        read_frame(io.BytesIO(b"ENC1" + data), max_body=100)
    except (ProtocolError, EnclaveCrashedError):
        pass


def test_a_forged_frame_length_is_refused_before_reading() -> None:
    forged = b"ENC1" + (2**32 - 1).to_bytes(4, "big") + bytes(8)
    with pytest.raises(ProtocolError, match="exceeds"):
        read_frame(io.BytesIO(forged), max_body=100)
    forged = b"ENC1" + bytes(4) + (2**64 - 1).to_bytes(8, "big")
    with pytest.raises(ProtocolError, match="exceeds"):
        read_frame(io.BytesIO(forged), max_body=100)


# -- CTS1 ----------------------------------------------------------------------------------
@FUZZ
@given(blobs=st.lists(st.binary(max_size=40), min_size=1, max_size=6), cut=st.integers(min_value=1),
       junk=st.binary(min_size=1, max_size=4))
def test_ciphertext_bundles_round_trip_and_damage_is_a_value_error(blobs: list[bytes], cut: int,
                                                                   junk: bytes) -> None:
    data = pack_blobs(blobs)
    assert data[:4] == b"CTS1" and int.from_bytes(data[4:8], "big") == len(blobs)
    assert unpack_blobs(data) == blobs
    with pytest.raises(FrameError):  # a ValueError, as before
        unpack_blobs(data[: len(data) - 1 - cut % (len(data) - 4)])
    with pytest.raises(ValueError):
        unpack_blobs(data + junk)
    with pytest.raises(ValueError, match="count"):
        unpack_blobs(data, max_count=len(blobs) - 1)


@FUZZ
@given(data=st.binary(max_size=120))
def test_random_bundles_are_a_value_error(data: bytes) -> None:
    try:
        assert all(isinstance(b, bytes) for b in unpack_blobs(b"CTS1" + data))
    except FrameError:
        pass


# -- RMOD1 ---------------------------------------------------------------------------------
KEY = AESGCM.generate_key(bit_length=256)


def _refined(job_id: str) -> bytes:
    nonce = os.urandom(12)
    plain = encode_arrays({"kind": "softmax"}, {"W": np.eye(2)})
    return b"RMOD1\x00" + nonce + AESGCM(KEY).encrypt(nonce, plain, b"refined-model|" + job_id.encode())


@FUZZ
@given(cut=st.integers(min_value=1), flip=st.integers(min_value=0), data=st.binary(max_size=80))
def test_refined_models_open_and_damage_is_a_refinement_error(cut: int, flip: int, data: bytes) -> None:
    blob = _refined("job-1")
    meta, arrays = open_refined_model(blob, result_key=KEY, job_id="job-1")
    assert meta == {"kind": "softmax"} and np.array_equal(arrays["W"], np.eye(2))
    garbled = bytearray(blob)
    garbled[flip % len(blob)] ^= 1
    for bad in (blob[: len(blob) - 1 - cut % len(blob)], bytes(garbled), b"RMOD1\x00" + data):
        with pytest.raises(RefinementError):
            open_refined_model(bad, result_key=KEY, job_id="job-1")
    with pytest.raises(RefinementError):
        open_refined_model(blob, result_key=KEY, job_id="job-2")
