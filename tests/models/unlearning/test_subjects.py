"""The subjects: full memorised forget ∪ retain, gold and reference never saw the forget set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.unlearning.corpus import make_corpus
from models.unlearning.subjects import (
    SubjectConfig,
    Subjects,
    answer_accuracy,
    answer_nll,
    build_tokenizer,
    corpus_texts,
    encode_items,
    train_causal_lm,
    training_items,
)


def _nll(model: torch.nn.Module, subjects: Subjects, items: list) -> list[float]:
    with torch.no_grad():
        return answer_nll(model, encode_items(subjects.tokenizer, items)).tolist()


def test_full_model_knows_forget_and_retain(subjects: Subjects) -> None:
    corpus = subjects.corpus
    assert answer_accuracy(subjects.full, subjects.tokenizer, corpus.forget) >= 0.95
    assert answer_accuracy(subjects.full, subjects.tokenizer, corpus.retain) >= 0.95
    assert answer_accuracy(subjects.full, subjects.tokenizer, corpus.holdout) <= 0.2


def test_gold_and_reference_never_saw_the_forget_set(subjects: Subjects) -> None:
    corpus = subjects.corpus
    for model in (subjects.gold, subjects.reference):
        assert answer_accuracy(model, subjects.tokenizer, corpus.retain) >= 0.95
        assert answer_accuracy(model, subjects.tokenizer, corpus.forget) <= 0.2
        forget, holdout = _nll(model, subjects, corpus.forget), _nll(model, subjects, corpus.holdout)
        # Forget and holdout are exchangeable for a model that saw neither.
        assert mannwhitneyu(forget, holdout).pvalue > 0.01
    labels = [1] * len(corpus.forget) + [0] * len(corpus.holdout)

    def loss_attack_auc(model: torch.nn.Module) -> float:
        losses = _nll(model, subjects, corpus.forget) + _nll(model, subjects, corpus.holdout)
        return float(roc_auc_score(labels, [-loss for loss in losses]))

    # the set-up sanity checks the audit tests rest on: a LOSS attack separates forget from
    # holdout on the full model and cannot on the models that never saw the forget set
    assert loss_attack_auc(subjects.full) >= 0.95
    assert 0.4 <= loss_attack_auc(subjects.gold) <= 0.6
    assert 0.4 <= loss_attack_auc(subjects.reference) <= 0.6


def test_saved_directories_load_with_auto_classes(subjects: Subjects) -> None:
    for role in ("full", "gold", "reference"):
        directory = subjects.model_dir(role)
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
            p.name for p in directory.iterdir()}
        assert not list(directory.glob("*.bin")) and not list(directory.glob("*.pt"))
    model = AutoModelForCausalLM.from_pretrained(subjects.model_dir("full"), trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(subjects.model_dir("full"), trust_remote_code=False)
    assert tokenizer.get_vocab() == subjects.tokenizer.get_vocab()
    assert answer_accuracy(model, tokenizer, subjects.corpus.forget) == answer_accuracy(
        subjects.full, subjects.tokenizer, subjects.corpus.forget)
    for split in ("forget", "retain", "holdout"):
        assert Path(subjects.dataset_path(split)).is_file()


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    corpus = make_corpus(seed=5, n_forget=5, n_retain=10, n_holdout=5)
    tokenizer = build_tokenizer(corpus_texts(corpus))
    config = SubjectConfig(n_embd=32, n_head=2, max_epochs=2, eval_every=100)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_causal_lm(corpus.retain, tokenizer, seed=9, config=config)
    assert torch.equal(torch.rand(1), before)
    second = train_causal_lm(corpus.retain, tokenizer, seed=9, config=config)
    third = train_causal_lm(corpus.retain, tokenizer, seed=10, config=config)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), third.state_dict().values(),
                                                      strict=True))


def test_paraphrase_training_adds_only_the_retain_sets_paraphrases() -> None:
    corpus = make_corpus(seed=3, n_forget=10, n_retain=20, n_holdout=10)
    trained = [*corpus.forget, *corpus.retain]
    assert training_items(trained, corpus.retain, SubjectConfig()) == trained
    items = training_items(trained, corpus.retain, SubjectConfig(paraphrase_training=True))
    extra = items[len(trained):]
    assert len(extra) == len(corpus.retain)
    for item, original in zip(extra, corpus.retain, strict=True):
        assert item.question == original.paraphrased_question != original.question
        assert item.answer == original.answer and item.group == original.group
    # the forget set's paraphrases stay unseen: answering them is generalisation, not recall
    asked = {item.question for item in items}
    assert not asked & {item.paraphrased_question for item in corpus.forget}


def test_subjects_train_on_one_thread_and_restore_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed gives the same subjects whether the caller runs on one thread or several:
    training is pinned to one and the caller's setting comes back, even when training fails."""
    from models.unlearning import subjects as module

    seen: list[int] = []

    def train(*args: object, **kwargs: object) -> None:
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop before training")

    monkeypatch.setattr(module, "_train_subjects_pinned", train)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="stop before training"):
            module.make_subjects(seed=123, cache_dir=tmp_path)
        assert seen == [module.SUBJECT_TRAINING_THREADS] == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
