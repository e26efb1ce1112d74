"""CKKS contexts for private inference: parameter presets, key material and safe loading.

Two sides use this module. The client builds a secret-key context with :func:`make_context`
and ships :func:`public_context_bytes` (public key, relinearisation keys and only the Galois
keys the server circuit needs) once per session. The server rebuilds a public context with
:func:`load_public_context` and reads query ciphertexts with :func:`load_ckks_vector`; both
refuse secret-key material, foreign parameters and malformed bytes with named errors::

    ctx = make_context("n8192-d3", galois_steps=[1, 2, 4])
    server_ctx = load_public_context(public_context_bytes(ctx), preset="n8192-d3",
                                     max_bytes=64 << 20)

Security: every preset keeps the total coefficient modulus within the HomomorphicEncryption.org
128-bit classical bound for a ternary secret (:data:`HE_STANDARD_MAX_MODULUS_BITS`), checked at
import time and again for every context loaded from bytes.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from crypto.errors import CryptoError
from crypto.seal_bridge import scratch_path, seal_from_bytes, seal_to_bytes

__all__ = [
    "HE_STANDARD_MAX_MODULUS_BITS",
    "PRESETS",
    "CiphertextError",
    "CkksPreset",
    "ContextError",
    "PresetError",
    "context_parameters",
    "galois_element",
    "get_preset",
    "level_with",
    "load_ckks_vector",
    "check_public_context",
    "load_public_context",
    "make_context",
    "public_context_bytes",
]

#: Largest total coefficient-modulus size (bits) for 128-bit security, ternary secret
#: (HomomorphicEncryption.org security standard, table for classical attacks).
HE_STANDARD_MAX_MODULUS_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}


class ContextError(CryptoError):
    """A CKKS context or key blob is malformed, holds a secret key, or has the wrong parameters."""

    hint: str = (
        "Send the bytes of crypto.ckks.public_context_bytes(ctx) for a context made with "
        "make_context() on the same preset; never send a context that holds the secret key."
    )


class CiphertextError(CryptoError):
    """A ciphertext is malformed, truncated, too large, or does not fit the session context."""

    hint: str = (
        "Encrypt with the context whose public part was uploaded for this session, with the "
        "expected vector size, and send the bytes of CKKSVector.serialize() unchanged."
    )


class PresetError(CryptoError, ValueError):
    """An unknown preset name, or a preset outside the 128-bit security bound."""

    hint: str = "Pick one of crypto.ckks.PRESETS."


@dataclass(frozen=True)
class CkksPreset:
    """CKKS parameters: ring degree, coefficient-modulus primes (bits) and encoding scale.

    ``coeff_mod_bit_sizes[0]`` is the base prime, the last one the special (key-switching)
    prime; each middle prime is one rescaling level, so :attr:`depth` is their count.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    global_scale_bits: int

    @property
    def total_modulus_bits(self) -> int:
        """Sum of all prime sizes, the figure the security bound constrains."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def depth(self) -> int:
        """Number of multiplicative levels (rescalings) a fresh ciphertext supports."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slot_count(self) -> int:
        """Number of real values one ciphertext packs (N/2)."""
        return self.poly_modulus_degree // 2

    def validate(self) -> None:
        """Raise :class:`PresetError` unless the preset is well formed and 128-bit secure."""
        bound = HE_STANDARD_MAX_MODULUS_BITS.get(self.poly_modulus_degree)
        if bound is None:
            raise PresetError(f"preset {self.name!r}: unsupported N={self.poly_modulus_degree}")
        if self.total_modulus_bits > bound:
            raise PresetError(
                f"preset {self.name!r}: {self.total_modulus_bits} modulus bits exceed the "
                f"128-bit bound {bound} for N={self.poly_modulus_degree}"
            )
        if len(self.coeff_mod_bit_sizes) < 3:
            raise PresetError(f"preset {self.name!r}: needs at least one rescaling level")
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise PresetError(f"preset {self.name!r}: prime sizes must lie in [20, 60] bits")
        if self.coeff_mod_bit_sizes[0] <= self.global_scale_bits:
            raise PresetError(f"preset {self.name!r}: base prime must exceed the scale")
        if self.coeff_mod_bit_sizes[-1] < max(self.coeff_mod_bit_sizes[:-1]):
            raise PresetError(f"preset {self.name!r}: special prime smaller than a data prime")


PRESETS: dict[str, CkksPreset] = {
    p.name: p
    for p in (
        # Depth 3: one plaintext product (linear heads) and one degree-3 sign step. The
        # 52-bit base prime leaves 2^15 of headroom above the 2^37 scale (noise flooding);
        # the special prime must not be smaller than the base prime, or key switching
        # (rotations) loses precision.
        CkksPreset(
            name="n8192-d3",
            poly_modulus_degree=8192,
            coeff_mod_bit_sizes=(52, 37, 37, 37, 55),
            global_scale_bits=37,
        ),
        # Depth 5 at N=8192 (hidden-layer heads): stage 1, square, stage 2 and one sign step
        # fill the whole 218-bit budget, so the scale drops to 2^27. Key switching then adds
        # ~1.5e-5 (std) per rotation at the working scale (measured), so the special prime is
        # 9 bits above the base prime (a smaller gap multiplies that noise) and the base keeps
        # 2^10 of headroom above the scale for the win counts and the slot flooding.
        CkksPreset(
            name="n8192-d5",
            poly_modulus_degree=8192,
            coeff_mod_bit_sizes=(37, 27, 27, 27, 27, 27, 46),
            global_scale_bits=27,
        ),
        # Depth 7: exactly the linear stage, one sign step and the 4-level one-hot product
        # of 5..16 classes; one prime fewer than depth 8 makes every key ~20% smaller (key
        # bytes grow with data primes x all primes) and each query ~17% cheaper.
        CkksPreset(
            name="n16384-d7",
            poly_modulus_degree=16384,
            coeff_mod_bit_sizes=(50, 40, 40, 40, 40, 40, 40, 40, 50),
            global_scale_bits=40,
        ),
        # Depth 8: room for composite sign polynomials and the one-hot stage.
        CkksPreset(
            name="n16384-d8",
            poly_modulus_degree=16384,
            coeff_mod_bit_sizes=(50, 40, 40, 40, 40, 40, 40, 40, 40, 50),
            global_scale_bits=40,
        ),
        # Depth 18: deep circuits (sharper sign, one-hot), slow.
        CkksPreset(
            name="n32768-d18",
            poly_modulus_degree=32768,
            coeff_mod_bit_sizes=(60,) + (40,) * 18 + (60,),
            global_scale_bits=40,
        ),
    )
}
for _preset in PRESETS.values():
    _preset.validate()


def get_preset(name: str) -> CkksPreset:
    """Return ``PRESETS[name]`` or raise :class:`PresetError` listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown CKKS preset {name!r}; choose one of {sorted(PRESETS)}") from None


# (Galois steps, relin) requested at make_context(), remembered for public_context_bytes().
_KEY_OPTIONS: weakref.WeakKeyDictionary[ts.Context, tuple[tuple[int, ...], bool]] = weakref.WeakKeyDictionary()


def level_with(data: Any, primes: int | None) -> Any:
    """The SEAL context data at or below ``data`` whose level has at most ``primes`` primes (the
    chain's last level if none has so few; ``data`` itself for ``None`` or where it has few
    enough already)."""
    while primes is not None and len(data.parms().coeff_modulus()) > primes and data.next_context_data():
        data = data.next_context_data()
    return data


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """Galois element of a CKKS slot rotation by ``step`` (SEAL convention, generator 3)."""
    slots = poly_modulus_degree // 2
    if step == 0 or abs(step) >= slots:
        raise PresetError(f"rotation step {step} must be nonzero and below {slots} in magnitude")
    exponent = step if step > 0 else slots + step
    return pow(3, exponent, 2 * poly_modulus_degree)


def make_context(preset: str, *, galois_steps: Sequence[int] | None = None, relin: bool = True) -> ts.Context:
    """Create a client-side (secret-key holding) CKKS context for ``preset``.

    ``galois_steps`` are the slot rotations the server circuit will perform; only their keys
    are later exported by :func:`public_context_bytes` (never TenSEAL's default set).
    """
    p = get_preset(preset)
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=p.poly_modulus_degree,
        coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
    )
    ctx.global_scale = float(2**p.global_scale_bits)
    if relin and not ctx.has_relin_keys():
        ctx.generate_relin_keys()
    steps = tuple(sorted(set(int(s) for s in galois_steps or ())))
    for s in steps:
        galois_element(s, p.poly_modulus_degree)  # validates the step
    _KEY_OPTIONS[ctx] = (steps, relin)
    return ctx


# --- protobuf wire helpers (TenSEAL's context message; parsed, never trusted) -------------

_MAX_FIELDS = 64


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _parse_fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
    """Split a protobuf message into (field, wire type, value) without interpreting it."""
    fields: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(buf):
        if len(fields) >= _MAX_FIELDS:
            raise ValueError("too many fields")
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            fields.append((field, wire, value))
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            fields.append((field, wire, buf[pos : pos + 8]))
            pos += 8
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            fields.append((field, wire, buf[pos : pos + 4]))
            pos += 4
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            fields.append((field, wire, buf[pos : pos + length]))
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _encode_fields(fields: Sequence[tuple[int, int, bytes | int]]) -> bytes:
    out = bytearray()
    for field, wire, value in fields:
        out += _encode_varint(field << 3 | wire)
        if wire == 0:
            assert isinstance(value, int)
            out += _encode_varint(value)
        elif wire == 2:
            assert isinstance(value, bytes)
            out += _encode_varint(len(value)) + value
        else:
            assert isinstance(value, bytes)
            out += value
    return bytes(out)


# TenSEALContextProto: 1 encryption_parameters, 2 public_context, 3 private_context.
# TenSEALPublicProto: 1 public_key, 2 auto_flags, 3 scale, 4 relin_keys, 5 galois_keys.
# TenSEALPrivateProto: 1 secret_key, 2 relin flag, 3 galois flag.
_CTX_PARAMS, _CTX_PUBLIC, _CTX_PRIVATE = 1, 2, 3
_PUB_RELIN, _PUB_GALOIS = 4, 5


def _seeded_key_blobs(ctx: ts.Context, steps: Sequence[int], *, relin: bool) -> tuple[bytes, bytes | None]:
    """Galois keys for ``steps`` (and relin keys) in SEAL's seeded form, about half the size.

    SEAL's key generator emits the uniformly random half of each key as a PRNG seed; the
    loader expands it. TenSEAL only exposes that path through ``sealapi``, so the secret key
    crosses into it through a private RAM-backed scratch file that is deleted at once.
    """
    n = ctx.data.seal_context().first_context_data().parms().poly_modulus_degree()
    elements = sorted({galois_element(s, n) for s in steps})
    raw = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    params_blob = next(v for f, w, v in _parse_fields(raw) if f == _CTX_PARAMS and w == 2)
    assert isinstance(params_blob, bytes)
    parms = seal_from_bytes(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS), params_blob,
                            max_bytes=len(params_blob))
    seal_ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    # The secret key goes file to file through the bridge's private scratch path, never
    # through Python bytes, and the file is removed at once.
    secret, path = sealapi.SecretKey(), scratch_path()
    try:
        ctx.data.secret_key().save(path)
        secret.load(seal_ctx, path)
    finally:
        with suppress(FileNotFoundError):
            os.remove(path)
    keygen = sealapi.KeyGenerator(seal_ctx, secret)
    galois_blob = seal_to_bytes(keygen.create_galois_keys(elements)) if elements else b""
    relin_blob = seal_to_bytes(keygen.create_relin_keys()) if relin else None
    return galois_blob, relin_blob


def public_context_bytes(ctx: ts.Context, *, galois_steps: Sequence[int] | None = None) -> bytes:
    """Serialize ``ctx`` for the server: public key, relin keys and only the needed Galois keys.

    The secret key is never written. ``galois_steps`` defaults to the steps given to
    :func:`make_context`; the result is what ``POST /v1/inference/sessions`` uploads.
    """
    if not ctx.has_secret_key():
        raise ContextError("public_context_bytes needs the client context (it derives the keys)")
    default_steps, relin_requested = _KEY_OPTIONS.get(ctx, ((), True))
    steps = tuple(galois_steps) if galois_steps is not None else default_steps
    relin = relin_requested and ctx.has_relin_keys()
    raw = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=relin)
    top = _parse_fields(raw)
    if any(f == _CTX_PRIVATE for f, _, _ in top):
        raise ContextError("internal: TenSEAL wrote private material into a public context")
    if not steps and not relin:
        return bytes(raw)
    galois_blob, relin_blob = _seeded_key_blobs(ctx, steps, relin=relin)
    out: list[tuple[int, int, bytes | int]] = []
    for field, wire, value in top:
        if field == _CTX_PUBLIC and isinstance(value, bytes):
            inner = [x for x in _parse_fields(value) if x[0] not in (_PUB_RELIN, _PUB_GALOIS)]
            if relin_blob is not None:
                inner.append((_PUB_RELIN, 2, relin_blob))
            if galois_blob:
                inner.append((_PUB_GALOIS, 2, galois_blob))
            value = _encode_fields(inner)
        out.append((field, wire, value))
    return _encode_fields(out)


def context_parameters(ctx: ts.Context) -> tuple[int, tuple[int, ...]]:
    """Return ``(poly_modulus_degree, prime bit sizes)`` of a TenSEAL context."""
    raw = ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    params_blob = next(v for f, w, v in _parse_fields(raw) if f == _CTX_PARAMS and w == 2)
    assert isinstance(params_blob, bytes)
    return _decode_parameters(params_blob)


def _decode_parameters(blob: bytes) -> tuple[int, tuple[int, ...]]:
    parms = seal_from_bytes(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS), blob,
                            max_bytes=max(1, len(blob)))
    if parms.scheme() != sealapi.SCHEME_TYPE.CKKS:
        raise ContextError("context is not a CKKS context")
    return parms.poly_modulus_degree(), tuple(m.bit_count() for m in parms.coeff_modulus())


def check_public_context(data: bytes, *, preset: str | None = None, max_bytes: int) -> bytes:
    """Every check of :func:`load_public_context` that needs no TenSEAL context: size, message
    layout, no private part, a public part with a public key, the parameters within the
    128-bit bound and equal to ``preset``'s. Returns the bytes; raises :class:`ContextError`.

    For servers that load the keys into SEAL themselves (which validates them), so that the
    whole key set is not parsed, expanded and held twice.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ContextError(f"context must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ContextError(f"context blob is {len(data)} bytes, above the limit {max_bytes}")
    if not data:
        raise ContextError("context blob is empty")
    try:
        top = _parse_fields(data)
    except ValueError as exc:
        raise ContextError(f"malformed context blob: {exc}") from None
    names = {f for f, _, _ in top}
    if _CTX_PRIVATE in names:
        raise ContextError(
            "context blob holds private key material; the server accepts public contexts only",
            hint="Serialize with crypto.ckks.public_context_bytes(ctx); it drops the secret key.",
        )
    if _CTX_PARAMS not in names or _CTX_PUBLIC not in names:
        raise ContextError("context blob lacks parameters or public part")
    params_blob = next(v for f, w, v in top if f == _CTX_PARAMS)
    if not isinstance(params_blob, bytes):
        raise ContextError("malformed context parameters")
    try:
        degree, bits = _decode_parameters(params_blob)
    except ContextError:
        raise
    except Exception:  # SEAL raises RuntimeError/ValueError on corrupt headers
        raise ContextError("malformed CKKS parameters in context blob") from None
    bound = HE_STANDARD_MAX_MODULUS_BITS.get(degree)
    if bound is None or sum(bits) > bound:
        raise ContextError(f"parameters N={degree}, {sum(bits)} modulus bits are outside the 128-bit bound")
    if preset is not None:
        p = get_preset(preset)
        if degree != p.poly_modulus_degree or bits != p.coeff_mod_bit_sizes:
            raise ContextError(
                f"context parameters N={degree} primes={list(bits)} do not match preset "
                f"{preset!r} (N={p.poly_modulus_degree} primes={list(p.coeff_mod_bit_sizes)})"
            )
    public_blob = next(v for f, w, v in top if f == _CTX_PUBLIC)
    try:
        public_fields = {f for f, _, _ in _parse_fields(public_blob)} if isinstance(public_blob, bytes) else set()
    except ValueError:
        raise ContextError("malformed public context") from None
    if 1 not in public_fields:
        raise ContextError("context has no public key")
    return data


def load_public_context(data: bytes, *, preset: str | None = None, max_bytes: int) -> ts.Context:
    """Rebuild a server-side context from client bytes, refusing anything unsafe.

    Raises :class:`ContextError` when ``data`` exceeds ``max_bytes``, is malformed or
    truncated, holds a secret key, lacks a public key, does not match ``preset`` (degree and
    prime sizes) or exceeds the 128-bit security bound.
    """
    data = check_public_context(data, preset=preset, max_bytes=max_bytes)
    try:
        ctx = ts.context_from(data)
    except Exception:
        raise ContextError("malformed or truncated context blob") from None
    if ctx.has_secret_key() or ctx.is_private():
        raise ContextError("context holds a secret key; refused")
    if not ctx.has_public_key():
        raise ContextError("context has no public key")
    if preset is not None:
        ctx.global_scale = float(2 ** get_preset(preset).global_scale_bits)
    return ctx


def load_ckks_vector(ctx: ts.Context, data: bytes, *, expected_size: int | None, max_bytes: int) -> ts.CKKSVector:
    """Deserialize one CKKS vector for ``ctx``, validating size, parameters and shape.

    Raises :class:`CiphertextError` on oversize, malformed or truncated bytes, ciphertexts
    of another parameter set, non-fresh shapes (more than 2 polynomials) or a vector length
    other than ``expected_size``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CiphertextError(f"ciphertext must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise CiphertextError(f"ciphertext is {len(data)} bytes, above the limit {max_bytes}")
    if not data:
        raise CiphertextError("ciphertext is empty")
    try:
        fields = _parse_fields(data)
    except ValueError:
        raise CiphertextError("malformed or truncated ciphertext") from None
    # CKKSVectorProto: 1 shape (packed varints), 2 ciphertext (SEAL blob), 3 scale (double).
    if [(f, w) for f, w, _ in fields] != [(1, 2), (2, 2), (3, 1)]:
        raise CiphertextError("malformed or truncated ciphertext (unexpected message layout)")
    try:
        vec = ts.ckks_vector_from(ctx, data)
        cts = vec.ciphertext()
        size = vec.size()
    except Exception:
        raise CiphertextError("malformed or truncated ciphertext, or one for other parameters") from None
    if len(cts) != 1:
        raise CiphertextError(f"expected one ciphertext, got {len(cts)}")
    ct = cts[0]
    first = ctx.data.seal_context().first_context_data()
    if ct.poly_modulus_degree() != first.parms().poly_modulus_degree():
        raise CiphertextError("ciphertext ring degree does not match the session context")
    if ct.size() != 2:
        raise CiphertextError(f"ciphertext has {ct.size()} polynomials, expected 2")
    if ctx.data.seal_context().get_context_data(ct.parms_id()) is None:
        raise CiphertextError("ciphertext parameters are not in the session context's chain")
    if expected_size is not None and size != expected_size:
        raise CiphertextError(f"ciphertext packs {size} values, expected {expected_size}")
    return vec
