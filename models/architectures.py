"""Registry of model architectures that safetensors weights can be loaded into.

A safetensors file holds tensors only, so the appliance rebuilds the module from a
registered architecture name and a JSON config, then loads the weights strictly::

    module = create_architecture("mlp", {"in_features": 64, "hidden": [32], "num_classes": 10})

Other modules add architectures with :func:`register_architecture` (``models.vision``
registers its encoders on import).
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.errors import ModelFormatError, UnknownArchitectureError
from models.rng import isolated_global_rng

TASKS = frozenset({"classifier", "encoder", "causal_lm"})


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    task: str


_REGISTRY: dict[str, _Entry] = {}
_LOCK = threading.Lock()
_PLUGINS_LOADED = False
_PLUGIN_MODULES = ("models.vision",)


def register_architecture(
    name: str, factory: Callable[..., nn.Module], *, task: str = "classifier"
) -> None:
    """Register ``factory(**config) -> nn.Module`` under ``name`` for the given task.

    Re-registering a name with the same factory is a no-op; with another factory it
    raises ``ValueError`` so two modules cannot silently shadow each other.
    """
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"architecture name must be a non-empty identifier, got {name!r}")
    if not callable(factory):
        raise TypeError("factory must be callable")
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    with _LOCK:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.factory is not factory:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory=factory, task=task)


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for module_name in _PLUGIN_MODULES:
        try:
            importlib.import_module(module_name)
        except ImportError:
            continue


def list_architectures() -> dict[str, str]:
    """Return ``{name: task}`` for every registered architecture."""
    _load_plugins()
    with _LOCK:
        return {name: entry.task for name, entry in sorted(_REGISTRY.items())}


def architecture_task(name: str) -> str:
    """Return the task ("classifier", "encoder", "causal_lm") of a registered architecture."""
    _load_plugins()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise _unknown(name)
    return entry.task


def _unknown(name: object) -> UnknownArchitectureError:
    known = ", ".join(sorted(_REGISTRY)) or "(none)"
    return UnknownArchitectureError(f"unknown architecture {name!r}; known architectures: {known}")


def create_architecture(name: str, config: Mapping[str, Any]) -> nn.Module:
    """Build a freshly initialised module of architecture ``name`` from ``config``.

    Raises :class:`UnknownArchitectureError` for an unregistered name and
    :class:`ModelFormatError` for unknown, missing or invalid config keys.
    """
    _load_plugins()
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise _unknown(name)
    if not isinstance(config, Mapping):
        raise ModelFormatError(
            f"config for {name!r} must be a JSON object, got {type(config).__name__}"
        )
    kwargs = dict(config)
    _check_config_keys(name, entry.factory, kwargs)
    try:
        with isolated_global_rng():  # another thread may be seeding a construction
            module = entry.factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"invalid config for architecture {name!r}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelFormatError(
            f"factory of {name!r} returned {type(module).__name__}, not a Module"
        )
    return module


def _check_config_keys(
    name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]
) -> None:
    for key in kwargs:
        if not isinstance(key, str):
            raise ModelFormatError(f"config keys for {name!r} must be strings, got {key!r}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = {
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    required = {
        p.name
        for p in params.values()
        if p.name in accepted and p.default is inspect.Parameter.empty
    }
    unknown = sorted(set(kwargs) - accepted)
    missing = sorted(required - set(kwargs))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys {unknown}")
        if missing:
            parts.append(f"missing keys {missing}")
        raise ModelFormatError(
            f"config for architecture {name!r}: {'; '.join(parts)}; "
            f"accepted keys: {sorted(accepted)}"
        )


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


class MLP(nn.Module):
    """Multilayer perceptron over flattened inputs: Linear-ReLU blocks, then a logit layer."""

    def __init__(self, *, in_features: int, hidden: list[int] | int, num_classes: int) -> None:
        super().__init__()
        in_features = _positive_int(in_features, "in_features")
        num_classes = _positive_int(num_classes, "num_classes")
        if not isinstance(hidden, int | list | tuple):
            raise ValueError("hidden must be an integer or a list of integers")
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        widths = [_positive_int(w, "hidden") for w in widths]
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU()]
            previous = width
        layers.append(nn.Linear(previous, num_classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class SmallCNN(nn.Module):
    """Two conv-ReLU-maxpool stages and a linear head, for small square images.

    Accepts ``[n, C, H, W]`` or flattened ``[n, C*H*W]`` inputs (e.g. 8x8 digits as 64 features).
    """

    def __init__(
        self, *, in_channels: int, image_size: int, num_classes: int, width: int = 16
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.image_size = _positive_int(image_size, "image_size")
        num_classes = _positive_int(num_classes, "num_classes")
        width = _positive_int(width, "width")
        if image_size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Linear(2 * width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        out: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return out


def _mlp(*, in_features: int, hidden: list[int] | int, num_classes: int) -> nn.Module:
    return MLP(in_features=in_features, hidden=hidden, num_classes=num_classes)


def _small_cnn(
    *, in_channels: int, image_size: int, num_classes: int, width: int = 16
) -> nn.Module:
    return SmallCNN(
        in_channels=in_channels, image_size=image_size, num_classes=num_classes, width=width
    )


register_architecture("mlp", _mlp, task="classifier")
register_architecture("small_cnn", _small_cnn, task="classifier")

__all__ = [
    "MLP",
    "SmallCNN",
    "architecture_task",
    "create_architecture",
    "list_architectures",
    "register_architecture",
]
