"""The unlearning algorithms: each lowers forget accuracy at matched utility, deterministically."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.unlearning.algorithms import RECIPES, create_algorithm, list_algorithms, unlearn
from models.unlearning.subjects import Subjects, answer_accuracy

#: One case per algorithm with its published recipe (learning rate, step budget, retain weight:
#: models.unlearning.algorithms.RECIPES, tuned on the benchmark's seed-0 subjects, never on these);
#: IdK also runs its DPO variant (the one with a reference model to get wrong), whose preference
#: loss needs a larger step than the SFT recipe's.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("grad_ascent", {}), ("grad_diff", {}), ("kl_min", {}), ("npo", {}), ("idk", {}), ("rmu", {}),
    ("idk", {"variant": "dpo", "beta": 1.0, "lr": 3e-3}),
]


def test_registry_lists_six_algorithms_and_refuses_unknown_names() -> None:
    assert list_algorithms() == ["grad_ascent", "grad_diff", "idk", "kl_min", "npo", "rmu"]
    with pytest.raises(ValueError, match="unknown unlearning algorithm 'sgd'; known algorithms: grad_ascent"):
        create_algorithm("sgd")
    with pytest.raises(ValueError, match=r"unknown options \['gamma'\] for algorithm 'npo'"):
        create_algorithm("npo", gamma=1.0)
    with pytest.raises(ValueError, match="variant"):
        create_algorithm("idk", variant="rlhf")
    algorithm = create_algorithm("npo", beta=0.5)
    again = create_algorithm("npo")
    again.load_state_dict(algorithm.state_dict())
    assert again.options["beta"] == 0.5


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{o.get('variant', '')}" for n, o in CASES])
def test_algorithm_forgets_at_matched_utility(subjects: Subjects, name: str, options: dict[str, Any]) -> None:
    corpus, tokenizer = subjects.corpus, subjects.tokenizer
    before = [p.detach().clone() for p in subjects.full.parameters()]
    lr, steps, recipe = RECIPES[name]
    options = dict(options)
    lr = options.pop("lr", lr)
    model, report = unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm=name,
                            steps=steps, lr=lr, seed=0, lr_factors=(1.0, 0.5), **{**recipe, **options})
    assert report["before"]["forget_accuracy"] >= 0.95
    # gradient ascent has no retain term, only the utility floor stops it: on these subjects it
    # ends between 0.6 and 0.68 (the benchmark's: 0.43); the others reach 0.6 with room to spare
    bound = 0.75 if name == "grad_ascent" else 0.6
    assert answer_accuracy(model, tokenizer, corpus.forget) == report["forget_accuracy"] <= bound
    assert answer_accuracy(model, tokenizer, corpus.retain) == report["retain_accuracy"] >= 0.9
    assert not report["unchanged"] and report["chosen_step"] >= 1
    assert all(torch.equal(a, b) for a, b in zip(before, subjects.full.parameters(), strict=True))


def test_same_seed_same_weights_and_a_collapse_is_never_returned(subjects: Subjects) -> None:
    corpus, tokenizer = subjects.corpus, subjects.tokenizer
    runs = [unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm="npo", steps=6, lr=2e-4,
                    seed=seed, eval_every=3, lr_factors=(1.0,)) for seed in (1, 1, 2)]
    first, second, other = (run.model.state_dict() for run in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert runs[0].report == {**runs[1].report, "seconds": runs[0].report["seconds"]}
    # A learning rate so high that every checkpoint collapses retain: the original weights come back.
    collapsed = unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm="grad_ascent", steps=2,
                        lr=0.5, seed=0, eval_every=1, lr_factors=(1.0,))
    assert collapsed.report["unchanged"] and collapsed.report["retain_accuracy"] >= 0.9
    assert all(torch.equal(a, b) for a, b in zip(collapsed.model.parameters(), subjects.full.parameters(),
                                                 strict=True))


def test_bad_arguments_are_refused(subjects: Subjects) -> None:
    corpus, tokenizer = subjects.corpus, subjects.tokenizer
    with pytest.raises(ValueError, match="unknown unlearning algorithm"):
        unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm="nope")
    with pytest.raises(ValueError, match="steps"):
        unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm="npo", steps=0)
    with pytest.raises(ValueError, match="non-empty forget"):
        unlearn(subjects.full, tokenizer, [], corpus.retain, algorithm="npo")
    with pytest.raises(ValueError, match="unknown options"):
        unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm="rmu", beta=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unlearning_runs_on_cuda(subjects: Subjects) -> None:
    import copy

    corpus, tokenizer = subjects.corpus, subjects.tokenizer
    model = copy.deepcopy(subjects.full).to("cuda")
    result = unlearn(model, tokenizer, corpus.forget, corpus.retain, algorithm="grad_diff", steps=30, lr=2e-4,
                     seed=0, lr_factors=(1.0,))
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.report["forget_accuracy"] <= 0.6 and result.report["retain_accuracy"] >= 0.9
