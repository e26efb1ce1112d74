"""Host-side orchestration of confidential refinement (pure library; no HTTP).

The untrusted host holds the public CKKS context and ciphertexts only. Per mini-batch it
computes, under HE, the pre-activations ``z_c = Σ_j x_j · W[j, c]`` (ciphertext product and
rotate-and-sum) and the gradients ``Σ_i x_i · err[i, c]``; the enclave decrypts those,
applies softmax and the labels, updates and re-encrypts the weights::

    enclave = EnclaveClient.launch(platform_dir=platform)
    ... parties verify enclave quotes and provision (see appliance.confidential.parties) ...
    result = run_refinement(enclave=enclave, job_id="job-1", public_context=pub,
                            train=train, validation=val, model_blob=model_blob,
                            ckks_secret_blob=secret_blob, epochs=3, lr=0.5, seed=0)
    result.refined_model     # encrypted to the model owner
    result.report()          # JSON-able: accuracies, operation counts, timings, bytes

If the enclave dies, :class:`RefinementInterrupted` carries the reason and the last sealed
checkpoint; ``run_refinement(..., checkpoint=exc.checkpoint)`` on a new enclave resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.confidential.errors import ConfidentialError, RefinementInterrupted
from appliance.confidential.parties import CKKS_PRESET, EncryptedDataset
from crypto.ckks import load_public_context
from enclave.errors import EnclaveCrashedError, EnclaveRemoteError
from enclave.he import HostEvaluator, ciphertext_to_bytes, unpack_blobs
from enclave.host import EnclaveClient
from enclave.refine import batch_order
from models.numerics import softmax

__all__ = [
    "PlaintextResult",
    "RefinementProgress",
    "RefinementResult",
    "plaintext_refinement",
    "run_refinement",
]

log = logging.getLogger("appliance.confidential")
MAX_PUBLIC_CONTEXT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class RefinementProgress:
    """Progress event passed to the ``progress`` callback."""

    epoch: int
    step: int
    steps_per_epoch: int
    epochs: int
    fraction: float
    message: str


@dataclass(kw_only=True)
class RefinementResult:
    """Outcome of a refinement: the encrypted model and public statistics."""

    job_id: str
    refined_model: bytes
    epochs: int
    kind: str
    accuracy_history: list[float]
    resumed_from: tuple[int, int] | None
    host_counts: dict[str, int]
    enclave_counts: dict[str, Any]
    timings: dict[str, float]
    epoch_seconds: list[float]
    train_seconds: list[float]
    dataset_bytes: int
    num_train: int
    num_val: int
    slots: int
    last_checkpoint: bytes | None = None
    useful_ops: dict[str, int] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        """Validation accuracy after the last epoch."""
        return self.accuracy_history[-1]

    def report(self) -> dict[str, Any]:
        """JSON-able summary for the signed refinement report (no secrets, no data)."""
        host_ops = self.useful_ops.get("host_scalar_ops", 0)
        enclave_ops = self.useful_ops.get("enclave_scalar_ops", 0)
        total = max(1, host_ops + enclave_ops)
        return {
            "job_id": self.job_id,
            "model_kind": self.kind,
            "epochs": self.epochs,
            "validation_accuracy": self.accuracy_history,
            "initial_accuracy": self.accuracy_history[0],
            "final_accuracy": self.final_accuracy,
            "resumed_from": list(self.resumed_from) if self.resumed_from else None,
            "operations": {
                "host_he": self.host_counts,
                "enclave": {
                    k: v
                    for k, v in self.enclave_counts.items()
                    if k
                    in (
                        "enclave_decrypt",
                        "enclave_encrypt",
                        "values_decrypted",
                        "bytes_decrypted",
                        "plain_flops",
                    )
                },
                "host_scalar_ops": host_ops,
                "enclave_scalar_ops": enclave_ops,
                "host_share": host_ops / total,
            },
            "timings_s": self.timings,
            "epoch_seconds": self.epoch_seconds,
            "train_seconds_per_epoch": self.train_seconds,
            "bytes_decrypted_per_epoch": self.enclave_counts.get("bytes_decrypted_per_epoch", {}),
            "dataset_ciphertext_bytes": self.dataset_bytes,
            "num_train": self.num_train,
            "num_val": self.num_val,
        }


class _Host:
    """The host's ciphertext arithmetic with timing."""

    def __init__(self, evaluator: HostEvaluator, *, reduce: bool) -> None:
        self.ev = evaluator
        self.reduce = reduce
        self.seconds = 0.0
        self.useful = 0  # scalar multiply-adds of the linear algebra done under HE

    def products(self, x: Any, weights: list[Any], *, dim_pad: int, stride: bool, useful: int) -> list[bytes]:
        start = time.perf_counter()
        out = []
        for w in weights:
            if not self.reduce:
                out.append(ciphertext_to_bytes(self.ev.multiply(x, w, relinearize=False)))
                continue
            prod = self.ev.multiply(x, w)
            summed = self.ev.stride_sum(prod, dim_pad) if stride else self.ev.block_sum(prod, dim_pad)
            out.append(ciphertext_to_bytes(summed))
        # multiplies always run here; the additions too unless the enclave reduces
        self.useful += (useful if self.reduce else useful // 2) * len(weights)
        self.seconds += time.perf_counter() - start
        return out

    def dots(self, groups: list[list[tuple[Any, Any]]], *, useful: int) -> list[bytes]:
        """Coefficient layout: one Σ a·b ciphertext per group (no relinearization, no rotation)."""
        start = time.perf_counter()
        out = [ciphertext_to_bytes(self.ev.dot(pairs)) for pairs in groups]
        self.useful += useful
        self.seconds += time.perf_counter() - start
        return out

    def load_bundle(self, blob: bytes) -> list[Any]:
        """Load a bundle of block ciphertexts (coefficient layout)."""
        try:
            parts = unpack_blobs(blob)
        except ValueError as exc:
            raise ConfidentialError(f"malformed ciphertext bundle: {exc}") from None
        return self.load_all(parts)

    def load_all(self, blobs: list[bytes]) -> list[Any]:
        start = time.perf_counter()
        cts = [self.ev.load(b) for b in blobs]
        self.seconds += time.perf_counter() - start
        return cts


def _pad(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _check_inputs(
    train: EncryptedDataset,
    validation: EncryptedDataset,
    *,
    resuming: bool,
    model_blob: bytes | None,
    ckks_secret_blob: bytes | None,
) -> bool:
    """Refuse inconsistent inputs before anything is sent; True for the coefficient layout."""
    if train.dim != validation.dim:
        raise ConfidentialError("training and validation features have different dimensions")
    if (train.layout, train.geometry) != (validation.layout, validation.geometry):
        raise ConfidentialError("training and validation sets use different layouts (same batch_size needed)")
    if not resuming and (model_blob is None or ckks_secret_blob is None):
        raise ConfidentialError("model_blob and ckks_secret_blob are needed unless resuming")
    return train.layout == "coeff"


class _HostRun:
    """The host's side of one refinement, phase by phase: the enclave channel (with the
    position and last sealed checkpoint an interruption reports), the loaded ciphertexts,
    the HE products each step needs, the training loop."""

    def __init__(
        self,
        *,
        enclave: EnclaveClient,
        job_id: str,
        host: _Host,
        train: EncryptedDataset,
        validation: EncryptedDataset,
        coeff: bool,
        checkpoint: bytes | None,
        on_checkpoint: Callable[[bytes], None] | None,
        progress: Callable[[RefinementProgress], None] | None,
    ) -> None:
        self.enclave, self.job_id, self.host = enclave, job_id, host
        self.train, self.validation, self.coeff = train, validation, coeff
        self.on_checkpoint, self.progress = on_checkpoint, progress
        self.epoch, self.pos, self.checkpoint = 0, 0, checkpoint
        self.n_batches = len(train.batch_sizes)
        self.train_x: list[Any] = []
        self.val_x: list[Any] = []
        self.weights: list[Any] = []
        self.train_pad = self.train_dim = self.num_classes = 0
        self.grid: tuple[int, int] = (0, 0)

    # -- the channel ---------------------------------------------------------------------
    def call(self, op: str, header: dict[str, Any] | None = None, parts: list[bytes] | None = None) -> Any:
        """One enclave request; a crash or refusal becomes :class:`RefinementInterrupted`."""
        try:
            return self.enclave.call(op, {"job_id": self.job_id, **(header or {})}, parts or [])
        except (EnclaveCrashedError, EnclaveRemoteError) as exc:
            log.warning(
                "refinement %s interrupted at epoch %d step %d: %s",
                self.job_id,
                self.epoch,
                self.pos,
                exc.message,
            )
            raise RefinementInterrupted(
                f"refinement {self.job_id} stopped at epoch {self.epoch} step {self.pos}: {exc.message}",
                reason=exc.message,
                checkpoint=self.checkpoint,
                epoch=self.epoch,
                step=self.pos,
            ) from exc

    def save_checkpoint(self) -> None:
        """Have the enclave seal its state; keep it and hand it to ``on_checkpoint``."""
        sealed = self.call("refine.checkpoint").parts[0]
        self.checkpoint = sealed
        if self.on_checkpoint:
            self.on_checkpoint(sealed)

    # -- phases --------------------------------------------------------------------------
    def start(
        self,
        *,
        model_blob: bytes | None,
        ckks_secret_blob: bytes | None,
        epochs: int,
        lr: float,
        seed: int,
        reduction: str,
    ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        """Resume from the sealed checkpoint, or send the plan and the wrapped secrets; returns
        the enclave's status and where a resumed refinement continues."""
        if self.checkpoint is not None:
            status = self.call("refine.resume", {}, [self.checkpoint]).header
            resumed_from = (int(status["epoch"]), int(status["pos"]))
            log.info("refinement %s resumed from sealed state at epoch %d step %d", self.job_id, *resumed_from)
            return status, resumed_from
        train, validation = self.train, self.validation
        plan = {
            "job_id": self.job_id,
            "train_batches": train.batch_sizes,
            "val_batches": validation.batch_sizes,
            "dim": train.dim,
            "epochs": epochs,
            "lr": lr,
            "seed": seed,
            "reduction": reduction,
        }
        if self.coeff:
            batch, rows, cols, outputs = train.geometry
            plan.update(
                layout="coeff",
                coeff_batch=batch,
                coeff_rows=rows,
                coeff_cols=cols,
                coeff_outputs=outputs,
            )
        assert model_blob is not None and ckks_secret_blob is not None
        status = self.call(
            "refine.start",
            {"plan": plan},
            [ckks_secret_blob, model_blob, train.labels_blob, validation.labels_blob],
        ).header
        log.info("refinement %s started: %d batches, %d epochs", self.job_id, self.n_batches, epochs)
        return status, None

    def load_features(self) -> None:
        """Load the encrypted features of every batch (one ciphertext, or a bundle of blocks)."""
        host, train, validation = self.host, self.train, self.validation
        if self.coeff:
            self.train_x = [host.load_bundle(b) for b in train.features]
            self.val_x = [host.load_bundle(b) for b in validation.features]
        else:
            self.train_x = host.load_all(train.features)
            self.val_x = host.load_all(validation.features)

    def apply_frozen_layer(self, status: dict[str, Any]) -> None:
        """MLP: replace each batch by its hidden layer (HE products with the frozen weights,
        ReLU and re-encryption in the enclave); set the trained layer's input geometry."""
        input_pad = _pad(self.train.dim)
        if status["kind"] != "mlp":
            self.train_pad, self.train_dim = input_pad, self.train.dim
            return
        host = self.host
        hidden = int(status["hidden"])
        w1 = host.load_all(self.call("refine.frozen_weights").parts)
        for split, xs, sizes in (
            ("train", self.train_x, self.train.batch_sizes),
            ("val", self.val_x, self.validation.batch_sizes),
        ):
            for i, x in enumerate(xs):
                if self.coeff:
                    S, F = status["input_grid"]
                    groups = int(status["frozen_groups"])
                    pre = host.dots(
                        [
                            [(x[s * F + f], w1[g * F + f]) for f in range(F)]
                            for g in range(groups)
                            for s in range(S)
                        ],
                        useful=sizes[i] * self.train.dim * hidden,
                    )
                    xs[i] = host.load_bundle(self.call("refine.frozen", {"split": split, "index": i}, pre).parts[0])
                    continue
                pre = host.products(x, w1, dim_pad=input_pad, stride=False, useful=sizes[i] * self.train.dim)
                xs[i] = host.load_all(self.call("refine.frozen", {"split": split, "index": i}, pre).parts)[0]
        self.train_pad, self.train_dim = _pad(hidden), hidden

    def load_weights(self, status: dict[str, Any]) -> None:
        """The trained layer's encrypted weights and the grid of the coefficient layout."""
        self.weights = self.host.load_all(self.call("refine.weights").parts)
        self.num_classes = int(status["num_classes"])
        self.grid = tuple(status["train_grid"]) if self.coeff else (0, 0)

    def forward_products(self, x: Any, count: int) -> list[bytes]:
        """Pre-activations of one batch under HE (what the enclave's softmax needs)."""
        grid_s, grid_f = self.grid
        if self.coeff:
            return self.host.dots(
                [[(x[s * grid_f + f], self.weights[f]) for f in range(grid_f)] for s in range(grid_s)],
                useful=count * self.train_dim * self.num_classes,
            )
        return self.host.products(x, self.weights, dim_pad=self.train_pad, stride=False, useful=count * self.train_dim)

    def gradient_products(self, x: Any, errors: list[Any], count: int) -> list[bytes]:
        """X^T·err of one batch under HE."""
        grid_s, grid_f = self.grid
        if self.coeff:
            return self.host.dots(
                [[(x[s * grid_f + f], errors[s]) for s in range(grid_s)] for f in range(grid_f)],
                useful=count * self.train_dim * self.num_classes,
            )
        grads = []
        for e in errors:
            grads += self.host.products(x, [e], dim_pad=self.train_pad, stride=True, useful=count * self.train_dim)
        return grads

    def evaluate(self) -> float:
        """One validation round: products of every batch, the accuracy from the enclave."""
        for i, x in enumerate(self.val_x):
            self.call("refine.evaluate", {"index": i}, self.forward_products(x, self.validation.batch_sizes[i]))
        accuracy = float(self.call("refine.evaluate_done").header["accuracy"])
        return accuracy

    def _log_accuracy(self, history: list[float]) -> None:
        log.info(
            "refinement %s: validation accuracy %.4f after %d epoch(s)",
            self.job_id,
            history[-1],
            self.epoch,
        )

    def _step(self, index: int, epochs: int, checkpoint_every: int) -> bool:
        """One training step (forward, errors, gradients, update); False at an epoch's end."""
        x, b = self.train_x[index], self.train.batch_sizes[index]
        err = self.host.load_all(self.call("refine.forward", {"index": index}, self.forward_products(x, b)).parts)
        grads = self.gradient_products(x, err, b)
        reply = self.call("refine.update", {"index": index}, grads)
        self.weights = self.host.load_all(reply.parts)
        self.epoch, self.pos = int(reply.header["epoch"]), int(reply.header["pos"])
        done = self.epoch * self.n_batches + self.pos
        if self.progress:
            self.progress(
                RefinementProgress(
                    epoch=self.epoch,
                    step=self.pos,
                    steps_per_epoch=self.n_batches,
                    epochs=epochs,
                    fraction=done / (epochs * self.n_batches),
                    message=f"step {done}/{epochs * self.n_batches}",
                )
            )
        if self.pos == 0:
            return False
        if checkpoint_every and done % checkpoint_every == 0:
            self.save_checkpoint()
        return True

    def train_epochs(
        self, *, epochs: int, seed: int, history: list[float], checkpoint_every: int
    ) -> tuple[list[float], list[float], dict[str, float]]:
        """Evaluate first if the current epoch was not evaluated yet, then train the remaining
        epochs (each: the steps in ``batch_order``, an evaluation, a sealed checkpoint);
        returns per-epoch seconds, training seconds and their host/enclave split."""
        if len(history) < self.epoch + 1:
            history.append(self.evaluate())
            self._log_accuracy(history)
            self.save_checkpoint()
        epoch_seconds: list[float] = []
        train_seconds: list[float] = []
        train_split = {"host_he": 0.0, "enclave": 0.0}
        while self.epoch < epochs:
            epoch_start = time.perf_counter()
            host0, enclave0 = self.host.seconds, self.enclave.enclave_seconds
            order = batch_order(seed, self.epoch, self.n_batches)
            while self.pos < self.n_batches:
                if not self._step(order[self.pos], epochs, checkpoint_every):
                    break
            train_seconds.append(time.perf_counter() - epoch_start)
            train_split["host_he"] += self.host.seconds - host0
            train_split["enclave"] += self.enclave.enclave_seconds - enclave0
            history.append(self.evaluate())
            epoch_seconds.append(time.perf_counter() - epoch_start)
            self._log_accuracy(history)
            self.save_checkpoint()
        return epoch_seconds, train_seconds, train_split


def run_refinement(
    *,
    enclave: EnclaveClient,
    job_id: str,
    public_context: bytes,
    train: EncryptedDataset,
    validation: EncryptedDataset,
    model_blob: bytes | None,
    ckks_secret_blob: bytes | None,
    epochs: int,
    lr: float,
    seed: int,
    reduction: str = "host",
    checkpoint: bytes | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[bytes], None] | None = None,
    progress: Callable[[RefinementProgress], None] | None = None,
) -> RefinementResult:
    """Refine the provisioned model on the encrypted data; return the encrypted result.

    ``model_blob`` and ``ckks_secret_blob`` (and the labels inside ``train``/``validation``)
    must be wrapped to a quote of *this* enclave process. With ``checkpoint`` (a sealed blob
    from ``on_checkpoint`` or :class:`RefinementInterrupted`), they may be None: the enclave
    unseals its state and continues where it stopped (epochs, lr, seed and reduction then
    come from the sealed plan). Sealed checkpoints are produced after
    each epoch's evaluation and, if ``checkpoint_every > 0``, every that many steps.

    ``reduction="host"`` (default) sums the products under HE on the host (rotations), so the
    enclave decrypts one value per sample and class; ``"enclave"`` leaves only the ciphertext
    products to the host (no relinearization or rotation) and the enclave sums the decrypted
    products — about 3-4x faster, with the additions moved into the enclave. Both apply to
    datasets in the ``"rows"`` layout; datasets encrypted with ``layout="coeff"`` use the
    coefficient protocol (:class:`enclave.he.CoeffLayout`: per step F weight and S error
    ciphertexts from the enclave, S + F products back, no rotations) and ignore ``reduction``.

    Raises:
        RefinementInterrupted: the enclave died or refused a step (reason + last checkpoint).
        ConfidentialError: inconsistent inputs (detected before anything is sent).
    """
    coeff = _check_inputs(
        train, validation, resuming=checkpoint is not None, model_blob=model_blob, ckks_secret_blob=ckks_secret_blob
    )
    ctx = load_public_context(public_context, preset=CKKS_PRESET, max_bytes=MAX_PUBLIC_CONTEXT_BYTES)
    if reduction not in ("host", "enclave"):
        raise ConfidentialError("reduction must be 'host' or 'enclave'")
    host = _Host(HostEvaluator(context=ctx), reduce=reduction == "host")
    run = _HostRun(
        enclave=enclave,
        job_id=job_id,
        host=host,
        train=train,
        validation=validation,
        coeff=coeff,
        checkpoint=checkpoint,
        on_checkpoint=on_checkpoint,
        progress=progress,
    )
    t_start = time.perf_counter()
    enclave_s0, sent0, recv0 = enclave.enclave_seconds, enclave.bytes_sent, enclave.bytes_received
    status, resumed_from = run.start(
        model_blob=model_blob, ckks_secret_blob=ckks_secret_blob, epochs=epochs, lr=lr, seed=seed, reduction=reduction
    )
    try:
        epochs = int(status["epochs"])
        kind = str(status["kind"])
        host.reduce = status["reduction"] == "host"  # a resumed job keeps its plan
        run.epoch, run.pos = int(status["epoch"]), int(status["pos"])
        history = list(status["history"])
        if (status.get("layout", "rows") == "coeff") != coeff:
            raise ConfidentialError("the sealed plan and the datasets use different layouts")
        run.load_features()
        run.apply_frozen_layer(status)
        run.load_weights(status)
        epoch_seconds, train_seconds, train_split = run.train_epochs(
            epochs=epochs, seed=seed, history=history, checkpoint_every=checkpoint_every
        )
        finish = run.call("refine.finish")
    except RefinementInterrupted:
        raise
    except BaseException:
        # cancelled by the caller (e.g. a progress callback raising): free the enclave session
        try:
            enclave.call("refine.abort", {"job_id": job_id})
        except Exception:
            log.warning("refinement %s: could not abort the enclave session", job_id)
        raise
    stats = finish.header
    total = time.perf_counter() - t_start
    enclave_s = enclave.enclave_seconds - enclave_s0
    enclave_counts = {
        k: stats[k]
        for k in (
            "enclave_decrypt",
            "enclave_encrypt",
            "bytes_decrypted",
            "values_decrypted",
            "plain_flops",
            "bytes_decrypted_per_epoch",
        )
    }
    return RefinementResult(
        job_id=job_id,
        refined_model=finish.parts[0],
        epochs=epochs,
        kind=kind,
        accuracy_history=history,
        resumed_from=resumed_from,
        host_counts=dict(host.ev.counts),
        enclave_counts=enclave_counts,
        timings={
            "total": total,
            "host_he": host.seconds,
            "enclave": enclave_s,
            "channel_and_other": max(0.0, total - host.seconds - enclave_s),
            "train_total": sum(train_seconds),
            "train_host_he": train_split["host_he"],
            "train_enclave": train_split["enclave"],
            "bytes_sent": float(enclave.bytes_sent - sent0),
            "bytes_received": float(enclave.bytes_received - recv0),
        },
        epoch_seconds=epoch_seconds,
        train_seconds=train_seconds,
        dataset_bytes=train.nbytes,
        num_train=train.num_samples,
        num_val=validation.num_samples,
        slots=host.ev.slots,
        last_checkpoint=run.checkpoint,
        useful_ops={
            "host_scalar_ops": 2 * host.useful,
            "enclave_scalar_ops": int(stats["plain_flops"]),
        },
    )


@dataclass(kw_only=True)
class PlaintextResult:
    """The plaintext baseline's outcome."""

    W: np.ndarray
    b: np.ndarray
    accuracy_history: list[float]
    epoch_seconds: list[float]


def plaintext_refinement(
    *,
    model: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    batch_size: int,
    epochs: int,
    lr: float,
    seed: int,
) -> PlaintextResult:
    """The same refinement in plaintext: same batches, order, error scaling and updates."""
    W, b = model["W"].astype(np.float64).copy(), model["b"].astype(np.float64).copy()

    def features(data: np.ndarray) -> np.ndarray:
        if "W1" in model:
            hidden: np.ndarray = np.maximum(data @ model["W1"] + model["b1"], 0.0)
            return hidden
        return data

    H, H_val = features(np.asarray(X, np.float64)), features(np.asarray(X_val, np.float64))
    y, y_val = np.asarray(y), np.asarray(y_val)
    starts = list(range(0, H.shape[0], batch_size))
    history = [float(((H_val @ W + b).argmax(1) == y_val).mean())]
    epoch_seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for index in batch_order(seed, epoch, len(starts)):
            s = starts[index]
            xb, yb = H[s : s + batch_size], y[s : s + batch_size]
            p = softmax(xb @ W + b)
            p[np.arange(len(yb)), yb] -= 1.0
            err = p / len(yb)
            W -= lr * (xb.T @ err)
            b -= lr * err.sum(axis=0)
        epoch_seconds.append(time.perf_counter() - t0)
        history.append(float(((H_val @ W + b).argmax(1) == y_val).mean()))
    return PlaintextResult(W=W, b=b, accuracy_history=history, epoch_seconds=epoch_seconds)
