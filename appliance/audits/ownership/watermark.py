"""Keyed backdoor watermark for dataset-ownership verification of classifiers (DVBW-style).

Before release the owner marks the dataset: a small fraction of samples gets a faint
trigger blended in (``x' = (1 - m) x + m * pattern``) where pattern, blend strength and the
chosen samples all derive from a secret key by HKDF-SHA256. Dirty-label marking relabels
the marked samples to ``target_class``; clean-label marking only marks samples already of
the target class and keeps every label.

Key specificity: a model that only sees the keyed noise pattern learns "faint noise ->
target", and then also fires on any other key's trigger. Marking therefore also blends
*decoy* noise patterns (fresh keyed noise per sample, same strength) into another small
fraction of samples whose labels are kept, so only the key's own pattern predicts the
target class. With 1% marked and ``RECOMMENDED_DECOY_FRACTION`` (3%) decoys a model trained
on data marked with key A is detected with key A and not with another key. Decoys are
opt-in (``decoy_fraction=0`` by default, which keeps the unmarked samples untouched).

Verification queries the suspect on ``m`` benign samples not of the target class and on
their triggered copies:

* ``proba`` mode: paired one-sided t-test on the target-class probability,
  H0: mean(p_trig - p_benign) <= tau, H1: > tau (reference m=100, tau=0.2);
* ``label`` mode (label-only APIs): exact binomial test of the number of triggered copies
  labelled as the target, H0: rate <= r0 + tau with r0 the suspect's target rate on the
  benign copies.

    key = new_key()                               # seal it; never release it
    marked = mark_dataset(x, y, key, target_class=0,    # 1% marked, 3% decoys
                          decoy_fraction=RECOMMENDED_DECOY_FRACTION)
    ...release marked.x, marked.y...
    res = create_method("watermark_dvbw").run(
        WatermarkInputs(benign=x_val, benign_labels=y_val, suspect=predict, key=key,
                        target_class=0), seed=1)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.audits.errors import (
    AuditInputError,
    AuditParameterError,
    QueryBudgetExceeded,
    WatermarkKeyError,
)
from appliance.audits.registry import (
    VERDICT_NEGATIVE,
    VERDICT_POSITIVE,
    AuditMethod,
    AuditResult,
    LogFn,
    ProgressFn,
    register_method,
)
from appliance.audits.stats import binomial_greater, paired_margin_greater
from appliance.audits.suspects import CountedQuery, LabelFn, PredictFn, check_images

KEY_BYTES = 32
DEFAULT_STRENGTH = 0.15
#: Share of the dataset that carries the trigger (small poisoning rate: on digits, 1% of
#: 719 images is learned by every model tried and costs no measurable clean accuracy).
DEFAULT_FRACTION = 0.01
#: Share of the dataset that should get decoy noise with its true label (key specificity);
#: ``mark_dataset`` applies it only when asked (its default is 0: no decoys).
RECOMMENDED_DECOY_FRACTION = 0.03


def new_key() -> bytes:
    """A fresh random 32-byte watermark key (to be sealed by the appliance)."""
    return os.urandom(KEY_BYTES)


def _derive(key: bytes, purpose: bytes, length: int = 32) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise WatermarkKeyError("watermark key must be at least 16 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"appliance/dvbw/v1", info=purpose).derive(bytes(key))


def _rng(key: bytes, purpose: bytes) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(_derive(key, purpose), "big"))


def make_trigger(
    key: bytes, shape: tuple[int, ...], *, strength: float = DEFAULT_STRENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pattern, mask)`` float32 arrays of ``shape`` ([C, H, W]) derived from ``key``.

    ``pattern`` is keyed uniform noise in [0, 1]; ``mask`` is the per-pixel blend weight,
    ``strength`` everywhere (faint for small strengths).
    """
    if not 0.0 < strength < 1.0:
        raise AuditParameterError(f"strength must be in (0, 1), got {strength!r}")
    if not shape or any(int(s) <= 0 for s in shape):
        raise AuditInputError(f"trigger shape must be positive, got {shape!r}")
    tag = b"trigger|" + ",".join(str(int(s)) for s in shape).encode()
    pattern = _rng(key, tag).random(tuple(int(s) for s in shape)).astype(np.float32)
    mask = np.full(pattern.shape, strength, dtype=np.float32)
    return pattern, mask


def apply_trigger(x: np.ndarray, pattern: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend the trigger into every image of ``x`` ``[n, C, H, W]``."""
    if x.shape[1:] != pattern.shape:
        raise AuditInputError(f"images {x.shape[1:]} do not match trigger {pattern.shape}")
    return np.asarray((1.0 - mask) * x + mask * pattern, dtype=np.float32)


@dataclass(frozen=True)
class MarkedDataset:
    """A marked copy of a dataset and the indices of the marked samples."""

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    target_class: int
    clean_label: bool
    strength: float
    decoy_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def mark_dataset(
    x: np.ndarray,
    y: np.ndarray,
    key: bytes,
    *,
    fraction: float = DEFAULT_FRACTION,
    target_class: int = 0,
    clean_label: bool = False,
    strength: float = DEFAULT_STRENGTH,
    decoy_fraction: float = 0.0,
) -> MarkedDataset:
    """Mark ``fraction`` of the dataset (of the target class only when ``clean_label``).

    Dirty-label: samples not of the target class get the trigger and label ``target_class``.
    Clean-label: samples of the target class get the trigger, labels unchanged (the
    fraction is of the whole dataset, capped by the target class's size).
    Decoys: ``decoy_fraction`` of the dataset (among the unmarked samples) gets an
    independent keyed noise pattern at the same strength and keeps its label, so that the
    model learns the key's pattern rather than "noise" (default 0: no decoys; pass
    ``RECOMMENDED_DECOY_FRACTION`` for a key-specific mark).
    The choice of samples is derived from ``key``; inputs are not modified.
    """
    xs = check_images("dataset", x)
    ys = np.asarray(y)
    if ys.ndim != 1 or len(ys) != len(xs) or ys.dtype.kind not in "iu":
        raise AuditInputError(f"labels must be integers of shape [{len(xs)}], got {ys.shape}")
    if not 0.0 < fraction < 1.0:
        raise AuditParameterError(f"fraction must be in (0, 1), got {fraction!r}")
    if not 0.0 <= decoy_fraction < 1.0:
        raise AuditParameterError(f"decoy_fraction must be in [0, 1), got {decoy_fraction!r}")
    eligible = np.flatnonzero(ys == target_class if clean_label else ys != target_class)
    if len(eligible) == 0:
        raise AuditInputError(f"no sample is eligible for marking with target {target_class}")
    count = min(len(eligible), max(1, int(round(fraction * len(xs)))))
    chosen = np.sort(_rng(key, b"select").choice(eligible, count, replace=False))
    pattern, mask = make_trigger(key, xs.shape[1:], strength=strength)
    out_x = xs.copy()
    out_y = ys.copy()
    out_x[chosen] = apply_trigger(xs[chosen], pattern, mask)
    if not clean_label:
        out_y[chosen] = target_class
    free = np.setdiff1d(np.arange(len(xs)), chosen)
    n_decoys = min(len(free), int(round(decoy_fraction * len(xs))))
    decoy_rng = _rng(key, b"decoys")
    decoys = np.sort(decoy_rng.choice(free, n_decoys, replace=False)) if n_decoys else np.zeros(0, np.int64)
    if n_decoys:
        noise = decoy_rng.random((n_decoys, *xs.shape[1:])).astype(np.float32)
        out_x[decoys] = ((1.0 - mask) * xs[decoys] + mask * noise).astype(np.float32)
    return MarkedDataset(
        x=out_x,
        y=out_y,
        indices=chosen,
        target_class=int(target_class),
        clean_label=clean_label,
        strength=strength,
        decoy_indices=decoys.astype(np.int64),
    )


@dataclass
class WatermarkInputs:
    """Inputs of a watermark verification.

    ``benign`` ``[n, C, H, W]`` and ``benign_labels`` ``[n]``: held-out owner samples (those
    of the target class are skipped). ``suspect``: ``predict(x) -> probabilities [n, K]``
    (mode ``proba``) or ``label(x) -> [n]`` (mode ``label``). ``key``: the unsealed
    watermark key; ``target_class`` and ``strength`` as used when marking.
    """

    benign: np.ndarray
    benign_labels: np.ndarray
    suspect: PredictFn | LabelFn
    key: bytes
    target_class: int
    strength: float = DEFAULT_STRENGTH
    query_budget: int | None = None


class WatermarkDVBW(AuditMethod):
    """Backdoor-watermark dataset-ownership verification (see module docstring)."""

    name = "watermark_dvbw"
    version = "1.0"

    inputs_type = WatermarkInputs

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"m": 100, "tau": 0.2, "alpha": 0.05, "mode": "proba", "max_batch": 4096}

    def check_params(self, params: dict[str, Any]) -> None:
        super().check_params(params)
        if params["mode"] not in ("proba", "label"):
            raise AuditParameterError("mode must be 'proba' or 'label'")
        m = params["m"]
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise AuditParameterError(f"m must be an integer >= 2, got {m!r}")
        if not 0.0 <= float(params["tau"]) < 1.0:
            raise AuditParameterError("need 0 <= tau < 1")

    def execute(self, inputs: WatermarkInputs, params: dict[str, Any], *, seed: int,
                progress: ProgressFn, log: LogFn) -> AuditResult:
        p = params
        mode: Literal["proba", "label"] = p["mode"]
        m, tau, alpha = p["m"], float(p["tau"]), float(p["alpha"])
        benign = check_images("benign samples", inputs.benign)
        labels = np.asarray(inputs.benign_labels)
        if labels.ndim != 1 or len(labels) != len(benign):
            raise AuditInputError(f"benign_labels must have shape [{len(benign)}], got {labels.shape}")
        candidates = np.flatnonzero(labels != inputs.target_class)
        if len(candidates) < m:
            raise AuditInputError(f"need m={m} benign samples not of the target class, have {len(candidates)}")
        if inputs.query_budget is not None and 2 * m > inputs.query_budget:
            raise QueryBudgetExceeded(f"verification needs {2 * m} queries, budget is {inputs.query_budget}")
        suspect = CountedQuery(
            inputs.suspect,
            kind=mode,
            name="suspect",
            budget=inputs.query_budget,
            max_batch=int(p["max_batch"]),
        )
        rng = np.random.default_rng([seed, 0xD7B3])
        chosen = np.sort(rng.choice(candidates, m, replace=False))
        x_benign = benign[chosen]
        pattern, mask = make_trigger(inputs.key, benign.shape[1:], strength=inputs.strength)
        x_trig = apply_trigger(x_benign, pattern, mask)
        log(f"watermark_dvbw: {2 * m} queries in {mode} mode")
        t0 = time.perf_counter()
        out = suspect(np.concatenate([x_benign, x_trig]))
        t_query = time.perf_counter() - t0
        progress(0.9)
        target = int(inputs.target_class)
        stats: dict[str, Any]
        if mode == "proba":
            if not 0 <= target < out.shape[1]:
                raise AuditInputError(f"target class {target} outside the suspect's {out.shape[1]} classes")
            p_benign, p_trig = out[:m, target], out[m:, target]
            t_stat, p_value = paired_margin_greater(p_trig, p_benign, margin=tau)
            stats = {
                "mean_p_benign": float(p_benign.mean()),
                "mean_p_triggered": float(p_trig.mean()),
                "mean_difference": float((p_trig - p_benign).mean()),
                "t": t_stat,
            }
        else:
            benign_hits = int((out[:m] == target).sum())
            trig_hits = int((out[m:] == target).sum())
            null_rate = benign_hits / m + tau
            p_value = binomial_greater(trig_hits, m, min(1.0, null_rate))
            stats = {
                "benign_target_rate": benign_hits / m,
                "triggered_target_rate": trig_hits / m,
                "null_rate": min(1.0, null_rate),
                "flips_to_target": int(((out[:m] != target) & (out[m:] == target)).sum()),
            }
        stats.update({"mode": mode, "m": m, "tau": tau})
        return AuditResult(
            method=self.name,
            version=self.version,
            statistics=stats,
            p_value=float(p_value),
            verdict=VERDICT_POSITIVE if p_value < alpha else VERDICT_NEGATIVE,
            alpha=alpha,
            queries=suspect.queries,
            parameters={"target_class": target, "strength": inputs.strength},
            timings={"suspect_query_s": t_query},
        )


register_method(WatermarkDVBW.name, WatermarkDVBW)

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_STRENGTH",
    "KEY_BYTES",
    "RECOMMENDED_DECOY_FRACTION",
    "MarkedDataset",
    "WatermarkDVBW",
    "WatermarkInputs",
    "apply_trigger",
    "make_trigger",
    "mark_dataset",
    "new_key",
]
