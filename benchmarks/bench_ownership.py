"""Benchmark of the ownership audits on independently trained small models (digits).

    python benchmarks/bench_ownership.py [--quick] [--workers 2] [--only dov4cl|watermark]
        [--objective simclr|simsiam|both] [--null-sets 32] [--null-only]

Prints one table per method: true-positive rate over independently trained positives,
false-positive rate over negatives (other data, other seeds, other architectures), the
rate of p < alpha over null suspect/shadow pairs (both independent of D_pub) for the
reference and the calibrated test (DOV4CL: one table per self-supervised objective, the
shadows trained with the suspects' objective), audit wall time over the bare forward time
of the same queries (measured in the same run), and queries per verdict. Rates come with
95% Wilson intervals: 10-30 models pin a rate down to no better than +-10 points, so
``--null-only --null-sets 192`` runs only DOV4CL's random-split null sets for a tighter
estimate of its type-I error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALPHA = 0.05
N_PUB = 128
KEY = bytes(range(100, 132))
#: Keys that did not mark the data (key-specificity check: positives must not fire on them).
OTHER_KEYS = [bytes((7 * b + j) % 256 for b in range(32)) for j in (1, 2, 3)]
#: Marking recipe of the positives (the library defaults); part of the cache name.
MARK_FRACTION, MARK_DECOYS = 0.01, 0.03


#: Epochs per self-supervised objective: SimSiam (no negatives) learns slower than SimCLR.
EPOCHS = {"simclr": 400, "simsiam": 1000}


@dataclass(frozen=True)
class Job:
    kind: str  # "encoder" | "classifier"
    arch: str
    data: str  # "public" | "alt" | "marked" | "clean_label" | "half"
    seed: int
    objective: Literal["simclr", "simsiam"] = "simclr"  # encoders only


def _train(job: Job) -> tuple[Job, dict[str, np.ndarray], float]:
    import torch

    torch.set_num_threads(1)
    from models.architectures import SmallCNN
    from models.vision import (
        ENCODERS,
        ConvClassifier,
        build_model,
        digits_splits,
        train_classifier,
        train_contrastive,
    )

    s = digits_splits(seed=0)
    t0 = time.perf_counter()
    if job.kind == "encoder":
        pub = s.public[0][:N_PUB]
        alt = s.alternative[0]
        if job.data == "public":
            data = pub
        else:
            idx = np.random.default_rng(job.seed).choice(len(alt), N_PUB, replace=False)
            data = alt[idx]
        model = build_model(ENCODERS[job.arch], seed=job.seed, width=16)
        train_contrastive(
            model, data, objective=job.objective, seed=job.seed, epochs=EPOCHS[job.objective], batch_size=N_PUB
        )
    else:
        from appliance.audits.ownership.watermark import mark_dataset

        x, y = s.alternative if job.data == "alt" else s.public
        if job.data == "marked":
            marked = mark_dataset(x, y, KEY, fraction=MARK_FRACTION, decoy_fraction=MARK_DECOYS, target_class=0)
            x, y = marked.x, marked.y
        if job.arch == "small_cnn":
            model = build_model(SmallCNN, seed=job.seed, in_channels=1, image_size=16, num_classes=10)
        else:
            model = build_model(ConvClassifier, seed=job.seed, width=16)
        train_classifier(model, x, y, seed=job.seed, epochs=40)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return job, state, time.perf_counter() - t0


def _load(job: Job, state: dict[str, np.ndarray]) -> Any:
    import torch

    from models.architectures import SmallCNN
    from models.vision import ENCODERS, ConvClassifier, build_model

    if job.kind == "encoder":
        model = build_model(ENCODERS[job.arch], seed=0, width=16)
    elif job.arch == "small_cnn":
        model = build_model(SmallCNN, seed=0, in_channels=1, image_size=16, num_classes=10)
    else:
        model = build_model(ConvClassifier, seed=0, width=16)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model.eval()


CACHE = os.environ.get("BENCH_OWNERSHIP_CACHE", "/tmp/bench_ownership_cache")


def _cache_path(job: Job) -> str:
    data = f"{job.data}-f{MARK_FRACTION}-d{MARK_DECOYS}" if job.data == "marked" else job.data
    # SimCLR keeps its old cache names; other objectives carry their recipe in the name.
    recipe = "" if job.kind != "encoder" or job.objective == "simclr" else f"-{job.objective}{EPOCHS[job.objective]}"
    return os.path.join(CACHE, f"{job.kind}-{job.arch}{recipe}-{data}-{job.seed}.npz")


def _train_all(jobs: list[Job], workers: int) -> dict[Job, Any]:
    """Train (or load from the cache folder, weights only, no pickle) every model."""
    t0 = time.perf_counter()
    out: dict[Job, Any] = {}
    os.makedirs(CACHE, exist_ok=True)
    todo = []
    for job in jobs:
        if os.path.exists(_cache_path(job)):
            out[job] = _load_cached(job)
        else:
            todo.append(job)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for job, state, _ in pool.map(_train, todo):
            np.savez(_cache_path(job), **state)
            out[job] = _load(job, state)
    print(
        f"  trained {len(todo)} models ({len(jobs) - len(todo)} cached) in {time.perf_counter() - t0:.0f} s", flush=True
    )
    return out


def _rate(flags: list[bool]) -> str:
    """Rate, count and its 95% Wilson interval (a rate from 10-30 models is a rough estimate)."""
    n, k = len(flags), sum(flags)
    z = 1.96
    centre = (k + z * z / 2) / (n + z * z)
    half = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return f"{k / n * 100:5.1f}% ({k}/{n}; CI {max(0.0, centre - half) * 100:.0f}-{min(1.0, centre + half) * 100:.0f}%)"


def _row(name: str, value: str, goal: str) -> None:
    print(f"| {name:<52} | {value:>32} | {goal:>8} |")


def _header(title: str) -> None:
    print(f"\n### {title}\n")
    print(f"| {'figure':<52} | {'measured':>32} | {'goal':>8} |")
    print(f"|{'-' * 54}|{'-' * 34}|{'-' * 10}|")


def _load_cached(job: Job) -> Any:
    with np.load(_cache_path(job), allow_pickle=False) as f:
        return _load(job, {k: f[k] for k in f.files})


def _dov4cl_audit(task: tuple[Job, list[Job], int, int | None]) -> dict[str, Any]:
    """One DOV4CL audit in a worker process: p-values, wall/bare ratio, queries.

    ``resplit``: None audits the owner's fixed split (D_pub = the positives' training set);
    an integer re-draws which of the pooled public + private images are "public" (valid only
    for suspects and shadows that saw none of them: the null models).
    """
    import torch

    torch.set_num_threads(1)
    from appliance.audits.ownership.dov4cl import DOV4CLInputs
    from appliance.audits.registry import create_method
    from models.vision import digits_splits, embed_fn

    suspect_job, shadow_jobs, seed, resplit = task
    s = digits_splits(seed=0)
    public, private = s.public[0][:N_PUB], s.private[0]
    if resplit is not None:
        pool = np.concatenate([public, private])
        order = np.random.default_rng([resplit, 0x5E11]).permutation(len(pool))
        public, private = pool[order[:N_PUB]], pool[order[N_PUB:]]
    suspect = _load_cached(suspect_job)
    shadows = [_load_cached(j) for j in shadow_jobs]
    method = create_method("dov4cl")
    params = {"rounds": DOV4CL_ROUNDS}
    # Every batch each model is asked for, to time the bare forward of exactly the audit's
    # queries (view-policy probe included) afterwards, same batching, same process.
    asked: list[tuple[Any, np.ndarray]] = []

    def recorded(fn: Any) -> Any:
        def embed(x: np.ndarray) -> np.ndarray:
            asked.append((fn, np.array(x)))
            return fn(x)

        return embed

    inputs = DOV4CLInputs(
        public=public,
        private=private,
        suspect=recorded(embed_fn(suspect)),
        shadow=[recorded(embed_fn(m)) for m in shadows],
    )
    res = method.run(inputs, params=params, seed=seed)
    t0 = time.perf_counter()
    for fn, batch in asked:
        fn(batch)
    bare = time.perf_counter() - t0
    return {
        "cal": res.statistics["calibrated_p"],
        "ref": res.statistics["reference_p"],
        "ratio": res.timings["total_s"] / bare,
        "queries": res.queries,
    }


DOV4CL_ROUNDS = 50


def bench_dov4cl(
    quick: bool,
    workers: int,
    objective: Literal["simclr", "simsiam"] = "simclr",
    *,
    null_sets: int = 32,
    null_only: bool = False,
) -> None:
    """One DOV4CL table for suspects and shadows trained with ``objective``.

    ``null_sets`` random-split null sets (suspect and 3 shadows drawn from the null encoders);
    ``null_only`` runs just those (a tighter estimate of the test's type-I error).
    """
    n_pos = 10
    n_shadows = 3
    n_null = 13 if quick else 16  # null models: 3 shadows + >= 10 negatives
    pos_jobs = [Job("encoder", "conv_encoder", "public", 1000 + i, objective) for i in range(n_pos)]
    null_jobs = [
        Job("encoder", "pool_encoder" if i % 4 == 3 else "conv_encoder", "alt", 2000 + i, objective)
        for i in range(n_null)
    ]
    print(f"DOV4CL ({objective}): training {n_pos} positives and {n_null} null encoders ...", flush=True)
    _train_all(pos_jobs + null_jobs, workers)
    shadows = null_jobs[:n_shadows]
    # Null sets: each null encoder as suspect against 3 other null encoders as shadows, twice.
    pairs = [(a, [(a + d + o) % n_null for o in range(n_shadows)]) for d in (1, 1 + n_shadows) for a in range(n_null)]
    tasks: dict[str, list[tuple[Job, list[Job], int, int | None]]] = {
        "pos": [(j, shadows, i, None) for i, j in enumerate(pos_jobs)],
        "neg": [(j, shadows, 100 + i, None) for i, j in enumerate(null_jobs[n_shadows:])],
        "null": [(null_jobs[a], [null_jobs[b] for b in bs], 200 + i, None) for i, (a, bs) in enumerate(pairs)],
        "null_resplit": [],
    }
    for i in range(null_sets):
        a = i % n_null
        others = [j for j in range(n_null) if j != a]
        bs = np.random.default_rng([i, 0xC0DE]).choice(others, n_shadows, replace=False)
        tasks["null_resplit"].append((null_jobs[a], [null_jobs[int(b)] for b in bs], 200 + i, 900 + i))
    if null_only:
        tasks = {"null_resplit": tasks["null_resplit"]}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        out = {name: list(pool.map(_dov4cl_audit, group)) for name, group in tasks.items()}
    print(f"  {sum(len(v) for v in out.values())} audits in {time.perf_counter() - t0:.0f} s", flush=True)
    every = [r for group in out.values() for r in group]
    style = {"simclr": "SimCLR", "simsiam": "SimSiam"}[objective]
    if null_only:
        _header(f"DOV4CL null calibration ({style} encoders, {null_sets} random-split null sets)")
        for test, key in (("calibrated", "cal"), ("reference", "ref")):
            _row(f"null p<.05, {test}", _rate([r[key] < ALPHA for r in out["null_resplit"]]), "<= 7%")
        return
    pos, neg, null, resplit = out["pos"], out["neg"], out["null"], out["null_resplit"]
    ratios = [r["ratio"] for r in every]
    _header(
        f"DOV4CL (method dov4cl, {style}-style conv encoders, {EPOCHS[objective]} epochs, |D_pub| = 128, "
        f"K = {DOV4CL_ROUNDS}, {n_shadows} {style} shadows)"
    )
    _row("TPR, calibrated (permutation) test", _rate([r["cal"] < ALPHA for r in pos]), ">= 95%")
    _row("TPR, reference (pooled unpaired t) test", _rate([r["ref"] < ALPHA for r in pos]), ">= 95%")
    _row("FPR, calibrated test (negatives vs fixed shadows)", _rate([r["cal"] < ALPHA for r in neg]), "<= 5%")
    _row("FPR, reference test", _rate([r["ref"] < ALPHA for r in neg]), "<= 5%")
    for label, group in (("random split per set", resplit), ("owner's fixed split", null)):
        _row(f"null p<.05, calibrated, {label}", _rate([r["cal"] < ALPHA for r in group]), "<= 7%")
        _row(f"null p<.05, reference, {label}", _rate([r["ref"] < ALPHA for r in group]), "<= 7%")
    _row("audit wall / bare forward (median, max)", f"{np.median(ratios):.2f}x, {np.max(ratios):.2f}x", "<= 1.3x")
    _row("suspect queries per verdict", f"{int(np.median([r['queries'] for r in every]))}", "report")
    print(
        f"\n(negatives: {n_null - n_shadows} encoders on alternative-data subsets, other seeds; every "
        f"4th null encoder is the other architecture pool_encoder; null sets: each of the {n_null} "
        f"null encoders as suspect against 3 other null encoders as shadows, twice ({len(pairs)} sets) on the "
        f"owner's split, and {null_sets} sets (suspect and 3 shadows drawn from the null encoders) each on "
        "a fresh random split of the same public + private pool (the randomness the permutation test's "
        "guarantee is over; the null models saw none of it))"
    )


def bench_watermark(quick: bool, workers: int) -> None:
    import torch

    from appliance.audits.ownership.watermark import WatermarkInputs
    from appliance.audits.registry import create_method
    from models.vision import accuracy, digits_splits, label_fn, proba_fn

    torch.set_num_threads(1)
    n = 10
    archs = ["conv_classifier", "small_cnn"]
    pos_jobs = [Job("classifier", "conv_classifier", "marked", 3000 + i) for i in range(n)]
    clean_jobs = [Job("classifier", "conv_classifier", "public", 3000 + i) for i in range(n)]
    alt_jobs = [Job("classifier", archs[i % 2], "alt", 4000 + i) for i in range(n)]
    print(f"Watermark: training {3 * n} classifiers ...", flush=True)
    models = _train_all(pos_jobs + clean_jobs + alt_jobs, workers)
    s = digits_splits(seed=0)
    x_val, y_val = s.private
    method = create_method("watermark_dvbw")
    results: dict[str, dict[str, list[float]]] = {}
    ratios: list[float] = []
    queries: list[int] = []
    for mode in ("proba", "label"):
        for group, jobs in (("pos", pos_jobs), ("clean", clean_jobs), ("alt", alt_jobs)):
            for i, job in enumerate(jobs):
                model = models[job]
                fn = proba_fn(model) if mode == "proba" else label_fn(model)
                inputs = WatermarkInputs(benign=x_val, benign_labels=y_val, suspect=fn, key=KEY, target_class=0)
                res = method.run(inputs, params={"mode": mode}, seed=i)
                results.setdefault(mode, {}).setdefault(group, []).append(res.p_value)
                if group == "pos":
                    for other in OTHER_KEYS:
                        wrong = WatermarkInputs(
                            benign=x_val, benign_labels=y_val, suspect=fn, key=other, target_class=0
                        )
                        p_wrong = method.run(wrong, params={"mode": mode}, seed=i).p_value
                        results[mode].setdefault("wrong_key", []).append(p_wrong)
                if mode == "proba":
                    from appliance.audits.ownership.watermark import apply_trigger, make_trigger

                    # Audits take milliseconds here: best of 5 for both sides of the ratio.
                    audit_s = min(
                        method.run(inputs, params={"mode": mode}, seed=i).timings["total_s"] for _ in range(5)
                    )
                    cand = np.flatnonzero(y_val != 0)
                    rng = np.random.default_rng([i, 0xD7B3])
                    chosen = np.sort(rng.choice(cand, 100, replace=False))
                    xb = x_val[chosen]
                    pattern, mask = make_trigger(KEY, xb.shape[1:])
                    queries_x = np.concatenate([xb, apply_trigger(xb, pattern, mask)])
                    bare = np.inf
                    for _ in range(5):
                        t0 = time.perf_counter()
                        fn(queries_x)
                        bare = min(bare, time.perf_counter() - t0)
                    ratios.append(audit_s / bare)
                    queries.append(res.queries)
    acc_cost = [
        (accuracy(models[c], x_val, y_val) - accuracy(models[p], x_val, y_val)) * 100
        for c, p in zip(clean_jobs, pos_jobs, strict=True)
    ]
    # All held-out digits (private + alternative, used by neither twin): 3x finer resolution.
    x_all = np.concatenate([x_val, s.alternative[0]])
    y_all = np.concatenate([y_val, s.alternative[1]])
    acc_cost_all = [
        (accuracy(models[c], x_all, y_all) - accuracy(models[p], x_all, y_all)) * 100
        for c, p in zip(clean_jobs, pos_jobs, strict=True)
    ]
    _header(
        f"Watermark (method watermark_dvbw, dirty-label, {MARK_FRACTION:.0%} marked + "
        f"{MARK_DECOYS:.0%} decoys, m = 100, tau = 0.2)"
    )
    for mode in ("proba", "label"):
        r = results[mode]
        _row(f"TPR ({mode} mode)", _rate([p < ALPHA for p in r["pos"]]), ">= 95%")
        _row(
            f"FPR ({mode}; clean public + alt-data models)", _rate([p < ALPHA for p in r["clean"] + r["alt"]]), "<= 5%"
        )
        _row(f"positives flagged with a wrong key ({mode})", _rate([p < ALPHA for p in r["wrong_key"]]), "<= 5%")
    _row(
        f"clean acc. cost, points, private n={len(y_val)} (mean, max)",
        f"{np.mean(acc_cost):+.2f}, {np.max(acc_cost):+.2f}",
        "<= 1",
    )
    _row(
        f"clean acc. cost, points, held-out n={len(y_all)} (mean, max)",
        f"{np.mean(acc_cost_all):+.2f}, {np.max(acc_cost_all):+.2f}",
        "<= 1",
    )
    _row("audit wall / bare forward (median, max)", f"{np.median(ratios):.2f}x, {np.max(ratios):.2f}x", "<= 1.3x")
    _row("suspect queries per verdict", f"{int(np.median(queries))}", "report")
    print(
        "\n(null calibration: the 20 clean/alt models are the null models of this test; "
        "positives and their clean twins (same seed) are conv_classifier;\n the alt-data "
        f"models alternate conv_classifier / small_cnn; wrong keys: {len(OTHER_KEYS)} other keys "
        "per positive)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer null encoders")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["dov4cl", "watermark"], default=None)
    parser.add_argument(
        "--objective", choices=["simclr", "simsiam", "both"], default="both", help="DOV4CL encoders' training objective"
    )
    parser.add_argument("--null-sets", type=int, default=32, help="DOV4CL random-split null sets")
    parser.add_argument("--null-only", action="store_true", help="DOV4CL: only the random-split null sets")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.only in (None, "watermark") and not args.null_only:
        bench_watermark(args.quick, args.workers)
    if args.only in (None, "dov4cl"):
        objectives: tuple[Literal["simclr", "simsiam"], ...] = (
            ("simclr", "simsiam") if args.objective == "both" else (args.objective,)
        )
        for objective in objectives:
            bench_dov4cl(args.quick, args.workers, objective, null_sets=args.null_sets, null_only=args.null_only)
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
