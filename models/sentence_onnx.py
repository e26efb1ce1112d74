"""Sentence embeddings through ONNX Runtime: the transformers encoder's numbers at about half its CPU.

>>> enc = OnnxSentenceEncoder.from_transformers_dir(minilm_dir())   # doctest: +SKIP
>>> enc.embed(["a cat sits on the mat"]).shape                       # doctest: +SKIP
(1, 384)

The encoder's graph is exported once from the local safetensors weights (eager attention, so
padding masks trace exactly), checked against the PyTorch forward on probe sentences (largest
difference at most :data:`MAX_EXPORT_ERROR`), and cached under ``cache_dir`` keyed by the
sha256 of the weights and config; later processes load only the ONNX graph and the tokenizer
(about a second instead of ten). Pooling follows the sentence-transformers files, as
:class:`models.engine.TransformersModel` does (mean or CLS; L2 normalisation unless
``modules.json`` lists no Normalize module). Batches are built by token length so they carry
little padding. ``precision="int8"`` quantises the cached graph's matrix weights to 8 bits
(once, checked against the float graph, cached beside it): about twice the speed on CPUs with
8-bit dot products, embeddings at cosine ~0.99 of the float ones (median; worst about 0.97).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from models.errors import ModelError, ModelFormatError

#: Largest absolute difference from the PyTorch forward accepted when a graph is exported.
MAX_EXPORT_ERROR = 1e-4
#: What :meth:`OnnxSentenceEncoder.from_transformers_dir` can run: the exported float graph,
#: or that graph with its matrix weights quantised to 8 bits (see :func:`_quantise`).
PRECISIONS = ("fp32", "int8")
#: Smallest cosine to the float embedding accepted on the probes when a graph is quantised: a
#: check against a broken quantisation, not a quality figure (all-MiniLM-L6-v2: 0.977 on the
#: probes; on 1920 man-page prompts 0.966 at worst, median 0.992).
MIN_INT8_COSINE = 0.9
#: Bumped when the export procedure changes, so older cached graphs are not reused.
EXPORT_VERSION = 1
#: Bumped when the quantisation settings change (:func:`_quantise`), for the same reason.
QUANTISE_VERSION = 1
_PROBES = (
    "a cat sits on the mat",
    "Return the value of the environment variable key if it exists, or default if it does "
    "not; key, default and the result are str.",
    "x",
)


def default_cache_dir() -> Path:
    """``$APPLIANCE_CACHE_DIR/encoders``, else ``$XDG_CACHE_HOME/appliance/encoders``, else
    ``~/.cache/appliance/encoders``."""
    root = os.environ.get("APPLIANCE_CACHE_DIR")
    if root:
        return Path(root) / "encoders"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "appliance" / "encoders"


def _read_json(model_dir: Path, name: str) -> Any:
    from models.bounded_json import load_bounded_json

    path = model_dir / name
    return load_bounded_json(path.read_bytes(), what=name) if path.is_file() else None


def _pooling(model_dir: Path) -> tuple[str, bool]:
    pooling = "mean"
    cfg = _read_json(model_dir, "1_Pooling/config.json")
    if isinstance(cfg, dict):
        if cfg.get("pooling_mode_max_tokens"):
            raise ModelFormatError("max pooling is not supported by the ONNX sentence encoder")
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
    modules = _read_json(model_dir, "modules.json")
    normalize = True
    if isinstance(modules, list):
        normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize")
                        for m in modules)
    return pooling, normalize


def _weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256(f"sentence-onnx-v{EXPORT_VERSION}".encode())
    for path in [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class OnnxSentenceEncoder:
    """``embed(texts) -> float32 (n, d)`` with ONNX Runtime on the CPU."""

    def __init__(self, *, session: Any, tokenizer: Any, max_length: int, pooling: str,
                 normalize: bool, input_names: tuple[str, ...]) -> None:
        self._session = session
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.normalize = normalize
        self._inputs = input_names
        self._lock = threading.Lock()

    @classmethod
    def from_transformers_dir(cls, model_dir: str | Path, *, cache_dir: str | Path | None = None,
                              threads: int | None = None, precision: str = "fp32") -> OnnxSentenceEncoder:
        """Load the cached graph of an encoder folder, exporting and checking it first if needed.

        ``precision="int8"`` runs the graph with its matrix weights quantised to 8 bits
        (quantised once from the float graph and cached beside it): about twice as fast on
        CPUs with 8-bit dot products, embeddings at cosine ~0.99 of the float ones (median;
        worst about 0.97), so a classifier must be trained on the precision it is queried with.

        Raises :class:`~models.errors.ModelError` when the folder is not a mean/CLS-pooled
        encoder or the exported graph disagrees with PyTorch (callers fall back to
        :class:`models.engine.TransformersModel`), or the quantised one with the float graph.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from models.formats import tokenizer_file_arguments, validate_transformers_dir

        model_dir = Path(model_dir)
        validate_transformers_dir(model_dir)
        pooling, normalize = _pooling(model_dir)
        config = _read_json(model_dir, "config.json")
        archs = (config.get("architectures") or []) if isinstance(config, dict) else []
        if any(not str(a).endswith("Model") for a in archs):
            raise ModelFormatError(f"{model_dir.name!r} is not a bare encoder ({archs})")
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                                  trust_remote_code=False,
                                                  **tokenizer_file_arguments(model_dir))
        st_config = _read_json(model_dir, "sentence_bert_config.json")
        if isinstance(st_config, dict) and isinstance(st_config.get("max_seq_length"), int):
            max_length = int(st_config["max_seq_length"])
        else:
            max_length = min(int(getattr(tokenizer, "model_max_length", 512)), 512)
        input_names = tuple(n for n in tokenizer.model_input_names
                            if n in ("input_ids", "attention_mask", "token_type_ids"))
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        graph = cache / f"{model_dir.name}-{_weights_digest(model_dir)[:32]}.onnx"
        if not graph.is_file():
            _export(model_dir, graph, tokenizer=tokenizer, input_names=input_names,
                    pooling=pooling, normalize=normalize, max_length=max_length)
        options = _session_options(threads)

        def load(path: Path) -> OnnxSentenceEncoder:
            return cls(session=_open_graph(path, options), tokenizer=tokenizer, max_length=max_length,
                       pooling=pooling, normalize=normalize, input_names=input_names)

        if precision == "fp32":
            return load(graph)
        # the quantiser's version is part of the name: another version may round otherwise
        quantised = graph.with_name(f"{graph.stem}-int8v{QUANTISE_VERSION}-ort{ort.__version__}.onnx")
        if not quantised.is_file():  # the float graph is needed only as the reference
            _quantise(graph, quantised, reference=load(graph))
        return load(quantised)

    def embed(self, texts: list[str] | tuple[str, ...], *,
              batch_size: int = 8) -> npt.NDArray[np.float32]:
        """Sentence embeddings, float32 ``(n, d)``, in the order of ``texts``.

        Small batches of texts of similar token length carry almost no padding (measured on
        man-page paragraphs: batches of 8 take ~15% less CPU than 32 and ~30% less than 64).
        """
        items = [str(t) for t in texts]
        if not items:
            raise ValueError("embed needs at least one text")
        ids = self.tokenizer(items, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([-len(i) for i in ids], kind="stable")
        out: npt.NDArray[np.float32] | None = None
        for start in range(0, len(items), max(1, int(batch_size))):
            rows = order[start:start + batch_size]
            enc = self.tokenizer([items[j] for j in rows], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="np")
            feed = {n: np.asarray(enc[n], dtype=np.int64) for n in self._inputs}
            with self._lock:  # one run at a time: the session already uses every core
                hidden = self._session.run(None, feed)[0]
            pooled = _pool(hidden, feed["attention_mask"], self.pooling, self.normalize)
            if out is None:
                out = np.empty((len(items), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
        assert out is not None
        return out


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Busy-waiting threads burn a shared machine's CPU for nothing (about a third more CPU
    # time and twice the wall time measured on two loaded cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


def _open_graph(graph: Path, options: Any) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign cache file: made again next time
        graph.unlink(missing_ok=True)
        raise ModelError(f"cached encoder graph {graph.name!r} is unusable: {exc}") from None


def _quantise(graph: Path, out: Path, *, reference: OnnxSentenceEncoder) -> None:
    """Write ``graph`` with its MatMul weights quantised to ``out`` (mode 0600, atomically),
    after checking its embeddings against ``reference`` (the float graph) on the probes.

    ONNX Runtime's dynamic quantisation: weights symmetric int8 per output channel, activations
    uint8 per tensor, computed at run time. The weights keep 7 bits (``reduce_range``): CPUs
    without 8-bit dot-product instructions add pairs of uint8 x int8 products in 16 bits, which
    full 8-bit weights can overflow, so results there would drift much further from these than
    the ordinary rounding differences between instruction sets.
    """
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=".quantise-", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _quantise_quietly(graph, tmp)
            trial = OnnxSentenceEncoder(session=_open_graph(tmp, _session_options(None)),
                                        tokenizer=reference.tokenizer, max_length=reference.max_length,
                                        pooling=reference.pooling, normalize=reference.normalize,
                                        input_names=reference._inputs)
            got, want = trial.embed(_PROBES), reference.embed(_PROBES)
        except ModelError:
            raise
        except Exception as exc:  # the quantiser's and ONNX Runtime's own errors
            raise ModelError(f"the encoder could not be quantised: {type(exc).__name__}: {exc}") from None
        cosine = float(np.min(np.sum(got * want, axis=1)
                              / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)))
        if not cosine >= MIN_INT8_COSINE:
            raise ModelError(f"the quantised encoder's embeddings are at cosine {cosine:.3f} of the "
                             f"float ones (at least {MIN_INT8_COSINE} needed)")
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
        _write_note(out, {"source": graph.name, "min_probe_cosine": cosine, "weights": "int8 per channel, 7 bits"})
    finally:
        tmp.unlink(missing_ok=True)
    # quantised by another quantiser or ONNX Runtime version (an upgrade): never read again
    for stale in out.parent.glob(f"{graph.stem}-int8v*.onnx"):
        if stale.name != out.name:
            stale.unlink(missing_ok=True)
            stale.with_name(stale.name + ".json").unlink(missing_ok=True)


def _write_note(graph: Path, note: dict[str, Any]) -> None:
    """The JSON note beside a cached graph (how it was made), replaced atomically."""
    fd, tmp_name = tempfile.mkstemp(dir=graph.parent, prefix=".note-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(note, handle)
        os.replace(tmp_name, graph.with_name(graph.name + ".json"))
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _quantise_quietly(graph: Path, out: Path) -> None:
    """``quantize_dynamic`` without its advice ("run pre-processing"), which it logs with
    ``logging.warning`` on the root logger: that call would also configure logging for the whole
    application where nothing has yet. For the call, the root logger gets a handler that does
    nothing and a filter that drops what is logged on it directly (other loggers' records do
    not pass root's filters, so nothing else is lost)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    silent, drop = logging.NullHandler(), logging.Filter("\0 no logger has this name")
    root.addHandler(silent)
    root.addFilter(drop)
    try:
        quantize_dynamic(graph, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    finally:
        root.removeFilter(drop)
        root.removeHandler(silent)


def _pool(hidden: npt.NDArray[Any], mask: npt.NDArray[np.int64], pooling: str,
          normalize: bool) -> npt.NDArray[np.float32]:
    hidden = hidden.astype(np.float32, copy=False)
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32, copy=False)


def _export(model_dir: Path, graph: Path, *, tokenizer: Any, input_names: tuple[str, ...],
            pooling: str, normalize: bool, max_length: int) -> None:
    """Export the encoder to ``graph`` (mode 0600, written atomically) after checking that
    ONNX Runtime reproduces the PyTorch forward on padded probe batches."""
    import warnings

    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", use_safetensors=True,
                                      local_files_only=True, trust_remote_code=False).float().eval()

    class _Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return cast("torch.Tensor", self.inner(**dict(zip(input_names, args, strict=True))).last_hidden_state)

    enc = tokenizer(list(_PROBES), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    args = tuple(enc[n] for n in input_names)
    axes = {n: {0: "batch", 1: "tokens"} for n in input_names}
    graph.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(dir=graph.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            # before the export, which leaves the traced module in another state
            expected = model(**enc).last_hidden_state.numpy()
            torch.onnx.export(_Hidden(), args, str(tmp), input_names=list(input_names),
                              output_names=["last_hidden_state"],
                              dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "tokens"}},
                              opset_version=17, dynamo=False)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: enc[n].numpy().astype(np.int64) for n in input_names})[0]
        mask = enc["attention_mask"].numpy()
        error = float(np.abs(_pool(got, mask, pooling, normalize)
                             - _pool(expected, mask, pooling, normalize)).max())
        if not error <= MAX_EXPORT_ERROR:
            raise ModelError(f"the exported encoder differs from PyTorch by {error:.2e}")
        os.chmod(tmp, 0o600)
        os.replace(tmp, graph)
        _write_note(graph, {"source": model_dir.name, "max_error": error, "export_version": EXPORT_VERSION})
    finally:
        tmp.unlink(missing_ok=True)
