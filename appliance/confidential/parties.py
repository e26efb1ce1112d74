"""What the data owner and the model owner run on their own machines (used by the SDK).

Data owner::

    ctx = create_ckks_context()                       # keeps the secret key
    vq = verify_quote(quote, platform_key=..., allowed_measurements=..., nonce=..., ...)
    train = encrypt_dataset(ctx, vq, X, y, num_classes=10, batch_size=64, split="train")
    val = encrypt_dataset(ctx, vq, X_val, y_val, num_classes=10, batch_size=64, split="val")
    secret_blob = wrap_ckks_secret(ctx, vq)
    public = public_context(ctx)                      # what the host may hold

Model owner::

    model_blob = wrap_model(vq, pack_softmax_model(W, b, result_key=key))
    meta, arrays = open_refined_model(result.refined_model, result_key=key, job_id=job_id)

Features are CKKS-encrypted either row-major in slots (``layout="rows"``, ``enclave.he.RowLayout``,
``batch_size`` samples per ciphertext) or in polynomial coefficients (``layout="coeff"``,
``enclave.he.CoeffLayout``: a few block ciphertexts per batch, bundled; about 5x fewer
ciphertexts through the enclave per step, no rotations). Labels are wrapped to the attested
enclave, never CKKS-encrypted for the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from appliance.confidential.errors import ConfidentialError
from crypto.ckks import make_context, public_context_bytes
from crypto.framing import FrameReader, FrameWriter
from crypto.provisioning import VerifiedQuote, wrap_key_for_enclave
from enclave.codec import decode_arrays, encode_arrays
from enclave.he import CoeffLayout, KeyHolderCkks, RowLayout, pack_blobs
from enclave.refine import open_refined_model as _open_refined_model
from enclave.runtime import (
    LABEL_CKKS_SECRET,
    LABEL_MODEL,
    LABEL_TRAIN_LABELS,
    LABEL_VAL_LABELS,
)

__all__ = [
    "CKKS_PRESET",
    "GALOIS_STEPS",
    "EncryptedDataset",
    "create_ckks_context",
    "encrypt_dataset",
    "model_arrays",
    "open_refined_model",
    "pack_mlp_model",
    "pack_softmax_model",
    "public_context",
    "wrap_ckks_secret",
    "wrap_model",
]

#: CKKS preset (crypto.ckks) used for refinement; ciphertexts are encrypted two levels down.
CKKS_PRESET = "n8192-d3"
#: Rotations the host performs: every power of two below the slot count.
GALOIS_STEPS: tuple[int, ...] = tuple(1 << k for k in range(12))
_DATASET_MAGIC = b"EDS1\x00"


def create_ckks_context() -> ts.Context:
    """Data owner: a fresh CKKS context (secret key included) for refinement."""
    return make_context(CKKS_PRESET, galois_steps=list(GALOIS_STEPS))


def public_context(ctx: ts.Context) -> bytes:
    """Data owner: the public part (public, relinearization and Galois keys) for the host."""
    return public_context_bytes(ctx)


def wrap_ckks_secret(ctx: ts.Context, verified_quote: VerifiedQuote) -> bytes:
    """Data owner: the secret-key context, wrapped to the attested enclave."""
    if not ctx.has_secret_key():
        raise ConfidentialError("this context has no secret key to provision")
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    return wrap_key_for_enclave(verified_quote, secret, label=LABEL_CKKS_SECRET)


@dataclass(frozen=True, kw_only=True)
class EncryptedDataset:
    """Encrypted features (one ciphertext, or one bundle of block ciphertexts, per batch) plus
    labels wrapped to the enclave.

    ``layout`` is ``"rows"`` or ``"coeff"``; for ``"coeff"``, ``geometry`` is
    ``(batch, rows, cols, outputs)`` of the :class:`enclave.he.CoeffLayout` used.
    """

    features: list[bytes]
    batch_sizes: list[int]
    dim: int
    labels_blob: bytes
    layout: str = "rows"
    geometry: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        if len(self.features) != len(self.batch_sizes) or not self.features:
            raise ConfidentialError("one ciphertext per batch is needed")
        if self.dim < 1 or any(n < 1 for n in self.batch_sizes):
            raise ConfidentialError("dimension and batch sizes must be positive")
        if self.layout not in ("rows", "coeff"):
            raise ConfidentialError("layout must be 'rows' or 'coeff'")
        if self.layout == "coeff" and (len(self.geometry) != 4 or min(self.geometry) < 1):
            raise ConfidentialError("a coefficient-layout dataset needs its geometry")

    @property
    def num_samples(self) -> int:
        """Number of samples."""
        return sum(self.batch_sizes)

    @property
    def nbytes(self) -> int:
        """Stored size of the ciphertexts."""
        return sum(len(f) for f in self.features)

    def to_bytes(self) -> bytes:
        """Serialize for storage as one blob."""
        head = json.dumps(
            {
                "batch_sizes": self.batch_sizes,
                "dim": self.dim,
                "lengths": [len(f) for f in self.features],
                "labels": len(self.labels_blob),
                **({"layout": self.layout, "geometry": list(self.geometry)} if self.layout != "rows" else {}),
            }
        ).encode()
        frame = FrameWriter(_DATASET_MAGIC).prefixed(head, 4)
        return frame.raw(b"".join(self.features)).raw(self.labels_blob).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = 2 * 1024**3) -> EncryptedDataset:
        """Parse :meth:`to_bytes` output (size-checked)."""
        reader = FrameReader(
            data, magic=_DATASET_MAGIC, error=ConfidentialError, what="encrypted dataset", max_bytes=max_bytes
        )
        head = reader.json_object(4, limit=max_bytes, field="header")
        try:
            lengths = [int(n) for n in head["lengths"]]
            batch_sizes = [int(n) for n in head["batch_sizes"]]
            dim, nlab = int(head["dim"]), int(head["labels"])
            layout = str(head.get("layout", "rows"))
            geometry = tuple(int(g) for g in head.get("geometry", (0, 0, 0, 0)))
            if len(geometry) != 4:
                raise ValueError("geometry")
        except (ValueError, KeyError, TypeError, OverflowError):
            raise ConfidentialError("encrypted dataset header is malformed") from None
        if sum(lengths) + nlab != reader.remaining:
            raise ConfidentialError("encrypted dataset blob has the wrong length")
        features = reader.parts(lengths, field="ciphertext")
        labels_blob = reader.take(nlab, field="labels")
        reader.end()
        return cls(
            features=features,
            batch_sizes=batch_sizes,
            dim=dim,
            labels_blob=labels_blob,
            layout=layout,
            geometry=geometry,
        )


def encrypt_dataset(
    ctx: ts.Context,
    verified_quote: VerifiedQuote,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    split: str,
    layout: str = "rows",
) -> EncryptedDataset:
    """Data owner: CKKS-encrypt features in batches and wrap the labels to the enclave.

    ``split`` is ``"train"`` or ``"val"``; consecutive samples form a batch (shuffle the
    data before if needed: the epoch order of batches is shuffled by the job's seed).
    ``layout="coeff"`` packs each batch in polynomial coefficients (``enclave.he.CoeffLayout``
    planned for ``batch_size``, the dimension and ``num_classes``; batch_size up to 4096);
    training and validation sets must use the same ``batch_size``.
    """
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise ConfidentialError("features must be (n, d) and labels (n,)")
    if not np.isfinite(X).all():
        raise ConfidentialError("features must be finite")
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfidentialError(f"labels must lie in [0, {num_classes})")
    if split not in ("train", "val"):
        raise ConfidentialError("split must be 'train' or 'val'")
    holder = KeyHolderCkks(context=ctx)
    if layout == "coeff":
        if not 1 <= batch_size <= 4096:
            raise ConfidentialError("batch_size must be in [1, 4096]")
        # the bound travels inside the labels (to the enclave only), not in the host's header
        bound = max(float(np.abs(X).max()), 1e-6)
        if bound > 256:
            raise ConfidentialError("the coefficient layout needs |features| <= 256: rescale the features")
        try:
            geo = CoeffLayout.plan(batch=batch_size, dim=X.shape[1], outputs=num_classes, degree=2 * holder.slots)
        except ValueError as exc:
            raise ConfidentialError(str(exc)) from None
        bundles, sizes = [], []
        for start in range(0, X.shape[0], batch_size):
            rows = X[start : start + batch_size]
            bundles.append(pack_blobs([holder.encrypt_coeffs_bytes(v) for v in geo.pack_x(rows)]))
            sizes.append(rows.shape[0])
        return EncryptedDataset(
            features=bundles,
            batch_sizes=sizes,
            dim=X.shape[1],
            labels_blob=_wrap_labels(verified_quote, y, num_classes=num_classes, split=split, bound=bound),
            layout="coeff",
            geometry=(geo.batch, geo.rows, geo.cols, geo.outputs),
        )
    if layout != "rows":
        raise ConfidentialError("layout must be 'rows' or 'coeff'")
    row_layout = RowLayout.for_dim(X.shape[1], slots=holder.slots)
    if not 1 <= batch_size <= row_layout.capacity:
        raise ConfidentialError(f"batch_size must be in [1, {row_layout.capacity}] for {X.shape[1]} features")
    cts, sizes = [], []
    for start in range(0, X.shape[0], batch_size):
        rows = X[start : start + batch_size]
        cts.append(holder.encrypt_bytes(row_layout.pack_rows(rows)))
        sizes.append(rows.shape[0])
    labels_blob = _wrap_labels(verified_quote, y, num_classes=num_classes, split=split)
    return EncryptedDataset(features=cts, batch_sizes=sizes, dim=X.shape[1], labels_blob=labels_blob)


def _wrap_labels(
    verified_quote: VerifiedQuote, y: np.ndarray, *, num_classes: int, split: str, bound: float | None = None
) -> bytes:
    label = LABEL_TRAIN_LABELS if split == "train" else LABEL_VAL_LABELS
    meta: dict[str, Any] = {"num_classes": num_classes}
    if bound is not None:
        meta["feature_bound"] = bound
    return wrap_key_for_enclave(verified_quote, encode_arrays(meta, {"labels": y}), label=label)


def _key(result_key: bytes) -> str:
    if not isinstance(result_key, bytes) or len(result_key) != 32:
        raise ConfidentialError("result_key must be 32 random bytes")
    return result_key.hex()


def pack_softmax_model(W: np.ndarray, b: np.ndarray, *, result_key: bytes) -> bytes:
    """Model owner: a softmax-regression model (W: (d, k), b: (k,))."""
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    if W.ndim != 2 or b.shape != (W.shape[1],):
        raise ConfidentialError("W must be (d, k) and b (k,)")
    return encode_arrays({"kind": "softmax", "result_key": _key(result_key)}, {"W": W, "b": b})


def pack_mlp_model(W1: np.ndarray, b1: np.ndarray, W: np.ndarray, b: np.ndarray, *, result_key: bytes) -> bytes:
    """Model owner: a one-hidden-layer MLP; W1/b1 (ReLU) stay frozen, W/b are refined."""
    arrays = {k: np.asarray(v, np.float64) for k, v in {"W1": W1, "b1": b1, "W": W, "b": b}.items()}
    if arrays["W1"].shape[1] != arrays["W"].shape[0]:
        raise ConfidentialError("W1 (d, h) and W (h, k) do not chain")
    return encode_arrays({"kind": "mlp", "result_key": _key(result_key)}, arrays)


def wrap_model(verified_quote: VerifiedQuote, model: bytes) -> bytes:
    """Model owner: the packed model wrapped to the attested enclave."""
    return wrap_key_for_enclave(verified_quote, model, label=LABEL_MODEL)


def open_refined_model(blob: bytes, *, result_key: bytes, job_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Model owner: decrypt the refined model (meta, arrays) the enclave returned."""
    return _open_refined_model(blob, result_key=result_key, job_id=job_id)


def model_arrays(model: bytes) -> dict[str, np.ndarray]:
    """Model owner: the arrays of a packed model (for the plaintext baseline)."""
    return decode_arrays(model)[1]
