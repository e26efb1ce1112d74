"""One interface over torch modules, ONNX Runtime sessions and transformers models.

Every loaded model is a :class:`LoadedModel` with the verbs audits use::

    model = load_model(Path("clf.onnx"), format="onnx")
    probs = model.predict(x)                 # float32 [n, C], softmax of the logits
    vecs = load_minilm().embed(["a", "b"])   # float32 [n, 384], unit norm

``device`` records where the model actually runs ("cpu", "cuda", "cuda:1"), so reports
can state it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.architectures import architecture_task
from models.engine.base import LoadedModel, ModelKind
from models.engine.onnx_backend import OnnxModel
from models.engine.torch_backend import TorchModel, _load_safetensors_module
from models.engine.transformers_backend import TransformersModel
from models.errors import ModelFormatError
from models.formats import ModelFormat
from models.numerics import softmax


def load_model(
    path: Path,
    *,
    format: ModelFormat,
    architecture: str | None = None,
    config: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> LoadedModel:
    """Load a validated model file or directory as a :class:`LoadedModel`.

    - ``"onnx"``: ``config`` may give ``{"kind": "classifier"|"encoder",
      "output": "logits"|"probabilities"}``.
    - ``"safetensors"``: needs ``architecture`` (see ``list_architectures()``) and its
      ``config``; keys and shapes must match exactly.
    - ``"transformers"``: ``path`` is an extracted directory (see
      :func:`models.formats.extract_transformers_tar`).
    """
    path = Path(path)
    if format == "onnx":
        options = dict(config or {})
        unknown = sorted(set(options) - {"kind", "output"})
        if unknown:
            raise ModelFormatError(f"unknown ONNX options {unknown}; accepted: kind, output")
        return OnnxModel(
            path,
            device=device,
            kind=options.get("kind", "classifier"),
            output=options.get("output", "logits"),
        )
    if format == "safetensors":
        if not architecture or config is None:
            raise ModelFormatError(
                "safetensors weights need an architecture name and its config",
                hint="pass architecture= (one of list_architectures()) and config=",
            )
        task = architecture_task(architecture)
        if task not in ("classifier", "encoder"):
            raise ModelFormatError(f"architecture task {task!r} cannot be loaded from safetensors")
        module = _load_safetensors_module(path, architecture, config)
        return TorchModel(module, kind=task, device=device)  # type: ignore[arg-type]
    if format == "transformers":
        return TransformersModel(path, device=device)
    raise ModelFormatError(f"unsupported model format {format!r}")


__all__ = [
    "LoadedModel",
    "ModelKind",
    "OnnxModel",
    "TorchModel",
    "TransformersModel",
    "load_model",
    "softmax",
]
