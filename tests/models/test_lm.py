"""models.lm: scoring matches a plain forward pass, hooks perturb and patch as stated, relearning
leaves the source untouched, and bad folders are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import ModelFormatError
from models.lm import CausalLM, ContextLengthError, check_causal_lm_dir

TEXTS = ["Question: Where was Ana Lor born?\nAnswer:", "Question: What does Bel Dor do?\nAnswer:"]
ANSWERS = [" in Telmora", " a glassmith"]


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({w for t in TEXTS + ANSWERS for w in t.replace("?", " ? ").replace(":", " : ")
                    .split()} | {"?", ":"})
    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<eos>",
                                        unk_token="<unk>", pad_token="<eos>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=24, n_embd=32, n_layer=3, n_head=2)
    return CausalLM(GPT2LMHeadModel(config), tokenizer)


def test_scores_are_the_answer_tokens_log_probabilities(lm: CausalLM) -> None:
    scores = lm.score(TEXTS, ANSWERS)
    ids = lm.tokenizer(TEXTS[0] + ANSWERS[0], add_special_tokens=False)["input_ids"]
    n_answer = len(lm.tokenizer(ANSWERS[0], add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    np.testing.assert_allclose(scores[0].logp, logp[-n_answer:].numpy(), rtol=1e-5, atol=1e-5)
    assert len(scores[1].logp) == 2 and np.all(scores[0].std > 0)
    # padding in a batch does not change an item's scores
    alone = lm.score(TEXTS[1:], ANSWERS[1:])[0]
    np.testing.assert_allclose(alone.logp, scores[1].logp, rtol=1e-5, atol=1e-5)


def test_noise_is_seeded_and_zero_noise_changes_nothing(lm: CausalLM) -> None:
    clean = lm.score(TEXTS, ANSWERS)[0].logp
    with lm.noise([0.0] * lm.n_layers, seed=1):
        np.testing.assert_allclose(lm.score(TEXTS, ANSWERS)[0].logp, clean, atol=1e-6)
    runs = []
    for seed in (1, 1, 2):
        with lm.noise([0.5] * lm.n_layers, seed=seed):
            runs.append(lm.score(TEXTS, ANSWERS)[0].logp)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2]) and not np.allclose(runs[0], clean)
    np.testing.assert_allclose(lm.score(TEXTS, ANSWERS)[0].logp, clean, atol=1e-6)  # hooks gone


def test_patching_a_block_with_its_own_states_is_the_identity(lm: CausalLM) -> None:
    clean = lm.score(TEXTS, ANSWERS)
    states = lm.layer_outputs(TEXTS, ANSWERS)
    assert len(states) == lm.n_layers and len(lm.layer_spreads(TEXTS, ANSWERS)) == lm.n_layers
    with lm.patch(1, states[1]):
        patched = lm.score(TEXTS, ANSWERS, batch_size=2)
    np.testing.assert_allclose(patched[0].logp, clean[0].logp, atol=1e-5)
    with lm.patch(1, torch.zeros_like(states[1])):
        zeroed = lm.score(TEXTS, ANSWERS, batch_size=2)
    assert not np.allclose(zeroed[0].logp, clean[0].logp)


def test_relearning_returns_a_tuned_copy(lm: CausalLM) -> None:
    before = lm.score(TEXTS, ANSWERS)[0].normalized_logp
    tuned = lm.relearned(TEXTS, ANSWERS, steps=5, lr=1e-2, seed=0)
    again = lm.relearned(TEXTS, ANSWERS, steps=5, lr=1e-2, seed=0)
    assert tuned.score(TEXTS, ANSWERS)[0].normalized_logp > before
    assert lm.score(TEXTS, ANSWERS)[0].normalized_logp == before
    np.testing.assert_array_equal(tuned.score(TEXTS, ANSWERS)[0].logp,
                                  again.score(TEXTS, ANSWERS)[0].logp)
    assert lm.greedy(TEXTS[:1], max_new_tokens=3) == lm.greedy(TEXTS[:1], max_new_tokens=3)


def test_items_past_the_context_are_refused(lm: CausalLM) -> None:
    with pytest.raises(ContextLengthError, match="past the model's context of 24"):
        lm.score([TEXTS[0] * 3], ANSWERS[:1])


def test_folders_that_are_not_safe_causal_lms_are_refused(lm: CausalLM, tmp_path: Path) -> None:
    folder = tmp_path / "lm"
    lm.model.save_pretrained(folder, safe_serialization=True)
    lm.tokenizer.save_pretrained(folder)
    check_causal_lm_dir(folder)
    assert CausalLM.from_dir(folder, device="cpu").n_layers == 3
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelFormatError, match="remote code"):
        check_causal_lm_dir(folder)
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    with pytest.raises(ModelFormatError, match="not a causal language model"):
        check_causal_lm_dir(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match="no tokenizer.json"):
        check_causal_lm_dir(folder)
