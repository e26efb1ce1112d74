"""The one framing reader/writer and the crypto formats on it (SEAL1, WRAP1): round trips, and
truncated, garbled or forged input is always the format's own error, never another exception
and never an allocation the size of a forged length."""

from __future__ import annotations

import os
import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.errors import CryptoError
from crypto.framing import FrameError, FrameReader, FrameWriter, split_parts
from crypto.provisioning import UnwrapError, VerifiedQuote, unwrap_in_enclave, wrap_key_for_enclave, wrapped_label
from crypto.sealing import SealError, SealFormatError, SealIdentity, SealPolicy, seal, sealed_header, unseal

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC = b"DEMO1\x00"


class DemoError(CryptoError):
    """A format's own error class."""


# -- the reader and writer -------------------------------------------------------------------
fields = st.lists(
    st.one_of(
        st.tuples(st.just("uint"), st.sampled_from([1, 2, 4, 8]), st.integers(min_value=0)),
        st.tuples(st.just("prefixed"), st.sampled_from([1, 2, 4]), st.binary(max_size=300)),
        st.tuples(st.just("raw"), st.just(0), st.binary(max_size=40)),
    ),
    max_size=8,
)


def _write(spec: list[tuple[str, int, object]]) -> bytes:
    writer = FrameWriter(MAGIC)
    for kind, width, value in spec:
        if kind == "uint":
            writer.uint(int(value) % (1 << (8 * width)), width)  # type: ignore[call-overload]
        elif kind == "prefixed":
            writer.prefixed(bytes(value)[: (1 << (8 * width)) - 1], width)  # type: ignore[call-overload]
        else:
            writer.raw(bytes(value))  # type: ignore[call-overload]
    return writer.to_bytes()


def _read(blob: bytes, spec: list[tuple[str, int, object]]) -> list[object]:
    reader = FrameReader(blob, magic=MAGIC, error=DemoError, what="demo blob", max_bytes=1 << 16)
    out: list[object] = []
    for kind, width, value in spec:
        if kind == "uint":
            out.append(reader.uint(width))
        elif kind == "prefixed":
            out.append(reader.prefixed(width, limit=1 << 16))
        else:
            out.append(reader.take(len(bytes(value))))  # type: ignore[call-overload]
    reader.end()
    return out


@FUZZ
@given(spec=fields)
def test_writer_and_reader_round_trip(spec: list[tuple[str, int, object]]) -> None:
    blob = _write(spec)
    expected: list[object] = []
    for kind, width, value in spec:
        if kind == "uint":
            expected.append(int(value) % (1 << (8 * width)))  # type: ignore[call-overload]
        elif kind == "prefixed":
            expected.append(bytes(value)[: (1 << (8 * width)) - 1])  # type: ignore[call-overload]
        else:
            expected.append(bytes(value))  # type: ignore[call-overload]
    assert _read(blob, spec) == expected


@FUZZ
@given(spec=fields, cut=st.integers(min_value=1), junk=st.binary(min_size=1, max_size=8))
def test_truncated_or_extended_frames_are_the_format_error(
    spec: list[tuple[str, int, object]], cut: int, junk: bytes
) -> None:
    blob = _write(spec)
    with pytest.raises(DemoError):
        _read(blob[: len(blob) - 1 - cut % len(blob)], spec)
    if spec:
        with pytest.raises(DemoError, match="trailing"):
            _read(blob + junk, spec)


@FUZZ
@given(data=st.binary(max_size=64), spec=fields)
def test_garbage_is_the_format_error_or_parses(data: bytes, spec: list[tuple[str, int, object]]) -> None:
    try:
        _read(MAGIC + data, spec)
    except DemoError:
        pass


def test_reader_refuses_wrong_magic_type_and_size() -> None:
    with pytest.raises(DemoError, match="bad magic"):
        FrameReader(b"OTHER" + bytes(8), magic=MAGIC, error=DemoError)
    with pytest.raises(DemoError, match="must be bytes"):
        FrameReader("DEMO1", magic=MAGIC, error=DemoError)  # type: ignore[arg-type]
    with pytest.raises(DemoError, match="larger than"):
        FrameReader(MAGIC + bytes(100), magic=MAGIC, error=DemoError, max_bytes=50)
    with pytest.raises(FrameError):  # the default error class is a CryptoError and a ValueError
        FrameReader(b"", magic=MAGIC)
    with pytest.raises(FrameError, match="does not fit"):
        FrameWriter(MAGIC).uint(256, 1)
    with pytest.raises(FrameError, match="does not fit"):
        FrameWriter(MAGIC).uint(-1, 4)


def test_a_length_over_its_limit_or_the_data_fails_before_allocating() -> None:
    for width in (2, 4, 8):
        forged = MAGIC + b"\xff" * width + b"x" * 16
        tracemalloc.start()
        try:
            with pytest.raises(DemoError, match="exceeds the limit"):
                FrameReader(forged, magic=MAGIC, error=DemoError).prefixed(width, limit=1024)
            with pytest.raises(DemoError, match="truncated"):
                FrameReader(forged, magic=MAGIC, error=DemoError).prefixed(width, limit=1 << 64)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024
    reader = FrameReader(MAGIC + (2**32 - 1).to_bytes(4, "big"), magic=MAGIC, error=DemoError)
    with pytest.raises(DemoError, match="truncated"):
        reader.lengths(reader.uint(4), 4)
    with pytest.raises(DemoError, match="non-negative"):
        FrameReader(MAGIC + bytes(8), magic=MAGIC, error=DemoError).parts([-1, 9])


def test_json_fields_and_parts() -> None:
    blob = FrameWriter(MAGIC).prefixed(b'{"a":1}', 4).prefixed(b"[1]", 4).prefixed(b"\xff", 4).to_bytes()
    reader = FrameReader(blob, magic=MAGIC, error=DemoError)
    assert reader.json_object(4, limit=100) == {"a": 1}
    with pytest.raises(DemoError, match="JSON object"):
        reader.json_object(4, limit=100)
    with pytest.raises(DemoError, match="not JSON"):
        reader.json_object(4, limit=100)
    assert split_parts(b"abcde", [2, 0, 3]) == [b"ab", b"", b"cde"]
    for bad in ([2, 2], [6, -1], "5", [True, 4]):
        with pytest.raises(FrameError, match="parts"):
            split_parts(b"abcde", bad)


# -- SEAL1: sealed blobs ---------------------------------------------------------------------
ROOT = bytes(range(32))
IDENTITY = SealIdentity(mrenclave="ab" * 32, mrsigner="cd" * 32, isv_prod_id=1, isv_svn=2, debug=False)


@FUZZ
@given(plaintext=st.binary(max_size=200), cut=st.integers(min_value=0), flip=st.integers(min_value=0))
def test_sealed_blobs_round_trip_and_damage_is_a_seal_error(plaintext: bytes, cut: int, flip: int) -> None:
    blob = seal(plaintext, root_secret=ROOT, identity=IDENTITY, policy=SealPolicy.MRSIGNER)
    header_len = len(blob) - 8 - 12 - 16 - len(plaintext)
    assert blob.startswith(b"SEAL1\x00") and int.from_bytes(blob[6:8], "big") == header_len
    assert unseal(blob, root_secret=ROOT, identity=IDENTITY) == plaintext
    assert sealed_header(blob)["policy"] == "MRSIGNER"
    with pytest.raises(SealFormatError):
        sealed_header(blob[: cut % (len(blob) - len(plaintext) - 16)])
    garbled = bytearray(blob)
    garbled[flip % len(blob)] ^= 0x41
    with pytest.raises(SealError):
        unseal(bytes(garbled), root_secret=ROOT, identity=IDENTITY)


@FUZZ
@given(data=st.binary(max_size=120))
def test_random_bytes_after_the_seal_magic_are_a_format_error(data: bytes) -> None:
    with pytest.raises(SealError):
        unseal(b"SEAL1\x00" + data, root_secret=ROOT, identity=IDENTITY)


# -- WRAP1: secrets wrapped to an enclave -----------------------------------------------------
ENCLAVE_KEY = X25519PrivateKey.generate()
QUOTE_HASH = os.urandom(32)


def _verified_quote() -> VerifiedQuote:
    from cryptography.hazmat.primitives import serialization

    public = ENCLAVE_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return VerifiedQuote(body=None, enclave_public_key=public, quote_hash=QUOTE_HASH)  # type: ignore[arg-type]


@FUZZ
@given(secret=st.binary(max_size=200), label=st.sampled_from(["model", "ckks-secret", "x" * 64]),
       cut=st.integers(min_value=0), flip=st.integers(min_value=0))
def test_wrapped_blobs_round_trip_and_damage_is_an_unwrap_error(secret: bytes, label: str, cut: int,
                                                                flip: int) -> None:
    blob = wrap_key_for_enclave(_verified_quote(), secret, label=label)
    assert blob[:6] == b"WRAP1\x00" and blob[7 : 7 + blob[6]] == label.encode()
    assert wrapped_label(blob) == label
    opened = unwrap_in_enclave(blob, enclave_private_key=ENCLAVE_KEY, accepted_quote_hashes={QUOTE_HASH},
                               label=label)
    assert opened == secret
    truncated = blob[: cut % (len(blob) - len(secret))]
    assert wrapped_label(truncated) is None
    with pytest.raises(UnwrapError):
        unwrap_in_enclave(truncated, enclave_private_key=ENCLAVE_KEY, accepted_quote_hashes={QUOTE_HASH},
                          label=label)
    garbled = bytearray(blob)
    garbled[flip % len(blob)] ^= 0x10
    with pytest.raises(UnwrapError):
        unwrap_in_enclave(bytes(garbled), enclave_private_key=ENCLAVE_KEY, accepted_quote_hashes={QUOTE_HASH},
                          label=label)


@FUZZ
@given(data=st.binary(max_size=160))
def test_random_bytes_after_the_wrap_magic_are_an_unwrap_error(data: bytes) -> None:
    blob = b"WRAP1\x00" + data
    label = wrapped_label(blob)
    assert label is None or isinstance(label, str)
    with pytest.raises(UnwrapError):
        unwrap_in_enclave(blob, enclave_private_key=ENCLAVE_KEY, accepted_quote_hashes={QUOTE_HASH},
                          label="model")


def test_private_inference_batch_bodies_are_frames_with_their_old_bytes() -> None:
    from crypto.ckks import CiphertextError
    from crypto.private_inference.wire import decode_blobs, encode_blobs

    body = encode_blobs([b"ab", b"c"])
    assert body == b"PEB1" + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"ab" + (1).to_bytes(4, "big") + b"c"
    assert decode_blobs(body, max_items=4, max_bytes=1 << 10) == [b"ab", b"c"]
    for bad in (body[:-1], body + b"\0", body[:9] + (10**6).to_bytes(4, "big") + body[13:]):
        with pytest.raises(CiphertextError):
            decode_blobs(bad, max_items=4, max_bytes=1 << 10)
