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

The verdict follows ``decision`` ("calibrated" by default: on the digits benchmark the pooled
test keeps false "not G_d" verdicts nearest alpha; the model-level test's calibration depends on
how well the shadow pool's recipes cover the suspects', see the README).

:func:`attribute` runs the test against several candidate sources and names the one that
explains the suspect best (smallest statistic among the sources it is consistent with).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from appliance.audits.errors import AuditInputError, AuditParameterError
from appliance.audits.provenance.grubbs import (
    Direction,
    GrubbsMode,
    GrubbsResult,
    grubbs_outlier,
    prediction_interval_outlier,
)
from appliance.audits.registry import AuditMethod, AuditResult, LogFn, ProgressFn, register_method
from appliance.audits.remote import CountedQuery

VERDICT_NOT_FROM_GENERATOR = "not_trained_on_generator_data"
VERDICT_CONSISTENT = "consistent_with_generator_data"
VERDICT_NO_SOURCE = "no_candidate_explains_the_suspect"
Variant = Literal["accuracy", "entropy", "similarity"]
Decision = Literal["model_level", "calibrated", "paper"]
ProbaFn = Callable[[np.ndarray], np.ndarray]
_DIRECTION: dict[str, Direction] = {"accuracy": "low", "entropy": "high", "similarity": "low"}


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
    _probs: list[np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def shadow_probabilities(self) -> list[np.ndarray]:
        """Each shadow's probabilities on ``val_x``, computed once (every suspect reuses them)."""
        if self._probs is None:
            self._probs = [np.asarray(fn(self.val_x), dtype=np.float64) for fn in self.shadows]
        return self._probs

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


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return np.asarray(-(q * np.log(q)).sum(axis=1))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(na * nb, 1e-12))


def _per_sample(variant: str, probs: np.ndarray, labels: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
    if variant == "accuracy":
        return (probs.argmax(axis=1) == labels).astype(np.float64)
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

    @property
    def chosen(self) -> GrubbsResult:
        """The result the verdict follows."""
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
            "shadow_batch_values": self.shadow_batch_values,
        }


def evaluate_source(
    evidence: ProvenanceEvidence,
    suspect_answers: np.ndarray,
    *,
    variant: Variant,
    alpha: float,
    decision: Decision = "calibrated",
    mode: GrubbsMode = "table",
) -> SourceTest:
    """Test the suspect's answers on ``evidence.val_x`` against the shadows' batches (Grubbs)
    and against the shadow models (prediction interval).

    ``suspect_answers`` are labels ``[n]`` (accuracy only) or probabilities ``[n, C]``.
    ``decision="model_level"`` needs at least two reference models (three shadows for the
    similarity variant, whose first shadow is the anchor).
    """
    evidence.check()
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
    return SourceTest(evidence.name, variant, suspect_value, paper, calibrated, decision, batch_values,
                      model_level, model_values)


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


class TrainProVe(AuditMethod):
    """TrainProVe's Grubbs test, with the calibrated multi-shadow sample and attribution."""

    name = "trainprove"
    version = "1.0.0"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """alpha, variant, which reference sample decides, and the Grubbs critical-value mode."""
        return {"alpha": 0.05, "variant": "accuracy", "decision": "calibrated", "grubbs_mode": "table"}

    def run(
        self,
        inputs: Any,
        *,
        params: Mapping[str, Any] | None = None,
        seed: int,
        progress: ProgressFn | None = None,
        log: LogFn | None = None,
    ) -> AuditResult:
        """Test the suspect against every source; one source gives the paper's yes/no answer,
        several give attribution (verdict: the best source, or none)."""
        if not isinstance(inputs, ProvenanceInputs) or not inputs.sources:
            raise AuditInputError("trainprove needs ProvenanceInputs with at least one source")
        p = self.resolve_params(params)
        alpha = float(p["alpha"])
        if not 0.0 < alpha < 0.5:
            raise AuditParameterError(f"alpha must lie in (0, 0.5), got {alpha}")
        if p["decision"] not in ("model_level", "calibrated", "paper"):
            raise AuditParameterError("decision must be 'model_level', 'calibrated' or 'paper'")
        if p["variant"] != "accuracy" and inputs.suspect_kind != "proba":
            raise AuditParameterError(f"the {p['variant']} variant needs a suspect that returns probabilities")
        suspect = CountedQuery(inputs.suspect, kind=inputs.suspect_kind, budget=inputs.query_budget)
        started = time.perf_counter()
        tests: list[SourceTest] = []
        for i, source in enumerate(inputs.sources):
            source.check()
            answers = query_suspect(suspect, source.val_x)
            tests.append(evaluate_source(source, answers, variant=p["variant"], alpha=alpha,
                                     decision=p["decision"], mode=p["grubbs_mode"]))
            if log:
                t = tests[-1]
                log(f"{source.name}: suspect {t.variant} {t.suspect_value:.4f}, G = {t.chosen.statistic:.3f}"
                    f" vs G_crit {t.chosen.critical:.3f} (n = {t.chosen.n})")
            if progress:
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
            verdict=verdict, alpha=alpha, queries=suspect.queries, parameters={**p, "seed": seed},
            timings={"suspect_queries_seconds": suspect.seconds, "tests_seconds": elapsed},
        )


def attribute(sources: Sequence[ProvenanceEvidence], suspect_answers: Sequence[np.ndarray], *,
              alpha: float = 0.05, variant: Variant = "accuracy", decision: Decision = "calibrated",
              mode: GrubbsMode = "table") -> tuple[str, list[SourceTest]]:
    """Best source for a suspect already queried on each source's validation set (benchmark
    helper): the smallest statistic of ``decision``'s test; ``VERDICT_NO_SOURCE`` when every
    test rejects."""
    tests = [evaluate_source(s, a, variant=variant, alpha=alpha, decision=decision, mode=mode)
             for s, a in zip(sources, suspect_answers, strict=True)]
    best = min(tests, key=lambda t: t.chosen.statistic)
    return (best.source if not best.chosen.outlier else VERDICT_NO_SOURCE), tests


register_method(TrainProVe.name, TrainProVe)

__all__ = [
    "VERDICT_CONSISTENT",
    "VERDICT_NOT_FROM_GENERATOR",
    "VERDICT_NO_SOURCE",
    "ProvenanceEvidence",
    "ProvenanceInputs",
    "SourceTest",
    "TrainProVe",
    "attribute",
    "evaluate_source",
]
