"""The transformers backend: a validated local directory (config, safetensors weights, a fast
tokenizer), never remote code; text classifiers, encoders and causal LMs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.device import choose_device
from models.engine.base import LoadedModel, Progress, _as_texts, _batches, _check_batch_size
from models.errors import ModelFormatError
from models.rng import isolated_global_rng

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
            with isolated_global_rng():  # initialisers of missing weights draw from it
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
