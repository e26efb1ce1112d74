"""Raw SEAL (CKKS) helpers shared by the host and the enclave: layouts, packing, serialization.

The host computes on ciphertexts only (``HostEvaluator``: multiply, rotate, add); the enclave
encrypts and decrypts (``KeyHolderCkks``). Layout of one batch ciphertext (``RowLayout``): sample
``i`` occupies slots ``[i*dim_pad, (i+1)*dim_pad)`` with its features first, zeros after.

    layout = RowLayout.for_dim(64, slots=4096)     # dim_pad 64, capacity 64 samples
    z_c = host.block_sum(host.multiply(x_ct, w_ct), layout.dim_pad)   # z_ic at slot i*dim_pad
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

__all__ = [
    "KeyHolderCkks",
    "work_parms_id",
    "HostEvaluator",
    "RowLayout",
    "ciphertext_from_bytes",
    "ciphertext_to_bytes",
]

_TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_scratch: dict[tuple[int, int], str] = {}


def _scratch_path() -> str:
    """A private (0700 directory) per-process, per-thread file for SEAL's file-only I/O."""
    key = (os.getpid(), threading.get_ident())
    path = _scratch.get(key)
    if path is None:
        directory = tempfile.mkdtemp(prefix="he-", dir=_TMP_ROOT)
        atexit.register(shutil.rmtree, directory, True)
        path = _scratch[key] = os.path.join(directory, "ct")
    return path


def ciphertext_to_bytes(ct: Any) -> bytes:
    """Serialize a SEAL ciphertext (SEAL's own format; the binding only writes to files)."""
    path = _scratch_path()
    ct.save(path)
    with open(path, "rb") as fh:
        return fh.read()


def ciphertext_from_bytes(seal_context: Any, data: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> Any:
    """Load a SEAL ciphertext, validated against ``seal_context`` (SEAL checks parameters)."""
    if not isinstance(data, bytes) or not 0 < len(data) <= max_bytes:
        raise ValueError(f"a ciphertext is 1..{max_bytes} bytes")
    path = _scratch_path()
    with open(path, "wb") as fh:
        fh.write(data)
    ct = seal.Ciphertext()
    try:
        ct.load(seal_context, path)
    except Exception as exc:  # SEAL raises plain RuntimeError/ValueError
        raise ValueError(f"not a valid ciphertext for this context: {exc}") from None
    return ct


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True, kw_only=True)
class RowLayout:
    """Row-major packing of up to ``capacity`` samples of ``dim`` features per ciphertext."""

    dim: int
    dim_pad: int
    slots: int

    @classmethod
    def for_dim(cls, dim: int, *, slots: int) -> RowLayout:
        """Layout for ``dim`` features in a ciphertext of ``slots`` slots (powers of two)."""
        if dim < 1 or _next_pow2(dim) > slots:
            raise ValueError(f"dimension {dim} does not fit in {slots} slots")
        return cls(dim=dim, dim_pad=_next_pow2(dim), slots=slots)

    @property
    def capacity(self) -> int:
        """Samples per ciphertext."""
        return self.slots // self.dim_pad

    def pack_rows(self, rows: np.ndarray) -> np.ndarray:
        """rows (B, dim) → slot vector with row i at [i*dim_pad, i*dim_pad+dim)."""
        b = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.dim or b > self.capacity:
            raise ValueError(f"rows must be (<= {self.capacity}, {self.dim}), got {rows.shape}")
        out = np.zeros((self.capacity, self.dim_pad))
        out[:b, : self.dim] = rows
        return out.reshape(-1)

    def tile_column(self, column: np.ndarray) -> np.ndarray:
        """A weight column (dim,) repeated for every sample position."""
        out = np.zeros((self.capacity, self.dim_pad))
        out[:, : self.dim] = column[None, :]
        return out.reshape(-1)

    def expand_per_sample(self, values: np.ndarray) -> np.ndarray:
        """Per-sample scalars (B,) spread over each sample's feature slots."""
        out = np.zeros((self.capacity, self.dim_pad))
        out[: values.shape[0], : self.dim] = values[:, None]
        return out.reshape(-1)

    def row_sums(self, vector: np.ndarray, count: int) -> np.ndarray:
        """Sum of each sample's slots, for i < count (the reduction done in plaintext)."""
        blocks = np.asarray(vector[: self.slots]).reshape(self.capacity, self.dim_pad)
        sums: np.ndarray = blocks[:count].sum(axis=1)
        return sums

    def sample_sums(self, vector: np.ndarray) -> np.ndarray:
        """Sum over the samples of each feature slot j < dim (the reduction in plaintext)."""
        blocks = np.asarray(vector[: self.slots]).reshape(self.capacity, self.dim_pad)
        sums: np.ndarray = blocks.sum(axis=0)[: self.dim]
        return sums

    def block_heads(self, vector: np.ndarray, count: int) -> np.ndarray:
        """Slot i*dim_pad for i < count (where a block sum lands)."""
        return np.asarray(vector[: self.slots]).reshape(self.capacity, self.dim_pad)[:count, 0]

    def column_sums(self, vector: np.ndarray) -> np.ndarray:
        """Slots [0, dim) (where a stride sum over samples lands)."""
        return np.asarray(vector[: self.dim])


class HostEvaluator:
    """Ciphertext arithmetic with public keys only (the untrusted host's view)."""

    def __init__(self, *, context: ts.Context) -> None:
        if context.has_secret_key() or context.is_private():
            raise ValueError("the host evaluator refuses a context holding a secret key")
        if not context.has_galois_keys() or not context.has_relin_keys():
            raise ValueError("the public context must carry Galois and relinearization keys")
        self.seal_context = context.seal_context().data
        self._evaluator = seal.Evaluator(self.seal_context)
        self._relin = context.relin_keys().data
        self._galois = context.galois_keys().data
        self.slots = context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2
        self.counts = {"ct_mul": 0, "rotate": 0, "add": 0, "rescale": 0}

    def load(self, data: bytes) -> Any:
        """Deserialize a ciphertext under this context."""
        return ciphertext_from_bytes(self.seal_context, data)

    def multiply(self, a: Any, b: Any, *, relinearize: bool = True) -> Any:
        """a*b (slot-wise), rescaled (consumes one level); relinearized unless told not to
        (a 3-part ciphertext still decrypts, but cannot be rotated)."""
        out = seal.Ciphertext()
        self._evaluator.multiply(a, b, out)
        if relinearize:
            self._evaluator.relinearize_inplace(out, self._relin)
            self.counts["relinearize"] = self.counts.get("relinearize", 0) + 1
        self._evaluator.rescale_to_next_inplace(out)
        self.counts["ct_mul"] += 1
        self.counts["rescale"] += 1
        return out

    def _rotate_add(self, ct: Any, steps: list[int]) -> Any:
        acc = ct
        for step in steps:
            rotated = seal.Ciphertext()
            self._evaluator.rotate_vector(acc, step, self._galois, rotated)
            self._evaluator.add_inplace(rotated, acc)
            acc = rotated
            self.counts["rotate"] += 1
            self.counts["add"] += 1
        return acc

    def block_sum(self, ct: Any, dim_pad: int) -> Any:
        """Sum each dim_pad-block; the sum of block i lands at slot i*dim_pad."""
        return self._rotate_add(ct, [1 << k for k in range(dim_pad.bit_length() - 1)])

    def stride_sum(self, ct: Any, dim_pad: int) -> Any:
        """Sum over the samples (stride dim_pad); slot j gets sum_i slot[i*dim_pad + j]."""
        capacity = self.slots // dim_pad
        return self._rotate_add(ct, [dim_pad << k for k in range(capacity.bit_length() - 1)])


def work_parms_id(seal_context: Any) -> Any:
    """Parameters id of the level with two primes left: enough for one product and rescale.

    Encrypting there (instead of at the top level) makes every host operation cheaper; the
    enclave refreshes ciphertexts after each product, so one level is all the protocol needs.
    """
    data = seal_context.first_context_data()
    while data.next_context_data() is not None and data.next_context_data().next_context_data() is not None:
        data = data.next_context_data()
    return data.parms_id()


class KeyHolderCkks:
    """Encrypt/decrypt with the data owner's secret context (the data owner or the enclave)."""

    def __init__(self, *, context: ts.Context) -> None:
        if not context.has_secret_key():
            raise ValueError("the enclave needs a CKKS context with its secret key")
        self.seal_context = context.seal_context().data
        self._encoder = seal.CKKSEncoder(self.seal_context)
        # The key holder has the secret key: symmetric encryption is about twice as fast.
        self._encryptor = seal.Encryptor(self.seal_context, context.secret_key().data)
        self._decryptor = seal.Decryptor(self.seal_context, context.secret_key().data)
        self.scale = float(context.global_scale)
        self._parms_id = work_parms_id(self.seal_context)
        self.slots = int(self._encoder.slot_count())
        self.counts = {"encrypt": 0, "decrypt": 0, "bytes_decrypted": 0, "values_decrypted": 0}

    def encrypt(self, values: np.ndarray) -> Any:
        """Encrypt a slot vector (length <= slots)."""
        pt = seal.Plaintext()
        self._encoder.encode(np.asarray(values, dtype=np.float64).tolist(), self._parms_id, self.scale, pt)
        ct = seal.Ciphertext()
        self._encryptor.encrypt_symmetric(pt, ct)
        self.counts["encrypt"] += 1
        return ct

    def encrypt_bytes(self, values: np.ndarray) -> bytes:
        """Encrypt and serialize."""
        return ciphertext_to_bytes(self.encrypt(values))

    def decrypt_bytes(self, data: bytes) -> np.ndarray:
        """Load, decrypt and decode a serialized ciphertext."""
        ct = ciphertext_from_bytes(self.seal_context, data)
        pt = seal.Plaintext()
        self._decryptor.decrypt(ct, pt)
        values = np.asarray(self._encoder.decode_double(pt))
        self.counts["decrypt"] += 1
        self.counts["bytes_decrypted"] += len(data)
        self.counts["values_decrypted"] += values.size
        return values
