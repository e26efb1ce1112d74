"""The key holder's view of CKKS (the data owner, or the enclave): encrypt and decrypt."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from crypto.seal_bridge import seal_to_bytes
from enclave.he.ciphertexts import ciphertext_from_bytes, ciphertext_to_bytes

__all__ = ["KeyHolderCkks", "work_parms_id"]


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
        return seal_to_bytes(self._encryptor.encrypt_symmetric(pt))

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
