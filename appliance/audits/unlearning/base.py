"""What every unlearning audit shares: its inputs, the two one-sided tests over items and the
verdict they give, and Holm's correction for the battery.

Each audit scores every item with the audited model (and with the reference model when one is
given, the item's score becoming the audited-minus-reference gap, which removes what both
models know of an item's wording). Forget and holdout items come from one distribution and the
audited model is trained on neither under the null hypothesis, so their scores are
exchangeable: a one-sided Mann-Whitney U test over items is exact in level, whatever the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from appliance.audits.errors import AuditInputError
from appliance.audits.registry import AuditResult
from models.errors import DatasetError
from models.lm import ContextLengthError
from models.textdata import check_template

if TYPE_CHECKING:
    from models.lm import CausalLM
    from models.textdata import TextRecord

VERDICT_KNOWLEDGE = "knowledge_detected"
VERDICT_UNLEARNED = "detectably_unlearned"
VERDICT_NONE = "no_evidence"
MIN_ITEMS = 5
NULL_HYPOTHESIS = ("the audited model holds no more knowledge of the forget items than of the "
                   "holdout items{ref} (item scores exchangeable between the two sets)")


@dataclass
class UnlearningInputs:
    """The audited model, the forget and holdout sets, and the optional companions.

    ``reference`` is a model trained without the forget set; ``original`` the model before
    unlearning (needed by the patching audit); ``retain`` supplies in-context demonstrations.
    """

    model: CausalLM
    forget: Sequence[TextRecord]
    holdout: Sequence[TextRecord]
    retain: Sequence[TextRecord] = ()
    reference: CausalLM | None = None
    original: CausalLM | None = None
    template: str = "Question: {question}\nAnswer:"
    digests: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse too few items, overlapping sets, a bad template and items past the context."""
        if len(self.forget) < MIN_ITEMS or len(self.holdout) < MIN_ITEMS:
            raise AuditInputError(f"need at least {MIN_ITEMS} forget and {MIN_ITEMS} holdout "
                                  f"items, got {len(self.forget)} and {len(self.holdout)}")
        overlap = {r.key() for r in self.forget} & {r.key() for r in self.holdout}
        if overlap:
            raise AuditInputError(
                f"forget and holdout sets overlap in {len(overlap)} item(s), e.g. "
                f"{sorted(overlap)[0][:80]!r}",
                hint="the holdout set must hold items the model never saw, none of the forget set")
        try:
            check_template(self.template)
        except DatasetError as exc:
            raise AuditInputError(str(exc)) from None
        for model in (self.model, self.reference, self.original):
            if model is None:
                continue
            for records in (self.forget, self.holdout):
                prompts, answers = self.pairs(records)
                try:
                    model.check_lengths(prompts, answers)
                    model.check_lengths(self.pairs(records, paraphrased=True)[0], answers)
                except ContextLengthError as exc:
                    raise AuditInputError(str(exc), hint=exc.hint) from None

    def pairs(self, records: Sequence[TextRecord], *,
              paraphrased: bool = False) -> tuple[list[str], list[str]]:
        """Prompts and answers of ``records`` under the template."""
        pairs = [r.prompt_and_answer(self.template, paraphrased=paraphrased) for r in records]
        return [p for p, _ in pairs], [a for _, a in pairs]


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive score > a negative one), ties counted half (the Mann-Whitney U / n1 n2)."""
    u = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u) / (len(positive) * len(negative))


def group_means(scores: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Mean score per group, in order of first appearance."""
    order = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(order)}
    sums = np.zeros(len(order))
    counts = np.zeros(len(order))
    for score, group in zip(scores, groups, strict=True):
        sums[index[group]] += score
        counts[index[group]] += 1
    return sums / counts


def groups_of(records: Sequence[Any]) -> list[str] | None:
    """The records' groups when every record names one, else None (items are the unit)."""
    groups = [getattr(r, "group", "") for r in records]
    return groups if groups and all(groups) else None


def compare_items(forget: Sequence[float], holdout: Sequence[float], *,
                  ref_forget: Sequence[float] | None = None,
                  ref_holdout: Sequence[float] | None = None,
                  forget_groups: Sequence[str] | None = None,
                  holdout_groups: Sequence[str] | None = None,
                  alpha: float) -> dict[str, Any]:
    """Both one-sided Mann-Whitney tests of forget vs holdout item scores (gaps to the
    reference where given): ``p_knowledge`` (forget higher), ``p_unlearned`` (forget lower).

    With groups on both sides the tested unit is the group (its mean score), since items of one
    group are exchangeable between the sets only together."""
    f = np.asarray(forget, np.float64)
    h = np.asarray(holdout, np.float64)
    if len(f) < MIN_ITEMS or len(h) < MIN_ITEMS:
        raise AuditInputError(f"need at least {MIN_ITEMS} scored items per set, got "
                              f"{len(f)} forget and {len(h)} holdout")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(h))):
        raise AuditInputError("an item score is not finite")
    out: dict[str, Any] = {"n_forget": int(len(f)), "n_holdout": int(len(h)),
                           "auc_forget_vs_holdout": auc(f, h),
                           "mean_forget": float(f.mean()), "mean_holdout": float(h.mean())}
    if ref_forget is not None and ref_holdout is not None:
        rf = np.asarray(ref_forget, np.float64)
        rh = np.asarray(ref_holdout, np.float64)
        out["reference_auc_forget_vs_holdout"] = auc(rf, rh)
        f, h = f - rf, h - rh
        out["auc_gap_forget_vs_holdout"] = auc(f, h)
        out["compared"] = "audited minus reference, forget vs holdout"
    else:
        out["compared"] = "audited, forget vs holdout"
    if forget_groups is not None and holdout_groups is not None:
        f, h = group_means(f, forget_groups), group_means(h, holdout_groups)
        out["unit"] = "group"
        out["n_forget_groups"], out["n_holdout_groups"] = int(len(f)), int(len(h))
        if len(f) < 2 or len(h) < 2:
            raise AuditInputError("testing by group needs at least 2 groups per set")
    else:
        out["unit"] = "item"
    out["statistic_auc"] = auc(f, h)
    out["p_knowledge"] = float(stats.mannwhitneyu(f, h, alternative="greater").pvalue)
    out["p_unlearned"] = float(stats.mannwhitneyu(f, h, alternative="less").pvalue)
    out["verdict"] = verdict(out["p_knowledge"], out["p_unlearned"], alpha)
    return out


def verdict(p_knowledge: float, p_unlearned: float, alpha: float) -> str:
    """One audit's verdict from its two one-sided p-values (each at ``alpha``)."""
    if p_knowledge < alpha:
        return VERDICT_KNOWLEDGE
    if p_unlearned < alpha:
        return VERDICT_UNLEARNED
    return VERDICT_NONE


def holm(p_values: Mapping[str, float], alpha: float) -> dict[str, bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise ``alpha``."""
    order = sorted(p_values, key=lambda k: p_values[k])
    rejected: dict[str, bool] = {k: False for k in p_values}
    m = len(order)
    for rank, key in enumerate(order):
        if p_values[key] < alpha / (m - rank):
            rejected[key] = True
        else:
            break
    return rejected


def holm_adjusted(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (monotone; reject where adjusted p < alpha)."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m = len(order)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted


def rounded(values: Sequence[float] | np.ndarray, digits: int = 5) -> list[float]:
    """JSON-ready floats for a report's plots."""
    return [round(float(v), digits) for v in values]


def make_result(name: str, version: str, *, tested: dict[str, Any], extra: dict[str, Any],
                alpha: float, queries: int, parameters: dict[str, Any],
                timings: dict[str, float], null: str) -> AuditResult:
    """An :class:`AuditResult` whose ``p_value`` is the knowledge test's."""
    statistics = {**tested, **extra, "null_hypothesis": null, "test": "Mann-Whitney U, "
                  "one-sided each way, over items"}
    return AuditResult(method=name, version=version, statistics=statistics,
                       p_value=float(tested["p_knowledge"]), verdict=str(tested["verdict"]),
                       alpha=alpha, queries=queries, parameters=parameters, timings=timings)


def null_statement(has_reference: bool) -> str:
    """The audits' shared null hypothesis, naming the reference model where one is used."""
    return NULL_HYPOTHESIS.format(
        ref=", beyond what the reference model knows of each" if has_reference else "")


__all__ = ["group_means", "groups_of", "MIN_ITEMS", "VERDICT_KNOWLEDGE", "VERDICT_NONE", "VERDICT_UNLEARNED",
           "UnlearningInputs", "auc", "compare_items", "holm", "holm_adjusted",
           "make_result", "null_statement", "rounded", "verdict"]
