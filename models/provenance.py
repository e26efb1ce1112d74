"""The sampling and training half of a TrainProVe audit (no statistics, no HTTP).

    sets = draw_sets(generator, num_classes=10, n_shadow=300, n_val=200, batches=20, seed=0)
    shadows = train_shadows(sets.shadow_x, sets.shadow_y, default_shadow_specs(3), num_classes=10)

The shadow set is drawn at ``t_shadow`` from ``seed``; the validation set at ``t_val`` from
another seed and cut into class-balanced batches (each batch holds ``n_val / batches``
samples of every class). :func:`digits_provenance_splits` gives the disjoint real subsets the
tests and benchmark train their reference generators and real-data suspects on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.architectures import create_architecture
from models.generators import Generator, GeneratorContractError, check_samples
from models.vision import build_model, load_digits_images, proba_fn, train_classifier

ProbaFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ProvenanceSets:
    """A shadow set and a validation set cut into class-balanced batches (index arrays)."""

    shadow_x: np.ndarray
    shadow_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    batches: list[np.ndarray]


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    """``[0]*per_class + [1]*per_class + ...`` as int64."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def draw_sets(
    generator: Generator,
    *,
    num_classes: int,
    n_shadow: int,
    n_val: int,
    batches: int,
    seed: int,
    t_shadow: float = 1.0,
    t_val: float = 1.2,
) -> ProvenanceSets:
    """Sample the shadow set (seed ``seed``) and the validation set (seed ``seed + 1``)."""
    if n_val % batches != 0:
        raise ValueError(f"n_val ({n_val}) must be a multiple of batches ({batches})")
    shadow_y = balanced_labels(num_classes, n_shadow)
    shadow_x = check_samples(generator.sample(shadow_y, seed=seed, temperature=t_shadow),
                             len(shadow_y), None, "the generator")
    val_y = balanced_labels(num_classes, n_val)
    val_x = check_samples(generator.sample(val_y, seed=seed + 1, temperature=t_val),
                          len(val_y), tuple(shadow_x.shape[1:]), "the generator")
    return ProvenanceSets(shadow_x, shadow_y, val_x, val_y, split_batches(val_y, batches, seed=seed + 2))


def split_batches(labels: np.ndarray, batches: int, *, seed: int) -> list[np.ndarray]:
    """Cut indices of ``labels`` into ``batches`` groups holding each class equally often."""
    rng = np.random.default_rng(seed)
    groups: list[list[int]] = [[] for _ in range(batches)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for b, part in enumerate(np.array_split(idx, batches)):
            groups[b].extend(int(i) for i in part)
    return [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]


@dataclass(frozen=True)
class ShadowSpec:
    """How one shadow classifier is built and trained (recorded in the report)."""

    architecture: str
    config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def shadow_config(architecture: str, sample_shape: tuple[int, ...], num_classes: int,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture config for samples of ``sample_shape`` (``[C, H, W]`` for CNNs)."""
    extra = dict(extra or {})
    if architecture == "mlp":
        return {"in_features": int(np.prod(sample_shape)), "hidden": extra.pop("hidden", 64),
                "num_classes": num_classes, **extra}
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise GeneratorContractError(
            f"architecture {architecture!r} needs square images [C, H, W]; samples are {sample_shape}")
    return {"in_channels": sample_shape[0], "image_size": sample_shape[1], "num_classes": num_classes,
            **extra}


def default_shadow_specs(count: int, *, seed: int = 0) -> list[ShadowSpec]:
    """``count`` shadows alternating an MLP and a small CNN, seeds ``seed, seed+1, ...``."""
    families = [("mlp", {"hidden": 64}), ("small_cnn", {"width": 8})]
    return [ShadowSpec(architecture=families[i % 2][0], config=dict(families[i % 2][1]), seed=seed + i)
            for i in range(count)]


def train_shadow(x: np.ndarray, y: np.ndarray, spec: ShadowSpec, *, num_classes: int) -> nn.Module:
    """Build ``spec``'s classifier from its seed and train it on ``(x, y)``; eval mode."""
    config = shadow_config(spec.architecture, tuple(x.shape[1:]), num_classes, spec.config)
    model = build_model(lambda **c: create_architecture(spec.architecture, c), seed=spec.seed, **config)
    with torch.random.fork_rng(devices=[]):
        return train_classifier(model, _as_images(x), y, seed=spec.seed, epochs=spec.epochs,
                                lr=spec.lr, weight_decay=spec.weight_decay)


def train_shadows(x: np.ndarray, y: np.ndarray, specs: Sequence[ShadowSpec], *,
                  num_classes: int) -> list[nn.Module]:
    """:func:`train_shadow` for each spec."""
    return [train_shadow(x, y, spec, num_classes=num_classes) for spec in specs]


def shadow_proba(model: nn.Module) -> ProbaFn:
    """The shadow as a probability query function."""
    predict = proba_fn(model)
    return lambda x: predict(_as_images(x))


def _as_images(x: np.ndarray) -> np.ndarray:
    # train_classifier takes [n, C, H, W]; flat samples become [n, 1, 1, D] (the MLP flattens)
    return x if x.ndim == 4 else x.reshape(len(x), 1, 1, -1)


def digits_provenance_splits(*, seed: int = 0, parts: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn digits (8x8, [0, 1]) shuffled with ``seed`` into ``parts`` disjoint,
    class-stratified subsets: one per reference generator, the rest for real-data suspects."""
    x, y = load_digits_images(8)
    rng = np.random.default_rng(seed)
    buckets: list[list[int]] = [[] for _ in range(parts)]
    for c in np.unique(y):
        for p, chunk in enumerate(np.array_split(rng.permutation(np.flatnonzero(y == c)), parts)):
            buckets[p].extend(int(i) for i in chunk)
    return [(x[np.sort(b)], y[np.sort(b)]) for b in buckets]


__all__ = [
    "ProbaFn",
    "ProvenanceSets",
    "ShadowSpec",
    "balanced_labels",
    "default_shadow_specs",
    "digits_provenance_splits",
    "draw_sets",
    "shadow_config",
    "shadow_proba",
    "split_batches",
    "train_shadow",
    "train_shadows",
]
