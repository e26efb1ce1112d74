"""Tiny vision models and seeded training loops for the ownership audits' reference runs.

Encoders (task ``encoder``) map ``[n, C, H, W]`` images to embeddings; classifiers (task
``classifier``) map them to logits. All are registered with
:func:`models.architectures.register_architecture` on import, so safetensors weights of
them can be loaded by name::

    enc = create_architecture("conv_encoder", {"in_channels": 1, "image_size": 16})
    train_contrastive(enc, x_public, objective="simclr", seed=0, epochs=40)

Training is deterministic for a seed on one machine (one thread, fixed generators).
:func:`digits_splits` gives scikit-learn's digits upsampled to 16x16 and split into
public / private / alternative parts, the data the tests and benchmarks use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import register_architecture
from models.augment import ViewSpec, augment
from models.rng import seeded_global_rng


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


class ConvEncoder(nn.Module):
    """Three conv-BN-ReLU stages (the last two strided), global average pool, linear map."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 16, width: int = 32, embed_dim: int = 64) -> None:
        super().__init__()
        c = _positive_int(in_channels, "in_channels")
        _positive_int(image_size, "image_size")
        w = _positive_int(width, "width")
        d = _positive_int(embed_dim, "embed_dim")
        self.in_channels, self.image_size, self.embed_dim = c, image_size, d
        self.features = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out = nn.Linear(2 * w, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        return cast("torch.Tensor", self.out(self.features(x)))


class PoolEncoder(nn.Module):
    """A different family: 5x5 conv-GELU-maxpool stages with GroupNorm, then an MLP."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 16, width: int = 24, embed_dim: int = 64) -> None:
        super().__init__()
        c = _positive_int(in_channels, "in_channels")
        size = _positive_int(image_size, "image_size")
        w = _positive_int(width, "width")
        d = _positive_int(embed_dim, "embed_dim")
        if size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4, got {size}")
        self.in_channels, self.image_size, self.embed_dim = c, size, d
        self.features = nn.Sequential(
            nn.Conv2d(c, w, 5, padding=2),
            nn.GroupNorm(4, w),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 5, padding=2),
            nn.GroupNorm(4, 2 * w),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.out = nn.Sequential(nn.Linear(2 * w * (size // 4) ** 2, 128), nn.GELU(), nn.Linear(128, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        return cast("torch.Tensor", self.out(self.features(x)))


class ConvClassifier(nn.Module):
    """A :class:`ConvEncoder` backbone with a linear classification head (logits)."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 16, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        k = _positive_int(num_classes, "num_classes")
        self.backbone = ConvEncoder(in_channels=in_channels, image_size=image_size, width=width, embed_dim=64)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", self.head(self.backbone(x)))


def _conv_encoder(*, in_channels: int = 1, image_size: int = 16, width: int = 32, embed_dim: int = 64) -> nn.Module:
    return ConvEncoder(in_channels=in_channels, image_size=image_size, width=width, embed_dim=embed_dim)


def _pool_encoder(*, in_channels: int = 1, image_size: int = 16, width: int = 24, embed_dim: int = 64) -> nn.Module:
    return PoolEncoder(in_channels=in_channels, image_size=image_size, width=width, embed_dim=embed_dim)


def _conv_classifier(
    *, in_channels: int = 1, image_size: int = 16, num_classes: int = 10, width: int = 32
) -> nn.Module:
    return ConvClassifier(in_channels=in_channels, image_size=image_size, num_classes=num_classes, width=width)


register_architecture("conv_encoder", _conv_encoder, task="encoder")
register_architecture("pool_encoder", _pool_encoder, task="encoder")
register_architecture("conv_classifier", _conv_classifier, task="classifier")

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "conv_encoder": _conv_encoder,
    "pool_encoder": _pool_encoder,
}


def build_model(factory: Callable[..., nn.Module], *, seed: int, **config: object) -> nn.Module:
    """Build ``factory(**config)`` with weights initialised from ``seed`` (global RNG untouched,
    safe while other threads build or train models)."""
    with seeded_global_rng(seed):
        return factory(**config)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsSplits:
    """Digits images ``[n, 1, S, S]`` in ``[0, 1]`` with labels, in three disjoint parts."""

    public: tuple[np.ndarray, np.ndarray]
    private: tuple[np.ndarray, np.ndarray]
    alternative: tuple[np.ndarray, np.ndarray]


def load_digits_images(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as float32 ``[n, 1, size, size]`` in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).numpy(), bunch.target.astype(np.int64)


def digits_splits(*, seed: int = 0, size: int = 16, fractions: tuple[float, float] = (0.4, 0.2)) -> DigitsSplits:
    """Shuffle digits with ``seed`` and cut them into public / private / alternative parts.

    ``fractions`` are the public and private shares; the alternative part is the rest.
    """
    x, y = load_digits_images(size)
    order = np.random.default_rng(seed).permutation(len(x))
    n_pub = int(round(fractions[0] * len(x)))
    n_pvt = int(round(fractions[1] * len(x)))
    parts = np.split(order, [n_pub, n_pub + n_pvt])
    pub, pvt, alt = ((x[p], y[p]) for p in parts)
    return DigitsSplits(public=pub, private=pvt, alternative=alt)


# ----------------------------------------------------------------------- training

#: Training crops span both audit scales (global and local), as in multi-crop SSL recipes.
TRAIN_VIEW = ViewSpec(scale=(0.2, 1.0))


def _mlp_head(in_dim: int, hidden: int, out_dim: int, *, last_bn: bool) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_dim),
    ]
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def _embed_dim(encoder: nn.Module, images: torch.Tensor) -> int:
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        dim = int(encoder(images[:2]).shape[1])
    encoder.train(was_training)
    return dim


def train_contrastive(
    encoder: nn.Module,
    images: np.ndarray,
    *,
    objective: Objective = "simclr",
    seed: int,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 2e-3,
    temperature: float = 0.2,
    view: ViewSpec = TRAIN_VIEW,
    projection_head: bool = False,
    on_epoch: EpochFn | None = None,
) -> nn.Module:
    """Train ``encoder`` self-supervised on ``images`` ``[n, C, H, W]``; return it in eval mode;
    ``on_epoch(done, epochs)`` after each epoch (progress).

    ``simclr``: NT-Xent over two augmented views. ``byol``, ``mocov3`` and ``dino`` train
    against a momentum (EMA) target; see :func:`_train_momentum`.
    ``simsiam``: SimSiam (Chen & He 2021): negative cosine between a predictor output (MLP
    with a bottleneck and BN) and the stop-gradient projection of the other view, no
    negatives. The projection ends in a non-affine BatchNorm, as in the paper, whose ablation
    shows it prevents collapse: without it these tiny encoders fall to an effective rank of
    2-4 of 64 dimensions (kNN accuracy ~0.65 instead of ~0.9). SimSiam learns slower than
    SimCLR; use more epochs (the tests and benchmarks use 1000 vs 400).
    With ``projection_head=False`` (default) the loss sees the encoder's own output (for
    ``simsiam`` only batch-standardised), so the released embedding is the trained one (the
    small-model analogue of releasing the projection output); ``True`` adds a discarded MLP
    projector (for ``simsiam`` ending in the same BatchNorm). Deterministic for ``seed``.
    """
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"images must be [n>=2, C, H, W], got shape {images.shape}")
    if objective in MOMENTUM_OBJECTIVES:
        return _train_momentum(encoder, images, objective=objective, seed=seed, epochs=epochs,
                               batch_size=batch_size, lr=lr, view=view, on_epoch=on_epoch)
    if objective not in ("simclr", "simsiam"):
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    gen = torch.Generator().manual_seed(int(seed))
    dim = _embed_dim(encoder, data)
    with seeded_global_rng(int(seed) + 1):
        projector: nn.Module
        if projection_head:
            projector = _mlp_head(dim, 128, 64, last_bn=objective == "simsiam")
        else:
            projector = nn.BatchNorm1d(dim, affine=False) if objective == "simsiam" else nn.Identity()
        out_dim = 64 if projection_head else dim
        predictor = _mlp_head(out_dim, 32, out_dim, last_bn=False) if objective == "simsiam" else None
    params = list(encoder.parameters()) + list(projector.parameters())
    if predictor is not None:
        params += list(predictor.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    encoder.train()
    projector.train()
    if predictor is not None:
        predictor.train()
    n = len(data)
    bs = min(batch_size, n)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - bs + 1, bs):
            batch = data[order[start : start + bs]]
            v1 = augment(batch, view, generator=gen)
            v2 = augment(batch, view, generator=gen)
            p1, p2 = projector(encoder(v1)), projector(encoder(v2))
            if predictor is None:
                loss = _nt_xent(p1, p2, temperature)
            else:
                q1, q2 = predictor(p1), predictor(p2)
                loss = -0.5 * (
                    F.cosine_similarity(q1, p2.detach()).mean() + F.cosine_similarity(q2, p1.detach()).mean()
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs)
    return encoder.eval()


Objective = Literal["simclr", "simsiam", "byol", "mocov3", "dino"]
#: ``on_epoch(done, epochs)``: called after each training epoch.
EpochFn = Callable[[int, int], None]
MOMENTUM_OBJECTIVES = ("byol", "mocov3", "dino")
OBJECTIVES = ("simclr", "simsiam", *MOMENTUM_OBJECTIVES)


def distillation_inputs(unit_images: np.ndarray, *, views: int, view: ViewSpec, seed: int) -> np.ndarray:
    """What a teacher is queried on to distil it: each image of ``unit_images`` (``[n, C, H, W]``
    in [0, 1]) as it is, then ``views - 1`` views of it drawn by ``view`` from ``seed``;
    ``[views * n, C, H, W]`` in [0, 1]."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    gen = torch.Generator().manual_seed(int(seed))
    unit = torch.from_numpy(np.ascontiguousarray(unit_images, dtype=np.float32))
    drawn = [unit.numpy()] + [augment(unit, view, generator=gen).numpy() for _ in range(views - 1)]
    return np.concatenate(drawn).astype(np.float32)


def distill_encoder(
    student: nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 2e-3,
    on_epoch: EpochFn | None = None,
) -> nn.Module:
    """Train ``student`` to reproduce a teacher's embeddings ``targets`` ``[n, d]`` of ``inputs``
    (Adam, cosine decay, seeded shuffling): mean squared error to the targets centred on their
    mean and divided by their overall standard deviation, so the student answers with the
    teacher's embedding up to a shift and one scale (which centred cosines do not see).
    Returns the student in eval mode; ``on_epoch(done, epochs)`` after each epoch."""
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    y = np.asarray(targets, dtype=np.float32)
    if len(x) != len(y) or y.ndim != 2 or len(y) == 0:
        raise ValueError(f"need targets [n, d] for n = {len(x)} inputs, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("the teacher's embeddings are not all finite")
    scale = float(y.std()) or 1.0
    target = torch.from_numpy((y - y.mean(axis=0)) / scale)
    return _fit(student, len(x), lambda idx: F.mse_loss(student(x[idx]), target[idx]), seed=seed, epochs=epochs,
                batch_size=batch_size, lr=lr, on_epoch=on_epoch)


def _fit(
    model: nn.Module,
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    on_epoch: EpochFn | None = None,
) -> nn.Module:
    """The supervised loop: Adam with cosine decay to zero over every step (the final weights
    do not depend on where Adam's last steps land), ``n`` samples shuffled per epoch from
    ``seed`` in batches of ``batch_size`` (a last batch of one is skipped: BatchNorm needs two),
    ``batch_loss(indices)`` per batch. Returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * -(-n // batch_size)))
    model.train()
    for done in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            loss = batch_loss(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(done + 1, epochs)
    return model.eval()


def _train_momentum(
    encoder: nn.Module, images: np.ndarray, *, objective: str, seed: int, epochs: int,
    batch_size: int, lr: float, view: ViewSpec, momentum: float = 0.99, on_epoch: EpochFn | None = None,
) -> nn.Module:
    """Self-supervised training against an exponential-moving-average target network.

    ``byol`` (Grill et al. 2020): an online projector and predictor regress the target's
    projection of the other view (``2 - 2 cos``). ``mocov3`` (Chen et al. 2021): the same
    online/target pair, but an InfoNCE loss between the online prediction and the target
    keys of the batch (temperature 0.2, scaled by ``2 t``). ``dino`` (Caron et al. 2021): a
    student head over 256 prototypes matches the target's centred, sharpened distribution
    (student temperature 0.1, teacher 0.04, centre momentum 0.9). The target starts as a copy
    of the online network and is never trained by gradients. Heads are discarded; the encoder
    is returned in eval mode. Deterministic for ``seed``.
    """
    import copy

    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    gen = torch.Generator().manual_seed(int(seed))
    dim = _embed_dim(encoder, data)
    with seeded_global_rng(int(seed) + 1):
        if objective == "dino":
            projector: nn.Module = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, 256))
            predictor: nn.Module = nn.Identity()
        else:
            projector = _mlp_head(dim, 128, 64, last_bn=False)
            predictor = _mlp_head(64, 32, 64, last_bn=False)
    online = nn.ModuleList([encoder, projector])
    target = copy.deepcopy(online)
    for param in target.parameters():
        param.requires_grad_(False)
    opt = torch.optim.Adam(list(online.parameters()) + list(predictor.parameters()), lr=lr, weight_decay=1e-5)
    centre = torch.zeros(256)
    online.train()
    predictor.train()
    target.train()
    n, bs = len(data), min(batch_size, len(data))

    def embed_online(v: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", predictor(projector(encoder(v))))

    def embed_target(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return cast("torch.Tensor", target[1](target[0](v)))

    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - bs + 1, bs):
            batch = data[order[start : start + bs]]
            v1, v2 = augment(batch, view, generator=gen), augment(batch, view, generator=gen)
            q1, q2 = embed_online(v1), embed_online(v2)
            k1, k2 = embed_target(v1), embed_target(v2)
            if objective == "byol":
                loss = (4 - 2 * F.cosine_similarity(q1, k2).mean() - 2 * F.cosine_similarity(q2, k1).mean()) / 2
            elif objective == "mocov3":
                loss = _moco_loss(q1, k2) + _moco_loss(q2, k1)
            else:
                loss = 0.5 * (_dino_loss(q1, k2, centre) + _dino_loss(q2, k1, centre))
                centre = 0.9 * centre + 0.1 * torch.cat([k1, k2]).mean(dim=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for t_param, o_param in zip(target.parameters(), online.parameters(), strict=True):
                    t_param.mul_(momentum).add_(o_param.detach(), alpha=1 - momentum)
                for t_buf, o_buf in zip(target.buffers(), online.buffers(), strict=True):
                    t_buf.copy_(o_buf)
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs)
    return encoder.eval()


def _moco_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(q))) * 2 * temperature


def _dino_loss(student: torch.Tensor, teacher: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    targets = F.softmax((teacher - centre) / 0.04, dim=1)
    return -(targets * F.log_softmax(student / 0.1, dim=1)).sum(dim=1).mean()


class Rescaled(nn.Module):
    """Runs ``encoder`` (trained on images in [0, 1]) on inputs in ``[lo, hi]``: a shadow trained
    on data mapped to [0, 1] answers on the data's own scale, as the suspect does."""

    def __init__(self, encoder: nn.Module, lo: float, hi: float) -> None:
        super().__init__()
        if not hi > lo:
            raise ValueError(f"need lo < hi, got {lo}, {hi}")
        self.encoder, self.lo, self.hi = encoder, float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", self.encoder((x - self.lo) / (self.hi - self.lo)))


class Resized(nn.Module):
    """Runs ``encoder`` on inputs resized (bilinear) to ``size`` x ``size`` inside the model, as
    encoders trained at another input resolution do."""

    def __init__(self, encoder: nn.Module, size: int) -> None:
        super().__init__()
        self.encoder, self.size = encoder, _positive_int(size, "size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return cast("torch.Tensor", self.encoder(resized))


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Supervised cross-entropy training (Adam, cosine learning-rate decay), seeded shuffling.

    Returns ``model`` in eval mode."""
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need x [n, C, H, W] and y [n] with n > 0, got {x.shape}, {y.shape}")
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return _fit(model, len(data), lambda idx: F.cross_entropy(model(data[idx]), labels[idx]), seed=seed,
                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)


def _scaled_encoder(
    *,
    family: str,
    value_range: list[float],
    family_config: dict[str, int] | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """An encoder of ``family`` (``conv_encoder``, ``pool_encoder``) trained on images in [0, 1],
    answering on ``value_range`` (:class:`Rescaled`), optionally at another input resolution
    inside the model (:class:`Resized`): how the ownership audit's shadows are kept."""
    if family not in ENCODERS:
        raise ValueError(f"family must be one of {sorted(ENCODERS)}, got {family!r}")
    if not isinstance(value_range, list | tuple) or len(value_range) != 2:
        raise ValueError(f"value_range must be [lo, hi], got {value_range!r}")
    lo, hi = (float(v) for v in value_range)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"value_range must be finite, got {value_range!r}")
    encoder = ENCODERS[family](**(family_config or {}))
    if input_size is not None:
        encoder = Resized(encoder, input_size)
    return Rescaled(encoder, lo, hi)


register_architecture("scaled_encoder", _scaled_encoder, task="encoder")


def encoder_output_dim(encoder: nn.Module, in_channels: int, image_size: int) -> int:
    """The embedding dimension of ``encoder`` on ``[n, in_channels, image_size, image_size]``
    inputs, found by a forward pass on the meta device (nothing computed or allocated)."""
    meta = torch.empty(1, in_channels, image_size, image_size, device="meta")
    with torch.device("meta"):
        probe = encoder.to("meta") if next(encoder.parameters(), None) is not None else encoder
        out = probe(meta)
    return int(out.shape[-1])


def embed_fn(model: nn.Module, *, batch_size: int = 4096) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap an eval-mode module as a black-box ``embed(x) -> np.ndarray`` query function."""

    def embed(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        outs = []
        with torch.inference_mode():
            for start in range(0, len(t), batch_size):
                outs.append(model(t[start : start + batch_size]))
        return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)

    return embed


def proba_fn(model: nn.Module, *, batch_size: int = 4096) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a classifier as a black-box ``predict(x) -> probabilities`` query function."""
    logits = embed_fn(model, batch_size=batch_size)

    def predict(x: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(logits(x))
        return torch.softmax(z, dim=1).numpy()

    return predict


def label_fn(model: nn.Module, *, batch_size: int = 4096) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a classifier as a black-box ``label(x) -> int labels`` query function."""
    logits = embed_fn(model, batch_size=batch_size)

    def label(x: np.ndarray) -> np.ndarray:
        return cast("np.ndarray", np.asarray(logits(x)).argmax(axis=1).astype(np.int64))

    return label


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a classifier on ``(x, y)``."""
    return float((label_fn(model)(x) == np.asarray(y)).mean())


__all__ = [
    "ENCODERS",
    "TRAIN_VIEW",
    "ConvClassifier",
    "ConvEncoder",
    "DigitsSplits",
    "PoolEncoder",
    "accuracy",
    "build_model",
    "digits_splits",
    "embed_fn",
    "label_fn",
    "load_digits_images",
    "encoder_output_dim",
    "proba_fn",
    "train_classifier",
    "train_contrastive",
]
