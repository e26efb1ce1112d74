"""The enclave side of confidential refinement (HE + TEE, after Liu & Zhang, IEEE CLOUD 2023).

The host multiplies CKKS ciphertexts; this module, inside the enclave, decrypts only the
products it must (pre-activations z = xW and gradients X^T·err), applies bias, softmax and
ReLU, forms the error with the labels, updates the weights and re-encrypts them (refresh).

Models (array container, see :mod:`enclave.codec`):

- ``kind="softmax"``: arrays ``W`` (d, k), ``b`` (k,) — softmax regression on the features.
- ``kind="mlp"``: arrays ``W1`` (d, h), ``b1`` (h,) frozen, ``W`` (h, k), ``b`` (k,) trained:
  the last layer of a small MLP over a frozen (encrypted) hidden layer.

meta: ``{"kind": ..., "result_key": hex 32 bytes}`` — the model owner's key under which the
refined model is returned (AES-256-GCM, associated data ``b"refined-model|" + job_id``).

Layouts (``plan.layout``): ``"rows"`` (slot packing, one ciphertext per class; see
:class:`enclave.he.RowLayout`) or ``"coeff"`` (coefficient packing, :class:`enclave.he.CoeffLayout`:
per step F weight and S error ciphertexts out, S pre-activation and F gradient products in).

The epoch's batch order is ``batch_order(seed, epoch, n_batches)``; the enclave enforces it, so a
host cannot replay, skip or reorder steps without the refinement failing.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.framing import FrameReader, FrameWriter
from enclave.codec import CodecError, decode_arrays, encode_arrays
from enclave.errors import RefinementError
from enclave.he import CoeffLayout, KeyHolderCkks, RowLayout, pack_blobs
from models.numerics import softmax

__all__ = [
    "RefinementPlan",
    "RefinementSession",
    "batch_order",
    "open_refined_model",
    "softmax",
]

_RESULT_MAGIC = b"RMOD1\x00"
MAX_SECRET_CONTEXT_BYTES = 64 * 1024 * 1024


def _busy(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a session step with the key holder marked busy (its zero pool waits)."""

    @functools.wraps(method)
    def wrapper(self: RefinementSession, *args: Any, **kwargs: Any) -> Any:
        with self._ckks.working():
            return method(self, *args, **kwargs)

    return wrapper


def batch_order(seed: int, epoch: int, n_batches: int) -> list[int]:
    """The order in which batches are visited in ``epoch`` (shared by host, enclave, baseline)."""
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_batches)]


@dataclass(frozen=True, kw_only=True)
class RefinementPlan:
    """Public parameters of a refinement (sent by the host, checked by the enclave)."""

    job_id: str
    train_batches: list[int]
    val_batches: list[int]
    dim: int
    epochs: int
    lr: float
    seed: int
    reduction: str = "host"
    layout: str = "rows"
    coeff_batch: int = 0
    coeff_rows: int = 0
    coeff_cols: int = 0
    coeff_outputs: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinementPlan:
        """Validate and build a plan from a message header."""
        try:
            plan = cls(
                job_id=str(data["job_id"]),
                train_batches=[int(n) for n in data["train_batches"]],
                val_batches=[int(n) for n in data["val_batches"]],
                dim=int(data["dim"]),
                epochs=int(data["epochs"]),
                lr=float(data["lr"]),
                seed=int(data["seed"]),
                reduction=str(data.get("reduction", "host")),
                layout=str(data.get("layout", "rows")),
                coeff_batch=int(data.get("coeff_batch", 0)),
                coeff_rows=int(data.get("coeff_rows", 0)),
                coeff_cols=int(data.get("coeff_cols", 0)),
                coeff_outputs=int(data.get("coeff_outputs", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RefinementError(f"malformed refinement plan: {exc}") from None
        if plan.layout not in ("rows", "coeff"):
            raise RefinementError("layout must be 'rows' or 'coeff'")
        if plan.reduction not in ("host", "enclave"):
            raise RefinementError("reduction must be 'host' or 'enclave'")
        if not plan.train_batches or not plan.val_batches:
            raise RefinementError("the plan needs at least one training and one validation batch")
        if any(n < 1 for n in plan.train_batches + plan.val_batches):
            raise RefinementError("every batch must hold at least one sample")
        if not 1 <= plan.epochs <= 1000 or not 0 < plan.lr < 100 or plan.dim < 1:
            raise RefinementError("epochs must be in [1, 1000], lr in (0, 100), dim >= 1")
        if not 0 < len(plan.job_id) <= 128:
            raise RefinementError("job_id must be 1..128 characters")
        return plan


def open_refined_model(blob: bytes, *, result_key: bytes, job_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Model owner: decrypt the refined model returned by the enclave."""
    reader = FrameReader(blob, magic=_RESULT_MAGIC, error=RefinementError, what="refined-model blob")
    nonce = reader.take(12, field="nonce")
    sealed = reader.rest(min_bytes=16, field="ciphertext")
    try:
        plain = AESGCM(result_key).decrypt(nonce, sealed, b"refined-model|" + job_id.encode())
    except InvalidTag:
        raise RefinementError("refined model does not open with this key and job id") from None
    return decode_arrays(plain)


@dataclass
class _Stats:
    enclave_decrypt: int = 0
    enclave_encrypt: int = 0
    bytes_decrypted: int = 0
    values_decrypted: int = 0
    plain_flops: int = 0
    bytes_decrypted_per_epoch: dict[str, int] = field(default_factory=dict)


class RefinementSession:
    """State of one refinement inside the enclave (weights, labels, secret key, progress)."""

    def __init__(
        self,
        *,
        plan: RefinementPlan,
        secret_context: bytes,
        model: bytes,
        labels: bytes,
        val_labels: bytes,
    ) -> None:
        self.plan = plan
        if len(secret_context) > MAX_SECRET_CONTEXT_BYTES:
            raise RefinementError("secret CKKS context is too large")
        try:
            ctx = ts.context_from(secret_context)
        except Exception:
            raise RefinementError("the provisioned CKKS context cannot be loaded") from None
        if not ctx.has_secret_key():
            raise RefinementError("the provisioned CKKS context holds no secret key")
        self._secret_context = secret_context
        self._ckks = KeyHolderCkks(context=ctx)
        self._model_bytes, self._labels_bytes, self._val_labels_bytes = model, labels, val_labels
        try:
            meta, arrays = decode_arrays(model)
            lab_meta, lab = decode_arrays(labels)
            vlab_meta, vlab = decode_arrays(val_labels)
        except CodecError as exc:
            raise RefinementError(f"provisioned model or labels are malformed: {exc}") from None
        self.kind = str(meta.get("kind"))
        if self.kind not in ("softmax", "mlp"):
            raise RefinementError("model kind must be 'softmax' or 'mlp'")
        try:
            self._result_key = bytes.fromhex(str(meta["result_key"]))
        except (KeyError, ValueError):
            raise RefinementError("model payload lacks a hex result_key") from None
        if len(self._result_key) != 32:
            raise RefinementError("result_key must be 32 bytes")
        self.W = np.array(arrays.get("W"), dtype=np.float64)
        self.b = np.array(arrays.get("b"), dtype=np.float64)
        if self.W.ndim != 2 or self.b.shape != (self.W.shape[1],):
            raise RefinementError("model needs W (d, k) and b (k,)")
        self.num_classes = self.W.shape[1]
        if self.kind == "mlp":
            self.W1 = np.array(arrays.get("W1"), dtype=np.float64)
            self.b1 = np.array(arrays.get("b1"), dtype=np.float64)
            if self.W1.ndim != 2 or self.W1.shape != (plan.dim, self.W.shape[0]):
                raise RefinementError("mlp model needs W1 (d, h) matching W (h, k)")
            if self.b1.shape != (self.W1.shape[1],):
                raise RefinementError("mlp model needs b1 (h,)")
        elif self.W.shape[0] != plan.dim:
            raise RefinementError(f"W has {self.W.shape[0]} rows, features have {plan.dim}")
        train_dim = self.W.shape[0]
        self.coeff = plan.layout == "coeff"
        self.input_layout = RowLayout.for_dim(plan.dim, slots=self._ckks.slots)
        self.train_layout = RowLayout.for_dim(train_dim, slots=self._ckks.slots)
        if self.coeff:
            degree = 2 * self._ckks.slots
            try:
                self.input_coeff = CoeffLayout(
                    batch=plan.coeff_batch,
                    dim=plan.dim,
                    outputs=plan.coeff_outputs,
                    degree=degree,
                    rows=plan.coeff_rows,
                    cols=plan.coeff_cols,
                )
                self.train_coeff = (
                    CoeffLayout.plan(batch=plan.coeff_batch, dim=train_dim, outputs=self.num_classes, degree=degree)
                    if self.kind == "mlp"
                    else self.input_coeff
                )
            except ValueError as exc:
                raise RefinementError(f"bad coefficient layout: {exc}") from None
            if self.input_coeff.outputs < self.num_classes:
                raise RefinementError("the coefficient layout has room for fewer outputs than classes")
            if max(plan.train_batches + plan.val_batches) > plan.coeff_batch:
                raise RefinementError(f"a batch holds at most {plan.coeff_batch} samples in this layout")
        elif max(plan.train_batches + plan.val_batches) > self.input_layout.capacity:
            raise RefinementError(f"a batch holds at most {self.input_layout.capacity} samples in this layout")
        self.labels = np.asarray(lab.get("labels"), dtype=np.int64).reshape(-1)
        self.val_labels = np.asarray(vlab.get("labels"), dtype=np.int64).reshape(-1)
        if self.labels.size != sum(plan.train_batches) or self.val_labels.size != sum(plan.val_batches):
            raise RefinementError("label counts do not match the plan's batch sizes")
        for y in (self.labels, self.val_labels):
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise RefinementError("labels out of range for the model's classes")
        # Coefficient layout: |features| bound from the data owner (inside the wrapped labels),
        # used to scale operands so that no product leaves the last level's range.
        try:
            bounds = [float(m.get("feature_bound", 0.0)) for m in (lab_meta, vlab_meta)]
        except (TypeError, ValueError):
            raise RefinementError("feature_bound must be a number") from None
        if self.coeff and not all(0 < b <= 256 for b in bounds):
            raise RefinementError("the coefficient layout needs a feature bound in (0, 256] from the data owner")
        self.input_bound = max(bounds)
        if self.coeff:
            self._ckks.start_zero_pool()
        self.train_bound: float | None = self.input_bound if self.kind == "softmax" else None
        self._w_scale = 1.0
        self._offsets = np.concatenate([[0], np.cumsum(plan.train_batches)])
        self._val_offsets = np.concatenate([[0], np.cumsum(plan.val_batches)])
        self.epoch = 0
        self.pos = 0
        self.history: list[float] = []
        self._pending: tuple[int, np.ndarray] | None = None
        self._eval_seen: set[int] = set()
        self._eval_correct = 0
        self.stats = _Stats()

    # -- helpers -----------------------------------------------------------------------
    def _decrypt(self, data: bytes) -> np.ndarray:
        values = self._ckks.decrypt_bytes(data)
        self.stats.enclave_decrypt += 1
        self.stats.bytes_decrypted += len(data)
        self.stats.values_decrypted += values.size
        key = str(self.epoch)
        self.stats.bytes_decrypted_per_epoch[key] = self.stats.bytes_decrypted_per_epoch.get(key, 0) + len(data)
        return values

    def _encrypt(self, values: np.ndarray) -> bytes:
        self.stats.enclave_encrypt += 1
        if self.coeff:
            return self._ckks.encrypt_coeffs_bytes(values)
        return self._ckks.encrypt_bytes(values)

    def _operand_scale(self, bound: float, column_l1: float, largest: float) -> float:
        """Factor for an operand so that bound * column_l1 * factor stays within a quarter of the
        range of a product (no wrap-around), and the operand itself stays below 2^8."""
        limit = 0.25 * self._ckks.coeff_bound
        factor = limit / max(bound * column_l1, 1e-30)
        return float(min(factor, 256.0 / max(largest, 1e-30)))

    def _in_range(self, values: np.ndarray) -> np.ndarray:
        if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > 0.5 * self._ckks.coeff_bound:
            raise RefinementError("a homomorphic result is out of range (corrupted or wrong ciphertext)")
        return values

    def _decrypt_coeffs(self, parts: list[bytes], expected: int, what: str) -> list[np.ndarray]:
        if len(parts) != expected:
            raise RefinementError(f"{what}: expected {expected} ciphertexts, got {len(parts)}")
        out = []
        for data in parts:
            values = self._ckks.decrypt_coeffs_bytes(data)
            self.stats.enclave_decrypt += 1
            self.stats.bytes_decrypted += len(data)
            self.stats.values_decrypted += values.size
            key = str(self.epoch)
            self.stats.bytes_decrypted_per_epoch[key] = self.stats.bytes_decrypted_per_epoch.get(key, 0) + len(data)
            out.append(values)
        return out

    def _rows(self, layout: RowLayout, data: bytes, count: int) -> np.ndarray:
        """Per-sample dot products: summed by the host (block heads) or here."""
        values = self._decrypt(data)
        if self.plan.reduction == "host":
            return layout.block_heads(values, count)
        self.stats.plain_flops += count * layout.dim_pad
        return layout.row_sums(values, count)

    def _columns(self, data: bytes) -> np.ndarray:
        """Per-feature gradient sums: summed by the host (stride sum) or here."""
        values = self._decrypt(data)
        if self.plan.reduction == "host":
            return self.train_layout.column_sums(values)
        self.stats.plain_flops += values.size
        return self.train_layout.sample_sums(values)

    def _logits(self, parts: list[bytes], count: int) -> np.ndarray:
        if self.coeff:
            geo = self.train_coeff
            vectors = self._decrypt_coeffs(parts, geo.row_blocks, "pre-activations")
            z = self._in_range(geo.unpack_z(vectors, count, self.num_classes)) / self._w_scale
            self.stats.plain_flops += z.size
            return z + self.b[None, :]
        if len(parts) != self.num_classes:
            raise RefinementError(f"expected {self.num_classes} ciphertexts, got {len(parts)}")
        z = np.stack([self._rows(self.train_layout, p, count) for p in parts], axis=1)
        self.stats.plain_flops += z.size
        return z + self.b[None, :]

    @property
    def finished(self) -> bool:
        """True once every epoch ran."""
        return self.epoch >= self.plan.epochs

    def status(self) -> dict[str, Any]:
        """Public progress (no secrets)."""
        return {
            "kind": self.kind,
            "epoch": self.epoch,
            "pos": self.pos,
            "epochs": self.plan.epochs,
            "num_classes": self.num_classes,
            "train_dim": self.train_layout.dim,
            "input_dim": self.input_layout.dim,
            "hidden": self.train_layout.dim if self.kind == "mlp" else 0,
            "reduction": self.plan.reduction,
            "layout": self.plan.layout,
            **(
                {
                    "input_grid": [self.input_coeff.row_blocks, self.input_coeff.col_blocks],
                    "train_grid": [self.train_coeff.row_blocks, self.train_coeff.col_blocks],
                    "frozen_groups": len(self._frozen_groups()) if self.kind == "mlp" else 0,
                }
                if self.coeff
                else {}
            ),
            "history": list(self.history),
        }

    def _frozen_groups(self) -> list[tuple[int, int]]:
        """Column ranges of W1 computed per product in the coefficient layout."""
        h, k = self.W1.shape[1], self.input_coeff.outputs
        return [(g, min(g + k, h)) for g in range(0, h, k)]

    # -- frozen layer (mlp only) ---------------------------------------------------------
    @_busy
    def frozen_weights(self) -> list[bytes]:
        """Encrypted, tiled columns of the frozen layer W1 (input layout)."""
        if self.kind != "mlp":
            raise RefinementError("only an mlp model has a frozen layer")
        if self.coeff:
            geo = self.input_coeff
            self._w1_scale = self._operand_scale(
                self.input_bound, float(np.abs(self.W1).sum(axis=0).max()), float(np.abs(self.W1).max())
            )
            w1 = self.W1 * self._w1_scale
            return [self._encrypt(v) for g0, g1 in self._frozen_groups() for v in geo.pack_w(w1[:, g0:g1])]
        return [self._encrypt(self.input_layout.tile_column(self.W1[:, m])) for m in range(self.W1.shape[1])]

    @_busy
    def frozen(self, *, split: str, index: int, parts: list[bytes]) -> bytes:
        """Hidden features of one batch: decrypt pre-activations, add b1, ReLU, re-encrypt."""
        if self.kind != "mlp":
            raise RefinementError("only an mlp model has a frozen layer")
        sizes = self.plan.train_batches if split == "train" else self.plan.val_batches
        if split not in ("train", "val") or not 0 <= index < len(sizes):
            raise RefinementError("frozen: unknown split or batch index")
        count = sizes[index]
        if self.coeff:
            geo, groups = self.input_coeff, self._frozen_groups()
            vectors = self._decrypt_coeffs(parts, geo.row_blocks * len(groups), "frozen")
            S = geo.row_blocks
            if not hasattr(self, "_w1_scale"):
                raise RefinementError("frozen: the frozen weights were not issued")
            pre = np.concatenate(
                [geo.unpack_z(vectors[n * S : (n + 1) * S], count, g1 - g0) for n, (g0, g1) in enumerate(groups)],
                axis=1,
            )
            hidden = np.maximum(self._in_range(pre) / self._w1_scale + self.b1[None, :], 0.0)
            peak = float(hidden.max(initial=0.0))
            if peak > 256:
                raise RefinementError("hidden features exceed the coefficient layout's range")
            self.train_bound = max(self.train_bound or 1e-6, peak)
            self.stats.plain_flops += 2 * hidden.size
            return pack_blobs([self._encrypt(v) for v in self.train_coeff.pack_x(hidden)])
        if len(parts) != self.W1.shape[1]:
            raise RefinementError(f"frozen: expected {self.W1.shape[1]} ciphertexts")
        pre = np.stack([self._rows(self.input_layout, p, count) for p in parts], axis=1)
        hidden = np.maximum(pre + self.b1[None, :], 0.0)
        self.stats.plain_flops += 2 * hidden.size
        return self._encrypt(self.train_layout.pack_rows(hidden))

    # -- training ------------------------------------------------------------------------
    @_busy
    def weights(self) -> list[bytes]:
        """The current trainable weights, refreshed: one tiled ciphertext per class (rows) or
        one per feature block (coeff)."""
        if self.coeff:
            if self.train_bound is None:
                raise RefinementError("weights: the frozen layer must be computed first")
            self._w_scale = self._operand_scale(
                self.train_bound, float(np.abs(self.W).sum(axis=0).max()), float(np.abs(self.W).max())
            )
            return [self._encrypt(v) for v in self.train_coeff.pack_w(self.W * self._w_scale)]
        return [self._encrypt(self.train_layout.tile_column(self.W[:, c])) for c in range(self.num_classes)]

    def expected_batch(self) -> int:
        """The batch the next step must use."""
        if self.finished:
            raise RefinementError("all epochs are done; call finish")
        return batch_order(self.plan.seed, self.epoch, len(self.plan.train_batches))[self.pos]

    @_busy
    def forward(self, *, index: int, parts: list[bytes]) -> list[bytes]:
        """Softmax and error for one batch; returns err (scaled by 1/B) encrypted per class."""
        if self._pending is not None:
            raise RefinementError("forward called twice without update")
        expected = self.expected_batch()
        if index != expected:
            raise RefinementError(f"out-of-order step: expected batch {expected}, got {index}")
        count = self.plan.train_batches[index]
        z = self._logits(parts, count)
        p = softmax(z)
        y = self.labels[self._offsets[index] : self._offsets[index + 1]]
        onehot = np.zeros_like(p)
        onehot[np.arange(count), y] = 1.0
        err = (p - onehot) / count
        self.stats.plain_flops += 6 * p.size
        self._pending = (index, err)
        if self.coeff:
            assert self.train_bound is not None
            e_scale = self._operand_scale(
                self.train_bound, float(np.abs(err).max(axis=1).sum()), float(np.abs(err).max())
            )
            self._e_scale = e_scale
            return [self._encrypt(v) for v in self.train_coeff.pack_e(err * e_scale)]
        return [self._encrypt(self.train_layout.expand_per_sample(err[:, c])) for c in range(self.num_classes)]

    @_busy
    def update(self, *, index: int, parts: list[bytes]) -> list[bytes]:
        """Apply the gradient X^T·err (decrypted) and the bias gradient; return new weights."""
        if self._pending is None or self._pending[0] != index:
            raise RefinementError("update without a matching forward step")
        _, err = self._pending
        if self.coeff:
            geo = self.train_coeff
            grad = geo.unpack_g(self._decrypt_coeffs(parts, geo.col_blocks, "gradients"), self.num_classes)
            grad = self._in_range(grad) / self._e_scale
            self.stats.plain_flops += grad.size
        else:
            if len(parts) != self.num_classes:
                raise RefinementError(f"expected {self.num_classes} gradient ciphertexts")
            grad = np.stack([self._columns(p) for p in parts], axis=1)
        self.W -= self.plan.lr * grad
        self.b -= self.plan.lr * err.sum(axis=0)
        self.stats.plain_flops += 2 * self.W.size + err.size + 2 * self.b.size
        self._pending = None
        self.pos += 1
        if self.pos == len(self.plan.train_batches):
            self.epoch += 1
            self.pos = 0
        return list(self.weights())

    # -- evaluation ----------------------------------------------------------------------
    @_busy
    def evaluate(self, *, index: int, parts: list[bytes]) -> None:
        """Tally correct predictions of one validation batch under the current weights."""
        if not 0 <= index < len(self.plan.val_batches) or index in self._eval_seen:
            raise RefinementError("evaluate: unknown or already evaluated validation batch")
        count = self.plan.val_batches[index]
        pred = self._logits(parts, count).argmax(axis=1)
        y = self.val_labels[self._val_offsets[index] : self._val_offsets[index + 1]]
        self._eval_correct += int((pred == y).sum())
        self._eval_seen.add(index)

    def evaluate_done(self) -> float:
        """Close the evaluation round; returns and records validation accuracy."""
        if len(self._eval_seen) != len(self.plan.val_batches):
            raise RefinementError("evaluation round incomplete: every validation batch is needed")
        accuracy = self._eval_correct / float(self.val_labels.size)
        self.history.append(accuracy)
        self._eval_seen, self._eval_correct = set(), 0
        return accuracy

    # -- results and persistence ---------------------------------------------------------
    def finish(self) -> tuple[bytes, dict[str, Any]]:
        """The refined model encrypted to the model owner, and public statistics."""
        if not self.finished:
            raise RefinementError("refinement is not finished")
        meta = {"kind": self.kind, "epochs": self.plan.epochs, "job_id": self.plan.job_id}
        arrays = {"W": self.W, "b": self.b}
        if self.kind == "mlp":
            arrays.update({"W1": self.W1, "b1": self.b1})
        nonce = os.urandom(12)
        sealed = AESGCM(self._result_key).encrypt(
            nonce, encode_arrays(meta, arrays), b"refined-model|" + self.plan.job_id.encode()
        )
        blob = FrameWriter(_RESULT_MAGIC).raw(nonce).raw(sealed).to_bytes()
        return blob, self.public_stats()

    def public_stats(self) -> dict[str, Any]:
        """Counters that reveal nothing about data or model values."""
        return {**asdict(self.stats), **self.status()}

    def checkpoint_bytes(self) -> bytes:
        """Everything needed to resume (sealed by the caller; never leaves unsealed)."""
        if self._pending is not None:
            raise RefinementError("cannot checkpoint in the middle of a step")
        meta = {
            "plan": asdict(self.plan),
            "epoch": self.epoch,
            "pos": self.pos,
            "history": self.history,
            "stats": asdict(self.stats),
        }
        head = json.dumps(meta).encode()
        parts = [
            head,
            self._secret_context,
            self._model_bytes,
            self._labels_bytes,
            self._val_labels_bytes,
            encode_arrays({}, {"W": self.W, "b": self.b}),
        ]
        lengths = json.dumps([len(p) for p in parts]).encode()
        return len(lengths).to_bytes(4, "big") + lengths + b"".join(parts)

    @classmethod
    def from_checkpoint(cls, data: bytes) -> RefinementSession:
        """Rebuild a session from :meth:`checkpoint_bytes` output (after unsealing)."""
        try:
            n = int.from_bytes(data[:4], "big")
            lengths = json.loads(data[4 : 4 + n])
            parts, pos = [], 4 + n
            for length in lengths:
                parts.append(data[pos : pos + int(length)])
                pos += int(length)
            meta = json.loads(parts[0])
            _, wb = decode_arrays(parts[5])
        except (ValueError, IndexError, TypeError, CodecError) as exc:
            raise RefinementError(f"checkpoint is malformed: {exc}") from None
        session = cls(
            plan=RefinementPlan.from_dict(meta["plan"]),
            secret_context=parts[1],
            model=parts[2],
            labels=parts[3],
            val_labels=parts[4],
        )
        session.W, session.b = wb["W"].copy(), wb["b"].copy()
        session.epoch, session.pos = int(meta["epoch"]), int(meta["pos"])
        session.history = [float(a) for a in meta["history"]]
        session.stats = _Stats(**meta["stats"])
        return session
