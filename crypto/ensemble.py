"""The model owner's private ensemble artifact: templates, heads, classes (no pickle).

    art = EnsembleArtifact(templates=["{}", "a photo of {}"], weights=w, biases=b,
                           classes=["cat", "dog"], norm_bound=1.0)
    files = art.dumps()          # {"ensemble.json": ..., "ensemble.safetensors": ...}
    same = EnsembleArtifact.loads(files)

Heads are linear (``weights`` ``(K, C, d)``) or have one hidden layer with a degree-2
activation (``head="quadratic_mlp"``): ``hidden_weights`` ``(K, H, d)``, ``hidden_biases``
``(K, H)``, ``activation`` ``(c2, c1, c0)`` for ``c2 u^2 + c1 u + c0`` and ``weights``
``(K, C, H)``. Linear artifacts are written in format v1 exactly as before; hidden-layer ones
in v2, which older readers refuse as an unknown format instead of misreading it.

``output`` is the owner's disclosure choice: ``"scores"`` (default, per-class win counts),
``"onehot"`` (products of comparisons, see :mod:`crypto.argmax`; needs a deeper preset) or
``"label"`` (the label alone, exact, in two rounds: :mod:`crypto.private_inference.label`).
One-hot artifacts, of either head kind, are written in format v3 and label ones in v4 (``head``
and ``output`` named), so a reader that predates the mode refuses them instead of serving win
counts.

``comparison_scale`` (linear heads; :meth:`EnsembleArtifact.calibrated` derives it from the
owner's held-out embeddings) divides the pairwise logit differences instead of the worst-case
bound over every clipped embedding, so typical differences use more of the sign polynomial's
domain and the outputs are sharper at the same depth. It is capped (see
:meth:`EnsembleArtifact.effective_comparison_scale`) so no clipped embedding can overflow a
result slot. A query whose largest logit difference exceeds the scale loses the guarantee
that its label is exact (``f`` decreases past 1, so a wide margin may count less than a narrow
one) and past ``sqrt(3)`` times the scale its comparisons flip sign. The spec states the
scale in force. It is stored as an optional key of the JSON, which older readers ignore
(they fall back to the worst-case bound).

Weights are the owner's secret: the artifact is server-side only; clients receive
:meth:`EnsembleArtifact.public_spec` (templates, classes, shapes, head kind, preset), never
the heads or the activation's coefficients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from crypto.argmax import (
    HIDDEN_LEVELS,
    LINEAR_LEVELS,
    MAX_ONEHOT_CLASSES,
    OUTPUTS,
    max_label_classes,
    max_range_ratio,
    min_depth,
    onehot_levels,
    rounds_for,
)
from crypto.ckks import PRESETS, CkksPreset, get_preset
from crypto.errors import CryptoError

__all__ = [
    "ARTIFACT_FORMAT",
    "HEADS",
    "HIDDEN_ARTIFACT_FORMAT",
    "LABEL_ARTIFACT_FORMAT",
    "ONEHOT_ARTIFACT_FORMAT",
    "ArtifactError",
    "EnsembleArtifact",
    "HIDDEN_MIN_DEPTH",
    "MINILM",
    "MINILM_INT8",
]

#: The encoders the SDK embeds with by itself (for any other, clients pass ``encode=``):
#: all-MiniLM-L6-v2 as published (the default), and the same graph with its matrix weights
#: quantised to 8 bits (``models.sentence_onnx``, ``precision="int8"``), about twice as fast on
#: the client's CPU. Heads must be trained on embeddings of the encoder their ensemble names. The
#: quantised name avoids the string "MiniLM-L6", which SDKs older than it took for the float
#: encoder: they refuse such an ensemble instead of embedding at the wrong precision.
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_INT8 = "sentence-transformers/all-minilm-l6-v2:int8"

ARTIFACT_FORMAT = "audit-appliance/private-ensemble/v1"
HIDDEN_ARTIFACT_FORMAT = "audit-appliance/private-ensemble/v2"
ONEHOT_ARTIFACT_FORMAT = "audit-appliance/private-ensemble/v3"
#: Label-output artifacts (two rounds): a reader that predates them refuses the format
#: instead of serving win counts.
LABEL_ARTIFACT_FORMAT = "audit-appliance/private-ensemble/v4"
JSON_NAME = "ensemble.json"
TENSORS_NAME = "ensemble.safetensors"
MAX_ARTIFACT_BYTES = 256 << 20
#: Head kinds: linear, or one hidden layer with a degree-2 polynomial activation.
HEADS = ("linear", "quadratic_mlp")
#: Default CKKS preset per head kind (hidden layers need depth 5: stage 1, square, stage 2, sign).
DEFAULT_PRESETS = {"linear": "n8192-d3", "quadratic_mlp": "n8192-d5"}
HIDDEN_MIN_DEPTH = 5
#: Fewest held-out queries :meth:`EnsembleArtifact.calibrated` accepts.
MIN_CALIBRATION = 20
#: Flooding noise stays this many bits below the last level's headroom (as in private_inference).
FLOOD_MARGIN_BITS = 3


def _cost(preset: CkksPreset) -> tuple[int, int]:
    return preset.poly_modulus_degree, preset.depth


_TENSORS = {
    "linear": {"weights", "biases"},
    "quadratic_mlp": {"hidden_weights", "hidden_biases", "weights", "biases"},
}


class ArtifactError(CryptoError, ValueError):
    """An ensemble artifact is malformed, inconsistent, or unsafe to load."""

    hint = (
        "Build the artifact with EnsembleArtifact(...) and save it with dumps()/save(); linear "
        "weights are (members, classes, dim), biases (members, classes); hidden-layer heads add "
        "hidden_weights (members, hidden, dim), hidden_biases (members, hidden) and an activation "
        "(c2, c1, c0) with c2 != 0, weights then being (members, classes, hidden); all finite."
    )


def _array(value: Any) -> npt.NDArray[np.float64]:
    # C order: safetensors writes the raw buffer, so a strided (e.g. Fortran-ordered
    # scikit-learn coef_) array would otherwise be saved scrambled.
    return np.ascontiguousarray(value, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class EnsembleArtifact:
    """K prompt templates with one head each over a public encoder's embedding.

    Linear heads: ``weights[k] @ embedding_k + biases[k]`` are member ``k``'s logits.
    Hidden-layer heads (``hidden_weights`` given): ``u = hidden_weights[k] @ embedding_k +
    hidden_biases[k]``, ``h = c2 u^2 + c1 u + c0`` with ``activation = (c2, c1, c0)``, and
    logits ``weights[k] @ h + biases[k]``. The ensemble predicts the argmax of the members'
    average. ``norm_bound`` bounds each embedding's Euclidean norm (1.0 for unit-normalised
    encoders such as MiniLM); clients clip to it before encrypting. ``preset`` defaults to
    ``n8192-d3`` for linear heads and ``n8192-d5`` for hidden-layer heads; with
    ``output="onehot"`` to the smallest preset deep enough (:func:`crypto.argmax.min_depth`).
    An explicit preset too shallow for the output mode raises :class:`ArtifactError`.
    """

    templates: tuple[str, ...]
    weights: npt.NDArray[np.float64]
    biases: npt.NDArray[np.float64]
    classes: tuple[str, ...]
    norm_bound: float = 1.0
    encoder: str = MINILM
    preset: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    hidden_weights: npt.NDArray[np.float64] | None = None
    hidden_biases: npt.NDArray[np.float64] | None = None
    activation: tuple[float, float, float] | None = None
    output: str = "scores"
    comparison_scale: float | None = None

    def __post_init__(self) -> None:
        w, b = _array(self.weights), _array(self.biases)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "biases", b)
        object.__setattr__(self, "templates", tuple(str(t) for t in self.templates))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        hidden = (self.hidden_weights, self.hidden_biases, self.activation)
        if any(v is not None for v in hidden) and any(v is None for v in hidden):
            raise ArtifactError("hidden-layer heads need hidden_weights, hidden_biases and activation together")
        if self.output not in OUTPUTS:
            raise ArtifactError(f"output must be one of {list(OUTPUTS)}, got {self.output!r}")
        if w.ndim != 3:
            raise ArtifactError(f"weights must be (members, classes, {self._inner_name}), got {w.shape}")
        k, c, inner = w.shape
        if b.shape != (k, c):
            raise ArtifactError(f"biases must be {(k, c)}, got {b.shape}")
        if len(self.templates) != k:
            raise ArtifactError(f"{len(self.templates)} templates for {k} members")
        if len(self.classes) != c or c < 2:
            raise ArtifactError(f"{len(self.classes)} class names for {c} classes (need >= 2)")
        if not self.preset:
            object.__setattr__(self, "preset", self._default_preset(c))
        if len(set(self.classes)) != c:
            raise ArtifactError("class names must be distinct")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ArtifactError("weights and biases must be finite")
        if not (np.isfinite(self.norm_bound) and self.norm_bound > 0):
            raise ArtifactError("norm_bound must be a positive finite number")
        try:
            preset = get_preset(self.preset)
        except CryptoError as exc:
            raise ArtifactError(str(exc)) from None
        if self.head == "quadratic_mlp":
            self._check_hidden(k, inner, preset.depth)
        if self.comparison_scale is not None:
            if self.head != "linear":
                raise ArtifactError("a calibrated comparison_scale is supported for linear heads only")
            if isinstance(self.comparison_scale, bool) or not isinstance(self.comparison_scale, (int, float)):
                raise ArtifactError("comparison_scale must be a number")
            scale = float(self.comparison_scale)
            if not (np.isfinite(scale) and scale > 0.0):
                raise ArtifactError("comparison_scale must be a positive finite number")
            object.__setattr__(self, "comparison_scale", scale)
        if self.output == "onehot" and c > MAX_ONEHOT_CLASSES:
            raise ArtifactError(
                f"one-hot output serves at most {MAX_ONEHOT_CLASSES} classes, not {c}: with soft "
                f"comparisons its values are about 2^-(C-1), below the output's flooding noise, so "
                f"the labels would be wrong",
                hint="use output='scores' (win counts) or fewer classes",
            )
        if self.output == "label":
            self._check_label(c, preset)
        needed = min_depth(self._stage_levels, self.output, c)
        if self.output == "onehot" and preset.depth < needed:
            deeper = [p.name for p in sorted(PRESETS.values(), key=_cost) if p.depth >= needed]
            raise ArtifactError(
                f"one-hot output for {c} classes with {self.head} heads needs a preset of depth >= {needed} "
                f"(heads, one sign composition, {onehot_levels(c)} product levels); {self.preset!r} has "
                f"{preset.depth}",
                hint=f"use preset {deeper[0]!r}" if deeper else "use output='scores' or fewer classes",
            )

    def _check_label(self, classes: int, preset: CkksPreset) -> None:
        if self.comparison_scale is not None:
            raise ArtifactError("the label output compares the differences themselves, with no polynomial to "
                                "calibrate: drop comparison_scale")
        limit = max_label_classes(preset.slot_count)
        if classes > limit:
            raise ArtifactError(
                f"the label output serves at most {limit} classes at preset {self.preset!r}, not {classes}: "
                f"its round 1 holds each of the C (C - 1) / 2 class pairs in its own block of slots",
                hint="use output='scores' or 'onehot'",
            )
        needed = min_depth(self._stage_levels, self.output, classes)
        if preset.depth < needed:
            raise ArtifactError(f"the label output with {self.head} heads needs a preset of depth >= {needed}; "
                                f"{self.preset!r} has {preset.depth}")

    @property
    def _stage_levels(self) -> int:
        return HIDDEN_LEVELS if self.head == "quadratic_mlp" else LINEAR_LEVELS

    def _default_preset(self, classes: int) -> str:
        if self.output == "scores":
            return DEFAULT_PRESETS[self.head]
        needed = min_depth(self._stage_levels, self.output, classes)
        fits = [p for p in sorted(PRESETS.values(), key=_cost) if p.depth >= needed]
        return fits[0].name if fits else DEFAULT_PRESETS[self.head]  # refused below, with a hint

    def _check_hidden(self, members: int, hidden: int, depth: int) -> None:
        hw, hb = _array(self.hidden_weights), _array(self.hidden_biases)
        object.__setattr__(self, "hidden_weights", hw)
        object.__setattr__(self, "hidden_biases", hb)
        if hw.ndim != 3 or hw.shape[:2] != (members, hidden) or hw.shape[2] < 1 or hidden < 1:
            raise ArtifactError(
                f"hidden_weights must be (members, hidden, dim) = ({members}, {hidden}, dim) to match "
                f"weights (members, classes, hidden), got {hw.shape}"
            )
        if hb.shape != (members, hidden):
            raise ArtifactError(f"hidden_biases must be {(members, hidden)}, got {hb.shape}")
        if not (np.all(np.isfinite(hw)) and np.all(np.isfinite(hb))):
            raise ArtifactError("hidden weights and biases must be finite")
        try:
            coeffs = tuple(float(v) for v in self.activation)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ArtifactError("activation must be three numbers (c2, c1, c0)") from None
        if len(coeffs) != 3 or not all(np.isfinite(coeffs)):
            raise ArtifactError("activation must be three finite numbers (c2, c1, c0)")
        if coeffs[0] == 0.0:
            raise ArtifactError("the activation's square coefficient c2 must be nonzero (use linear heads otherwise)")
        object.__setattr__(self, "activation", coeffs)
        if depth < HIDDEN_MIN_DEPTH:
            raise ArtifactError(
                f"hidden-layer heads need a preset of depth >= {HIDDEN_MIN_DEPTH}; {self.preset!r} has {depth}",
                hint="use preset 'n8192-d5' (the default for hidden-layer heads)",
            )

    @property
    def _inner_name(self) -> str:
        return "hidden" if self.head == "quadratic_mlp" else "dim"

    @property
    def head(self) -> str:
        """``"linear"`` or ``"quadratic_mlp"`` (one hidden layer, degree-2 activation)."""
        return "linear" if self.hidden_weights is None else "quadratic_mlp"

    @property
    def members(self) -> int:
        """Number of ensemble members K."""
        return int(self.weights.shape[0])

    @property
    def hidden(self) -> int:
        """Hidden units per member H (0 for linear heads)."""
        return 0 if self.hidden_weights is None else int(self.weights.shape[2])

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        source = self.weights if self.hidden_weights is None else self.hidden_weights
        return int(source.shape[2])

    def worst_comparison_bound(self) -> float:
        """Linear heads: ``max_ij ||w_i - w_j|| * norm_bound * sqrt(K) + |b_i - b_j|`` over
        the averaged, concatenated class weights (Cauchy-Schwarz), so ``|L_i - L_j|`` never
        exceeds it for clipped embeddings. The same bound as :func:`crypto.packing.difference_matrix`."""
        k, c = self.members, len(self.classes)
        full = np.transpose(self.weights, (1, 0, 2)).reshape(c, -1) / k
        mean_bias = self.biases.mean(axis=0)
        diff = np.linalg.norm(full[:, None, :] - full[None, :, :], axis=2)
        bias = np.abs(mean_bias[:, None] - mean_bias[None, :])
        return float(np.max(diff * self.norm_bound * np.sqrt(k) + bias))

    def effective_comparison_scale(self) -> float | None:
        """The divisor of the comparisons the server uses, or ``None`` for the worst-case bound.

        ``comparison_scale``, raised where needed to ``worst / R`` with ``R`` from
        :func:`crypto.argmax.max_range_ratio` for this preset's headroom, sign compositions
        and output mode: with one composition and win counts at ``n8192-d3`` ``R`` is ~8.6;
        deeper circuits (one-hot products, several compositions) blow up faster outside the
        domain, so their ``R`` is near 1 and calibration gains little there.
        """
        if self.comparison_scale is None:
            return None
        worst = self.worst_comparison_bound()
        if worst <= 0.0:
            return None
        preset = get_preset(self.preset)
        rounds = rounds_for(preset.depth, self._stage_levels, self.output, len(self.classes))
        headroom = preset.coeff_mod_bit_sizes[0] - preset.global_scale_bits - FLOOD_MARGIN_BITS
        ratio = max_range_ratio(rounds, self.output, len(self.classes), headroom)
        scale = max(float(self.comparison_scale), worst / ratio)
        return None if scale >= worst else scale

    def calibrated(self, embeddings: npt.ArrayLike, *, margin: float = 1.25) -> EnsembleArtifact:
        """A copy with ``comparison_scale = margin * max |L_i - L_j|`` over held-out embeddings
        ``(Q, K, d)`` (at least :data:`MIN_CALIBRATION` queries, clipped as a client does)."""
        if self.head != "linear":
            raise ArtifactError("calibration is supported for linear heads only")
        try:
            emb = np.asarray(embeddings, dtype=np.float64)
            margin = float(margin)
        except (TypeError, ValueError):
            raise ArtifactError("calibration embeddings must be a numeric array") from None
        if emb.ndim != 3 or emb.shape[1:] != (self.members, self.dim) or emb.shape[0] < MIN_CALIBRATION:
            raise ArtifactError(
                f"calibration needs embeddings (Q, {self.members}, {self.dim}) with Q >= {MIN_CALIBRATION}, "
                f"got {emb.shape}"
            )
        if not np.all(np.isfinite(emb)):
            raise ArtifactError("calibration embeddings must be finite")
        if not (np.isfinite(margin) and margin >= 1.0):
            raise ArtifactError("margin must be a finite number >= 1")
        logits = self.plaintext_logits(emb)
        spread = float(np.max(logits.max(axis=1) - logits.min(axis=1)))
        if spread <= 0.0:
            raise ArtifactError("the calibration embeddings give identical logits for every class")
        return replace(self, comparison_scale=margin * spread)

    def plaintext_logits(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Averaged logits ``(Q, C)`` of embeddings ``(Q, K, d)``, clipped as the client does."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim == 2:
            emb = emb[None]
        norms = np.linalg.norm(emb, axis=2, keepdims=True)
        emb = emb * np.minimum(1.0, self.norm_bound / np.maximum(norms, 1e-300))
        if self.hidden_weights is None:
            features = emb
        else:
            assert self.hidden_biases is not None and self.activation is not None
            c2, c1, c0 = self.activation
            u = np.einsum("qkd,khd->qkh", emb, self.hidden_weights) + self.hidden_biases
            features = c2 * u**2 + c1 * u + c0
        logits: npt.NDArray[np.float64] = np.einsum("qkd,kcd->qc", features, self.weights)
        mean: npt.NDArray[np.float64] = logits / self.members + self.biases.mean(axis=0)
        return mean

    def public_spec(self) -> dict[str, Any]:
        """What a client needs (no weights): templates, classes, shapes, head kind, bound, preset,
        and (one-hot artifacts) the output mode; a spec without ``output`` means scores."""
        if self.output == "onehot":
            fmt = ONEHOT_ARTIFACT_FORMAT
        elif self.output == "label":
            fmt = LABEL_ARTIFACT_FORMAT
        else:
            fmt = ARTIFACT_FORMAT if self.head == "linear" else HIDDEN_ARTIFACT_FORMAT
        spec = {
            "format": fmt,
            "head": self.head,
            "templates": list(self.templates),
            "classes": list(self.classes),
            "members": self.members,
            "dim": self.dim,
            "norm_bound": float(self.norm_bound),
            "encoder": self.encoder,
            "preset": self.preset,
        }
        if self.head != "linear":
            spec["hidden"] = self.hidden
        if self.output != "scores":
            spec["output"] = self.output
        scale = self.effective_comparison_scale()
        if scale is not None:
            spec["comparison_scale"] = scale
        return spec

    def _tensors(self) -> dict[str, npt.NDArray[np.float64]]:
        out = {"weights": self.weights, "biases": self.biases}
        if self.hidden_weights is not None and self.hidden_biases is not None:
            out.update(hidden_weights=self.hidden_weights, hidden_biases=self.hidden_biases)
        return out

    def dumps(self) -> dict[str, bytes]:
        """Serialize to ``{"ensemble.json": ..., "ensemble.safetensors": ...}``."""
        meta: dict[str, Any] = {**self.public_spec(), "metadata": dict(self.metadata)}
        meta.pop("comparison_scale", None)
        if self.comparison_scale is not None:
            meta["comparison_scale"] = self.comparison_scale  # as requested; the cap is recomputed
        if self.activation is not None:
            meta["activation"] = list(self.activation)
        tensors = st_save(self._tensors())
        return {JSON_NAME: json.dumps(meta, sort_keys=True).encode(), TENSORS_NAME: tensors}

    @classmethod
    def loads(cls, files: dict[str, bytes]) -> EnsembleArtifact:
        """Inverse of :meth:`dumps`; validates formats, tensor names and shapes, never unpickles."""
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
        if not isinstance(meta, dict):
            raise ArtifactError("unknown artifact format")
        fmt = str(meta.get("format"))
        head = {ARTIFACT_FORMAT: "linear", HIDDEN_ARTIFACT_FORMAT: "quadratic_mlp"}.get(fmt)
        named = {ONEHOT_ARTIFACT_FORMAT: ("v3", "onehot"), LABEL_ARTIFACT_FORMAT: ("v4", "label")}
        if fmt in named:
            version, output = named[fmt]
            head = meta.get("head")
            if head not in HEADS or meta.get("output") != output:
                raise ArtifactError(f"format {version} names a head in {list(HEADS)} and output {output!r}")
        elif head is None:
            raise ArtifactError("unknown artifact format")
        elif meta.get("output", "scores") != "scores":
            raise ArtifactError(f"format {fmt!r} carries win-count outputs only; one-hot artifacts are v3, "
                                "label ones v4")
        if meta.get("head", head) != head:
            raise ArtifactError(f"format {meta['format']!r} carries {head!r} heads, not {meta.get('head')!r}")
        if set(tensors) != _TENSORS[head]:
            names = ", ".join(repr(n) for n in sorted(_TENSORS[head]))
            raise ArtifactError(f"artifact tensors must be exactly {names} for {head} heads")
        hidden: dict[str, Any] = {}
        try:
            if head == "quadratic_mlp":
                activation = meta["activation"]
                if not isinstance(activation, list) or len(activation) != 3:
                    raise ArtifactError("activation must be a list [c2, c1, c0]")
                hidden = {
                    "hidden_weights": tensors["hidden_weights"],
                    "hidden_biases": tensors["hidden_biases"],
                    "activation": tuple(float(v) for v in activation),
                }
            art = cls(
                templates=tuple(meta["templates"]),
                weights=tensors["weights"],
                biases=tensors["biases"],
                classes=tuple(meta["classes"]),
                norm_bound=float(meta["norm_bound"]),
                encoder=str(meta["encoder"]),
                preset=str(meta["preset"]),
                metadata={str(k): str(v) for k, v in dict(meta.get("metadata", {})).items()},
                output=str(meta.get("output", "scores")),
                comparison_scale=meta.get("comparison_scale"),
                **hidden,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"artifact metadata is invalid: {exc}") from None
        if art.members != meta.get("members") or art.dim != meta.get("dim"):
            raise ArtifactError("artifact metadata disagrees with tensor shapes")
        if head != "linear" and art.hidden != meta.get("hidden"):
            raise ArtifactError("artifact metadata disagrees with the hidden layer's width")
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
