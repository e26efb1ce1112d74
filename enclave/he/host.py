"""The untrusted host's view of CKKS: ciphertext arithmetic with public keys only."""

from __future__ import annotations

from typing import Any

import tenseal as ts
import tenseal.sealapi as seal

from enclave.he.ciphertexts import ciphertext_from_bytes

__all__ = ["HostEvaluator"]


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
