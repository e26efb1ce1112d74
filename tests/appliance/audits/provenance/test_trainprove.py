"""TrainProVe on real, independently trained models: a suspect trained on the generator's
samples is consistent, a randomly initialised one is not, different suspects give different
statistics, and attribution names the right source."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from appliance.audits.errors import AuditParameterError, QueryBudgetExceeded
from appliance.audits.provenance.trainprove import (
    VERDICT_CONSISTENT,
    VERDICT_NOT_FROM_GENERATOR,
    ProvenanceEvidence,
    ProvenanceInputs,
    ReferenceSet,
    TrainProVe,
    contrast_value,
    smoothed_logit,
)
from appliance.audits.registry import create_method
from models.generators import fit_linear_gaussian
from models.provenance import (
    ShadowSpec,
    balanced_labels,
    digits_provenance_splits,
    draw_sets,
    shadow_pool_specs,
    shadow_proba,
    train_shadow,
    train_shadow_pool,
)

torch.set_num_threads(1)
SPECS = shadow_pool_specs(4, seed=0, epochs=15, train_size=600)


def _evidence(name: str, generator: Any, seed: int) -> ProvenanceEvidence:
    sets = draw_sets(generator, num_classes=10, n_shadow=60, n_val=100, batches=20, seed=seed)
    shadows = train_shadow_pool(generator, sets, SPECS, num_classes=10, seed=seed)
    return ProvenanceEvidence(name, sets.val_x, sets.val_y, sets.batches,
                              [shadow_proba(m) for m in shadows], [s.to_dict() for s in SPECS])


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    parts = digits_provenance_splits(seed=0)
    owner = fit_linear_gaussian(*parts[0])
    other = fit_linear_gaussian(*parts[1], z_dim=24)
    own_x = owner.sample(balanced_labels(10, 60), seed=77, temperature=1.0)
    suspects = {
        "owner_data": train_shadow(own_x, balanced_labels(10, 60),
                                   ShadowSpec("mlp", {"hidden": 96}, epochs=12, lr=3e-3, seed=5), num_classes=10),
        "random_init": train_shadow(own_x[:2], np.array([0, 1]), ShadowSpec("mlp", {"hidden": 64}, epochs=0, seed=9),
                                    num_classes=10),
        "real_data": train_shadow(*parts[3], ShadowSpec("mlp", {"hidden": 64}, epochs=15, seed=6), num_classes=10),
    }
    return {"owner": _evidence("owner", owner, 0), "other": _evidence("other", other, 10),
            "suspects": {k: shadow_proba(m) for k, m in suspects.items()}}


def _run(world: dict[str, Any], suspect: str, *, sources: tuple[str, ...] = ("owner",),
         kind: str = "label", **params: Any) -> Any:
    proba = world["suspects"][suspect]
    fn = proba if kind == "proba" else (lambda x: proba(x).argmax(axis=1))
    inputs = ProvenanceInputs([world[s] for s in sources], fn, suspect_kind=kind)  # type: ignore[arg-type]
    return create_method("trainprove").run(inputs, params=params, seed=0)


def test_suspect_trained_on_generator_data_is_consistent(world) -> None:
    result = _run(world, "owner_data", decision="model_level")
    assert result.verdict == VERDICT_CONSISTENT, result.statistics
    assert result.statistics["decision"] == "model_level"
    assert result.statistics["G"] < result.statistics["G_crit"]
    assert result.statistics["n"] == 5  # four shadow models + the suspect
    source = result.statistics["sources"][0]
    assert source["calibrated"]["n"] == 81 and source["paper"]["n"] == 21  # 4 x 20 batches; one shadow's
    assert len(source["shadow_model_values"]) == 4 and len(set(source["shadow_model_values"])) > 1
    assert result.queries == 1000


def test_random_suspect_is_not_from_the_generator(world) -> None:
    for decision, n in (("model_level", 5), ("calibrated", 81), ("paper", 21)):
        result = _run(world, "random_init", decision=decision)
        assert result.verdict == VERDICT_NOT_FROM_GENERATOR
        assert result.statistics["G"] > result.statistics["G_crit"]
        assert result.statistics["n"] == n


def test_pool_shadows_vary_recipe_and_training_draw() -> None:
    specs = shadow_pool_specs(6, seed=3)
    assert specs[0] == ShadowSpec("mlp", {"hidden": 64}, epochs=20, seed=3)  # the paper's shadow
    assert {s.architecture for s in specs[1:]} == {"mlp", "small_cnn"}
    assert len({(s.lr, s.weight_decay, s.epochs) for s in specs[1:]}) == 5
    assert [s.data_draw for s in specs] == list(range(6)) and len({s.seed for s in specs}) == 6
    assert shadow_pool_specs(6, seed=3) == specs and shadow_pool_specs(6, seed=4) != specs


def test_statistics_come_from_the_suspect(world) -> None:
    a = _run(world, "owner_data").statistics
    b = _run(world, "real_data").statistics
    assert a["suspect_value"] != b["suspect_value"] and a["G"] != b["G"]
    assert a["sources"][0]["shadow_batch_values"] == b["sources"][0]["shadow_batch_values"]


def test_probability_variants(world) -> None:
    # the paper's entropy test: an untrained net is unsure everywhere (this tiny pool's shadows,
    # 60 samples per class, are themselves too unsure for the model-level entropy test to tell)
    entropy = _run(world, "random_init", kind="proba", variant="entropy", decision="paper")
    assert entropy.verdict == VERDICT_NOT_FROM_GENERATOR
    similarity = _run(world, "owner_data", kind="proba", variant="similarity")
    assert similarity.statistics["sources"][0]["paper"] is None
    assert len(similarity.statistics["sources"][0]["shadow_model_values"]) == 3  # shadow 0 is the anchor
    assert _run(world, "random_init", kind="proba", variant="similarity").verdict == VERDICT_NOT_FROM_GENERATOR
    with pytest.raises(AuditParameterError):
        _run(world, "owner_data", variant="entropy")  # labels cannot give an entropy


def test_attribution_names_the_source(world) -> None:
    result = _run(world, "owner_data", sources=("other", "owner"))
    assert result.verdict == "owner" and result.statistics["best_source"] == "owner"
    assert result.queries == 2000
    assert _run(world, "random_init", sources=("other", "owner")).statistics["consistent_sources"] == []


def test_budget_is_enforced(world) -> None:
    fn = world["suspects"]["owner_data"]
    inputs = ProvenanceInputs([world["owner"]], fn, suspect_kind="proba", query_budget=999)
    with pytest.raises(QueryBudgetExceeded):
        TrainProVe().run(inputs, seed=0)


def _real_reference() -> ReferenceSet:
    x, y = digits_provenance_splits(seed=0)[1]
    return ReferenceSet("real", x, y)


def test_contrast_test_needs_a_reference(world) -> None:
    with pytest.raises(AuditParameterError, match="reference"):
        _run(world, "owner_data", decision="contrast")


def test_contrast_test_against_real_reference_data(world) -> None:
    refs = [_real_reference()]
    stats = {}
    for name in ("owner_data", "random_init", "real_data"):
        proba = world["suspects"][name]
        inputs = ProvenanceInputs([world["owner"]], lambda x, p=proba: p(x).argmax(axis=1), references=refs)
        result = create_method("trainprove").run(inputs, params={"decision": "contrast"}, seed=0)
        stats[name] = result
        source = result.statistics["sources"][0]
        assert source["references"] == ["real"] and len(source["shadow_contrast_values"]) == 4
        assert result.statistics["n"] == 5 and result.queries == 1000 + len(refs[0].y)
    assert stats["owner_data"].verdict == VERDICT_CONSISTENT, stats["owner_data"].statistics
    assert stats["random_init"].verdict == VERDICT_NOT_FROM_GENERATOR  # at chance: no skill to contrast
    assert stats["random_init"].statistics["sources"][0]["contrast"]["mode"] == "prediction_interval+chance"
    # a suspect trained on real digits is better on real digits than the owner's shadows are
    assert stats["real_data"].statistics["G"] > stats["owner_data"].statistics["G"]
    assert stats["real_data"].statistics["sources"][0]["suspect_reference_accuracy"] != \
        stats["owner_data"].statistics["sources"][0]["suspect_reference_accuracy"]


def test_contrast_attribution_uses_the_other_sources(world) -> None:
    result = _run(world, "owner_data", sources=("other", "owner"), decision="contrast")
    by_name = {s["source"]: s for s in result.statistics["sources"]}
    assert by_name["owner"]["references"] == ["other"] and by_name["other"]["references"] == ["owner"]
    assert by_name["owner"]["contrast"]["n"] == 5
    assert result.queries == 2000  # the other source's validation set is asked once


def test_contrast_value_cancels_a_common_log_odds_shift() -> None:
    # acc = sigmoid(a_X + q): the contrast is a_d - a_ref whatever q (up to the 1/2 smoothing)
    def correct(log_odds: float, n: int = 4000) -> np.ndarray:
        k = round(n / (1 + np.exp(-log_odds)))
        return np.arange(n) < k
    values = [contrast_value(correct(1.5 + q), correct(0.5 + q)) for q in (-1.0, 0.0, 1.0)]
    assert np.allclose(values, 1.0, atol=0.01)
    assert smoothed_logit(0, 10) < 0 < smoothed_logit(10, 10)
