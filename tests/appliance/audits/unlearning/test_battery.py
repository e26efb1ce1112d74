"""The audit battery on real, independently trained subjects: the full model is flagged, the
gold model (never trained on the forget set) is not, the same seed gives the same numbers, and
the tests behind the verdicts are calibrated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from appliance.audits.errors import AuditInputError, AuditParameterError
from appliance.audits.registry import create_method
from appliance.audits.unlearning import (
    OVERALL_KNOWLEDGE,
    OVERALL_NONE,
    UnlearningInputs,
    run_battery,
)
from appliance.audits.unlearning.base import compare_items, holm, holm_adjusted
from appliance.audits.unlearning.methods import extraction_strength, rouge_l_recall

FAST = {"relearning": {"steps": 6}, "activation_perturbation": {"draws": 2},
        "knowledge_qa": {"max_new_tokens": 12}}
# the service test runs extraction, membership inference and relearning on the full model
FULL_HERE = ["knowledge_qa", "truth_ratio", "adversarial_prompting", "activation_perturbation",
             "patching_depth"]


def _inputs(s: Any, model: Any) -> UnlearningInputs:
    return UnlearningInputs(model=model, forget=s.forget, holdout=s.holdout, retain=s.retain,
                            reference=s.reference, original=s.full)


@pytest.fixture(scope="module")
def full_battery(audit_subjects: Any) -> Any:
    return run_battery(_inputs(audit_subjects, audit_subjects.full), audits=FULL_HERE,
                       params={k: v for k, v in FAST.items() if k in FULL_HERE}, seed=0)


@pytest.fixture(scope="module")
def gold_battery(audit_subjects: Any) -> Any:
    return run_battery(_inputs(audit_subjects, audit_subjects.gold), params=FAST, seed=0)


def test_the_full_model_is_flagged(full_battery: Any) -> None:
    assert full_battery.verdict == OVERALL_KNOWLEDGE
    # every audit finds the forget set known far beyond the holdout set and the reference
    assert set(full_battery.knowledge_audits) == set(FULL_HERE)
    for name in FULL_HERE:
        result = full_battery.results[name]
        # 8 against 8 people: 1/12870 is the smallest p there is; 1e-3 is far below Holm's 0.05/8
        assert result.p_value < 1e-3, name
        assert result.statistics["statistic_auc"] > 0.9, name
        assert result.statistics["p_unlearned"] > 0.5, name
    qa = full_battery.results["knowledge_qa"].statistics
    # ROUGE-L recall credits the answers' shared words (a model that never saw either set scores
    # about 0.58 on both), so the effect size is read from the answer probability
    assert qa["mean_rouge_l_forget"] > qa["mean_rouge_l_holdout"]
    assert qa["mean_answer_probability_forget"] > 5 * qa["mean_answer_probability_holdout"]
    tr = full_battery.results["truth_ratio"].statistics
    assert tr["mean_truth_ratio_forget"] < 0.5 and tr["forget_quality_ks_p"] < 0.01
    assert full_battery.min_adjusted_p() < 0.05


def test_the_gold_model_is_not_flagged(gold_battery: Any) -> None:
    flagged = {k: p for k, p in gold_battery.adjusted_p_knowledge.items() if p < 0.05}
    assert gold_battery.verdict == OVERALL_NONE, flagged
    assert not gold_battery.knowledge_audits and not gold_battery.unlearned_audits
    mia = gold_battery.results["membership_inference"].statistics
    assert 0.3 <= mia["auc_loss"] <= 0.7 and abs(mia["privleak_loss"]) < 0.3
    assert set(gold_battery.results) == {"extraction", "knowledge_qa", "membership_inference",
                                         "truth_ratio", "adversarial_prompting", "relearning",
                                         "activation_perturbation", "patching_depth"}
    report = gold_battery.to_dict()
    assert "Holm" in report["correction"]
    # the corpus's JSONL names each item's person, so every audit tests 8 against 8 people
    for name, result in gold_battery.results.items():
        assert result.statistics["unit"] == "group", name
        assert result.statistics["n_holdout_groups"] == 8, name
    assert report["audits"]["truth_ratio"]["statistics"]["forget_quality_ks_p"] > 0.05


def test_the_same_seed_gives_the_same_numbers(audit_subjects: Any, gold_battery: Any) -> None:
    again = run_battery(_inputs(audit_subjects, audit_subjects.gold),
                        audits=["relearning", "activation_perturbation"], params=FAST, seed=0)
    for name in ("relearning", "activation_perturbation"):
        first = gold_battery.results[name].to_dict()
        second = again.results[name].to_dict()
        first.pop("timings"), second.pop("timings")
        first["statistics"].pop("probe_seconds", None), second["statistics"].pop("probe_seconds", None)
        first["statistics"].pop("reference_probe_seconds", None)
        second["statistics"].pop("reference_probe_seconds", None)
        assert first == second, name


def test_patching_depth_tests_the_audited_model_alone(audit_subjects: Any,
                                                     gold_battery: Any) -> None:
    s = audit_subjects
    prompts, answers = _inputs(s, s.full).pairs(s.forget[:6])
    plain = [x.normalized_logp for x in s.full.score(prompts, answers)]
    with s.full.read_out_after(s.full.n_layers - 1):  # nothing skipped: the plain output
        assert [x.normalized_logp for x in s.full.score(prompts, answers)] == plain
    with s.full.read_out_after(0):  # the later block skipped: another read-out
        assert [x.normalized_logp for x in s.full.score(prompts, answers)] != plain
    # the tested statistic never involves the original model (which knows the forget set and
    # would make forget and holdout items non-exchangeable under the null): swapping the
    # original for the reference leaves the gold model's p-value as it was
    swapped = UnlearningInputs(model=s.gold, forget=s.forget, holdout=s.holdout,
                               reference=s.reference, original=s.reference)
    result = create_method("unlearning/patching_depth").run(swapped, seed=0)
    tested = gold_battery.results["patching_depth"]
    assert result.p_value == tested.p_value > 0.05
    depth = tested.statistics["depth_readout"]
    assert len(depth["audited_forget"]) == s.gold.n_layers
    assert len(tested.statistics["per_layer"]["audited_forget"]) == s.gold.n_layers


def test_bad_inputs_are_refused(audit_subjects: Any) -> None:
    s = audit_subjects
    with pytest.raises(AuditInputError, match="overlap in 3 item"):
        run_battery(UnlearningInputs(model=s.gold, forget=s.forget,
                                     holdout=[*s.holdout, *s.forget[:3]]), seed=0)
    with pytest.raises(AuditInputError, match="at least 5"):
        run_battery(UnlearningInputs(model=s.gold, forget=s.forget[:4], holdout=s.holdout), seed=0)
    with pytest.raises(AuditInputError, match="past the model's context"):
        run_battery(UnlearningInputs(model=s.gold, forget=s.forget, holdout=s.holdout,
                                     template="{question} " * 40), seed=0)
    with pytest.raises(AuditParameterError, match="needs the original model"):
        run_battery(UnlearningInputs(model=s.gold, forget=s.forget, holdout=s.holdout),
                    audits=["patching_depth"], seed=0)
    with pytest.raises(AuditParameterError, match="unknown audit"):
        run_battery(UnlearningInputs(model=s.gold, forget=s.forget, holdout=s.holdout),
                    audits=["astrology"], seed=0)
    with pytest.raises(AuditParameterError, match="unknown parameter"):
        create_method("unlearning/relearning").run(_inputs(s, s.gold), params={"epochs": 3},
                                                   seed=0)


def test_item_tests_are_calibrated_under_exchangeability() -> None:
    rng = np.random.default_rng(0)
    p_know, p_unl = [], []
    for _ in range(300):
        scores = rng.standard_t(3, size=80)  # heavy tails, as log-probabilities have
        ref = scores + rng.normal(size=80)
        out = compare_items(scores[:40], scores[40:], ref_forget=ref[:40], ref_holdout=ref[40:],
                            alpha=0.05)
        p_know.append(out["p_knowledge"])
        p_unl.append(out["p_unlearned"])
    for p in (np.asarray(p_know), np.asarray(p_unl)):
        assert np.mean(p < 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / len(p))
        assert stats.kstest(p, "uniform").pvalue > 0.001
    shifted = compare_items(rng.normal(1, 1, 40), rng.normal(0, 1, 40), alpha=0.05)
    assert shifted["p_knowledge"] < 0.05 and shifted["verdict"] == "knowledge_detected"
    # grouped items are tested by group: 8 groups of 5 per set, one shared offset per group
    groups = [f"g{i // 5}" for i in range(40)]
    offsets = np.repeat(rng.normal(0, 3, 16), 5)
    by_group = compare_items(offsets[:40] + rng.normal(size=40), offsets[40:] + rng.normal(size=40),
                             forget_groups=groups, holdout_groups=groups, alpha=0.05)
    assert by_group["unit"] == "group" and by_group["n_forget_groups"] == 8


def test_group_level_tests_stay_calibrated_where_item_level_ones_are_not() -> None:
    """Under the null, with a person effect shared by each person's 5 facts (as in the corpus),
    per-item Mann-Whitney rejects far too often; the group-mean test holds its level."""
    rng = np.random.default_rng(1)
    groups = [f"p{i // 5}" for i in range(40)]
    per_item, per_group = [], []
    for _ in range(400):
        scores = np.repeat(rng.normal(0, 2, 16), 5) + rng.normal(size=80)
        per_item.append(compare_items(scores[:40], scores[40:], alpha=0.05)["p_knowledge"])
        per_group.append(compare_items(scores[:40], scores[40:], forget_groups=groups,
                                       holdout_groups=groups, alpha=0.05)["p_knowledge"])
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)
    assert np.mean(np.asarray(per_item) < 0.05) > 2 * bound  # the anti-conservative baseline
    assert np.mean(np.asarray(per_group) < 0.05) <= bound


def test_holm_and_the_scores_follow_their_definitions() -> None:
    p = {"a": 0.01, "b": 0.04, "c": 0.03}
    assert holm(p, 0.05) == {"a": True, "b": False, "c": False}
    assert holm_adjusted(p) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert extraction_strength(np.array([False, True, True, True])) == 0.75
    assert extraction_strength(np.array([True, True, False])) == 0.0
    assert extraction_strength(np.array([True, True])) == 1.0
    assert rouge_l_recall("born in the city of Telmora", "in Telmora") == 1.0
    assert rouge_l_recall("Galt", "in Telmora") == 0.0


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_the_audits_run_on_cuda_with_the_cpu_verdicts(audit_subjects: Any,
                                                      full_battery: Any) -> None:
    import copy

    from models.lm import CausalLM

    s = audit_subjects

    def on_cuda(lm: CausalLM) -> CausalLM:
        return CausalLM(copy.deepcopy(lm.model), lm.tokenizer, device="cuda")

    inputs = UnlearningInputs(model=on_cuda(s.full), forget=s.forget, holdout=s.holdout,
                              retain=s.retain, reference=on_cuda(s.reference),
                              original=on_cuda(s.full))
    names = ["truth_ratio", "activation_perturbation", "patching_depth"]
    battery = run_battery(inputs, audits=names, params={"activation_perturbation": {"draws": 2}},
                          seed=0)
    for name in names:
        assert battery.results[name].verdict == full_battery.results[name].verdict, name
        assert battery.results[name].statistics["statistic_auc"] == pytest.approx(
            full_battery.results[name].statistics["statistic_auc"], abs=0.05)
