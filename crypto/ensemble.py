"""The model owner's private ensemble artifact: templates, linear heads, classes (no pickle).

    art = EnsembleArtifact(templates=["{}", "a photo of {}"], weights=w, biases=b,
                           classes=["cat", "dog"], norm_bound=1.0)
    files = art.dumps()          # {"ensemble.json": ..., "ensemble.safetensors": ...}
    same = EnsembleArtifact.loads(files)

Weights are the owner's secret: the artifact is server-side only; clients receive
:meth:`EnsembleArtifact.public_spec` (templates, classes, shapes, preset), never the heads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from crypto.ckks import get_preset
from crypto.errors import CryptoError

__all__ = ["ARTIFACT_FORMAT", "ArtifactError", "EnsembleArtifact"]

ARTIFACT_FORMAT = "audit-appliance/private-ensemble/v1"
JSON_NAME = "ensemble.json"
TENSORS_NAME = "ensemble.safetensors"
MAX_ARTIFACT_BYTES = 256 << 20


class ArtifactError(CryptoError, ValueError):
    """An ensemble artifact is malformed, inconsistent, or unsafe to load."""

    default_hint = (
        "Build the artifact with EnsembleArtifact(...) and save it with dumps()/save(); "
        "weights must be (members, classes, dim), biases (members, classes), all finite."
    )


@dataclass(frozen=True, eq=False)
class EnsembleArtifact:
    """K prompt templates with one linear head each over a public encoder's embedding.

    ``weights[k] @ embedding_k + biases[k]`` are member ``k``'s logits; the ensemble predicts
    the argmax of their average. ``norm_bound`` bounds each embedding's Euclidean norm (1.0
    for unit-normalised encoders such as MiniLM); clients clip to it before encrypting.
    """

    templates: tuple[str, ...]
    weights: npt.NDArray[np.float64]
    biases: npt.NDArray[np.float64]
    classes: tuple[str, ...]
    norm_bound: float = 1.0
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    preset: str = "n8192-d3"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # C order: safetensors writes the raw buffer, so a strided (e.g. Fortran-ordered
        # scikit-learn coef_) array would otherwise be saved scrambled.
        w = np.ascontiguousarray(self.weights, dtype=np.float64)
        b = np.ascontiguousarray(self.biases, dtype=np.float64)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "biases", b)
        object.__setattr__(self, "templates", tuple(str(t) for t in self.templates))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if w.ndim != 3:
            raise ArtifactError(f"weights must be (members, classes, dim), got {w.shape}")
        k, c, _ = w.shape
        if b.shape != (k, c):
            raise ArtifactError(f"biases must be {(k, c)}, got {b.shape}")
        if len(self.templates) != k:
            raise ArtifactError(f"{len(self.templates)} templates for {k} members")
        if len(self.classes) != c or c < 2:
            raise ArtifactError(f"{len(self.classes)} class names for {c} classes (need >= 2)")
        if len(set(self.classes)) != c:
            raise ArtifactError("class names must be distinct")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ArtifactError("weights and biases must be finite")
        if not (np.isfinite(self.norm_bound) and self.norm_bound > 0):
            raise ArtifactError("norm_bound must be a positive finite number")
        try:
            get_preset(self.preset)
        except CryptoError as exc:
            raise ArtifactError(str(exc)) from None

    @property
    def members(self) -> int:
        """Number of ensemble members K."""
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.weights.shape[2])

    def plaintext_logits(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Averaged logits ``(Q, C)`` of embeddings ``(Q, K, d)``, clipped as the client does."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim == 2:
            emb = emb[None]
        norms = np.linalg.norm(emb, axis=2, keepdims=True)
        emb = emb * np.minimum(1.0, self.norm_bound / np.maximum(norms, 1e-300))
        logits: npt.NDArray[np.float64] = np.einsum("qkd,kcd->qc", emb, self.weights)
        mean: npt.NDArray[np.float64] = logits / self.members + self.biases.mean(axis=0)
        return mean

    def public_spec(self) -> dict[str, Any]:
        """What a client needs (no weights): templates, classes, shapes, bound, encoder, preset."""
        return {
            "format": ARTIFACT_FORMAT,
            "templates": list(self.templates),
            "classes": list(self.classes),
            "members": self.members,
            "dim": self.dim,
            "norm_bound": float(self.norm_bound),
            "encoder": self.encoder,
            "preset": self.preset,
        }

    def dumps(self) -> dict[str, bytes]:
        """Serialize to ``{"ensemble.json": ..., "ensemble.safetensors": ...}``."""
        meta = {**self.public_spec(), "metadata": dict(self.metadata)}
        tensors = st_save({"weights": self.weights, "biases": self.biases})
        return {JSON_NAME: json.dumps(meta, sort_keys=True).encode(), TENSORS_NAME: tensors}

    @classmethod
    def loads(cls, files: dict[str, bytes]) -> EnsembleArtifact:
        """Inverse of :meth:`dumps`; validates formats and shapes, never unpickles."""
        try:
            meta_raw, tensor_raw = files[JSON_NAME], files[TENSORS_NAME]
        except KeyError as exc:
            raise ArtifactError(f"artifact lacks {exc.args[0]}") from None
        if len(meta_raw) + len(tensor_raw) > MAX_ARTIFACT_BYTES:
            raise ArtifactError("artifact too large")
        try:
            meta = json.loads(meta_raw)
            tensors = st_load(tensor_raw)
        except Exception:
            raise ArtifactError("artifact JSON or safetensors is malformed") from None
        if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError("unknown artifact format")
        if set(tensors) != {"weights", "biases"}:
            raise ArtifactError("artifact tensors must be exactly 'weights' and 'biases'")
        try:
            art = cls(
                templates=tuple(meta["templates"]),
                weights=tensors["weights"],
                biases=tensors["biases"],
                classes=tuple(meta["classes"]),
                norm_bound=float(meta["norm_bound"]),
                encoder=str(meta["encoder"]),
                preset=str(meta["preset"]),
                metadata={str(k): str(v) for k, v in dict(meta.get("metadata", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"artifact metadata is invalid: {exc}") from None
        if art.members != meta.get("members") or art.dim != meta.get("dim"):
            raise ArtifactError("artifact metadata disagrees with tensor shapes")
        return art

    def save(self, directory: str | Path) -> None:
        """Write ``ensemble.json`` and ``ensemble.safetensors`` into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self.dumps().items():
            (path / name).write_bytes(data)

    @classmethod
    def load(cls, directory: str | Path) -> EnsembleArtifact:
        """Read an artifact written by :meth:`save`."""
        path = Path(directory)
        return cls.loads({name: (path / name).read_bytes() for name in (JSON_NAME, TENSORS_NAME)})
