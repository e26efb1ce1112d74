"""A causal language model behind the queries and hooks the unlearning audits need.

Black-box queries (:meth:`CausalLM.score`, :meth:`CausalLM.greedy`) see only token
probabilities and text; white-box tools (:meth:`CausalLM.layer_outputs`,
:meth:`CausalLM.noise`, :meth:`CausalLM.patch`, :meth:`CausalLM.relearned`) use forward hooks
on the transformer blocks. Nothing here imports :mod:`appliance`.

    lm = CausalLM.from_dir(path, device="auto")
    scores = lm.score(["Question: Who?\\nAnswer:"], ["Alice"])
    scores[0].logp  # log p(answer token | prompt, earlier answer tokens)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from models.errors import ModelError, ModelFormatError, ShapeError

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class ContextLengthError(ShapeError):
    """A prompt and its answer together are longer than the model's context window."""

    hint = "shorten the items or raise the model's n_positions / max_position_embeddings"


@dataclass(frozen=True)
class TokenScores:
    """Per answer token: log-probability, the mean and standard deviation of the log-probability
    under the model's next-token distribution (Min-K%++), and whether greedy decoding would
    pick the token given the true prefix."""

    logp: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    top1: np.ndarray

    @property
    def normalized_logp(self) -> float:
        """Mean log-probability per answer token (log of TOFU's length-normalised probability)."""
        return float(self.logp.mean()) if len(self.logp) else 0.0


def check_causal_lm_dir(model_dir: Path) -> None:
    """Refuse a folder that is not a causal LM with a local fast tokenizer and no remote code."""
    from models.formats import validate_transformers_dir

    validate_transformers_dir(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if not any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures):
        raise ModelFormatError(
            f"not a causal language model: config.json lists architectures {architectures}",
            hint="unlearning audits need a *ForCausalLM or *LMHeadModel transformers model")
    if "auto_map" in config:
        raise ModelFormatError("config.json asks for remote code (auto_map); refused",
                               hint="use a model whose architecture ships with transformers")
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelFormatError("the model folder has no tokenizer.json (a fast tokenizer)",
                               hint="save the tokenizer with tokenizer.save_pretrained(folder)")
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            parsed = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"tokenizer_config.json is not valid JSON: {exc}") from exc
        if isinstance(parsed, dict) and "auto_map" in parsed:
            raise ModelFormatError("tokenizer_config.json asks for remote code (auto_map); "
                                   "refused")


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks, in order (the ModuleList as long as its layer count)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ModelFormatError("cannot find the transformer blocks of this model for hooks")


def _replace_output(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _hidden(output: Any) -> torch.Tensor:
    return cast("torch.Tensor", output[0] if isinstance(output, tuple) else output)


class CausalLM:
    """A transformers causal LM and its tokenizer on one device, in eval mode."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        config = model.config
        limits = [v for v in (getattr(config, "n_positions", None),
                              getattr(config, "max_position_embeddings", None))
                  if isinstance(v, int) and v > 0]
        self.max_length = min(limits) if limits else 1024
        self.blocks = _blocks(model)
        self.n_layers = len(self.blocks)
        self._patch: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_dir(cls, model_dir: Path, *, device: str | None = None) -> CausalLM:
        """Load a local causal LM folder (safetensors only, never remote code)."""
        from models.engine import TransformersModel

        check_causal_lm_dir(Path(model_dir))
        loaded = TransformersModel(Path(model_dir), device=device)
        if loaded.kind != "causal_lm":
            raise ModelFormatError("not a causal language model")
        return cls(loaded.model, loaded.tokenizer, device=loaded.device)

    def vocabulary_digest(self) -> str:
        """A digest of the tokenizer's vocabulary (patching needs the same one on both sides)."""
        import hashlib

        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()

    # -- tokens ------------------------------------------------------------------------------
    def _ids(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """Token ids of prompt + answer and the index of the first answer token."""
        prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) \
            if prompt else []
        if not prompt_ids:
            # a bare text starts after the beginning-of-text token, so its first word is scored
            # too; prompts are not given one (models are trained on prompts as written)
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is None:
                bos = getattr(self.tokenizer, "eos_token_id", None)
            if bos is not None:
                prompt_ids = [int(bos)]
        answer_ids = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not prompt_ids:  # nothing to condition the first token on: it is not scored
            prompt_ids, answer_ids = answer_ids[:1], answer_ids[1:]
        ids = prompt_ids + answer_ids
        if len(ids) > self.max_length:
            raise ContextLengthError(
                f"an item is {len(ids)} tokens long, past the model's context of "
                f"{self.max_length}: {(prompt + answer)[:60]!r}")
        return ids, len(prompt_ids)

    def _batch(self, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                list[tuple[int, int]]]:
        encoded = [self._ids(p, a) for p, a in pairs]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        spans = []
        for row, (seq, start) in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
            spans.append((start, len(seq)))
        return ids.to(self.device), mask.to(self.device), spans

    def check_lengths(self, prompts: Sequence[str], answers: Sequence[str]) -> None:
        """Raise :class:`ContextLengthError` if any prompt + answer is past the context."""
        for prompt, answer in zip(prompts, answers, strict=True):
            self._ids(prompt, answer)

    # -- black-box queries ---------------------------------------------------------------------
    def score(self, prompts: Sequence[str], answers: Sequence[str], *,
              batch_size: int = 16) -> list[TokenScores]:
        """Score each answer given its prompt (answers are scored as written, so a leading
        space belongs to the answer)."""
        if len(prompts) != len(answers):
            raise ShapeError("prompts and answers differ in length")
        results: list[TokenScores] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                pairs = list(zip(prompts[start:start + batch_size],
                                 answers[start:start + batch_size], strict=True))
                ids, mask, spans = self._batch(pairs)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                logp_all = torch.log_softmax(logits[:, :-1], dim=-1)
                targets = ids[:, 1:]
                token_logp = logp_all.gather(2, targets.unsqueeze(-1)).squeeze(-1)
                probs = logp_all.exp()
                mean = (probs * logp_all).sum(-1)
                var = (probs * logp_all.square()).sum(-1) - mean.square()
                std = var.clamp(min=1e-12).sqrt()
                top1 = logp_all.argmax(-1) == targets
                for row, (first, end) in enumerate(spans):
                    span = slice(first - 1, end - 1)
                    results.append(TokenScores(
                        logp=token_logp[row, span].cpu().numpy().astype(np.float64),
                        mean=mean[row, span].cpu().numpy().astype(np.float64),
                        std=std[row, span].cpu().numpy().astype(np.float64),
                        top1=top1[row, span].cpu().numpy()))
        return results

    def greedy(self, prompts: Sequence[str], *, max_new_tokens: int, stop: str = "\n",
               batch_size: int = 16) -> list[str]:
        """Greedy continuations of each prompt, cut at ``stop`` or the end-of-text token.

        Prompts are left-padded into batches with explicit positions, so each continuation is
        what the prompt alone would give."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        pad = self.tokenizer.pad_token_id
        pad = int(pad if pad is not None else (eos if eos is not None else 0))
        outputs: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                encoded = [self._ids(p, "")[0] for p in prompts[start:start + batch_size]]
                width = max(len(ids) for ids in encoded)
                steps = max(0, min(max_new_tokens, self.max_length - width))
                ids = torch.full((len(encoded), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, seq in enumerate(encoded):
                    ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq):] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                generated = torch.empty((len(encoded), 0), dtype=torch.long, device=self.device)
                # no key-value cache: answers are short, and full passes keep to the one
                # forward signature every causal LM in transformers shares
                for _ in range(steps):
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = self.model(input_ids=ids, attention_mask=mask,
                                        position_ids=positions).logits[:, -1]
                    token = logits.argmax(-1, keepdim=True)
                    generated = torch.cat([generated, token], dim=1)
                    ids = torch.cat([ids, token], dim=1)
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                for row in generated.tolist():
                    if eos is not None and eos in row:
                        row = row[: row.index(eos)]
                    text = self.tokenizer.decode(row, skip_special_tokens=True)
                    outputs.append(text.split(stop)[0] if stop else text)
        return outputs

    # -- white-box hooks ------------------------------------------------------------------------
    def layer_outputs(self, prompts: Sequence[str], answers: Sequence[str]) -> list[torch.Tensor]:
        """Each block's output hidden states ``[n, T, d]`` for the padded batch of items."""
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(_hidden(output).detach())

        handles = [block.register_forward_hook(keep) for block in self.blocks]
        try:
            ids, mask, _ = self._batch(list(zip(prompts, answers, strict=True)))
            with torch.inference_mode():
                self.model(input_ids=ids, attention_mask=mask)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def layer_spreads(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """Standard deviation of each block's output over all real tokens and features."""
        _, mask, _ = self._batch(list(zip(prompts, answers, strict=True)))
        outputs = self.layer_outputs(prompts, answers)
        keep = mask.bool()
        return [float(h[keep].float().std()) for h in outputs]

    @contextmanager
    def noise(self, stds: Sequence[float], *, seed: int) -> Iterator[None]:
        """Add Gaussian noise of standard deviation ``stds[l]`` to block ``l``'s output
        (0 leaves the block alone); the draw is fixed by ``seed`` per block and shape, so every
        item of a batch and every call sees the same noise for the same token position."""
        if len(stds) != self.n_layers:
            raise ShapeError(f"need {self.n_layers} noise levels, one per block")
        handles = []
        config: Any = self.model.config
        width = int(getattr(config, "hidden_size", 0) or config.n_embd)
        # one draw per position up to the context, so a token's noise does not depend on how
        # long the padded batch around it is
        draws = {layer: torch.randn((self.max_length, width), generator=torch.Generator(
            device="cpu").manual_seed(seed * 1009 + layer)) for layer, std in enumerate(stds)
            if std > 0}
        for layer, std in enumerate(stds):
            if std <= 0:
                continue

            def add(_module: nn.Module, _inputs: Any, output: Any, *, layer: int = layer,
                    std: float = float(std)) -> Any:
                hidden = _hidden(output)
                draw = draws[layer][: hidden.shape[1]]
                return _replace_output(output, hidden + std * draw.to(hidden.device, hidden.dtype))

            handles.append(self.blocks[layer].register_forward_hook(add))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def patch(self, layer: int, hidden: torch.Tensor) -> Iterator[None]:
        """Replace block ``layer``'s output with ``hidden`` (same batch and shape)."""
        def swap(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            current = _hidden(output)
            if current.shape != hidden.shape:
                raise ShapeError(f"patch shape {tuple(hidden.shape)} does not fit "
                                 f"{tuple(current.shape)}")
            return _replace_output(output, hidden.to(current.device, current.dtype))

        handle = self.blocks[layer].register_forward_hook(swap)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def read_out_after(self, layer: int) -> Iterator[None]:
        """Skip every block after ``layer``: each passes its input through unchanged, so the
        residual stream after block ``layer`` goes straight to the final norm and the head (the
        model's own read-out of what that depth already holds)."""
        if not 0 <= layer < self.n_layers:
            raise ShapeError(f"layer must lie in 0..{self.n_layers - 1}")

        def through(_module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]
            return _replace_output(output, hidden)

        handles = [block.register_forward_hook(through, with_kwargs=True)
                   for block in self.blocks[layer + 1:]]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- relearning -------------------------------------------------------------------------------
    def relearned(self, prompts: Sequence[str], answers: Sequence[str], *, steps: int,
                  lr: float, seed: int, batch_size: int = 8) -> CausalLM:
        """A copy fine-tuned for ``steps`` AdamW steps on the answers (prompt tokens masked);
        this model is left as it was."""
        if steps < 1 or not prompts:
            raise ModelError("relearning needs at least one step and one item")
        model = copy.deepcopy(self.model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        pairs = list(zip(prompts, answers, strict=True))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(steps):
                order = torch.randperm(len(pairs), generator=generator)[:batch_size].tolist()
                ids, mask, spans = self._batch([pairs[i] for i in order])
                labels = torch.full_like(ids, -100)
                for row, (first, end) in enumerate(spans):
                    labels[row, first:end] = ids[row, first:end]
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return CausalLM(model.eval(), self.tokenizer, device=self.device)


__all__ = ["CausalLM", "ContextLengthError", "TokenScores", "check_causal_lm_dir"]
