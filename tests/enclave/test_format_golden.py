"""The enclave's binary formats are byte-for-byte what they were before they moved onto crypto.framing:
these frames were written by the earlier hand-rolled encoders (deterministic formats only;
SEAL1, WRAP1 and RMOD1 carry random nonces and are checked by round trips)."""

from __future__ import annotations

import io

import numpy as np

from enclave.codec import decode_arrays, encode_arrays
from enclave.he import pack_blobs, unpack_blobs
from enclave.protocol import encode_frame, read_frame

ARR1 = bytes.fromhex(
    "41525231000000827b226d657461223a7b226b696e64223a22736f66746d6178222c226e223a327d2c2261727261"
    "7973223a5b7b226e616d65223a2257222c226474797065223a22666c6f61743634222c227368617065223a5b322c"
    "335d7d2c7b226e616d65223a2279222c226474797065223a22696e743332222c227368617065223a5b325d7d5d7d"
    "0000000000000000000000000000f03f00000000000000400000000000000840000000000000104000000000000014"
    "4001000000feffffff"
)
ENC1 = bytes.fromhex(
    "454e43310000002e00000000000000057b226f70223a22726566696e652e73746570222c22696e646578223a332c"
    "227061727473223a5b322c302c335d7d6162636465"
)
CTS1 = bytes.fromhex("435453310000000300000001000000020000000078797a")


def test_array_container_bytes() -> None:
    arrays = {"W": np.arange(6.0).reshape(2, 3), "y": np.array([1, -2], dtype=np.int32)}
    assert encode_arrays({"kind": "softmax", "n": 2}, arrays) == ARR1
    meta, out = decode_arrays(ARR1)
    assert meta == {"kind": "softmax", "n": 2} and np.array_equal(out["W"], arrays["W"])
    assert out["y"].dtype == np.int32 and out["y"].tolist() == [1, -2]


def test_enclave_frame_bytes() -> None:
    assert encode_frame({"op": "refine.step", "index": 3}, [b"ab", b"", b"cde"], max_body=100) == ENC1
    assert read_frame(io.BytesIO(ENC1), max_body=100) == ({"op": "refine.step", "index": 3},
                                                          [b"ab", b"", b"cde"], len(ENC1))


def test_ciphertext_bundle_bytes() -> None:
    assert pack_blobs([b"x", b"yz", b""]) == CTS1
    assert unpack_blobs(CTS1) == [b"x", b"yz", b""]

