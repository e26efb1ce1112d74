"""TrainProVe (CVPR 2025): was a suspect classifier trained on data from the owner's generator?

Given a validation set drawn from the generator and cut into class-balanced batches, and
shadow classifiers trained on a shadow set drawn from it, the reference sample is the
shadows' statistic per validation batch; the suspect's statistic on the whole validation
set is tested as a Grubbs outlier of that sample (:mod:`.grubbs`). Variants:

* ``accuracy`` (labels suffice): the suspect's accuracy, a *low* outlier -> not G_d data;
* ``entropy`` (probabilities): mean prediction entropy, a *high* outlier -> not G_d data;
* ``similarity`` (probabilities, >= 2 shadows): mean cosine similarity of the suspect's
  probabilities to the first shadow's, a *low* outlier; the reference sample is the other
  shadows' similarity to the first, per batch.

Three reference samples are reported (the paper's for ``accuracy`` and ``entropy`` only):

* ``paper``: one shadow's per-batch statistics (batch-to-batch spread only), Grubbs;
* ``calibrated``: every shadow's per-batch statistics pooled, Grubbs;
* ``model_level`` (>= 2 reference models): one value per shadow *model*, its statistic on the
  whole validation set, and the suspect's value tested as a designated value outside the
  one-sided prediction interval of that sample (:func:`.grubbs.prediction_interval_outlier`,
  ``T ~ t_{m-1}``). The suspect is one more independently trained model, so the right null
  spread is the spread between models (architecture, recipe, training draw), not between
  batches of one model's answers; with shadows of varied recipes, each trained on its own draw
  from the generator, the suspect is exchangeable with them under "trained on G_d data" and
  the test has level alpha up to the normal approximation.

* ``contrast`` (accuracy variant; needs reference sets: the other candidate sources' validation
  sets and/or real data the owner supplies): one value per model,
  ``c(f) = logit acc_f(V_d) - logit acc_f(V_ref)`` (log-odds smoothed by ``(k + 1/2)/(n + 1)``;
  ``V_ref`` the reference sets pooled), tested like ``model_level``: the suspect's ``c`` against
  the shadows' ``c`` values, ``T = (mean_ref - c_s) / (sd_ref * sqrt(1 + 1/m)) > t_{1-alpha, m-1}``
  -> "not G_d". *Null*: the suspect was trained on G_d data, i.e. it is one more draw of the
  (recipe, training draw) distribution the shadow pool samples; given the fixed validation and
  reference sets its ``c`` and the shadows' are then i.i.d., so ``T ~ t_{m-1}`` (exactly, for
  normal ``c``) and the test has level alpha. *Why the contrast*: raw accuracy on G_d samples
  confounds "trained on G_d" with "how well trained" (an under-trained true suspect scores below
  well-trained suspects of other sources). If ``logit acc_X(f) = a_X + q_f + e`` with ``q_f``
  the model's overall skill, ``c(f) = a_d - a_ref + (e_d - e_ref)`` and ``q_f`` cancels, so the
  pool need not match the suspects' training budgets. Under the alternative (trained on another
  source) the suspect's advantage on G_d relative to the reference is smaller: a low outlier.
  The reference sets need no shadows of their own (the null only concerns G_d-trained models).
  A suspect no better than chance on ``V_d`` (one-sided binomial test at alpha) has no skill to
  contrast and is judged "not G_d" (mode ``prediction_interval+chance``); under the null this
  adds the probability that a G_d-trained model is at chance on G_d samples, nil in practice.

* ``error_location`` (accuracy variant, labels suffice, >= 3 shadows): *where* the suspect errs on
  the owner's validation set, given *how often*. Each model's true-class log-margin on sample
  ``i`` is ``mu_i = log p_y(i) - max_{c != y} log p_c(i)``; a model errs exactly where its margin is
  negative, so its ``k`` errors are its ``k`` lowest-margin samples. The statistic of a model is
  ``A = P(s_j < s_l)`` for ``j`` one of its errors and ``l`` one of its correct samples (Mann-Whitney
  AUC, ties 1/2), ``s`` the reference shadows' mean margin: high when it errs where G_d-trained
  models are least sure. The suspect's ``A`` uses all ``m`` shadows; the null sample holds, for
  each shadow ``j``, the ``A`` of *its* ``k`` lowest-margin samples (``k`` = the suspect's error
  count) against the other ``m - 1`` shadows' mean margin; the suspect's ``A`` is tested as a low
  outlier of those ``m`` values with the one-sided prediction interval (``T ~ t_{m-1}``).
  *Null*: the suspect was trained on G_d data, and a more or less trained model of that kind
  differs mainly by a shift of its margins (``mu_f = mu + b_f + noise``, the per-sample form of the
  skill term that the contrast test assumes per set); then the suspect's error set is the bottom-``k``
  set of a margin vector exchangeable with the shadows', each shadow's bottom-``k`` set is a draw of
  the same law, and the test has level alpha up to the normal approximation (and the ``O(1/m)``
  difference between an ``m``- and an ``(m-1)``-shadow reference). *Why*: conditioning on ``k``
  takes out how well the suspect was trained, which is what confounds the accuracy tests at the
  ceiling; a model trained on another source errs on G_d samples that look unlike *its* data, which
  G_d-trained models often find easy. A suspect without errors has nothing to locate (statistic
  0, p = 1, "consistent"); one no better than chance is "not G_d" (as for ``contrast``).

* ``error_location_hot`` (as ``error_location``, plus a *hot-probe* set: samples the audit draws
  from the generator at a high temperature, queried too): the error-location statistic on the
  validation set (``A_s``, null values ``A_j``) and on the hot probes (``H_s``, ``H_j``, with the
  suspect's error count there) are each standardised by the mean and sd of their own null values,
  ``z = (A - mean A_j) / sd A_j``, and summed; the suspect's sum ``z_A + z_H`` is tested once, as a
  low outlier of the shadows' sums ``z_{A,j} + z_{H,j}`` with the one-sided prediction interval.
  One test, not a union of two, so the level stays alpha (up to the normal approximation, as for
  ``error_location``): each shadow's pair is computed the same way as the suspect's, so the
  correlation between the two parts is in the null sample. *Why*: at high temperature the
  generator's samples are harder, so even suspects that make no or few errors on the validation
  set err on the probes, and where they err carries the same evidence. A suspect without errors
  on the validation set is "consistent" as for ``error_location``; where the probes give nothing
  to locate (no error or only errors there) or a part's null values do not spread, the
  validation set's test decides alone; the chance rule applies.

The verdict follows ``decision``. ``"auto"`` (the default) takes the error-location test where
it applies (accuracy variant, at least three shadows) and the pooled Grubbs test ("calibrated")
otherwise: on the digits benchmark both keep false "not G_d" verdicts near alpha on both source
sets, and the error-location test is the more powerful by far (0.953 and 0.917 accuracy against
0.880 and 0.557 on the held-out suspects). ``error_location_hot`` is an option, not the default:
it stayed calibrated on the held-out suspects, but whether it beat ``error_location`` depended on
which hot probes were drawn (suspect seed 3: 0.964 and 0.943 with one draw, 0.948 and 0.891 with
the appliance's own, against 0.953 and 0.906). The model-level and contrast tests' calibration
depends on how well the shadow pool's recipes cover the suspects': under-training lowers a
model's accuracy on its own source far more than on others, so the contrast does not cancel it
at the accuracy ceiling. The report names the test that decided.

:func:`attribute` runs the test against several candidate sources and names the one that
explains the suspect best (smallest statistic among the sources it is consistent with).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from scipy import stats as _st

from appliance.audits.errors import AuditInputError, AuditParameterError
from appliance.audits.provenance.grubbs import (
    Direction,
    GrubbsMode,
    GrubbsResult,
    grubbs_outlier,
    prediction_interval_outlier,
)
from appliance.audits.registry import AuditMethod, AuditResult, LogFn, ProgressFn, register_method
from appliance.audits.suspects import CountedQuery

VERDICT_NOT_FROM_GENERATOR = "not_trained_on_generator_data"
VERDICT_CONSISTENT = "consistent_with_generator_data"
VERDICT_NO_SOURCE = "no_candidate_explains_the_suspect"
Variant = Literal["accuracy", "entropy", "similarity"]
Decision = Literal["auto", "error_location_hot", "error_location", "contrast", "model_level", "calibrated", "paper"]
DECISIONS = ("auto", "error_location_hot", "error_location", "contrast", "model_level", "calibrated", "paper")
ProbaFn = Callable[[np.ndarray], np.ndarray]
_DIRECTION: dict[str, Direction] = {"accuracy": "low", "entropy": "high", "similarity": "low"}


@dataclass(frozen=True)
class ReferenceSet:
    """Labelled samples of a reference source for the contrast test: another candidate
    generator's validation set, or real data the owner supplies."""

    name: str
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def of(cls, evidence: ProvenanceEvidence) -> ReferenceSet:
        """A source's validation set as a reference for the other sources."""
        return cls(evidence.name, evidence.val_x, evidence.val_y)

    def check(self) -> None:
        """Refuse an empty, ragged or non-finite reference with :class:`AuditInputError`."""
        if len(self.x) == 0 or len(self.x) != len(self.y):
            raise AuditInputError(f"reference {self.name!r}: samples and labels are empty or differ in length")
        if not np.isfinite(self.x).all():
            raise AuditInputError(f"reference {self.name!r}: samples contain NaN or infinity")


def smoothed_logit(correct: int, total: int) -> float:
    """``logit((correct + 1/2) / (total + 1))``: the log-odds of an accuracy, finite at 0 and 1."""
    p = (correct + 0.5) / (total + 1.0)
    return float(np.log(p / (1.0 - p)))


def contrast_value(correct_owner: np.ndarray, correct_reference: np.ndarray) -> float:
    """The contrast statistic of one model: log-odds of its accuracy on the owner's validation set
    minus log-odds of its accuracy on the reference samples (pooled)."""
    return smoothed_logit(int(np.sum(correct_owner)), len(correct_owner)) - \
        smoothed_logit(int(np.sum(correct_reference)), len(correct_reference))


def true_class_margins(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y - max_{c != y} log p_c`` per sample (probabilities clipped at 1e-12): ``[..., n]``
    for probabilities ``[..., n, C]``; negative exactly where the model's label is wrong."""
    q = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    n = q.shape[-2]
    idx = np.arange(n)
    own = q[..., idx, labels]
    rest = q.copy()
    rest[..., idx, labels] = -np.inf
    return np.asarray(own - rest.max(axis=-1))


def error_location_auc(errors: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney ``P(score at an error < score at a correct sample)``, ties counted 1/2;
    NaN when every sample or none is an error."""
    err = np.asarray(errors, dtype=bool)
    k, n = int(err.sum()), len(err)
    if k == 0 or k == n:
        return float("nan")
    ranks = _st.rankdata(score)
    above = float(ranks[err].sum()) - k * (k + 1) / 2.0  # (error, correct) pairs with a higher error score
    return 1.0 - above / (k * (n - k))


def error_location_values(shadow_probs: Sequence[np.ndarray], labels: np.ndarray,
                          suspect_errors: np.ndarray) -> tuple[float, list[float]]:
    """The suspect's error-location AUC against all shadows' mean margin, and each shadow's
    (its ``k`` lowest-margin samples, ``k`` the suspect's error count) against the others'.
    Needs at least two shadows and ``0 < k < n``."""
    margins = true_class_margins(np.stack(list(shadow_probs)), labels)  # [m, n]
    m, n = margins.shape
    k = int(np.sum(suspect_errors))
    suspect = error_location_auc(suspect_errors, margins.mean(axis=0))
    null = []
    for j in range(m):
        chosen = np.zeros(n, dtype=bool)
        chosen[np.argsort(margins[j], kind="stable")[:k]] = True
        null.append(error_location_auc(chosen, np.delete(margins, j, axis=0).mean(axis=0)))
    return suspect, null


@dataclass
class ProvenanceEvidence:
    """One source's validation data and its shadows' probability functions.

    ``batches`` are index arrays into ``val_x`` (class-balanced); ``shadows[0]`` is the
    paper's single shadow; ``shadow_info`` describes them for the report.
    """

    name: str
    val_x: np.ndarray
    val_y: np.ndarray
    batches: list[np.ndarray]
    shadows: list[ProbaFn]
    shadow_info: list[dict[str, Any]] = field(default_factory=list)
    #: hot probes: samples drawn from the generator at a high temperature, with their labels
    #: (the ``error_location_hot`` test); ``None`` for a source without them (real data)
    probe_x: np.ndarray | None = None
    probe_y: np.ndarray | None = None
    _probs: list[np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)
    _probe_probs: list[np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)
    _ref_correct: dict[str, list[np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def shadow_probabilities(self) -> list[np.ndarray]:
        """Each shadow's probabilities on ``val_x``, computed once (every suspect reuses them)."""
        if self._probs is None:
            self._probs = [np.asarray(fn(self.val_x), dtype=np.float64) for fn in self.shadows]
        return self._probs

    @property
    def has_probes(self) -> bool:
        """Whether the source carries a hot-probe set."""
        return self.probe_x is not None and self.probe_y is not None

    def shadow_probe_probabilities(self) -> list[np.ndarray]:
        """Each shadow's probabilities on ``probe_x``, computed once."""
        if self.probe_x is None:
            raise AuditInputError(f"source {self.name!r} has no hot-probe set")
        if self._probe_probs is None:
            self._probe_probs = [np.asarray(fn(self.probe_x), dtype=np.float64) for fn in self.shadows]
        return self._probe_probs

    def shadow_correct_on(self, reference: ReferenceSet) -> list[np.ndarray]:
        """Each shadow's per-sample correctness on a reference set, computed once per name."""
        if reference.name not in self._ref_correct:
            self._ref_correct[reference.name] = [
                np.asarray(fn(reference.x)).argmax(axis=1) == reference.y for fn in self.shadows]
        return self._ref_correct[reference.name]

    def check(self) -> None:
        """Refuse inconsistent evidence with :class:`AuditInputError`."""
        if not self.shadows:
            raise AuditInputError(f"source {self.name!r} has no shadow model")
        if len(self.val_x) != len(self.val_y) or len(self.val_x) == 0:
            raise AuditInputError(f"source {self.name!r}: validation samples and labels differ in length")
        if len(self.batches) < 2:
            raise AuditInputError(f"source {self.name!r} needs at least two validation batches")
        if not np.isfinite(self.val_x).all():
            raise AuditInputError(f"source {self.name!r}: validation samples contain NaN or infinity")
        if (self.probe_x is None) != (self.probe_y is None):
            raise AuditInputError(f"source {self.name!r}: hot probes need both samples and labels")
        if self.probe_x is not None and self.probe_y is not None:
            if len(self.probe_x) != len(self.probe_y) or len(self.probe_x) == 0:
                raise AuditInputError(f"source {self.name!r}: hot-probe samples and labels differ in length")
            if not np.isfinite(self.probe_x).all():
                raise AuditInputError(f"source {self.name!r}: hot-probe samples contain NaN or infinity")


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return np.asarray(-(q * np.log(q)).sum(axis=1))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(na * nb, 1e-12))


def _per_sample(variant: str, probs: np.ndarray, labels: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
    if variant == "accuracy":
        return cast("np.ndarray", (probs.argmax(axis=1) == labels).astype(np.float64))
    if variant == "entropy":
        return _entropy(probs)
    assert anchor is not None
    return _cosine(probs, anchor)


@dataclass(frozen=True)
class SourceTest:
    """The tests of one suspect against one source."""

    source: str
    variant: str
    suspect_value: float
    paper: GrubbsResult | None
    calibrated: GrubbsResult
    decision: str
    shadow_batch_values: list[list[float]]
    model_level: GrubbsResult | None = None
    shadow_model_values: list[float] = field(default_factory=list)
    contrast: GrubbsResult | None = None
    shadow_contrast_values: list[float] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    suspect_reference_accuracy: float | None = None
    error_location: GrubbsResult | None = None
    shadow_error_location_values: list[float] = field(default_factory=list)
    error_location_hot: GrubbsResult | None = None
    shadow_error_location_hot_values: list[float] = field(default_factory=list)

    @property
    def chosen(self) -> GrubbsResult:
        """The result the verdict follows."""
        if self.decision == "error_location_hot" and self.error_location_hot is not None:
            return self.error_location_hot
        if self.decision == "error_location" and self.error_location is not None:
            return self.error_location
        if self.decision == "contrast" and self.contrast is not None:
            return self.contrast
        if self.decision == "model_level" and self.model_level is not None:
            return self.model_level
        return self.paper if self.decision == "paper" and self.paper is not None else self.calibrated

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the report's per-source statistics)."""
        return {
            "source": self.source, "variant": self.variant, "suspect_value": self.suspect_value,
            "decision": self.decision, "G": self.chosen.statistic, "G_crit": self.chosen.critical,
            "n": self.chosen.n, "p_value": self.chosen.p_value, "outlier": self.chosen.outlier,
            "paper": self.paper.to_dict() if self.paper else None,
            "calibrated": self.calibrated.to_dict(),
            "model_level": self.model_level.to_dict() if self.model_level else None,
            "shadow_model_values": self.shadow_model_values,
            "contrast": self.contrast.to_dict() if self.contrast else None,
            "shadow_contrast_values": self.shadow_contrast_values, "references": self.references,
            "suspect_reference_accuracy": self.suspect_reference_accuracy,
            "error_location": self.error_location.to_dict() if self.error_location else None,
            "shadow_error_location_values": self.shadow_error_location_values,
            "error_location_hot": self.error_location_hot.to_dict() if self.error_location_hot else None,
            "shadow_error_location_hot_values": self.shadow_error_location_hot_values,
            "shadow_batch_values": self.shadow_batch_values,
        }


def evaluate_source(
    evidence: ProvenanceEvidence,
    suspect_answers: np.ndarray,
    *,
    variant: Variant,
    alpha: float,
    decision: Decision = "auto",
    mode: GrubbsMode = "table",
    references: Sequence[ReferenceSet] = (),
    reference_answers: Sequence[np.ndarray] = (),
    probe_answers: np.ndarray | None = None,
) -> SourceTest:
    """Test the suspect's answers on ``evidence.val_x`` against the shadows' batches (Grubbs),
    against the shadow models (prediction interval) and, given reference sets and the suspect's
    answers on them, the contrast test (accuracy variant; see the module).

    ``suspect_answers`` are labels ``[n]`` (accuracy only) or probabilities ``[n, C]``.
    ``decision="model_level"`` needs at least two reference models (three shadows for the
    similarity variant, whose first shadow is the anchor); ``"contrast"`` needs the accuracy
    variant, at least two shadows and at least one reference set.
    """
    evidence.check()
    if decision not in DECISIONS:
        raise AuditParameterError(f"decision must be one of {list(DECISIONS)}, got {decision!r}")
    if len(references) != len(reference_answers):
        raise AuditInputError("one set of suspect answers is needed per reference set")
    if variant not in _DIRECTION:
        raise AuditParameterError(f"variant must be one of {sorted(_DIRECTION)}, got {variant!r}")
    if variant != "accuracy" and suspect_answers.ndim != 2:
        raise AuditInputError(f"the {variant} variant needs the suspect's probabilities, not labels")
    if variant == "similarity" and len(evidence.shadows) < 2:
        raise AuditParameterError("the similarity variant needs at least two shadows")
    shadow_probs = evidence.shadow_probabilities()
    anchor = shadow_probs[0] if variant == "similarity" else None
    per_model = shadow_probs[1:] if variant == "similarity" else shadow_probs
    batch_values = [
        [float(_per_sample(variant, p[b], evidence.val_y[b], None if anchor is None else anchor[b]).mean())
         for b in evidence.batches]
        for p in per_model
    ]
    if suspect_answers.ndim == 1:
        suspect_value = float((suspect_answers == evidence.val_y).mean())
    else:
        suspect_value = float(_per_sample(variant, suspect_answers, evidence.val_y, anchor).mean())
    direction = _DIRECTION[variant]
    paper = None if variant == "similarity" else grubbs_outlier(
        batch_values[0], suspect_value, direction=direction, alpha=alpha, mode=mode)
    pooled = [v for values in batch_values for v in values]
    calibrated = grubbs_outlier(pooled, suspect_value, direction=direction, alpha=alpha, mode=mode)
    model_values = [
        float(_per_sample(variant, p, evidence.val_y, anchor).mean()) for p in per_model
    ]
    model_level = prediction_interval_outlier(model_values, suspect_value, direction=direction, alpha=alpha) \
        if len(model_values) >= 2 else None
    if decision == "model_level" and model_level is None:
        raise AuditParameterError(f"the model-level test needs at least two reference shadow models; source "
                                  f"{evidence.name!r} has {len(model_values)} for the {variant} variant")
    if decision == "paper" and variant == "similarity":
        decision = "calibrated"
    contrast, contrast_values, ref_acc = None, [], None
    if variant == "accuracy" and references and len(evidence.shadows) >= 2:
        for ref in references:
            ref.check()
        suspect_own = _correct(suspect_answers, evidence.val_y)
        suspect_ref = np.concatenate([_correct(a, r.y) for r, a in zip(references, reference_answers, strict=True)])
        ref_acc = float(suspect_ref.mean())
        shadow_ref = [np.concatenate(parts) for parts in
                      zip(*(evidence.shadow_correct_on(r) for r in references), strict=True)]
        contrast_values = [contrast_value(p.argmax(axis=1) == evidence.val_y, r)
                           for p, r in zip(shadow_probs, shadow_ref, strict=True)]
        contrast = prediction_interval_outlier(contrast_values, contrast_value(suspect_own, suspect_ref),
                                               direction="low", alpha=alpha)
        chance_p = above_chance_p_value(suspect_own, evidence.val_y)
        if chance_p >= alpha and not contrast.outlier:  # no skill on G_d samples: nothing to contrast
            contrast = dataclasses.replace(contrast, outlier=True, mode="prediction_interval+chance")
    location: GrubbsResult | None = None
    location_values: list[float] = []
    if variant == "accuracy" and len(shadow_probs) >= 3:
        location, location_values = error_location_test(shadow_probs, evidence.val_y, suspect_answers, alpha=alpha)
    hot: GrubbsResult | None = None
    hot_values: list[float] = []
    if location is not None and probe_answers is not None and evidence.probe_y is not None:
        hot, hot_values = error_location_hot_test(
            shadow_probs, evidence.val_y, suspect_answers, evidence.shadow_probe_probabilities(), evidence.probe_y,
            probe_answers, alpha=alpha, own=(location, location_values))
    if decision == "auto":
        decision = "error_location" if location is not None else "calibrated"
    if decision == "error_location_hot" and hot is None:
        raise AuditParameterError(
            f"the hot-probe error-location test needs the accuracy variant, at least three shadows and the "
            f"generator's hot probes; source {evidence.name!r} has {len(evidence.shadows)} shadow(s) and "
            f"{'a' if evidence.has_probes else 'no'} hot-probe set")
    if decision == "error_location" and location is None:
        raise AuditParameterError(f"the error-location test needs the accuracy variant and at least three shadows; "
                                  f"source {evidence.name!r} has {len(evidence.shadows)}")
    if decision == "contrast" and contrast is None:
        raise AuditParameterError(
            "the contrast test needs the accuracy variant, at least two shadows and at least one reference "
            f"set (another candidate generator or registered real data); source {evidence.name!r} has "
            f"{len(evidence.shadows)} shadow(s) and {len(references)} reference set(s)")
    return SourceTest(evidence.name, variant, suspect_value, paper, calibrated, decision, batch_values,
                      model_level, model_values, contrast, contrast_values, [r.name for r in references], ref_acc,
                      location, location_values, hot, hot_values)


def _standardised(tested: float, values: Sequence[float]) -> tuple[float, np.ndarray] | None:
    """``(tested - mean) / sd`` and the values' own standardised form; ``None`` for zero spread."""
    v = np.asarray(values, dtype=np.float64)
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    if not sd > 0.0:
        return None
    return (tested - mean) / sd, (v - mean) / sd


def error_location_hot_test(shadow_probs: Sequence[np.ndarray], labels: np.ndarray, suspect_answers: np.ndarray,
                            probe_probs: Sequence[np.ndarray], probe_labels: np.ndarray,
                            probe_answers: np.ndarray, *, alpha: float,
                            own: tuple[GrubbsResult, list[float]] | None = None) -> tuple[GrubbsResult, list[float]]:
    """The error-location test on the validation set and the hot probes at once (see the module):
    each part's statistic standardised by its shadows' skill-matched values, the suspect's sum
    tested against the shadows' sums with one prediction interval. Falls back to the validation
    set's test (:func:`error_location_test`) where the suspect makes no error on it, where its
    errors on the probes are none or all, or where a part's null values do not spread; the
    chance rule applies as there. ``own``: that test's result and null values where the caller
    has them already (the same arguments give the same)."""
    own_result, own_values = own if own is not None else \
        error_location_test(shadow_probs, labels, suspect_answers, alpha=alpha)
    if own_result.mode == "no_errors" or not own_values:
        return own_result, own_values
    probe_errors = ~_correct(probe_answers, probe_labels)
    if not probe_errors.any() or probe_errors.all():
        return own_result, own_values
    hot_suspect, hot_null = error_location_values(probe_probs, probe_labels, probe_errors)
    a, h = _standardised(own_result.tested, own_values), _standardised(hot_suspect, hot_null)
    if a is None or h is None:
        return own_result, own_values
    values = (a[1] + h[1]).tolist()
    result = dataclasses.replace(prediction_interval_outlier(values, a[0] + h[0], direction="low", alpha=alpha),
                                 mode="prediction_interval_sum")
    if above_chance_p_value(_correct(suspect_answers, labels), labels) >= alpha and not result.outlier:
        result = dataclasses.replace(result, outlier=True, mode="prediction_interval_sum+chance")
    return result, values


def error_location_test(shadow_probs: Sequence[np.ndarray], labels: np.ndarray, suspect_answers: np.ndarray,
                        *, alpha: float) -> tuple[GrubbsResult, list[float]]:
    """The error-location test (see the module): the suspect's AUC against the shadows' skill-matched
    values, one-sided prediction interval (low outlier -> "not G_d"). Modes: ``prediction_interval``;
    ``no_errors`` (nothing to locate: statistic 0, p 1, consistent); ``+chance`` (no better than
    chance on the validation set: "not G_d")."""
    correct = _correct(suspect_answers, labels)
    errors = ~correct
    chance_p = above_chance_p_value(correct, labels)
    if not errors.any():
        none = GrubbsResult(statistic=0.0, critical=float(_st.t.ppf(1.0 - alpha, len(shadow_probs) - 1)),
                            n=len(shadow_probs) + 1, alpha=float(alpha), direction="low", tested=1.0,
                            reference_mean=1.0, reference_sd=0.0, p_value=1.0, outlier=False, mode="no_errors")
        return none, []
    if errors.all():
        values: list[float] = []
        result = prediction_interval_outlier([0.0, 0.0], 0.0, direction="low", alpha=alpha)
    else:
        suspect, values = error_location_values(shadow_probs, labels, errors)
        result = prediction_interval_outlier(values, suspect, direction="low", alpha=alpha)
    if chance_p >= alpha and not result.outlier:
        result = dataclasses.replace(result, outlier=True, mode="prediction_interval+chance")
    return result, values


def above_chance_p_value(correct: np.ndarray, labels: np.ndarray) -> float:
    """One-sided binomial p-value of "accuracy above chance (1 / number of classes)"."""
    classes = max(2, len(np.unique(labels)))
    return float(_st.binomtest(int(np.sum(correct)), len(correct), 1.0 / classes,
                               alternative="greater").pvalue)


def _correct(answers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample correctness of labels ``[n]`` or probabilities ``[n, C]``."""
    a = np.asarray(answers)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if a.shape != labels.shape:
        raise AuditInputError(f"the suspect answered {a.shape[0] if a.ndim else 0} labels for "
                              f"{len(labels)} samples")
    return np.asarray(a == labels)


def query_suspect(suspect: CountedQuery, x: np.ndarray) -> np.ndarray:
    """The suspect's answers on ``x``: labels for a label suspect, probabilities otherwise."""
    out = suspect(x)
    return np.asarray(out)


@dataclass
class ProvenanceInputs:
    """A suspect and one or more candidate sources; one source is the yes/no test."""

    sources: list[ProvenanceEvidence]
    suspect: Callable[[np.ndarray], Any]
    suspect_kind: Literal["label", "proba"] = "label"
    query_budget: int | None = None
    #: reference sets beside the sources' own validation sets (real data the owner supplies)
    references: list[ReferenceSet] = field(default_factory=list)


class TrainProVe(AuditMethod):
    """TrainProVe's Grubbs test, with the calibrated multi-shadow sample and attribution."""

    name = "trainprove"
    version = "1.0.0"
    inputs_type = ProvenanceInputs

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """alpha, variant, which reference sample decides, and the Grubbs critical-value mode."""
        return {"alpha": 0.05, "variant": "accuracy", "decision": "auto", "grubbs_mode": "table"}

    def check_params(self, params: dict[str, Any]) -> None:
        super().check_params(params)
        if not 0.0 < float(params["alpha"]) < 0.5:
            raise AuditParameterError(f"alpha must lie in (0, 0.5), got {params['alpha']}")
        if params["decision"] not in DECISIONS:
            raise AuditParameterError(f"decision must be one of {list(DECISIONS)}")

    def execute(self, inputs: ProvenanceInputs, params: dict[str, Any], *, seed: int,
                progress: ProgressFn, log: LogFn) -> AuditResult:
        """Test the suspect against every source; one source gives the paper's yes/no answer,
        several give attribution (verdict: the best source, or none)."""
        if not inputs.sources:
            raise AuditInputError("trainprove needs ProvenanceInputs with at least one source")
        p = params
        alpha = float(p["alpha"])
        if p["variant"] != "accuracy" and inputs.suspect_kind != "proba":
            raise AuditParameterError(f"the {p['variant']} variant needs a suspect that returns probabilities")
        suspect = CountedQuery(inputs.suspect, kind=inputs.suspect_kind, budget=inputs.query_budget)
        started = time.perf_counter()
        tests: list[SourceTest] = []
        for source in inputs.sources:
            source.check()
        for ref in inputs.references:
            ref.check()
        names = [s.name for s in inputs.sources] + [r.name for r in inputs.references]
        if len(set(names)) != len(names):
            raise AuditInputError(f"source and reference names must be distinct, got {names}")
        answers = {s.name: query_suspect(suspect, s.val_x) for s in inputs.sources}
        use_refs = p["variant"] == "accuracy"
        # the hot probes cost queries only where the hot-probe test may decide
        use_probes = use_refs and p["decision"] == "error_location_hot"
        probe_answers = {s.name: query_suspect(suspect, cast("np.ndarray", s.probe_x))
                         for s in inputs.sources if use_probes and s.has_probes}
        ref_answers = {r.name: query_suspect(suspect, r.x) for r in inputs.references} if use_refs else {}
        for i, source in enumerate(inputs.sources):
            # the contrast's reference: the other candidate sources' validation sets and the real data
            refs = [ReferenceSet.of(o) for o in inputs.sources if o is not source] + list(inputs.references)
            refs = refs if use_refs else []
            tests.append(evaluate_source(
                source, answers[source.name], variant=p["variant"], alpha=alpha, decision=p["decision"],
                mode=p["grubbs_mode"], references=refs,
                reference_answers=[answers[r.name] if r.name in answers else ref_answers[r.name] for r in refs],
                probe_answers=probe_answers.get(source.name)))
            t = tests[-1]
            log(f"{source.name}: suspect {t.variant} {t.suspect_value:.4f}, G = {t.chosen.statistic:.3f}"
                f" vs G_crit {t.chosen.critical:.3f} (n = {t.chosen.n})")
            progress((i + 1) / len(inputs.sources))
        elapsed = time.perf_counter() - started
        statistics: dict[str, Any] = {"sources": [t.to_dict() for t in tests],
                                      "suspect_query_seconds": suspect.seconds}
        if len(tests) == 1:
            chosen = tests[0].chosen
            verdict = VERDICT_NOT_FROM_GENERATOR if chosen.outlier else VERDICT_CONSISTENT
            statistics.update({"G": chosen.statistic, "G_crit": chosen.critical, "n": chosen.n,
                               "suspect_value": tests[0].suspect_value, "variant": p["variant"],
                               "decision": tests[0].decision})
            p_value = chosen.p_value
        else:
            ranking = sorted(tests, key=lambda t: t.chosen.statistic)
            best = ranking[0]
            consistent = [t.source for t in tests if not t.chosen.outlier]
            verdict = best.source if not best.chosen.outlier else VERDICT_NO_SOURCE
            statistics.update({"best_source": best.source, "consistent_sources": consistent,
                               "ranking": [t.source for t in ranking], "variant": p["variant"]})
            p_value = best.chosen.p_value
        return AuditResult(
            method=self.name, version=self.version, statistics=statistics, p_value=float(p_value),
            verdict=verdict, alpha=alpha, queries=suspect.queries, parameters={},
            timings={"suspect_queries_seconds": suspect.seconds, "tests_seconds": elapsed},
        )


def attribute(sources: Sequence[ProvenanceEvidence], suspect_answers: Sequence[np.ndarray], *,
              alpha: float = 0.05, variant: Variant = "accuracy", decision: Decision = "calibrated",
              mode: GrubbsMode = "table", references: Sequence[ReferenceSet] = (),
              reference_answers: Sequence[np.ndarray] = (),
              probe_answers: Sequence[np.ndarray | None] | None = None) -> tuple[str, list[SourceTest]]:
    """Best source for a suspect already queried on each source's validation set (and on the
    extra ``references``, and on each source's hot probes: ``probe_answers``) (benchmark helper):
    the smallest statistic of ``decision``'s test; ``VERDICT_NO_SOURCE`` when every test rejects.
    Each source's contrast reference is the other sources' validation sets plus ``references``."""
    tests = []
    probes = list(probe_answers) if probe_answers is not None else [None] * len(sources)
    for s, a, h in zip(sources, suspect_answers, probes, strict=True):
        others = [(ReferenceSet.of(o), b) for o, b in zip(sources, suspect_answers, strict=True) if o is not s]
        pairs = others + list(zip(references, reference_answers, strict=True))
        tests.append(evaluate_source(s, a, variant=variant, alpha=alpha, decision=decision, mode=mode,
                                     references=[r for r, _ in pairs], reference_answers=[b for _, b in pairs],
                                     probe_answers=h))
    best = min(tests, key=lambda t: t.chosen.statistic)
    return (best.source if not best.chosen.outlier else VERDICT_NO_SOURCE), tests


register_method(TrainProVe.name, TrainProVe)

__all__ = [
    "VERDICT_CONSISTENT",
    "VERDICT_NOT_FROM_GENERATOR",
    "VERDICT_NO_SOURCE",
    "ProvenanceEvidence",
    "ProvenanceInputs",
    "ReferenceSet",
    "SourceTest",
    "TrainProVe",
    "attribute",
    "contrast_value",
    "error_location_hot_test",
    "error_location_test",
    "evaluate_source",
    "smoothed_logit",
]
