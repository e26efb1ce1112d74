"""Deterministic, batched image augmentations in plain torch (no torchvision).

Every function takes an explicit :class:`torch.Generator`, so the same seed gives the
same views on any machine::

    gen = torch.Generator().manual_seed(0)
    views = augment(images, GLOBAL_VIEW, generator=gen)   # [n, C, H, W] -> [n, C, S, S]

Random-resized crops are one ``affine_grid`` + ``grid_sample`` call for the whole batch,
with the horizontal flip and a small rotation folded into the affine matrix; colour jitter
is brightness (multiplicative) and contrast (around each image's mean), then optional
Gaussian noise, clipped to ``[0, 1]``. Images on another scale (digits on 0..16, images
standardised around 0) are mapped to ``[0, 1]`` with their ``value_range`` first and back
afterwards, so a model is always queried on its own scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewSpec:
    """How one kind of view is drawn: crop area ``scale``, aspect ``ratio``, output size,
    flip probability and the brightness/contrast jitter amplitudes (0 disables)."""

    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    out_size: int | None = None
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    rotation: float = 0.0  # largest rotation, degrees either way
    noise: float = 0.0  # standard deviation of additive Gaussian noise, in [0, 1] units

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        rlo, rhi = self.ratio
        if not 0.0 < rlo <= rhi:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if self.brightness < 0 or self.contrast < 0:
            raise ValueError("brightness and contrast must be non-negative")
        if not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if self.out_size is not None and self.out_size <= 0:
            raise ValueError(f"out_size must be positive, got {self.out_size}")


#: Large crops (DOV4CL's "global" views).
GLOBAL_VIEW = ViewSpec(scale=(0.5, 1.0))
#: Small crops (DOV4CL's "local" views), resampled to the same size so one batch holds both.
LOCAL_VIEW = ViewSpec(scale=(0.15, 0.45))


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def random_resized_crop(
    images: torch.Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    out_size: int | None = None,
    flip_p: float = 0.0,
    rotation: float = 0.0,
    generator: torch.Generator,
) -> torch.Tensor:
    """Crop a random box of relative area in ``scale`` per image, resize to ``out_size``.

    ``images`` is ``[n, C, H, W]`` float; the result is ``[n, C, S, S]`` (S = ``out_size``
    or H). Boxes (and flips, and rotations up to ``rotation`` degrees) are sampled
    independently per image from ``generator``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {tuple(images.shape)}")
    n, channels, height, _ = images.shape
    size = out_size or height
    area = _uniform(n, scale[0], scale[1], generator)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    # Width/height as fractions of the image side; clamp keeps the box inside the image.
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=generator) < flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype)
    if rotation > 0:
        # input = R(angle) diag(w * flip, h) output + centre: the box turns about its centre
        angle = _uniform(n, -math.radians(rotation), math.radians(rotation), generator)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta[:, 0, 0] = cos * w * flip
        theta[:, 0, 1] = -sin * h
        theta[:, 1, 0] = sin * w * flip
        theta[:, 1, 1] = cos * h
    else:
        theta[:, 0, 0] = w * flip
        theta[:, 1, 1] = h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, channels, size, size], align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(
    images: torch.Tensor, *, brightness: float, contrast: float, generator: torch.Generator,
    noise: float = 0.0,
) -> torch.Tensor:
    """Per-image random brightness and contrast factors in ``[1-a, 1+a]``, then Gaussian noise
    of standard deviation ``noise``, clipped to [0, 1]."""
    n = images.shape[0]
    shape = (n,) + (1,) * (images.dim() - 1)
    out = images
    if brightness > 0:
        factor = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator)
        out = out * factor.view(shape).to(images.dtype)
    if contrast > 0:
        factor = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator)
        mean = out.mean(dim=tuple(range(1, images.dim())), keepdim=True)
        out = (out - mean) * factor.view(shape).to(images.dtype) + mean
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return out.clamp(0.0, 1.0)


def augment(images: torch.Tensor, spec: ViewSpec, *, generator: torch.Generator) -> torch.Tensor:
    """Draw one view per image according to ``spec`` (crop + flip, then colour jitter)."""
    views = random_resized_crop(
        images,
        scale=spec.scale,
        ratio=spec.ratio,
        out_size=spec.out_size,
        flip_p=spec.flip_p,
        rotation=spec.rotation,
        generator=generator,
    )
    return colour_jitter(views, brightness=spec.brightness, contrast=spec.contrast, noise=spec.noise,
                         generator=generator)


def to_unit(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``images`` from ``value_range`` ``(lo, hi)`` to ``[0, 1]`` (float32)."""
    lo, hi = _check_range(value_range)
    return ((np.asarray(images, np.float32) - lo) / (hi - lo)).astype(np.float32)


def from_unit(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``images`` from ``[0, 1]`` back to ``value_range`` ``(lo, hi)`` (float32)."""
    lo, hi = _check_range(value_range)
    return (np.asarray(images, np.float32) * (hi - lo) + lo).astype(np.float32)


def _check_range(value_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"value_range must be two finite numbers lo < hi, got {value_range}")
    return lo, hi


def multi_view(
    images: np.ndarray,
    *,
    n_global: int,
    n_local: int,
    seed: int,
    global_spec: ViewSpec = GLOBAL_VIEW,
    local_spec: ViewSpec = LOCAL_VIEW,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Return ``[n, n_global + n_local, C, S, S]`` float32 views of ``images`` ``[n, C, H, W]``.

    Slots ``0..n_global-1`` are global views, the rest local ones; deterministic in ``seed``.
    Views are drawn in ``[0, 1]`` after mapping ``value_range`` onto it, and returned on the
    images' own scale.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {images.shape}")
    if n_global < 0 or n_local < 0 or n_global + n_local == 0:
        raise ValueError("need at least one view")
    gen = torch.Generator().manual_seed(int(seed))
    unit = value_range == (0.0, 1.0)
    batch = torch.from_numpy(np.ascontiguousarray(images if unit else to_unit(images, value_range),
                                                  dtype=np.float32))
    slots = [augment(batch, global_spec, generator=gen) for _ in range(n_global)]
    slots += [augment(batch, local_spec, generator=gen) for _ in range(n_local)]
    sizes = {tuple(s.shape[2:]) for s in slots}
    if len(sizes) != 1:
        raise ValueError(f"global and local views must share an output size, got {sizes}")
    views = torch.stack(slots, dim=1).numpy()
    return views if unit else from_unit(views, value_range)


__all__ = [
    "GLOBAL_VIEW",
    "LOCAL_VIEW",
    "ViewSpec",
    "augment",
    "colour_jitter",
    "from_unit",
    "multi_view",
    "random_resized_crop",
    "to_unit",
]
