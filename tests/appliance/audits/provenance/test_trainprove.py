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
    TrainProVe,
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
