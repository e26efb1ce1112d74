"""Plaintext evaluation of a classifier on a labelled dataset, and embedding export.

The metrics are computed from one batched pass of logits with vectorised numpy, so an
evaluation costs little more than the bare forward passes::

    metrics = evaluate_classifier(model, load_npz_dataset(path, require_labels=True))
    metrics["accuracy"], metrics["ece"], metrics["confusion_matrix"]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.datasets import LabelledArray
from models.engine import LoadedModel
from models.errors import DatasetError, ModelError, ShapeError

#: Probabilities are clipped at this value before taking the log, so one confident
#: mistake contributes at most -log(1e-15) ~ 34.5 to the mean NLL.
NLL_EPS = 1e-15


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (stable; ``-inf`` logits stay ``-inf``)."""
    z = logits.astype(np.float64, copy=True)
    z -= z.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15
) -> dict[str, Any]:
    """Top-label ECE over ``n_bins`` equal-width bins ``(lo, hi]`` (the first also holds 0).

    Returns ``{"ece", "bin_edges", "bin_accuracy", "bin_confidence", "bin_count"}``;
    empty bins report ``None`` accuracy and confidence.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n = confidence.shape[0]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    filled = counts > 0
    safe = np.where(filled, counts, 1)
    bin_acc = acc_sum / safe
    bin_conf = conf_sum / safe
    ece = float(np.sum(np.abs(acc_sum - conf_sum)) / n) if n else 0.0
    return {
        "ece": ece,
        "bin_edges": edges.tolist(),
        "bin_accuracy": [float(a) if f else None for a, f in zip(bin_acc, filled, strict=True)],
        "bin_confidence": [float(c) if f else None for c, f in zip(bin_conf, filled, strict=True)],
        "bin_count": counts.astype(int).tolist(),
    }


def classification_metrics(
    logits: np.ndarray, y: np.ndarray, *, n_bins: int = 15
) -> dict[str, Any]:
    """Accuracy, mean NLL, confusion matrix (rows true, columns predicted) and ECE."""
    if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
        raise ShapeError(f"logits {logits.shape} do not match {y.shape[0]} labels")
    n, num_classes = logits.shape
    if num_classes < 1:
        raise ShapeError("model produced no class scores")
    if y.size and int(y.max()) >= num_classes:
        raise DatasetError(
            f"label {int(y.max())} is out of range for a model with {num_classes} classes"
        )
    labels = y.astype(np.int64, copy=False)
    rows = np.arange(n)
    # Only three numbers per row are needed (the top logit, the true-class logit and the
    # log-normaliser), so no [n, C] log-softmax is materialised.
    scores = logits if logits.dtype.kind == "f" else logits.astype(np.float64)
    predicted = scores.argmax(axis=1)
    top = scores[rows, predicted].astype(np.float64)
    if not np.isfinite(top).all():
        raise ModelError("model produced non-finite scores (NaN, +inf or all -inf)")
    normaliser = np.exp(scores - top.astype(scores.dtype)[:, None]).sum(axis=1, dtype=np.float64)
    if not np.isfinite(normaliser).all():
        raise ModelError("model produced non-finite scores (NaN)")
    log_partition = top + np.log(normaliser)
    confidence = 1.0 / normaliser
    correct = predicted == labels
    with np.errstate(invalid="ignore"):
        true_logp = scores[rows, labels].astype(np.float64) - log_partition
    true_logp = np.maximum(np.nan_to_num(true_logp, nan=-np.inf), np.log(NLL_EPS))
    confusion = np.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    calibration = expected_calibration_error(confidence, correct, n_bins=n_bins)
    return {
        "n": int(n),
        "num_classes": int(num_classes),
        "accuracy": float(correct.mean()),
        "loss": float(-true_logp.mean()),
        "confusion_matrix": confusion.reshape(num_classes, num_classes).tolist(),
        "ece": calibration.pop("ece"),
        "reliability": calibration,
    }


def evaluate_classifier(
    model: LoadedModel,
    data: LabelledArray,
    *,
    batch_size: int = 256,
    n_bins: int = 15,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on labelled ``data``; ``progress`` receives fractions in [0, 1].

    Returns ``{"n", "accuracy", "loss", "confusion_matrix", "ece", "reliability",
    "num_classes", "forward_seconds", "metrics_seconds", "device", "backend"}``.
    """
    if model.kind != "classifier":
        raise ModelError(
            f"classifier evaluation needs a classifier; this model is a {model.kind}",
            hint="use export_embeddings for encoders",
        )
    if data.y is None:
        raise DatasetError("evaluation needs labels: the dataset has no 'y'")
    started = time.perf_counter()
    logits = model.logits(data.x, batch_size=batch_size, progress=progress)
    forward_seconds = time.perf_counter() - started
    metrics = classification_metrics(logits, data.y, n_bins=n_bins)
    metrics["forward_seconds"] = forward_seconds
    metrics["metrics_seconds"] = time.perf_counter() - started - forward_seconds
    metrics["device"] = model.device
    metrics["backend"] = model.backend
    if progress is not None:
        progress(1.0)
    return metrics


def export_embeddings(
    model: LoadedModel,
    x: Any,
    *,
    batch_size: int = 64,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Return ``model.embed(x)`` as a checked float32 ``[n, d]`` array of finite values."""
    embeddings = np.asarray(model.embed(x, batch_size=batch_size, progress=progress))
    if embeddings.ndim != 2:
        raise ShapeError(f"embeddings must be [n, d], got {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ModelError("model produced non-finite embeddings")
    if progress is not None:
        progress(1.0)
    return embeddings.astype(np.float32, copy=False)


__all__ = [
    "classification_metrics",
    "evaluate_classifier",
    "expected_calibration_error",
    "export_embeddings",
    "log_softmax",
]
