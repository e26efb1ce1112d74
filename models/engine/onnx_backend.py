"""The ONNX Runtime backend: classifiers and encoders exported as ONNX graphs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.device import choose_device, onnx_providers
from models.engine.base import LoadedModel, ModelKind, Progress, _as_numeric_array, _batches, _check_batch_size
from models.errors import ModelFormatError, ShapeError
from models.formats import validate_onnx
from models.numerics import softmax

_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


class OnnxModel(LoadedModel):
    """An ONNX Runtime session over a single-input graph.

    ``output`` says whether the first graph output holds ``"logits"`` (default) or
    ``"probabilities"`` (e.g. sklearn-onnx classifiers). Inputs are checked against the
    graph's declared rank, static dimensions and element type (:class:`ShapeError`).
    """

    backend = "onnx"

    def __init__(
        self,
        path: Path,
        *,
        device: str | None = None,
        kind: ModelKind = "classifier",
        output: Literal["logits", "probabilities"] = "logits",
        validate: bool = True,
    ) -> None:
        import onnxruntime as ort

        if kind not in ("classifier", "encoder"):
            raise ModelFormatError("ONNX models are supported as 'classifier' or 'encoder'")
        if output not in ("logits", "probabilities"):
            raise ModelFormatError("output must be 'logits' or 'probabilities'")
        path = Path(path)
        if validate:
            validate_onnx(path)
        self.kind = kind
        self.output_kind = output
        requested = choose_device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers: list[Any] = onnx_providers(requested)
        if providers[0] == "CUDAExecutionProvider":
            index = requested.partition(":")[2] or "0"
            providers[0] = ("CUDAExecutionProvider", {"device_id": int(index)})
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelFormatError(f"ONNX Runtime cannot load the model: {exc}") from exc
        active = self.session.get_providers()
        self.device = requested if "CUDAExecutionProvider" in active else "cpu"
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFormatError(
                f"ONNX graph has {len(inputs)} inputs; exactly one data input is supported"
            )
        self.input_name: str = inputs[0].name
        self.input_shape: list[int | str | None] = list(inputs[0].shape)
        if inputs[0].type not in _ORT_DTYPES:
            raise ModelFormatError(f"ONNX input element type {inputs[0].type} is not supported")
        self.input_dtype = np.dtype(_ORT_DTYPES[inputs[0].type])
        self.output_name: str = self.session.get_outputs()[0].name

    def _prepare(self, x: Any) -> np.ndarray:
        array = _as_numeric_array(x)
        expected = self.input_shape
        tail = expected[1:]
        static_tail = all(isinstance(d, int) for d in tail)
        if array.ndim != len(expected):
            size = math.prod(int(d) for d in tail if isinstance(d, int)) if static_tail else -1
            if array.ndim == 2 and static_tail and size == array.shape[1]:
                array = array.reshape((array.shape[0], *tail))
            else:
                raise ShapeError(
                    f"input has shape {array.shape} but ONNX input {self.input_name!r} "
                    f"expects {expected}"
                )
        for axis, (want, got) in enumerate(zip(tail, array.shape[1:], strict=True), start=1):
            if isinstance(want, int) and want != got:
                raise ShapeError(
                    f"input has shape {array.shape} but ONNX input {self.input_name!r} expects "
                    f"{expected} (axis {axis}: {got} != {want})"
                )
        if self.input_dtype.kind in "iu" and array.dtype.kind == "f":
            raise ShapeError(
                f"ONNX input {self.input_name!r} expects {self.input_dtype}, got floats"
            )
        return np.ascontiguousarray(array, dtype=self.input_dtype)

    def _run(self, x: Any, batch_size: int, progress: Progress | None) -> np.ndarray:
        array = self._prepare(x)
        batch_size = _check_batch_size(batch_size)
        static_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        step = static_batch or batch_size
        n = array.shape[0]
        spans = _batches(n, step)
        outputs: list[np.ndarray] = []
        for i, (start, stop) in enumerate(spans):
            batch = array[start:stop]
            if static_batch is not None and stop - start < static_batch:
                pad = np.zeros((static_batch - (stop - start), *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, pad])
            try:
                (out,) = self.session.run([self.output_name], {self.input_name: batch})
            except Exception as exc:  # onnxruntime raises untyped errors on bad input
                raise ShapeError(f"ONNX Runtime rejected input {array.shape}: {exc}") from exc
            out = np.asarray(out)
            if out.ndim != 2 or out.shape[0] != batch.shape[0]:
                raise ShapeError(f"ONNX output must be [batch, k], got {out.shape}")
            outputs.append(out[: stop - start])
            if progress is not None:
                progress((i + 1) / len(spans))
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def logits(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return logits (log-probabilities where the graph outputs probabilities)."""
        out = self._run(x, batch_size, progress)
        if self.output_kind == "probabilities":
            with np.errstate(divide="ignore"):
                return np.asarray(np.log(np.clip(out, 0.0, None)), dtype=np.float32)
        return out

    def predict(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return class probabilities, float32 ``[n, C]``."""
        out = self._run(x, batch_size, progress)
        if self.output_kind == "probabilities":
            out = np.clip(out, 0.0, None)
            return np.asarray(out / out.sum(axis=1, keepdims=True), dtype=np.float32)
        return softmax(out).astype(np.float32, copy=False)

    def embed(
        self, x: Any, *, batch_size: int = 64, progress: Progress | None = None
    ) -> np.ndarray:
        """Return the first graph output as the embedding, float32 ``[n, d]``."""
        return self._run(x, batch_size, progress)
