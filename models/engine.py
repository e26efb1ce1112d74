"""One interface over torch modules, ONNX Runtime sessions and transformers models.

Every loaded model is a :class:`LoadedModel` with the verbs audits use::

    model = load_model(Path("clf.onnx"), format="onnx")
    probs = model.predict(x)                 # float32 [n, C], softmax of the logits
    vecs = load_minilm().embed(["a", "b"])   # float32 [n, 384], unit norm

``device`` records where the model actually runs ("cpu", "cuda", "cuda:1"), so reports
can state it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.architectures import architecture_task, create_architecture
from models.device import choose_device, onnx_providers
from models.errors import ModelError, ModelFormatError, ShapeError
from models.formats import ModelFormat, validate_onnx, validate_safetensors_header
from models.numerics import softmax

ModelKind = Literal["classifier", "encoder", "causal_lm"]
Progress = Callable[[float], None]
_KINDS = ("classifier", "encoder", "causal_lm")


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _as_numeric_array(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"input must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise ShapeError(f"input must be numeric, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ShapeError(f"input must be a non-empty batch, got shape {x.shape}")
    return x


def _as_texts(x: Any) -> list[str]:
    if isinstance(x, str):
        raise ShapeError("texts must be a sequence of strings, not a single string")
    if isinstance(x, np.ndarray):
        if x.ndim != 1 or x.dtype.kind not in "US":
            raise ShapeError(f"texts must be a 1-d string array, got {x.dtype} {x.shape}")
        x = x.tolist()
    texts = list(x)
    if not texts:
        raise ShapeError("texts must be a non-empty sequence")
    if not all(isinstance(t, str) for t in texts):
        raise ShapeError("every text must be a str")
    return texts


class LoadedModel(abc.ABC):
    """A model ready for batched inference; every method runs without gradients.

    Attributes: ``kind`` ("classifier" | "encoder" | "causal_lm"), ``device`` (where it
    actually runs) and ``backend`` ("torch" | "onnx" | "transformers").
    """

    kind: ModelKind
    device: str
    backend: str

    @abc.abstractmethod
    def logits(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return the raw class scores, float32 ``[n, C]``."""

    def predict(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return class probabilities, float32 ``[n, C]`` (softmax of :meth:`logits`)."""
        return softmax(self.logits(x, batch_size=batch_size, progress=progress)).astype(np.float32, copy=False)

    def embed(
        self, x: Any, *, batch_size: int = 64, progress: Progress | None = None
    ) -> np.ndarray:
        """Return embeddings, float32 ``[n, d]``."""
        raise ModelError(f"{self.backend} {self.kind} model does not provide embeddings")

    def logprobs(self, texts: Sequence[str], *, batch_size: int = 8) -> list[np.ndarray]:
        """Return, per text, the log-probability of each token given its prefix."""
        raise ModelError(
            f"logprobs needs a causal language model; this is a {self.backend} {self.kind}"
        )

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready summary (kind, backend, device) for reports."""
        return {"kind": self.kind, "backend": self.backend, "device": self.device}

    def _require_kind(self, *kinds: str) -> None:
        if self.kind not in kinds:
            raise ModelError(f"this operation needs a {' or '.join(kinds)}; model is a {self.kind}")


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


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
                array = array.reshape((array.shape[0], *tail))  # type: ignore[arg-type]
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
                return np.log(np.clip(out, 0.0, None))
        return out

    def predict(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return class probabilities, float32 ``[n, C]``."""
        out = self._run(x, batch_size, progress)
        if self.output_kind == "probabilities":
            out = np.clip(out, 0.0, None)
            return (out / out.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)
        return softmax(out).astype(np.float32, copy=False)

    def embed(
        self, x: Any, *, batch_size: int = 64, progress: Progress | None = None
    ) -> np.ndarray:
        """Return the first graph output as the embedding, float32 ``[n, d]``."""
        return self._run(x, batch_size, progress)


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _hide_dir(exc: Exception, model_dir: Path) -> str:
    """The loader's message with the model folder's server path cut down to its name."""
    text = str(exc)
    for prefix in {str(model_dir.resolve()), str(model_dir)}:
        text = text.replace(prefix, model_dir.name)
    return text


class TransformersModel(LoadedModel):
    """A local transformers directory (safetensors weights only, no remote code).

    The kind follows ``config.json``: ``*ForCausalLM``/``*LMHeadModel`` load as causal
    LMs, ``*ForSequenceClassification`` as classifiers, anything else as an encoder whose
    :meth:`embed` pools like sentence-transformers (pooling mode from
    ``1_Pooling/config.json``, mean by default; L2 normalisation unless ``modules.json``
    lists no Normalize module).
    """

    backend = "transformers"

    def __init__(self, model_dir: Path, *, device: str | None = None) -> None:
        from models.formats import tokenizer_file_arguments, validate_transformers_dir

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelFormatError(
                f"transformers model {model_dir.name!r} is not a directory; extract an uploaded "
                "tar with models.formats.extract_transformers_tar first"
            )
        # checked again here, at load time: a folder extracted earlier may predate a check
        validate_transformers_dir(model_dir)
        tokenizer_files = tokenizer_file_arguments(model_dir)

        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_dir = model_dir
        self.device = choose_device(device)
        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        try:
            config = AutoConfig.from_pretrained(model_dir, **common)
        except Exception as exc:
            raise ModelFormatError(
                f"config.json is not a usable transformers config: {_hide_dir(exc, model_dir)}"
            ) from exc
        architectures = list(getattr(config, "architectures", None) or [])
        if any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
            self.kind = "causal_lm"
            auto: Any = AutoModelForCausalLM
        elif any(a.endswith("ForSequenceClassification") for a in architectures):
            self.kind = "classifier"
            auto = AutoModelForSequenceClassification
        else:
            self.kind = "encoder"
            auto = AutoModel
        try:
            model = auto.from_pretrained(model_dir, use_safetensors=True, **common)
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, **common, **tokenizer_files)
        except Exception as exc:
            raise ModelFormatError(
                f"cannot load transformers model {model_dir.name!r}: {_hide_dir(exc, model_dir)}"
            ) from exc
        if self.device == "cpu" and model.dtype in (torch.float16, torch.bfloat16):
            model = model.float()
        self.model = model.to(self.device).eval()
        self.max_length = self._max_length(config)
        self.pooling, self.normalize = self._pooling_config()

    def _read_json(self, name: str) -> Any:
        from models.bounded_json import load_bounded_json

        path = self.model_dir / name
        if not path.is_file():
            return None
        return load_bounded_json(path.read_bytes(), what=name)

    def _max_length(self, config: Any) -> int:
        st_config = self._read_json("sentence_bert_config.json")
        if isinstance(st_config, dict) and isinstance(st_config.get("max_seq_length"), int):
            return int(st_config["max_seq_length"])
        limits = [
            v
            for v in (
                getattr(self.tokenizer, "model_max_length", None),
                getattr(config, "max_position_embeddings", None),
                getattr(config, "n_positions", None),
            )
            if isinstance(v, int) and 0 < v < 1_000_000
        ]
        return min(limits) if limits else 512

    def _pooling_config(self) -> tuple[str, bool]:
        pooling = "mean"
        pool_cfg = self._read_json("1_Pooling/config.json")
        if isinstance(pool_cfg, dict):
            if pool_cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif pool_cfg.get("pooling_mode_max_tokens"):
                pooling = "max"
        modules = self._read_json("modules.json")
        normalize = True
        if isinstance(modules, list):
            normalize = any(
                isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize")
                for m in modules
            )
        return pooling, normalize

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in encoded.items()}

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            masked = hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9)
            pooled = masked.max(dim=1).values
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def embed(
        self, x: Any, *, batch_size: int = 64, progress: Progress | None = None
    ) -> np.ndarray:
        """Return sentence embeddings, float32 ``[n, d]`` (pooled, L2-normalised)."""
        texts = _as_texts(x)
        batch_size = _check_batch_size(batch_size)
        # Longest first, as sentence-transformers does, so batches carry little padding.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        spans = _batches(len(texts), batch_size)
        chunks: list[torch.Tensor] = []
        with torch.inference_mode():
            for i, (start, stop) in enumerate(spans):
                encoded = self._encode([texts[j] for j in order[start:stop]])
                if self.kind == "encoder":
                    hidden = self.model(**encoded).last_hidden_state
                else:
                    hidden = self.model(**encoded, output_hidden_states=True).hidden_states[-1]
                chunks.append(self._pool(hidden, encoded["attention_mask"]))
                if progress is not None:
                    progress((i + 1) / len(spans))
            sorted_embeddings = torch.cat(chunks).cpu().numpy().astype(np.float32, copy=False)
        result = np.empty_like(sorted_embeddings)
        result[order] = sorted_embeddings
        return result

    def logits(
        self, x: Any, *, batch_size: int = 256, progress: Progress | None = None
    ) -> np.ndarray:
        """Return sequence-classification logits for a batch of texts, float32 ``[n, C]``."""
        self._require_kind("classifier")
        texts = _as_texts(x)
        spans = _batches(len(texts), _check_batch_size(batch_size))
        chunks: list[torch.Tensor] = []
        with torch.inference_mode():
            for i, (start, stop) in enumerate(spans):
                chunks.append(self.model(**self._encode(texts[start:stop])).logits.float())
                if progress is not None:
                    progress((i + 1) / len(spans))
            return torch.cat(chunks).cpu().numpy()

    def _token_ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids][: self.max_length]
        return ids

    def logprobs(self, texts: Sequence[str], *, batch_size: int = 8) -> list[np.ndarray]:
        """Return ``log p(token_t | tokens_<t)`` for t = 1..len-1 of each tokenised text.

        A BOS token is prepended where the tokenizer defines one, so every token of the
        text itself is scored.
        """
        self._require_kind("causal_lm")
        items = _as_texts(texts)
        batch_size = _check_batch_size(batch_size)
        results: list[np.ndarray] = []
        with torch.inference_mode():
            for start, stop in _batches(len(items), batch_size):
                ids_list = [self._token_ids(t) for t in items[start:stop]]
                width = max(len(ids) for ids in ids_list)
                ids = torch.zeros((len(ids_list), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, seq in enumerate(ids_list):
                    ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, : len(seq)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                token_logp = logp.gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu().numpy()
                for row, seq in enumerate(ids_list):
                    results.append(token_logp[row, : len(seq) - 1].astype(np.float32))
        return results


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
