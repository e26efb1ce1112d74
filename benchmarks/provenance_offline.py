"""Re-evaluate TrainProVe's error-location decisions offline from ``bench_provenance.py`` label dumps.

    OMP_NUM_THREADS=1 python benchmarks/bench_provenance.py --suspect-seed 0 --shadows 24 \\
        --extra-sets --dump-labels labels.npz
    python benchmarks/provenance_offline.py labels.npz [more.npz ...]

A dump holds every shadow's probabilities and every suspect's labels on each generator's sets
(``val`` the audit's validation set; with ``--extra-sets`` also ``val2`` -- 600 more per class at
the same temperature --, ``hot200`` and ``warm``). Rules: ``el(parts)`` the appliance's
error-location test on those parts joined; ``hot(parts;probes)`` its hot-probe sum test;
``robust(val)`` the error-location statistic against a median/MAD-scaled null; ``reg(val)`` against
a null regressed on each shadow's own error rate; ``conf(parts)`` which wrong class the suspect
picks where it errs (:func:`confusion_values`), ``el+conf(parts)`` that and the error location,
standardised and summed (on the moment-matching set, suspect seed 0, both were weaker than
``el(val)``: accuracy 0.688 and 0.807 against 0.854). For each rule the script prints, per dump
and over all dumps, the accuracy over the (owner, suspect source) pairs and the rate of "not G_d"
among true pairs, plus a null check that needs no suspect: each shadow in turn tested against the
other shadows (its rate of "not G_d" should stay near alpha).

No training happens here; the arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from appliance.audits.provenance.trainprove import (
    above_chance_p_value,
    error_location_hot_test,
    error_location_test,
    error_location_values,
)

ALPHA = 0.05


@dataclass
class OwnerData:
    """One owner generator's sets: shadow probabilities ``[m, n, C]`` and labels ``[n]`` per set."""

    probs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    def joined(self, parts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([self.probs[p] for p in parts], axis=1),
                np.concatenate([self.labels[p] for p in parts]))


def load(path: str) -> tuple[dict[str, OwnerData], dict[str, dict[str, np.ndarray]]]:
    """Owners' data and suspects' labels ``suspects[source][set key] -> [suspects, n]``."""
    z = np.load(path, allow_pickle=False)
    keys = list(z.keys())
    owners = sorted({k.split("/")[1] for k in keys if k.startswith("batches/")})
    data: dict[str, OwnerData] = {}
    for o in owners:
        probs, labels = {}, {}
        for part, key in (("val", o), ("val2", f"val2_{o}"), ("hot", f"hot_{o}"), ("hot200", f"hot200_{o}"),
                          ("warm", f"warm_{o}")):
            if f"shadow_proba/{o}/{key}" in keys:
                probs[part] = z[f"shadow_proba/{o}/{key}"].astype(np.float64)
                labels[part] = z[f"y/{key}"]
        data[o] = OwnerData(probs, labels)
    sources = sorted({k.split("/")[1] for k in keys if k.startswith("suspect/")})
    suspects = {s: {k.split("/", 2)[2]: z[k] for k in keys if k.startswith(f"suspect/{s}/")} for s in sources}
    return data, suspects


Rule = Callable[[OwnerData, Callable[[str], np.ndarray], list[int] | None], bool]


def _answers_for(parts: tuple[str, ...], get: Callable[[str], np.ndarray]) -> np.ndarray:
    return np.concatenate([get(p) for p in parts])


def _prepared(d: OwnerData, get: Callable[[str], np.ndarray], keep: list[int] | None, parts: tuple[str, ...]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool | None]:
    """The shadows' probabilities (``keep`` of them), labels, the suspect's answers and errors on
    ``parts``, and the verdict where the errors alone settle it (none: consistent; at chance or
    all wrong: not G_d), else None."""
    probs, y = d.joined(parts)
    if keep is not None:
        probs = probs[keep]
    answers = _answers_for(parts, get)
    errors = answers != y
    verdict: bool | None = None
    if not errors.any():
        verdict = False
    elif above_chance_p_value(~errors, y) >= ALPHA or errors.all():
        verdict = True
    return probs, y, answers, errors, verdict


def el_rule(parts: tuple[str, ...]) -> Rule:
    """The error-location test on the sets ``parts`` joined."""
    def rule(d: OwnerData, get: Callable[[str], np.ndarray], keep: list[int] | None) -> bool:
        probs, y = d.joined(parts)
        if keep is not None:
            probs = probs[keep]
        result, _ = error_location_test(list(probs), y, _answers_for(parts, get), alpha=ALPHA)
        return result.outlier
    return rule


def robust_rule(parts: tuple[str, ...]) -> Rule:
    """The error-location statistic, null centred by its median and scaled by 1.4826 MAD (t_{m-1} critical)."""
    def rule(d: OwnerData, get: Callable[[str], np.ndarray], keep: list[int] | None) -> bool:
        probs, y, answers, errors, verdict = _prepared(d, get, keep, parts)
        if verdict is not None:
            return verdict
        suspect, null = error_location_values(list(probs), y, errors)
        v = np.asarray(null)
        med = float(np.median(v))
        scale = 1.4826 * float(np.median(np.abs(v - med)))
        m = len(v)
        if scale <= 0:
            return bool(suspect < med)
        return bool((med - suspect) / (scale * np.sqrt(1 + 1 / m)) > float(_st.t.ppf(1 - ALPHA, m - 1)))
    return rule


def _logit_rate(k: int, n: int) -> float:
    p = (k + 0.5) / (n + 1.0)
    return float(np.log(p / (1.0 - p)))


def regression_test(values: list[float], skills: list[float], tested: float, skill: float) -> float:
    """Prediction-interval T of ``tested`` below the least-squares line of ``values`` on ``skills``
    evaluated at ``skill`` (``T ~ t_{m-2}`` under the linear-normal null)."""
    x, v = np.asarray(skills), np.asarray(values)
    m = len(v)
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx <= 0:
        b = 0.0
    else:
        b = float(((x - xm) * (v - v.mean())).sum() / sxx)
    a = v.mean() - b * xm
    resid = v - (a + b * x)
    s = float(np.sqrt((resid ** 2).sum() / (m - 2)))
    lev = 1 + 1 / m + ((skill - xm) ** 2 / sxx if sxx > 0 else 0.0)
    return float((a + b * skill - tested) / (s * np.sqrt(lev))) if s > 0 else 0.0


def reg_rule(parts: tuple[str, ...], probe: str | None = None) -> Rule:
    """Error location with a skill-regressed null: each shadow's value regressed on the logit of its
    own error rate on the set, the suspect's value tested below the line at its own error rate."""
    def one(probs: np.ndarray, y: np.ndarray, answers: np.ndarray) -> tuple[float, list[float], list[float], float]:
        errors = answers != y
        suspect, null = error_location_values(list(probs), y, errors)
        n = len(y)
        skills = [_logit_rate(int((p.argmax(1) != y).sum()), n) for p in probs]
        return suspect, null, skills, _logit_rate(int(errors.sum()), n)

    def rule(d: OwnerData, get: Callable[[str], np.ndarray], keep: list[int] | None) -> bool:
        probs, y, answers, errors, verdict = _prepared(d, get, keep, parts)
        if verdict is not None:
            return verdict
        a, null, skills, skill = one(probs, y, answers)
        m = len(null)
        if probe is None:
            return regression_test(null, skills, a, skill) > float(_st.t.ppf(1 - ALPHA, m - 2))
        pparts = tuple(probe.split("+"))
        pp, py = d.joined(pparts)
        if keep is not None:
            pp = pp[keep]
        pa = _answers_for(pparts, get)
        if not (pa != py).any() or (pa != py).all():
            return regression_test(null, skills, a, skill) > float(_st.t.ppf(1 - ALPHA, m - 2))
        h, hnull, hskills, hskill = one(pp, py, pa)
        # standardise each part by its own regression residual, then regress the sum
        def resid_z(vals: list[float], sk: list[float], t: float, s0: float) -> tuple[np.ndarray, float]:
            x, v = np.asarray(sk), np.asarray(vals)
            b, a0 = np.polyfit(x, v, 1)
            r = v - (a0 + b * x)
            sd = float(r.std(ddof=2))
            return r / sd, float((t - (a0 + b * s0)) / sd)
        ra, ta = resid_z(null, skills, a, skill)
        rh, th = resid_z(hnull, hskills, h, hskill)
        total = ra + rh
        sd = float(total.std(ddof=1))
        return bool((0.0 - (ta + th)) / (sd * np.sqrt(1 + 1 / m)) > float(_st.t.ppf(1 - ALPHA, m - 2)))
    return rule


def confusion_values(probs: np.ndarray, y: np.ndarray, errors: np.ndarray, answers: np.ndarray
                     ) -> tuple[float, list[float]]:
    """Which wrong class a model picks where it errs: the mean over the suspect's ``k`` errors of
    ``log q(a(x) | x)``, ``q`` the shadows' mean probability of that class among the wrong ones;
    null: each shadow at its own ``k`` lowest-margin samples, its most likely wrong class there,
    ``q`` from the other shadows (skill-matched as in the error-location test)."""
    m, n, c = probs.shape
    idx = np.arange(n)

    def log_q(mean: np.ndarray, rows: np.ndarray, chosen: np.ndarray) -> float:
        wrong = 1.0 - mean[rows, y[rows]]
        q = mean[rows, chosen] / np.maximum(wrong, 1e-12)
        return float(np.mean(np.log(np.clip(q, 1e-6, 1.0))))

    k = int(errors.sum())
    total = probs.sum(axis=0)
    suspect = log_q(total / m, idx[errors], answers[errors])
    null = []
    for j in range(m):
        own = probs[j]
        margin = np.log(np.clip(own[idx, y], 1e-12, 1.0)) - np.log(np.clip(
            np.where(np.arange(c)[None, :] == y[:, None], 0.0, own), 1e-12, 1.0).max(axis=1))
        rows = np.argsort(margin, kind="stable")[:k]
        runner = np.where(np.arange(c)[None, :] == y[rows, None], -1.0, own[rows]).argmax(axis=1)
        null.append(log_q((total - own) / (m - 1), rows, runner))
    return suspect, null


def _low_outlier(values: list[float], tested: float) -> bool:
    v = np.asarray(values)
    m = len(v)
    sd = float(v.std(ddof=1))
    if not sd > 0:
        return bool(tested < v.mean())
    return bool((v.mean() - tested) / (sd * np.sqrt(1 + 1 / m)) > float(_st.t.ppf(1 - ALPHA, m - 1)))


def conf_rule(parts: tuple[str, ...], *, with_location: bool) -> Rule:
    """The confusion statistic alone, or standardised and summed with the error-location one."""
    def rule(d: OwnerData, get: Callable[[str], np.ndarray], keep: list[int] | None) -> bool:
        probs, y, answers, errors, verdict = _prepared(d, get, keep, parts)
        if verdict is not None:
            return verdict
        cs, cnull = confusion_values(probs, y, errors, answers)
        if not with_location:
            return _low_outlier(cnull, cs)
        ls, lnull = error_location_values(list(probs), y, errors)
        parts_z = []
        for t, v in ((cs, cnull), (ls, lnull)):
            arr = np.asarray(v)
            sd = float(arr.std(ddof=1))
            if not sd > 0:
                continue
            parts_z.append(((t - arr.mean()) / sd, (arr - arr.mean()) / sd))
        if not parts_z:
            return False
        return _low_outlier(list(sum(z[1] for z in parts_z)), float(sum(z[0] for z in parts_z)))
    return rule


def hot_rule(parts: tuple[str, ...], probe: str) -> Rule:
    """The hot-probe sum test: validation parts joined, probes ``probe``."""
    def rule(d: OwnerData, get: Callable[[str], np.ndarray], keep: list[int] | None) -> bool:
        probs, y = d.joined(parts)
        pparts = tuple(probe.split("+"))
        pp, py = d.joined(pparts)
        if keep is not None:
            probs, pp = probs[keep], pp[keep]
        result, _ = error_location_hot_test(list(probs), y, _answers_for(parts, get), list(pp), py,
                                            _answers_for(pparts, get), alpha=ALPHA)
        return result.outlier
    return rule


def _suspect_getter(answers: dict[str, np.ndarray], key: dict[str, str], j: int) -> Callable[[str], np.ndarray]:
    """Suspect ``j``'s labels on a named part."""
    return lambda part: answers[key[part]][j]


def _shadow_getter(d: OwnerData, j: int) -> Callable[[str], np.ndarray]:
    """Shadow ``j``'s labels on a named part (the shadow as a pseudo-suspect)."""
    return lambda part: np.asarray(d.probs[part][j].argmax(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dumps", nargs="+")
    parser.add_argument("--no-null", action="store_true", help="skip the shadow-against-shadows null check")
    args = parser.parse_args()
    rules: dict[str, Rule] = {
        "el(val)": el_rule(("val",)),
        "el(val+val2)": el_rule(("val", "val2")),
        "el(val+val2+hot+hot200)": el_rule(("val", "val2", "hot", "hot200")),
        "hot(val;hot)": hot_rule(("val",), "hot"),
        "robust(val)": robust_rule(("val",)),
        "reg(val)": reg_rule(("val",)),
        "hot(val;hot200)": hot_rule(("val",), "hot200"),
        "hot(val+val2;hot200)": hot_rule(("val", "val2"), "hot200"),
        "hot(val+val2;hot+hot200)": hot_rule(("val", "val2"), "hot+hot200"),
        "conf(val)": conf_rule(("val",), with_location=False),
        "el+conf(val)": conf_rule(("val",), with_location=True),
        "conf(val+val2)": conf_rule(("val", "val2"), with_location=False),
        "el+conf(val+val2)": conf_rule(("val", "val2"), with_location=True),
    }
    # correct, pairs, false-not, true pairs, null rejections, null tests
    total: dict[str, list[int]] = {r: [0, 0, 0, 0, 0, 0] for r in rules}
    for path in args.dumps:
        data, suspects = load(path)
        print(f"== {path}")
        for name, rule in rules.items():
            words = set(name.replace("(", "+").replace(")", "+").replace(";", "+").split("+"))
            needed = {p for p in ("val", "val2", "hot", "hot200", "warm") if p in words}
            if any(p not in d.probs for d in data.values() for p in needed):
                continue
            correct = pairs = fneg = true = 0
            misses: dict[str, int] = {}
            for o, d in data.items():
                key = {"val": o, "val2": f"val2_{o}", "hot": f"hot_{o}", "hot200": f"hot200_{o}", "warm": f"warm_{o}"}
                for s, ans in suspects.items():
                    for j in range(len(ans[o])):
                        outlier = rule(d, _suspect_getter(ans, key, j), None)
                        ok = outlier != (s == o)
                        correct += int(ok)
                        pairs += 1
                        if s == o:
                            true += 1
                            fneg += int(outlier)
                        if not ok:
                            misses[f"{o}<-{s}"] = misses.get(f"{o}<-{s}", 0) + 1
            nrej = nn = 0
            if not args.no_null:
                for d in data.values():
                    m = len(d.probs["val"])
                    for j in range(m):
                        keep = [i for i in range(m) if i != j]
                        outlier = rule(d, _shadow_getter(d, j), keep)
                        nrej += int(outlier)
                        nn += 1
            sums = total[name]
            for i, v in enumerate((correct, pairs, fneg, true, nrej, nn)):
                sums[i] += v
            print(f"  {name:22} acc {correct}/{pairs} = {correct / pairs:.3f}  false-not {fneg}/{true} = "
                  f"{fneg / true:.3f}  null {nrej}/{nn}  misses {misses}")
    if len(args.dumps) > 1:
        print("== all dumps")
        for name, (c, p, f, t, nr, n) in total.items():
            if p:
                print(f"  {name:22} acc {c}/{p} = {c / p:.3f}  false-not {f}/{t} = {f / t:.3f}  null {nr}/{n}")


if __name__ == "__main__":
    main()
