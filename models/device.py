"""Choose the compute device for torch and ONNX Runtime.

``choose_device()`` returns ``"cuda"`` where CUDA is available and ``"cpu"`` otherwise;
an explicit preference overrides it::

    device = choose_device(os.environ.get("APPLIANCE_DEVICE"))
    providers = onnx_providers(device)
"""

from __future__ import annotations

import re

import torch

from models.errors import DeviceError

_DEVICE_RE = re.compile(r"^(cpu|cuda(?::(\d+))?|auto)$")


def choose_device(preference: str | None = None) -> str:
    """Return a torch device string: ``preference`` if valid, else the best available.

    ``None``, ``""`` and ``"auto"`` pick ``"cuda"`` when available, else ``"cpu"``.
    Raises :class:`DeviceError` when CUDA is asked for but absent, or the index is out
    of range.
    """
    if preference is None or preference.strip().lower() in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    wanted = preference.strip().lower()
    match = _DEVICE_RE.match(wanted)
    if match is None:
        raise DeviceError(f"unknown device {preference!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if wanted == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = (
            f"this torch {torch.__version__} is a CPU-only build"
            if build is None
            else f"torch {torch.__version__} (CUDA {build}) finds no usable CUDA device"
        )
        raise DeviceError(
            f"device {preference!r} requested but CUDA is not available here: {why}",
            hint="use device 'cpu' or 'auto' (auto picks CUDA only where it is available)",
        )
    if match.group(2) is not None:
        index = int(match.group(2))
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {preference!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return wanted


def onnx_providers(device: str) -> list[str]:
    """Return ONNX Runtime execution providers for ``device``, best first.

    ``CUDAExecutionProvider`` is listed only for a CUDA device and only where this
    onnxruntime build offers it; ``CPUExecutionProvider`` is always last.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    providers: list[str] = []
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def device_index(device: str) -> int:
    """Return the CUDA ordinal of ``device`` ("cuda" is 0)."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


__all__ = ["choose_device", "device_index", "onnx_providers"]
