"""The sampling and training half of a TrainProVe audit (no statistics, no HTTP).

    sets = draw_sets(generator, num_classes=10, n_shadow=300, n_val=200, batches=20, seed=0)
    shadows = train_shadows(sets.shadow_x, sets.shadow_y, default_shadow_specs(3), num_classes=10)
    # the model-level pool: varied recipes, each shadow on its own draw from the generator
    pool = train_shadow_pool(generator, sets, shadow_pool_specs(12, seed=0), num_classes=10)

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


def probe_seed(seed: int) -> int:
    """The sampling seed of the hot probes (never ``seed``, ``seed + 1`` or a shadow's own draw)."""
    return int(np.random.SeedSequence([int(seed), 0x9B0B]).generate_state(1)[0] % 2**31)


def draw_probes(generator: Generator, *, num_classes: int, n_probe: int, seed: int,
                temperature: float = 2.0, sample_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hot probes: ``n_probe`` samples per class at ``temperature`` (seed :func:`probe_seed`)."""
    y = balanced_labels(num_classes, n_probe)
    x = check_samples(generator.sample(y, seed=probe_seed(seed), temperature=temperature), len(y), sample_shape,
                      "the generator")
    return x, y


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
    #: 0: trained on the audit's shadow set; k > 0: on its own k-th draw from the generator
    data_draw: int = 0

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


#: The recipe ranges of the model-level shadow pool: what an independent party training a small
#: classifier on the generator's samples might plausibly choose (broad on purpose; the
#: benchmark's suspects are drawn from their own grid, independently of these).
POOL_MLP_HIDDEN = (32, 48, 64, 96, 128, 192)
POOL_CNN_WIDTH = (4, 6, 8, 12, 16, 24)
POOL_LR = (1e-3, 5e-3)            # log-uniform, from Adam's customary default up
POOL_WEIGHT_DECAY = (1e-5, 3e-3)  # log-uniform, or 0 with probability 1/2
POOL_EPOCHS = (8, 30)             # uniform integers, both ends included
#: ... but never fewer optimiser steps (batches of 64) than this: a deployed classifier is trained
#: until it works, so a pool shadow stopped far short of convergence is not a plausible suspect
#: (on a small shadow set a few epochs are a few dozen steps)
POOL_MIN_STEPS = 400


def shadow_pool_specs(count: int, *, seed: int = 0, epochs: int = 20,
                      train_size: int | None = None) -> list[ShadowSpec]:
    """The model-level shadow pool: the paper's shadow (MLP 64, ``epochs``, on the shadow set)
    then ``count - 1`` shadows of random recipes (small CNN and MLP alternating; width, learning rate,
    weight decay, epochs, init seed), each trained on its own draw from the generator, so the
    pool's spread is that of independently trained models on independent samples. With
    ``train_size`` (samples in a shadow's training set) a pool shadow's epochs are raised to
    reach :data:`POOL_MIN_STEPS` steps."""
    if count < 1:
        raise ValueError(f"a shadow pool needs at least one shadow, got {count}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    specs = [ShadowSpec("mlp", {"hidden": 64}, epochs=epochs, seed=int(seed))]
    for k in range(1, count):
        if k % 2 == 0:  # families alternate, so every pool holds both
            arch, config = "mlp", {"hidden": int(rng.choice(POOL_MLP_HIDDEN))}
        else:
            arch, config = "small_cnn", {"width": int(rng.choice(POOL_CNN_WIDTH))}
        lr = float(np.exp(rng.uniform(*np.log(POOL_LR))))
        wd = 0.0 if rng.random() < 0.5 else float(np.exp(rng.uniform(*np.log(POOL_WEIGHT_DECAY))))
        ep = int(rng.integers(POOL_EPOCHS[0], POOL_EPOCHS[1] + 1))
        if train_size:
            ep = max(ep, -(-POOL_MIN_STEPS // max(1, -(-int(train_size) // 64))))
        specs.append(ShadowSpec(arch, config, epochs=ep, lr=round(lr, 6), weight_decay=round(wd, 7),
                                seed=100_000 + 1_000 * int(seed) + k, data_draw=k))
    return specs


def shadow_draw_seed(seed: int, draw: int) -> int:
    """The sampling seed of a shadow's own training draw (never the audit's ``seed`` or
    ``seed + 1``, which drew the shadow and validation sets)."""
    return int(np.random.SeedSequence([int(seed), int(draw), 0xD4A7]).generate_state(1)[0] % 2**31)


#: ``progress(done, total)`` after each shadow of a pool is trained.
PoolProgress = Callable[[int, int], None]


def train_shadow_pool(generator: Generator, sets: ProvenanceSets, specs: Sequence[ShadowSpec], *,
                      num_classes: int, seed: int, t_shadow: float = 1.0,
                      progress: PoolProgress | None = None) -> list[nn.Module]:
    """Train each spec on the shadow set (``data_draw == 0``) or on its own fresh draw of as many
    samples per class from ``generator`` at ``t_shadow`` (seed :func:`shadow_draw_seed`)."""
    models: list[nn.Module] = []
    for spec in specs:
        if spec.data_draw == 0:
            x, y = sets.shadow_x, sets.shadow_y
        else:
            y = sets.shadow_y
            x = check_samples(generator.sample(y, seed=shadow_draw_seed(seed, spec.data_draw),
                                               temperature=t_shadow),
                              len(y), tuple(sets.shadow_x.shape[1:]), "the generator")
        models.append(train_shadow(x, y, spec, num_classes=num_classes))
        if progress is not None:
            progress(len(models), len(specs))
    return models


def split_real_data(x: np.ndarray, y: np.ndarray, *, batches: int, seed: int,
                    val_fraction: float = 0.5) -> ProvenanceSets:
    """Real labelled data as a candidate source: a class-stratified ``val_fraction`` becomes the
    validation set (cut into ``batches`` class-balanced batches), the rest the shadow set.
    Each class needs at least ``batches`` validation samples and two shadow samples."""
    rng = np.random.default_rng([int(seed), 0x4EA1])
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(val_fraction * len(idx)))
        if cut < batches or len(idx) - cut < 2:
            raise ValueError(f"class {int(c)} has {len(idx)} samples: too few for {batches} validation batches "
                             f"and a shadow set")
        val_idx.extend(idx[:cut].tolist())
        train_idx.extend(idx[cut:].tolist())
    tr, va = np.sort(np.asarray(train_idx)), np.sort(np.asarray(val_idx))
    return ProvenanceSets(x[tr], y[tr], x[va], y[va], split_batches(y[va], batches, seed=seed + 2))


def train_shadow_pool_on_data(sets: ProvenanceSets, specs: Sequence[ShadowSpec], *, num_classes: int,
                              seed: int, progress: PoolProgress | None = None) -> list[nn.Module]:
    """The shadow pool of a real-data candidate: spec ``k`` trains on the shadow set
    (``data_draw == 0``) or on its own bootstrap resample of it (the real-data stand-in for a
    fresh draw from a generator; seed :func:`shadow_draw_seed`)."""
    models = []
    for spec in specs:
        x, y = sets.shadow_x, sets.shadow_y
        if spec.data_draw:
            pick = np.random.default_rng(shadow_draw_seed(seed, spec.data_draw)).integers(0, len(y), len(y))
            x, y = x[pick], y[pick]
        models.append(train_shadow(x, y, spec, num_classes=num_classes))
        if progress is not None:
            progress(len(models), len(specs))
    return models


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
    "draw_probes",
    "draw_sets",
    "probe_seed",
    "shadow_config",
    "shadow_draw_seed",
    "shadow_pool_specs",
    "shadow_proba",
    "split_batches",
    "split_real_data",
    "train_shadow",
    "train_shadow_pool",
    "train_shadow_pool_on_data",
    "train_shadows",
]
