"""DOV4CL's calibrated test with other statistics of the same per-image residuals.

    python benchmarks/ownership_statistics.py --base 5000 [--base 13000 ...]

For each part of ``bench_ownership_robustness.py`` named by its seed base (10 positives, 20
negatives, each its own owner; trained there, or here if missing), the audit runs as the service
runs it by default (shadows adapted to the suspect's invariance, with a projector) and its
per-image residuals (suspect's score minus the label-free fit on the shadows') are kept in
``$BENCH_CACHE/residuals-{base}.npz``. Every statistic is then tested by the same relabellings of
which images are public (4000 per suspect), so their p-values differ only by the statistic:

- ``mean``: mean(D_pub) - mean(D_pvt), the service's default (``statistic: "mean"``);
- ``ranks``: mean rank of D_pub (Mann-Whitney);
- ``q75``: difference of the two sets' upper quartiles;
- ``ks``: one-sided Kolmogorov-Smirnov, max over thresholds of F_pvt - F_pub;
- ``mean+q75``: the smaller of the mean's and the quartile's permutation p-values, itself ranked
  among the relabellings (``statistic: "mean_or_upper_quartile"``,
  :func:`appliance.audits.stats.permutation_mean_or_upper`).

Prints each suspect's p-values and per part and statistic the TPR and FPR at alpha 0.05.
Every statistic gives an exact test (the residuals are label-free), so FPR differences between
them are noise around alpha; the figure of interest is the TPR.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_ownership_robustness as bench  # noqa: E402

ALPHA = 0.05
STATISTICS = ("mean", "ranks", "q75", "ks", "mean+q75")


def residuals(base: int, workers: int) -> dict[str, np.ndarray]:
    """The part's residuals and public flags per suspect (cached), from audits with the
    service's default shadows."""
    path = bench.CACHE / f"residuals-{base}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    import torch

    import appliance.audits.ownership.dov4cl as dov4cl
    from appliance.audits.registry import create_method

    torch.set_num_threads(1)
    tasks = bench._interleaved(10, 20, 0, base, [])
    bench.train_suspects(tasks, workers)
    _, _, alt = bench.digits_native()
    value_range = (0.0, 16.0)
    method = create_method("dov4cl")
    adapted = bench.auto_views_design(method, alt, value_range, bench.appliance_shadows(alt, value_range),
                                      {"projection_head": True})
    seen: dict[str, np.ndarray] = {}
    plain = dov4cl.permutation_mean_diff

    def keep(scores: np.ndarray, is_first: np.ndarray, **kw: Any) -> tuple[float, float]:
        seen["r"], seen["pub"] = np.asarray(scores, np.float64), np.asarray(is_first, bool)
        return plain(scores, is_first, **kw)

    dov4cl.permutation_mean_diff = keep  # type: ignore[assignment]
    out: dict[str, np.ndarray] = {}
    try:
        for role, seed in tasks:
            suspect = bench.RowCache(bench.load_suspect(role, seed))
            public, private = bench.owner_sets(seed)
            shadows, invariance = adapted(suspect, public, private, seed)
            result = method.run(dov4cl.DOV4CLInputs(public=public, private=private, suspect=suspect,
                                                    shadow=shadows, invariance=invariance), seed=seed)
            out[f"{role}-{seed}-r"], out[f"{role}-{seed}-pub"] = seen["r"], seen["pub"]
            out[f"{role}-{seed}-p"] = np.array(result.p_value)
    finally:
        dov4cl.permutation_mean_diff = plain  # type: ignore[assignment]
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def p_values(r: np.ndarray, public: np.ndarray, *, relabellings: int, seed: int) -> dict[str, float]:
    """Every statistic's permutation p-value on the same relabellings (the observed one first)."""
    from scipy.stats import rankdata

    from appliance.audits.stats import min_p_combined

    rng = np.random.default_rng(seed)
    labels = np.stack([public] + [rng.permutation(public) for _ in range(relabellings)])
    k, n = int(public.sum()), len(r)
    order = np.argsort(~labels, axis=1, kind="stable")  # each row: its public images first
    first, second = r[order[:, :k]], r[order[:, k:]]
    q75 = np.quantile(first, 0.75, axis=1) - np.quantile(second, 0.75, axis=1)
    mean = first.mean(axis=1) - second.mean(axis=1)
    by_value = labels[:, np.argsort(r)]
    ks = (np.cumsum(~by_value, axis=1) / (n - k) - np.cumsum(by_value, axis=1) / k).max(axis=1)
    values = {"mean": mean, "ranks": rankdata(r)[order[:, :k]].mean(axis=1), "q75": q75, "ks": ks}
    found = {name: float(np.count_nonzero(v >= v[0]) / len(v)) for name, v in values.items()}
    found["mean+q75"] = min_p_combined(mean, q75)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, action="append", required=True,
                        help="a part's seed base: 5000 (--owners), 11000 (--sixth), 13000 (the seventh)")
    parser.add_argument("--relabellings", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2, help="suspects trained at once, where missing")
    args = parser.parse_args()
    rows = []
    for base in args.base:
        saved = residuals(base, args.workers)
        names = sorted({key.rsplit("-", 1)[0] for key in saved}, key=lambda s: (s.split("-")[0], int(s.split("-")[1])))
        found = {}
        for name in names:
            found[name] = p_values(saved[f"{name}-r"], saved[f"{name}-pub"], relabellings=args.relabellings,
                                   seed=int(name.split("-")[1]))
            shown = "  ".join(f"{s} {found[name][s]:.4f}" for s in STATISTICS)
            print(f"{name:15s} audit {float(saved[f'{name}-p']):.4f}  {shown}", flush=True)
        for stat in STATISTICS:
            pos = [found[n][stat] for n in names if n.startswith("positive")]
            neg = [found[n][stat] for n in names if n.startswith("negative")]
            rows.append([str(base), stat, bench.clopper_pearson(sum(p < ALPHA for p in pos), len(pos)),
                         bench.clopper_pearson(sum(p < ALPHA for p in neg), len(neg)), f"{np.median(pos):.4f}"])
    print()
    print(bench.table("DOV4CL's calibrated test, one set of residuals per suspect, several statistics",
                      ["part", "statistic", "TPR", "FPR", "median p, positives"], rows))


if __name__ == "__main__":
    main()
