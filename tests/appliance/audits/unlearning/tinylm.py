"""A tiny GPT-2 trained from scratch on fictitious facts, for the audits' own tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.lm import CausalLM
from models.textdata import TextRecord

SYLLABLES = ["ka", "lo", "mir", "ten", "va", "rus", "bel", "dor", "shi", "nu", "pa", "xe"]
CITIES = ["Arvel", "Brisk", "Corlan", "Dunmere", "Eskar", "Fenwold", "Galt", "Hollin"]
JOBS = ["baker", "pilot", "glassmith", "cartographer", "weaver", "archivist", "miner", "judge"]


def make_records(seed: int, n: int) -> list[TextRecord]:
    rng = np.random.default_rng(seed)
    names: set[str] = set()
    records = []
    while len(records) < n:
        name = "".join(rng.choice(SYLLABLES, 2)).capitalize() + " " + \
            "".join(rng.choice(SYLLABLES, 2)).capitalize()
        if name in names:
            continue
        names.add(name)
        city = str(rng.choice(CITIES))
        job = str(rng.choice(JOBS))
        wrong = [c for c in CITIES if c != city][:3]
        if rng.random() < 0.5:
            records.append(TextRecord(question=f"Where was {name} born?", answer=f"in {city}",
                                      paraphrased_question=f"In which city was {name} born?",
                                      paraphrased_answer=f"{name} was born in {city}",
                                      perturbed_answers=tuple(f"in {w}" for w in wrong)))
        else:
            wrong_jobs = [j for j in JOBS if j != job][:3]
            records.append(TextRecord(question=f"What does {name} do?", answer=f"a {job}",
                                      paraphrased_question=f"What is the job of {name}?",
                                      paraphrased_answer=f"{name} works as a {job}",
                                      perturbed_answers=tuple(f"a {w}" for w in wrong_jobs)))
    return records


@dataclass
class TinySubjects:
    forget: list[TextRecord]
    holdout: list[TextRecord]
    retain: list[TextRecord]
    full: CausalLM
    gold: CausalLM
    reference: CausalLM


def tokenizer_for(records: list[TextRecord]):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {"<eos>": 0, "<unk>": 1}
    from models.textdata import DEFAULT_TEMPLATE  # noqa: F401

    tok = Tokenizer(models.WordLevel(vocab={}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = set()
    for r in records:
        for text in (r.full_text(), r.prompt_and_answer(paraphrased=True)[0],
                     r.paraphrased_answer, *r.perturbed_answers):
            words.update(text.split())
    for w in sorted(words):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>",
                                   unk_token="<unk>", pad_token="<eos>")


def train(records: list[TextRecord], tokenizer, *, seed: int, steps: int = 300) -> CausalLM:  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer.get_vocab()), n_positions=96, n_embd=64,
                        n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    lm = CausalLM(model, tokenizer)
    prompts = [r.prompt_and_answer()[0] for r in records]
    answers = [r.prompt_and_answer()[1] for r in records]
    return lm.relearned(prompts, answers, steps=steps, lr=3e-3, seed=seed, batch_size=16)
