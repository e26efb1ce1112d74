"""Unlearning audits: did a language model forget the forget set, or only hide it?

    inputs = UnlearningInputs(model=CausalLM.from_dir(d), forget=f, holdout=h, reference=r)
    battery = run_battery(inputs, seed=0)
    battery.verdict, battery.results["extraction"].p_value

Each audit (see :mod:`.methods`) is a registered method ``unlearning/<name>`` with one
Mann-Whitney test per direction over items; :func:`run_battery` runs several and corrects the
family of knowledge tests (and, separately, of "detectably unlearned" tests) with Holm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.audits.errors import AuditError, AuditParameterError
from appliance.audits.registry import AuditResult, LogFn, ProgressFn, create_method
from appliance.audits.unlearning.base import (
    VERDICT_KNOWLEDGE,
    VERDICT_NONE,
    VERDICT_UNLEARNED,
    UnlearningInputs,
    holm,
    holm_adjusted,
)
from appliance.audits.unlearning.methods import AUDITS

AUDIT_NAMES: tuple[str, ...] = tuple(a.short for a in AUDITS)
DEFAULT_BATTERY: tuple[str, ...] = AUDIT_NAMES
OVERALL_KNOWLEDGE = "knowledge_detected"
OVERALL_NONE = "no_evidence_of_remaining_knowledge"
CORRECTION = ("Holm step-down over the audits run, at family-wise alpha, separately for the "
              "knowledge tests and for the detectably-unlearned tests")


@dataclass
class BatteryResult:
    """Per-audit results, the audits skipped (with why), and the Holm-corrected verdicts."""

    results: dict[str, AuditResult]
    skipped: dict[str, str]
    alpha: float
    verdict: str
    knowledge_audits: list[str]
    unlearned_audits: list[str]
    adjusted_p_knowledge: dict[str, float] = field(default_factory=dict)
    adjusted_p_unlearned: dict[str, float] = field(default_factory=dict)

    @property
    def detectably_unlearned(self) -> bool:
        """Whether any audit finds the forget set detectably less known than the holdout."""
        return bool(self.unlearned_audits)

    def min_adjusted_p(self) -> float:
        """The smallest Holm-adjusted knowledge p-value (the battery's p-value)."""
        return min(self.adjusted_p_knowledge.values(), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary with every audit's full result."""
        return {"verdict": self.verdict, "alpha": self.alpha, "correction": CORRECTION,
                "knowledge_detected_by": self.knowledge_audits,
                "detectably_unlearned_by": self.unlearned_audits,
                "adjusted_p_knowledge": self.adjusted_p_knowledge,
                "adjusted_p_unlearned": self.adjusted_p_unlearned,
                "skipped": self.skipped,
                "audits": {k: v.to_dict() for k, v in self.results.items()}}


def applicable(name: str, inputs: UnlearningInputs) -> str | None:
    """Why ``name`` cannot run on these inputs, or None."""
    if name == "patching_depth" and (inputs.original is None or inputs.reference is None):
        return "needs the original model and a reference model"
    if name == "truth_ratio" and (sum(1 for r in inputs.forget if r.perturbed_answers) < 5
                                  or sum(1 for r in inputs.holdout if r.perturbed_answers) < 5):
        return "needs at least 5 forget and 5 holdout items with perturbed_answers"
    return None


def run_battery(inputs: UnlearningInputs, *, audits: Sequence[str] | None = None,
                params: Mapping[str, Mapping[str, Any]] | None = None, seed: int,
                alpha: float = 0.05, progress: ProgressFn | None = None,
                log: LogFn | None = None) -> BatteryResult:
    """Run ``audits`` (all that apply by default; named ones must apply) and correct them."""
    if not 0 < alpha < 1:
        raise AuditParameterError("alpha must lie in (0, 1)")
    chosen = list(audits) if audits else list(DEFAULT_BATTERY)
    unknown = sorted(set(chosen) - set(AUDIT_NAMES))
    unknown_params = sorted(set(params or {}) - set(AUDIT_NAMES))
    if unknown or unknown_params:
        raise AuditParameterError(f"unknown audit(s) {unknown or unknown_params}; known: "
                                  f"{list(AUDIT_NAMES)}")
    inputs.check()
    results: dict[str, AuditResult] = {}
    skipped: dict[str, str] = {}
    for index, name in enumerate(chosen):
        reason = applicable(name, inputs)
        if reason is not None:
            if audits:
                raise AuditParameterError(f"audit {name!r} cannot run: {reason}")
            skipped[name] = reason
            continue
        if log is not None:
            log(f"audit {name} ({index + 1}/{len(chosen)})")

        def step(fraction: float, index: int = index) -> None:
            if progress is not None:
                progress((index + fraction) / len(chosen))

        method = create_method(f"unlearning/{name}")
        try:
            results[name] = method.run(inputs, params={"alpha": alpha, **(params or {}).get(
                name, {})}, seed=seed, progress=step, log=log)
        except AuditError:
            raise
        if log is not None:
            r = results[name]
            log(f"  {name}: p_knowledge {r.p_value:.3g}, p_unlearned "
                f"{r.statistics['p_unlearned']:.3g}, {r.verdict}")
    if not results:
        raise AuditParameterError("no audit could run on these inputs")
    p_know = {k: float(v.p_value) for k, v in results.items()}
    p_unl = {k: float(v.statistics["p_unlearned"]) for k, v in results.items()}
    knowledge = [k for k, rejected in holm(p_know, alpha).items() if rejected]
    unlearned = [k for k, rejected in holm(p_unl, alpha).items() if rejected]
    return BatteryResult(results=results, skipped=skipped, alpha=alpha,
                         verdict=OVERALL_KNOWLEDGE if knowledge else OVERALL_NONE,
                         knowledge_audits=knowledge, unlearned_audits=unlearned,
                         adjusted_p_knowledge=holm_adjusted(p_know),
                         adjusted_p_unlearned=holm_adjusted(p_unl))


__all__ = ["AUDIT_NAMES", "CORRECTION", "DEFAULT_BATTERY", "OVERALL_KNOWLEDGE", "OVERALL_NONE",
           "VERDICT_KNOWLEDGE", "VERDICT_NONE", "VERDICT_UNLEARNED", "BatteryResult",
           "UnlearningInputs", "applicable", "run_battery"]
