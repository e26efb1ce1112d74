"""Small GPT-2 subjects trained from scratch on the fictitious-facts corpus.

    subjects = make_subjects(seed=0, cache_dir=tmp)      # trains once, then loads from disk
    answer_accuracy(subjects.full, subjects.tokenizer, subjects.corpus.forget)   # ~1.0
    answer_accuracy(subjects.gold, subjects.tokenizer, subjects.corpus.forget)   # ~chance

``full`` saw forget ∪ retain, ``gold`` only retain (the model a perfect unlearning would give),
``reference`` only retain with another seed (the independent control audits compare against).
All three share one word-level tokenizer built offline over the corpus, so no hub is needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from models.rng import seeded_global_rng
from models.unlearning.corpus import (
    IDK_ANSWERS,
    PROMPT_TEMPLATE,
    Corpus,
    QAItem,
    format_prompt,
    make_corpus,
    read_jsonl,
    write_jsonl,
)

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
EOS_TOKEN = "<|endoftext|>"
_SUBJECTS_VERSION = "3"  # 2: the JSONL carries each item's group (its person); 3: one training thread


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer whose vocabulary is every word and punctuation mark in ``texts``.

    Trained offline with the ``tokenizers`` library; words it never saw map to ``<unk>``.
    """
    core = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD_TOKEN, UNK_TOKEN, EOS_TOKEN], min_frequency=1)
    core.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
        eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, padding_side="right",
    )


def corpus_texts(corpus: Corpus) -> list[str]:
    """Every string a tokenizer for ``corpus`` must cover (prompts, answers, paraphrases, refusals)."""
    texts = [PROMPT_TEMPLATE.format(question=""), *IDK_ANSWERS]
    for item in corpus.all_items():
        texts += [item.question, item.answer, item.paraphrased_question, item.paraphrased_answer,
                  *item.perturbed_answers]
    return [text for text in texts if text]


@dataclass(frozen=True)
class SubjectConfig:
    """Architecture and training budget of a subject (a GPT-2 with no dropout)."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64
    learning_rate: float = 5e-3
    batch_size: int = 32
    max_epochs: int = 150
    eval_every: int = 2
    target_accuracy: float = 1.0
    device: str = "cpu"
    #: also train on the retain set's paraphrased questions (with the original answers), so a
    #: model learns that a paraphrase asks for the same fact and answers the forget set's
    #: paraphrases by generalisation (the forget set's paraphrases are never trained on)
    paraphrase_training: bool = False


@dataclass
class EncodedBatch:
    """Right-padded token ids, attention mask, and labels that score the answer (and EOS) only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: str | torch.device) -> EncodedBatch:
        """The same batch on ``device``."""
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, *,
                add_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of ``prompt`` + " " + ``answer`` (+ EOS) and the index where the answer starts.

    Prompt and answer are tokenized separately so the boundary is exact for any tokenizer.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer_ids = list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    if add_eos:
        answer_ids.append(int(tokenizer.eos_token_id))
    return prompt_ids + answer_ids, len(prompt_ids)


def encode_items(tokenizer: PreTrainedTokenizerBase, items: Sequence[QAItem], *,
                 template: str = PROMPT_TEMPLATE, answers: Sequence[str] | None = None,
                 max_length: int | None = None) -> EncodedBatch:
    """Encode ``items`` (their own answers, or ``answers`` in their place) as one padded batch.

    Passage items (no question) are scored on every token. Raises ``ValueError`` when a
    sequence is longer than ``max_length``.
    """
    rows: list[tuple[list[int], int]] = []
    for index, item in enumerate(items):
        answer = item.answer if answers is None else answers[index]
        if item.question:
            rows.append(encode_pair(tokenizer, format_prompt(item.question, template), answer))
        else:
            ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [int(tokenizer.eos_token_id)]
            rows.append((ids, 0))
    longest = max(len(ids) for ids, _ in rows)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a sequence of {longest} tokens exceeds the model's context of {max_length}")
    pad_id = int(tokenizer.pad_token_id)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    for row, (ids, answer_start) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        labels[row, answer_start:len(ids)] = torch.tensor(ids[answer_start:])
    return EncodedBatch(input_ids, attention, labels)


def token_logprobs(model: torch.nn.Module, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels ([n, T-1]) and the mask of scored positions."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    targets = batch.labels[:, 1:]
    mask = targets != -100
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def answer_nll(model: torch.nn.Module, batch: EncodedBatch) -> torch.Tensor:
    """Mean negative log-likelihood per answer token, one value per sequence ([n])."""
    picked, mask = token_logprobs(model, batch)
    return -picked.sum(-1) / mask.sum(-1).clamp(min=1)


@torch.no_grad()
def answer_correct(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[QAItem], *,
                   template: str = PROMPT_TEMPLATE, batch_size: int = 64) -> list[bool]:
    """Whether greedy decoding from each item's prompt reproduces its answer exactly.

    Computed in one teacher-forced pass: greedy decoding yields the answer if and only if the
    argmax at every answer position is the answer's next token (EOS excluded, so a model
    that answers correctly and then rambles still counts as knowing the fact).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    verdicts: list[bool] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = encode_items(tokenizer, chunk, template=template).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        targets = batch.labels[:, 1:]
        scored = (targets != -100) & (targets != tokenizer.eos_token_id)
        hits = (logits.argmax(-1) == targets) | ~scored
        verdicts += [bool(row) for row in hits.all(-1).tolist()]
    model.train(was_training)
    return verdicts


def answer_accuracy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[QAItem], *,
                    template: str = PROMPT_TEMPLATE) -> float:
    """Fraction of ``items`` whose answer greedy decoding reproduces exactly (see :func:`answer_correct`)."""
    if not items:
        raise ValueError("answer_accuracy needs at least one item")
    verdicts = answer_correct(model, tokenizer, items, template=template)
    return sum(verdicts) / len(verdicts)


def new_model(tokenizer: PreTrainedTokenizerFast, config: SubjectConfig, *, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 for ``tokenizer``; the seed fixes the weights, global RNG untouched."""
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with seeded_global_rng(seed):
        return GPT2LMHeadModel(gpt2)


def paraphrased_items(items: Sequence[QAItem]) -> list[QAItem]:
    """``items`` asked by their paraphrased question, answered with the original answer
    (items without a paraphrase are left out)."""
    return [replace(item, question=item.paraphrased_question) for item in items
            if item.question and item.paraphrased_question]


def training_items(trained: Sequence[QAItem], retain: Sequence[QAItem],
                   config: SubjectConfig) -> list[QAItem]:
    """What a subject trained on ``trained`` sees: those items, plus the retain set's
    paraphrases when ``config.paraphrase_training`` is set."""
    extra = paraphrased_items(retain) if config.paraphrase_training else []
    return [*trained, *extra]


def train_causal_lm(items: Sequence[QAItem], tokenizer: PreTrainedTokenizerFast, *, seed: int,
                    config: SubjectConfig | None = None) -> GPT2LMHeadModel:
    """Train a small GPT-2 from scratch to memorise the answers of ``items``.

    AdamW on the answer tokens, shuffled by a seeded ``torch.Generator``; stops at the first
    evaluation where training accuracy reaches ``config.target_accuracy`` or after
    ``config.max_epochs``. Same seed, items and config give the same weights.
    """
    config = config or SubjectConfig()
    if not items:
        raise ValueError("train_causal_lm needs at least one item")
    model = new_model(tokenizer, config, seed=seed)
    model.to(torch.device(config.device))  # type: ignore[arg-type]  # transformers types .to() too narrowly
    data = encode_items(tokenizer, items, max_length=config.n_positions)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    warmup = steps_per_epoch * 2
    step = 0
    model.train()
    for epoch in range(1, config.max_epochs + 1):
        order = torch.randperm(len(items), generator=generator)
        for start in range(0, len(items), config.batch_size):
            picked = order[start:start + config.batch_size]
            batch = EncodedBatch(data.input_ids[picked], data.attention_mask[picked],
                                 data.labels[picked]).to(config.device)
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * min(1.0, (step + 1) / warmup)
            loss = answer_nll(model, batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
        if epoch % config.eval_every == 0 and answer_accuracy(model, tokenizer, items) >= config.target_accuracy:
            break
    model.eval()
    return model


def save_model_dir(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path | str) -> Path:
    """Write a transformers directory: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.

    Loadable with ``AutoModelForCausalLM.from_pretrained(path)`` and
    ``AutoTokenizer.from_pretrained(path)``, no remote code and no pickle.
    """
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if not (target / required).is_file():
            raise RuntimeError(f"save_model_dir did not write {required} in {target}")
    return target


def load_model_dir(path: Path | str, *, device: str = "cpu") -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load a directory written by :func:`save_model_dir` (safetensors only, no remote code)."""
    target = Path(path)
    model = GPT2LMHeadModel.from_pretrained(target, use_safetensors=True, local_files_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target, local_files_only=True)
    model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to() too narrowly
    return model.eval(), tokenizer


@dataclass
class Subjects:
    """The corpus, its tokenizer, and the full / gold / reference models (with their directories)."""

    seed: int
    corpus: Corpus
    tokenizer: PreTrainedTokenizerFast
    full: GPT2LMHeadModel
    gold: GPT2LMHeadModel
    reference: GPT2LMHeadModel
    directory: Path
    config: SubjectConfig = field(default_factory=SubjectConfig)

    def model_dir(self, role: str) -> Path:
        """The saved transformers directory of ``role`` ("full", "gold" or "reference")."""
        if role not in ("full", "gold", "reference"):
            raise ValueError(f"role must be 'full', 'gold' or 'reference', got {role!r}")
        return self.directory / role

    def dataset_path(self, split: str) -> Path:
        """The JSONL file of ``split`` ("forget", "retain" or "holdout")."""
        if split not in ("forget", "retain", "holdout"):
            raise ValueError(f"split must be 'forget', 'retain' or 'holdout', got {split!r}")
        return self.directory / f"{split}.jsonl"


def _derived_seed(seed: int, role: str) -> int:
    digest = hashlib.sha256(f"unlearning-subject-{role}-{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def default_cache_dir() -> Path:
    """Where subjects are cached: ``$APPLIANCE_UNLEARNING_CACHE`` or the user's cache folder."""
    configured = os.environ.get("APPLIANCE_UNLEARNING_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "audit-appliance" / "unlearning-subjects"


def make_subjects(*, seed: int, cache_dir: Path | str | None = None, n_forget: int = 40, n_retain: int = 160,
                  n_holdout: int = 40, config: SubjectConfig | None = None) -> Subjects:
    """Train (or load from ``cache_dir``) the full, gold and reference subjects of ``seed``.

    The cache key covers the seed, the split sizes, the config and this module's version, so a
    changed recipe never loads stale weights. The models are saved with safetensors.
    """
    config = config or SubjectConfig()
    recipe = {"version": _SUBJECTS_VERSION, "seed": seed, "sizes": [n_forget, n_retain, n_holdout],
              "config": asdict(config)}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = root / f"seed{seed}-{key}"
    if not (directory / "recipe.json").is_file():
        _train_subjects(directory, recipe, seed=seed, sizes=(n_forget, n_retain, n_holdout), config=config)
    corpus = Corpus(*(read_jsonl(directory / f"{split}.jsonl") for split in ("forget", "retain", "holdout")))
    full, tokenizer = load_model_dir(directory / "full", device=config.device)
    gold, _ = load_model_dir(directory / "gold", device=config.device)
    reference, _ = load_model_dir(directory / "reference", device=config.device)
    return Subjects(seed=seed, corpus=corpus, tokenizer=tokenizer, full=full, gold=gold,
                    reference=reference, directory=directory, config=config)


#: Subjects train on one CPU thread whatever the caller set: float sums reduce in another order
#: on more threads, so the same seed gave different subjects in a test folder run alone (two
#: threads) and in the whole suite (where other modules set one thread first).
SUBJECT_TRAINING_THREADS = 1


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, restoring the caller's setting after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_subjects(directory: Path, recipe: dict[str, object], *, seed: int, sizes: tuple[int, int, int],
                    config: SubjectConfig) -> None:
    with _torch_threads(SUBJECT_TRAINING_THREADS):
        _train_subjects_pinned(directory, recipe, seed=seed, sizes=sizes, config=config)


def _train_subjects_pinned(directory: Path, recipe: dict[str, object], *, seed: int,
                           sizes: tuple[int, int, int], config: SubjectConfig) -> None:
    corpus = make_corpus(seed=seed, n_forget=sizes[0], n_retain=sizes[1], n_holdout=sizes[2])
    tokenizer = build_tokenizer(corpus_texts(corpus))
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        for split in ("forget", "retain", "holdout"):
            write_jsonl(getattr(corpus, split), staging / f"{split}.jsonl")
        trained = {
            "full": train_causal_lm(training_items([*corpus.forget, *corpus.retain], corpus.retain, config),
                                    tokenizer, seed=_derived_seed(seed, "full"), config=config),
            "gold": train_causal_lm(training_items(corpus.retain, corpus.retain, config), tokenizer,
                                    seed=_derived_seed(seed, "gold"), config=config),
            "reference": train_causal_lm(training_items(corpus.retain, corpus.retain, config), tokenizer,
                                         seed=_derived_seed(seed, "reference"), config=config),
        }
        for role, model in trained.items():
            save_model_dir(model.cpu(), tokenizer, staging / role)
        (staging / "recipe.json").write_text(json.dumps(recipe, sort_keys=True, indent=1))
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / "recipe.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
