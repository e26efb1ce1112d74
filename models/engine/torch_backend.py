"""The torch backend: a registered architecture's module with safetensors weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.architectures import create_architecture
from models.device import choose_device
from models.engine.base import LoadedModel, ModelKind, Progress, _as_numeric_array, _batches, _check_batch_size
from models.errors import ModelError, ModelFormatError, ShapeError
from models.formats import validate_safetensors_header


class TorchModel(LoadedModel):
    """A ``torch.nn.Module`` whose forward maps a float batch to logits or embeddings.

    ``TorchModel(module, kind="classifier", device=None)``; the module is moved to the
    device and put in eval mode.
    """

    backend = "torch"

    def __init__(
        self, module: nn.Module, *, kind: ModelKind = "classifier", device: str | None = None
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError("module must be a torch.nn.Module")
        if kind not in ("classifier", "encoder"):
            raise ValueError("TorchModel supports kind 'classifier' or 'encoder'")
        self.kind = kind
        self.device = choose_device(device)
        self.module = module.to(self.device).eval()
        first = next(iter(module.parameters()), None)
        self._dtype = first.dtype if first is not None else torch.float32

    def _run(
        self,
        x: Any,
        batch_size: int,
        progress: Progress | None,
        post: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> np.ndarray:
        array = _as_numeric_array(x)
        batch_size = _check_batch_size(batch_size)
        n = array.shape[0]
        host = torch.from_numpy(np.ascontiguousarray(array))
        outputs: list[torch.Tensor] = []
        spans = _batches(n, batch_size)
        with torch.inference_mode():
            for i, (start, stop) in enumerate(spans):
                batch = host[start:stop].to(self.device, dtype=self._dtype, non_blocking=True)
                try:
                    out = self.module(batch)
                except torch.cuda.OutOfMemoryError as exc:
                    raise ModelError(
                        f"out of GPU memory at batch size {batch_size}", hint="lower batch_size"
                    ) from exc
                except RuntimeError as exc:
                    raise ShapeError(
                        f"model rejected input of shape {tuple(array.shape)}: {exc}"
                    ) from exc
                if (
                    not isinstance(out, torch.Tensor)
                    or out.dim() != 2
                    or out.shape[0] != stop - start
                ):
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
                    raise ShapeError(f"model output must be [batch, k], got {shape}")
                outputs.append(post(out) if post is not None else out)
                if progress is not None:
                    progress((i + 1) / len(spans))
            result = torch.cat(outputs).float().cpu().numpy()
        return result

    def logits(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return the module's outputs (logits), float32 ``[n, C]``."""
        return self._run(x, batch_size, progress)

    def predict(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return softmax probabilities, computed on the device, float32 ``[n, C]``."""
        return self._run(x, batch_size, progress, post=lambda t: torch.softmax(t.float(), dim=1))

    def embed(
        self, x: Any, *, batch_size: int = 64, progress: Progress | None = None
    ) -> np.ndarray:
        """Return the module output as the embedding (an encoder's vector, a classifier's
        logits), float32 ``[n, d]``."""
        return self._run(x, batch_size, progress)




def _load_safetensors_module(path: Path, architecture: str, config: Mapping[str, Any]) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    validate_safetensors_header(path)
    module = create_architecture(architecture, config)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read safetensors file: {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:10]}")
        if mismatched:
            parts.append(f"shape mismatches {mismatched[:10]}")
        raise ModelFormatError(
            f"safetensors weights do not fit architecture {architecture!r} with this config: "
            + "; ".join(parts)
        )
    for key, tensor in state.items():
        if not (tensor.is_floating_point() or expected[key].dtype == tensor.dtype):
            raise ModelFormatError(f"tensor {key!r} has dtype {tensor.dtype}, expected floats")
    module.load_state_dict(state, strict=True)
    return module
