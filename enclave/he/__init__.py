"""Raw SEAL (CKKS) helpers shared by the host and the enclave: layouts, packing, serialization.

Modules: :mod:`~enclave.he.ciphertexts` (ciphertexts to and from bytes, and the ``CTS1``
bundle of several), :mod:`~enclave.he.layouts` (``RowLayout``, ``CoeffLayout``),
:mod:`~enclave.he.host` (``HostEvaluator``: public keys only) and :mod:`~enclave.he.keyholder`
(``KeyHolderCkks``: the secret key).

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

from enclave.he.ciphertexts import ciphertext_from_bytes, ciphertext_to_bytes, pack_blobs, unpack_blobs
from enclave.he.host import HostEvaluator
from enclave.he.keyholder import KeyHolderCkks, work_parms_id
from enclave.he.layouts import CoeffLayout, RowLayout

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
