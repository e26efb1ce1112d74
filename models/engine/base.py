"""What every backend offers: :class:`LoadedModel` and its input checks."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from models.errors import ModelError, ShapeError
from models.numerics import softmax

ModelKind = Literal["classifier", "encoder", "causal_lm"]
Progress = Callable[[float], None]
_KINDS = ("classifier", "encoder", "causal_lm")


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _as_numeric_array(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"input must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise ShapeError(f"input must be numeric, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ShapeError(f"input must be a non-empty batch, got shape {x.shape}")
    return x


def _as_texts(x: Any) -> list[str]:
    if isinstance(x, str):
        raise ShapeError("texts must be a sequence of strings, not a single string")
    if isinstance(x, np.ndarray):
        if x.ndim != 1 or x.dtype.kind not in "US":
            raise ShapeError(f"texts must be a 1-d string array, got {x.dtype} {x.shape}")
        x = x.tolist()
    texts = list(x)
    if not texts:
        raise ShapeError("texts must be a non-empty sequence")
    if not all(isinstance(t, str) for t in texts):
        raise ShapeError("every text must be a str")
    return texts


class LoadedModel(abc.ABC):
    """A model ready for batched inference; every method runs without gradients.

    Attributes: ``kind`` ("classifier" | "encoder" | "causal_lm"), ``device`` (where it
    actually runs) and ``backend`` ("torch" | "onnx" | "transformers").
    """

    kind: ModelKind
    device: str
    backend: str

    @abc.abstractmethod
    def logits(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return the raw class scores, float32 ``[n, C]``."""

    def predict(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return class probabilities, float32 ``[n, C]`` (softmax of :meth:`logits`)."""
        return softmax(self.logits(x, batch_size=batch_size, progress=progress)).astype(np.float32, copy=False)

    def embed(
        self, x: Any, *, batch_size: int = 64, progress: Progress | None = None
    ) -> np.ndarray:
        """Return embeddings, float32 ``[n, d]``."""
        raise ModelError(f"{self.backend} {self.kind} model does not provide embeddings")

    def logprobs(self, texts: Sequence[str], *, batch_size: int = 8) -> list[np.ndarray]:
        """Return, per text, the log-probability of each token given its prefix."""
        raise ModelError(
            f"logprobs needs a causal language model; this is a {self.backend} {self.kind}"
        )

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready summary (kind, backend, device) for reports."""
        return {"kind": self.kind, "backend": self.backend, "device": self.device}

    def _require_kind(self, *kinds: str) -> None:
        if self.kind not in kinds:
            raise ModelError(f"this operation needs a {' or '.join(kinds)}; model is a {self.kind}")


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
