"""Raw SEAL (CKKS) helpers shared by the host and the enclave: layouts, packing, serialization.

The host computes on ciphertexts only (``HostEvaluator``: multiply, rotate, add); the enclave
encrypts and decrypts (``KeyHolderCkks``). Two layouts:

- ``RowLayout`` (slots): sample ``i`` occupies slots ``[i*dim_pad, (i+1)*dim_pad)`` with its
  features first, zeros after; one product per class, sums by rotation or in the enclave.

      layout = RowLayout.for_dim(64, slots=4096)     # dim_pad 64, capacity 64 samples
      z_c = host.block_sum(host.multiply(x_ct, w_ct), layout.dim_pad)   # z_ic at slot i*dim_pad

- ``CoeffLayout`` (polynomial coefficients, as in Cheetah-style HE matrix products): a
  ciphertext×ciphertext product is a negacyclic convolution of the coefficient vectors, so one
  product computes a whole block of a matrix product. A batch ``X`` (n×m) is cut into
  ``S×F`` blocks of ``rows×cols``; block (s, f) puts ``x[i, j]`` at coefficient
  ``i*cols*K + j`` (``K`` = outputs). The weights of feature block f go in one ciphertext
  (``W[j, c]`` at ``c*cols + cols-1-j``), the errors of sample block s in one ciphertext
  (``E[i, c]`` at ``-i*cols*K + c*cols``, negacyclic). Then ``Σ_f X_sf·W_f`` holds
  ``z[i, c]`` at ``i*cols*K + c*cols + cols-1`` and ``Σ_s X_sf·E_s`` holds ``(X^T E)[j, c]``
  at ``c*cols + j``; every other product term lands elsewhere as long as
  ``rows*cols*K + cols - 1 <= N``. No rotation, no Galois key, and per step only F weight
  and S error ciphertexts go to the host and S + F products come back (S + F = 5 for a
  64×64 batch with 10 classes at N = 8192, instead of 10 + 10 and 10 + 10 with slots).

      geo = CoeffLayout.plan(batch=64, dim=64, outputs=10, degree=8192)   # S=2, F=3
      z_s = host.dot([(x[s * geo.col_blocks + f], w[f]) for f in range(geo.col_blocks)])
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
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
    "CoeffLayout",
    "pack_blobs",
    "unpack_blobs",
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


_BLOBS_MAGIC = b"CTS1"


def pack_blobs(blobs: list[bytes]) -> bytes:
    """Several ciphertexts as one message part (count, lengths, then the bytes)."""
    head = len(blobs).to_bytes(4, "big") + b"".join(len(b).to_bytes(4, "big") for b in blobs)
    return _BLOBS_MAGIC + head + b"".join(blobs)


def unpack_blobs(data: bytes, *, max_count: int = 4096) -> list[bytes]:
    """Inverse of :func:`pack_blobs`, size-checked (raises ValueError)."""
    if not isinstance(data, bytes) or not data.startswith(_BLOBS_MAGIC) or len(data) < 8:
        raise ValueError("not a ciphertext bundle")
    count = int.from_bytes(data[4:8], "big")
    if not 1 <= count <= max_count or len(data) < 8 + 4 * count:
        raise ValueError("ciphertext bundle has a bad count")
    lengths = [int.from_bytes(data[8 + 4 * i : 12 + 4 * i], "big") for i in range(count)]
    pos = 8 + 4 * count
    if pos + sum(lengths) != len(data):
        raise ValueError("ciphertext bundle has the wrong length")
    out = []
    for n in lengths:
        out.append(data[pos : pos + n])
        pos += n
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, kw_only=True)
class CoeffLayout:
    """Coefficient packing of an (n × m) batch for products with (m × K) and (n × K) operands.

    ``rows × cols`` is one block of the batch; ``row_blocks`` (S) × ``col_blocks`` (F) blocks
    cover ``batch × dim``. Valid when ``rows*cols*outputs + cols - 1 <= degree`` (no product
    term wraps onto an output coefficient).
    """

    batch: int
    dim: int
    outputs: int
    degree: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("batch", "dim", "outputs", "degree", "rows", "cols"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"coefficient layout: {name} must be >= 1")
        if self.rows * self.cols * self.outputs + self.cols - 1 > self.degree:
            raise ValueError("coefficient layout: rows*cols*outputs + cols - 1 exceeds the degree")
        if self.rows > self.batch or self.cols > self.dim:
            raise ValueError("coefficient layout: a block is larger than the batch")

    @classmethod
    def plan(cls, *, batch: int, dim: int, outputs: int, degree: int) -> CoeffLayout:
        """The blocking with the fewest ciphertexts per step (S + F), then fewest products."""
        best: tuple[tuple[int, int], CoeffLayout] | None = None
        for f in range(1, dim + 1):
            cols = _ceil_div(dim, f)
            if _ceil_div(dim, cols) != f:
                continue
            rows_max = (degree - cols + 1) // (cols * outputs)
            if rows_max < 1:
                continue
            s = _ceil_div(batch, rows_max)
            rows = _ceil_div(batch, s)
            key = (s + f, s * f)
            if best is None or key < best[0]:
                best = (key, cls(batch=batch, dim=dim, outputs=outputs, degree=degree, rows=rows, cols=cols))
        if best is None:
            raise ValueError(f"{outputs} outputs do not fit a degree-{degree} coefficient layout")
        return best[1]

    @property
    def row_blocks(self) -> int:
        """S: sample blocks per batch (error ciphertexts, forward outputs)."""
        return _ceil_div(self.batch, self.rows)

    @property
    def col_blocks(self) -> int:
        """F: feature blocks per batch (weight ciphertexts, gradient outputs)."""
        return _ceil_div(self.dim, self.cols)

    def pack_x(self, rows: np.ndarray) -> list[np.ndarray]:
        """A batch (count <= batch, dim) → S*F coefficient vectors, block (s, f) at s*F + f."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim or not 0 < x.shape[0] <= self.batch:
            raise ValueError(f"rows must be (<= {self.batch}, {self.dim}), got {x.shape}")
        full = np.zeros((self.row_blocks * self.rows, self.col_blocks * self.cols))
        full[: x.shape[0], : self.dim] = x
        stride = self.cols * self.outputs
        out = []
        for s in range(self.row_blocks):
            for f in range(self.col_blocks):
                block = full[s * self.rows : (s + 1) * self.rows, f * self.cols : (f + 1) * self.cols]
                vec = np.zeros(self.degree)
                vec[: self.rows * stride].reshape(self.rows, stride)[:, : self.cols] = block
                out.append(vec)
        return out

    def pack_w(self, weights: np.ndarray) -> list[np.ndarray]:
        """Weights (dim, k <= outputs) → F vectors; W[j, c] at c*cols + cols-1-j of block f."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != self.dim or not 0 < w.shape[1] <= self.outputs:
            raise ValueError(f"weights must be ({self.dim}, <= {self.outputs}), got {w.shape}")
        full = np.zeros((self.col_blocks * self.cols, w.shape[1]))
        full[: self.dim] = w
        out = []
        for f in range(self.col_blocks):
            block = full[f * self.cols : (f + 1) * self.cols]  # (cols, k)
            vec = np.zeros(self.degree)
            vec[: w.shape[1] * self.cols] = block[::-1].T.reshape(-1)
            out.append(vec)
        return out

    def unpack_z(self, vectors: list[np.ndarray], count: int, k: int) -> np.ndarray:
        """S decrypted forward products → pre-activations (count, k)."""
        if len(vectors) != self.row_blocks or not 0 < count <= self.batch or not 0 < k <= self.outputs:
            raise ValueError("forward products do not match the layout")
        stride = self.cols * self.outputs
        blocks = [
            np.asarray(v)[: self.rows * stride].reshape(self.rows, self.outputs, self.cols)[:, :k, self.cols - 1]
            for v in vectors
        ]
        z: np.ndarray = np.concatenate(blocks, axis=0)[:count]
        return z

    def pack_e(self, errors: np.ndarray) -> list[np.ndarray]:
        """Errors (count, k) → S vectors; E[i, c] at -i*cols*K + c*cols (negacyclic)."""
        e = np.asarray(errors, dtype=np.float64)
        if e.ndim != 2 or not 0 < e.shape[0] <= self.batch or not 0 < e.shape[1] <= self.outputs:
            raise ValueError("errors do not match the layout")
        full = np.zeros((self.row_blocks * self.rows, e.shape[1]))
        full[: e.shape[0]] = e
        stride = self.cols * self.outputs
        cols_at = np.arange(e.shape[1]) * self.cols
        out = []
        for s in range(self.row_blocks):
            vec = np.zeros(self.degree)
            vec[cols_at] = full[s * self.rows]
            for i in range(1, self.rows):
                vec[self.degree - i * stride + cols_at] = -full[s * self.rows + i]
            out.append(vec)
        return out

    def unpack_g(self, vectors: list[np.ndarray], k: int) -> np.ndarray:
        """F decrypted gradient products → X^T·E (dim, k)."""
        if len(vectors) != self.col_blocks or not 0 < k <= self.outputs:
            raise ValueError("gradient products do not match the layout")
        blocks = [np.asarray(v)[: k * self.cols].reshape(k, self.cols).T for v in vectors]
        g: np.ndarray = np.concatenate(blocks, axis=0)[: self.dim]
        return g


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

    def dot(self, pairs: list[tuple[Any, Any]]) -> Any:
        """Σ a_i·b_i without relinearization (a 3-part ciphertext: it only goes to the key
        holder), rescaled once unless already at the last level. Used by the coefficient
        layout (products are negacyclic convolutions)."""
        if not pairs:
            raise ValueError("dot needs at least one pair")
        acc = seal.Ciphertext()
        self._evaluator.multiply(pairs[0][0], pairs[0][1], acc)
        self.counts["ct_mul"] += 1
        for a, b in pairs[1:]:
            out = seal.Ciphertext()
            self._evaluator.multiply(a, b, out)
            self._evaluator.add_inplace(acc, out)
            self.counts["ct_mul"] += 1
            self.counts["add"] += 1
        if self.seal_context.get_context_data(acc.parms_id()).next_context_data() is not None:
            self._evaluator.rescale_to_next_inplace(acc)
            self.counts["rescale"] += 1
        return acc

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


def _last_level(seal_context: Any) -> tuple[Any, int]:
    """Parameters id and modulus bits of the last level (a single prime)."""
    data = seal_context.first_context_data()
    while data.next_context_data() is not None:
        data = data.next_context_data()
    return data.parms_id(), int(data.total_coeff_modulus_bit_count())


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
        self._secret_key = context.secret_key().data
        self._evaluator = seal.Evaluator(self.seal_context)
        self.scale = float(context.global_scale)
        self._parms_id = work_parms_id(self.seal_context)
        self._coeff_parms_id, last_prime_bits = _last_level(self.seal_context)
        # Coefficient layout: operands at the last level (one prime), scale 2^(bits/2 - 5) each,
        # so a product (scale 2^(bits - 10)) holds values below 2^9 without rescaling.
        self.coeff_scale = float(2 ** ((last_prime_bits - 10) // 2))
        self.coeff_bound = 2.0 ** (last_prime_bits - 1) / self.coeff_scale**2
        self._pool: list[Any] = []
        self._pool_lock = threading.Lock()
        self._idle = threading.Event()
        self._pool_thread: threading.Thread | None = None
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

    def _seeded_bytes(self, pt: Any) -> bytes:
        # symmetric encryption serialized with its seed: half the bytes, expanded on load
        path = _scratch_path()
        self._encryptor.encrypt_symmetric(pt).save(path)
        with open(path, "rb") as fh:
            return fh.read()

    def encrypt_bytes(self, values: np.ndarray) -> bytes:
        """Encrypt (slot vector) and serialize (seeded: about half the size)."""
        pt = seal.Plaintext()
        self._encoder.encode(np.asarray(values, dtype=np.float64).tolist(), self._parms_id, self.scale, pt)
        self.counts["encrypt"] += 1
        return self._seeded_bytes(pt)

    # -- coefficient encoding (see CoeffLayout) ------------------------------------------
    def _coeff_maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        maps = getattr(self, "_maps", None)
        if maps is None:
            n = 2 * self.slots
            exps = np.array([pow(3, i, 2 * n) for i in range(self.slots)], dtype=np.int64)
            twist = np.exp(1j * np.pi * np.arange(n) / n)
            maps = self._maps = ((exps - 1) // 2, (2 * n - exps - 1) // 2, twist)
        return maps

    def start_zero_pool(self, *, size: int = 12) -> None:
        """Keep up to ``size`` fresh encryptions of zero (last level) ready, made by a
        background thread only while the owner is idle (see :meth:`working`), e.g. while the
        host computes. ``encrypt_coeffs_bytes`` then costs an encoding and an addition: each
        pooled ciphertext is used once, so every output is still a fresh encryption."""
        if self._pool_thread is not None:
            return
        encryptor = seal.Encryptor(self.seal_context, self._secret_key)
        parms_id, ref = self._coeff_parms_id, weakref.ref(self)
        pool, lock, idle = self._pool, self._pool_lock, self._idle
        idle.set()

        def refill() -> None:
            while ref() is not None:
                if not idle.wait(timeout=1.0):
                    continue
                with lock:
                    full = len(pool) >= size
                if full:
                    time.sleep(0.005)
                    continue
                ct = seal.Ciphertext()
                encryptor.encrypt_zero_symmetric(parms_id, ct)
                with lock:
                    pool.append(ct)

        self._pool_thread = threading.Thread(target=refill, name="he-zero-pool", daemon=True)
        self._pool_thread.start()

    @contextmanager
    def working(self) -> Iterator[None]:
        """Mark the owner busy (the zero pool does not refill meanwhile)."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def encrypt_coeffs_bytes(self, coeffs: np.ndarray) -> bytes:
        """Encrypt a real coefficient vector (length N) as the polynomial Σ a_j X^j (scaled)."""
        idx, _, twist = self._coeff_maps()
        a = np.asarray(coeffs, dtype=np.float64)
        if a.shape != (2 * self.slots,) or not np.isfinite(a).all():
            raise ValueError(f"coefficients must be {2 * self.slots} finite values")
        slots = (a.size * np.fft.ifft(a * twist))[idx]
        pt = seal.Plaintext()
        self._encoder.encode(slots.tolist(), self._coeff_parms_id, self.coeff_scale, pt)
        self.counts["encrypt"] += 1
        with self._pool_lock:
            zero = self._pool.pop() if self._pool else None
        if zero is None:
            return self._seeded_bytes(pt)
        zero.scale = pt.scale
        self._evaluator.add_plain_inplace(zero, pt)
        return ciphertext_to_bytes(zero)

    def decrypt_coeffs_bytes(self, data: bytes) -> np.ndarray:
        """Load and decrypt a ciphertext; return its real coefficient vector (length N)."""
        idx, idx_conj, twist = self._coeff_maps()
        ct = ciphertext_from_bytes(self.seal_context, data)
        pt = seal.Plaintext()
        self._decryptor.decrypt(ct, pt)
        z = np.asarray(self._encoder.decode_complex(pt))
        full = np.empty(2 * self.slots, dtype=np.complex128)
        full[idx], full[idx_conj] = z, np.conj(z)
        coeffs: np.ndarray = (np.fft.fft(full) / full.size * np.conj(twist)).real
        self.counts["decrypt"] += 1
        self.counts["bytes_decrypted"] += len(data)
        self.counts["values_decrypted"] += coeffs.size
        return coeffs

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
