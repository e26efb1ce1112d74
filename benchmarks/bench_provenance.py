"""TrainProVe on digits: per (owner generator, suspect source) pair, the paper's test, the
pooled-batches test (table and designated critical values), the model-level test and the
contrast test (reference: the other two generators' validation sets; those plus the real
quarter the owner trained its generator on; that real quarter alone) over suspects of several
architectures x learning rates x weight decay x epochs; attribution accuracy; audit wall time
split with and without a cached shadow pool.

    OMP_NUM_THREADS=1 python benchmarks/bench_provenance.py --suspects 16     # the issue's size
    OMP_NUM_THREADS=1 python benchmarks/bench_provenance.py --suspects 4 --quick
    # a fresh set of suspects (grid picks, init and sampling seeds), and every model's labels saved
    OMP_NUM_THREADS=1 python benchmarks/bench_provenance.py --suspect-seed 2 --dump-labels labels.npz
    # ... with extra sets per generator (600 more validation samples per class, 200 hot probes per
    # class, 200 per class at temperature 1.6) in the dump, for benchmarks/provenance_offline.py
    OMP_NUM_THREADS=1 python benchmarks/bench_provenance.py --shadows 24 --extra-sets --dump-labels labels.npz

The tests per pair also include the error-location test (``decision="error_location"``).

Sources: three generator families (cVAE, conditional GAN -- or with ``--second gmmn`` the
moment-matching net --, per-class PCA) each trained on
its own disjoint quarter of digits, and real data (the fourth quarter). Every suspect is
trained on fresh samples of its source (or the real quarter) with its own recipe, drawn from a
fixed grid with init seeds 500+ and sampling seeds 1000+; the audit's shadow pool
(:func:`models.provenance.shadow_pool_specs`) draws its recipes from its own broader ranges,
init seeds 100000+ and sampling seeds from a seed sequence, never from that grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from appliance.audits.provenance.trainprove import ProvenanceEvidence, ReferenceSet, attribute, evaluate_source
from models.generators import fit_linear_gaussian, train_cgan, train_cvae, train_moment_matching
from models.provenance import (
    ShadowSpec,
    balanced_labels,
    digits_provenance_splits,
    draw_probes,
    draw_sets,
    shadow_pool_specs,
    shadow_proba,
    train_shadow,
    train_shadow_pool,
)


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval for k successes out of n."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suspects", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="fewer generator epochs and samples")
    parser.add_argument("--shadows", type=int, default=24,
                        help="shadow models per generator (pool; 24, the appliance's default)")
    parser.add_argument("--second", choices=("cgan", "gmmn"), default="cgan",
                        help="the generator trained on the second quarter: conditional GAN or moment-matching net")
    parser.add_argument("--dump", default=None, help="write the shadows' and suspects' accuracies to this JSON")
    parser.add_argument("--dump-labels", default=None,
                        help="write every shadow's and suspect's labels on every validation/reference set to this "
                             ".npz (plain arrays, no pickle) to study statistics offline")
    parser.add_argument("--suspect-seed", type=int, default=0,
                        help="suspect set: picks from the grid, init and sampling seeds (0: the original set; "
                             "use another to report on suspects the statistic was not chosen on)")
    parser.add_argument("--n-val", type=int, default=200,
                        help="validation samples per class (200, the appliance's default)")
    parser.add_argument("--extra-sets", action="store_true",
                        help="with --dump-labels: also query every model on each generator's extra sets (a second "
                             "validation set of 600 per class at t_val 1.2, 200 hot probes per class at 2.0, 200 per "
                             "class at 1.6; own seeds) and dump them, to study larger sets offline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = digits_provenance_splits(seed=0)
    t0 = time.perf_counter()
    second = {"cgan": lambda: train_cgan(*parts[1], seed=0, steps=600 if args.quick else 3000),
              "gmmn": lambda: train_moment_matching(*parts[1], seed=0, steps=150 if args.quick else 600)}
    gens = {
        "cvae": train_cvae(*parts[0], seed=0, epochs=60 if args.quick else 300),
        args.second: second[args.second](),
        "pca": fit_linear_gaussian(*parts[2]),
    }
    print(f"generators trained in {time.perf_counter() - t0:.1f} s")
    judge = shadow_proba(train_shadow(*parts[3], ShadowSpec("mlp", {"hidden": 64}, epochs=20, seed=1), num_classes=10))
    for name, gen in gens.items():  # do the samples look like digits of their class?
        y = balanced_labels(10, 50)
        right = float((judge(gen.sample(y, seed=7, temperature=1.0)).argmax(1) == y).mean())
        print(f"{name}: a real-data MLP labels {right:.3f} of its samples correctly")
    n_shadow, n_val, epochs = (100, 100, 15) if args.quick else (300, args.n_val, 20)
    evidence, timing = {}, {}
    for name, gen in gens.items():
        t0 = time.perf_counter()
        sets = draw_sets(gen, num_classes=10, n_shadow=n_shadow, n_val=n_val, batches=20, seed=0)
        t1 = time.perf_counter()
        specs = shadow_pool_specs(args.shadows, seed=0, epochs=epochs, train_size=10 * n_shadow)
        shadows = train_shadow_pool(gen, sets, specs, num_classes=10, seed=0)
        t2 = time.perf_counter()
        probe_x, probe_y = draw_probes(gen, num_classes=10, n_probe=50, seed=0, temperature=2.0)
        evidence[name] = ProvenanceEvidence(name, sets.val_x, sets.val_y, sets.batches,
                                            [shadow_proba(m) for m in shadows], probe_x=probe_x, probe_y=probe_y)
        timing[name] = {"sampling": t1 - t0, "shadow_training": t2 - t1}
        accs = [float((shadow_proba(m)(sets.val_x).argmax(1) == sets.val_y).mean()) for m in shadows]
        print(f"{name}: {len(shadows)} shadows' validation accuracy: mean {np.mean(accs):.4f}, sd "
              f"{np.std(accs, ddof=1):.4f}, range [{min(accs):.4f}, {max(accs):.4f}]")
    grid = list(itertools.product([("mlp", {"hidden": 64}), ("mlp", {"hidden": 128}), ("small_cnn", {"width": 8}),
                                   ("small_cnn", {"width": 16})], [1e-3, 3e-3], [0.0, 1e-3], [10, 25]))
    rng = np.random.default_rng(args.suspect_seed)
    picks = [grid[i] for i in rng.permutation(len(grid))[: args.suspects]]
    sources = [*gens, "real"]
    # the real data each generator's owner holds (the quarter it trained the generator on): the
    # optional real reference of the contrast test; the real-data suspects train on the fourth
    owner_real = {o: ReferenceSet(f"real_{o}", *parts[k]) for k, o in enumerate(gens)}
    # hot probes (the error_location_hot test): each generator's samples at temperature 2, as the
    # appliance draws them (models.provenance.draw_probes)
    hot = {f"hot_{o}": (ev.probe_x, ev.probe_y) for o, ev in evidence.items()}
    # extra sets (offline study only; not used by the tests printed below), each seed unused elsewhere
    extra: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if args.extra_sets:
        for o, gen in gens.items():
            y2 = balanced_labels(10, 600)
            extra[f"val2_{o}"] = (gen.sample(y2, seed=7_770_001, temperature=1.2), y2)
            extra[f"hot200_{o}"] = draw_probes(gen, num_classes=10, n_probe=200, seed=7_770_002, temperature=2.0)
            y3 = balanced_labels(10, 200)
            extra[f"warm_{o}"] = (gen.sample(y3, seed=7_770_003, temperature=1.6), y3)
    answers: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in sources}
    query_seconds = []
    for s_index, source in enumerate(sources):
        for j, ((arch, config), lr, wd, ep) in enumerate(picks):
            if source == "real":
                x, y = parts[3]
            else:
                y = balanced_labels(10, n_shadow)
                x = gens[source].sample(y, seed=1000 + 100 * s_index + j + 10_000 * args.suspect_seed,
                                        temperature=1.0)
            model = train_shadow(x, y, ShadowSpec(arch, config, epochs=ep, lr=lr, weight_decay=wd,
                                                  seed=500 + j + 1_000 * args.suspect_seed), num_classes=10)
            fn = shadow_proba(model)
            q0 = time.perf_counter()
            answers[source].append({o: fn(evidence[o].val_x).argmax(1) for o in gens})
            query_seconds.append((time.perf_counter() - q0) / len(gens))
            for ref in owner_real.values():
                answers[source][-1][ref.name] = fn(ref.x).argmax(1)
            for k, (hx, _) in {**hot, **extra}.items():
                answers[source][-1][k] = fn(hx).argmax(1)
    if args.dump:
        record = {"shadows": [s.to_dict() for s in specs],
                  "shadow_batch_accuracy": {}, "suspect_accuracy": {},
                  "suspect_recipes": [list(map(str, p)) for p in picks]}
        for o, ev in evidence.items():
            probs = [fn(ev.val_x).argmax(1) == ev.val_y for fn in ev.shadows]
            record["shadow_batch_accuracy"][o] = [[float(c[b].mean()) for b in ev.batches] for c in probs]
        sets = {**{o: (ev.val_x, ev.val_y) for o, ev in evidence.items()},
                **{r.name: (r.x, r.y) for r in owner_real.values()}}
        record["shadow_accuracy"] = {o: {k: [float((fn(x).argmax(1) == y).mean()) for fn in ev.shadows]
                                         for k, (x, y) in sets.items()} for o, ev in evidence.items()}
        for source in sources:
            record["suspect_accuracy"][source] = [{k: float((a[k] == y).mean()) for k, (_, y) in sets.items()}
                                                  for a in answers[source]]
        Path(args.dump).write_text(json.dumps(record))
    if args.dump_labels:
        arrays: dict[str, np.ndarray] = {}
        label_sets = {**{o: (ev.val_x, ev.val_y) for o, ev in evidence.items()},
                      **{r.name: (r.x, r.y) for r in owner_real.values()}, **hot}
        for k, (_x, y) in label_sets.items():
            arrays[f"y/{k}"] = y
        for o, ev in evidence.items():
            arrays[f"batches/{o}"] = np.stack(ev.batches)
            for k, (x, _) in label_sets.items():
                shadow_p = np.stack([fn(x) for fn in ev.shadows])
                arrays[f"shadow/{o}/{k}"] = shadow_p.argmax(2)
                arrays[f"shadow_proba/{o}/{k}"] = shadow_p.astype(np.float32)
        for k, (x, y) in extra.items():  # an extra set is evaluated by its own generator's shadows only
            o = k.split("_", 1)[1]
            arrays[f"y/{k}"] = y
            shadow_p = np.stack([fn(x) for fn in evidence[o].shadows])
            arrays[f"shadow/{o}/{k}"] = shadow_p.argmax(2)
            arrays[f"shadow_proba/{o}/{k}"] = shadow_p.astype(np.float32)
        for source in sources:
            for k in [*label_sets, *extra]:
                arrays[f"suspect/{source}/{k}"] = np.stack([a[k] for a in answers[source]])
        np.savez_compressed(args.dump_labels, **arrays)  # type: ignore[arg-type]
    print(f"\n{args.suspects} suspects per source; alpha 0.05; verdict 'consistent' expected iff source == owner")
    print("number of suspects judged 'not G_d' by each test:")
    tests = ("paper", "pooled", "pooled+designated", "model_level", "contrast", "contrast+real", "contrast/real",
             "error_location", "error_location_hot")
    print(f"{'owner':6} {'source':6} | " + " | ".join(f"{t:>17}" for t in tests))
    totals = {t: [0, 0] for t in tests}
    false_neg = {t: [0, 0] for t in tests}
    for owner in gens:
        for source in sources:
            rejects = dict.fromkeys(tests, 0)
            for a in answers[source]:
                t = evaluate_source(evidence[owner], a[owner], variant="accuracy", alpha=0.05)
                d = evaluate_source(evidence[owner], a[owner], variant="accuracy", alpha=0.05, mode="designated")
                rejects["paper"] += int(t.paper is not None and t.paper.outlier)
                rejects["pooled"] += int(t.calibrated.outlier)
                rejects["pooled+designated"] += int(d.calibrated.outlier)
                rejects["model_level"] += int(t.model_level is not None and t.model_level.outlier)
                rejects["error_location"] += int(t.error_location is not None and t.error_location.outlier)
                h = evaluate_source(evidence[owner], a[owner], variant="accuracy", alpha=0.05,
                                    decision="error_location_hot", probe_answers=a[f"hot_{owner}"])
                rejects["error_location_hot"] += int(h.chosen.outlier)
                others = [o for o in gens if o != owner]
                refs = [ReferenceSet.of(evidence[o]) for o in others]
                c = evaluate_source(evidence[owner], a[owner], variant="accuracy", alpha=0.05, decision="contrast",
                                    references=refs, reference_answers=[a[o] for o in others])
                rejects["contrast"] += int(c.chosen.outlier)
                real = owner_real[owner]
                cr = evaluate_source(evidence[owner], a[owner], variant="accuracy", alpha=0.05, decision="contrast",
                                     references=[*refs, real],
                                     reference_answers=[*(a[o] for o in others), a[real.name]])
                rejects["contrast+real"] += int(cr.chosen.outlier)
                r = evaluate_source(evidence[owner], a[owner], variant="accuracy", alpha=0.05, decision="contrast",
                                    references=[real], reference_answers=[a[real.name]])
                rejects["contrast/real"] += int(r.chosen.outlier)
            n = len(answers[source])
            for test in tests:
                correct = rejects[test] if source != owner else n - rejects[test]
                totals[test][0] += correct
                totals[test][1] += n
                if source == owner:
                    false_neg[test][0] += rejects[test]
                    false_neg[test][1] += n
            print(f"{owner:6} {source:6} | " + " | ".join(f"{rejects[t]:>13}/{n:<3}" for t in tests))
    for test in tests:
        k, n = totals[test]
        lo, hi = wilson(k, n)
        fk, fn_ = false_neg[test]
        flo, fhi = wilson(fk, fn_)
        print(f"{test:18}: accuracy {k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]; 'not G_d' among true G_d "
              f"suspects {fk}/{fn_} = {fk / fn_:.3f} [{flo:.3f}, {fhi:.3f}]")
    for decision in ("calibrated", "model_level", "contrast", "error_location", "error_location_hot"):
        correct = total = 0
        confusion: dict[str, dict[str, int]] = {s: {} for s in sources}
        for source in sources:
            for a in answers[source]:
                best, _ = attribute([evidence[o] for o in gens], [a[o] for o in gens], decision=decision,  # type: ignore[arg-type]
                                    probe_answers=[a[f"hot_{o}"] for o in gens])
                expected = source if source in gens else "no_candidate_explains_the_suspect"
                correct += int(best == expected)
                total += 1
                label = "none" if best == "no_candidate_explains_the_suspect" else best
                confusion[source][label] = confusion[source].get(label, 0) + 1
        lo, hi = wilson(correct, total)
        print(f"attribution by the {decision} test (3 generators; real-data suspects should get 'none'): "
              f"{correct}/{total} = {correct / total:.3f} [{lo:.3f}, {hi:.3f}]")
        cols = [*gens, "none"]
        print(f"  {'source':6} -> " + " ".join(f"{c:>5}" for c in cols))
        for source in sources:
            print(f"  {source:6} -> " + " ".join(f"{confusion[source].get(c, 0):>5}" for c in cols))
    print(f"\naudit wall time per generator (s): sampling / shadow training ({args.shadows} shadows) / suspect queries")
    q = float(np.mean(query_seconds))
    for name, split in timing.items():
        uncached = split["sampling"] + split["shadow_training"] + q
        print(f"  {name:5} uncached: {split['sampling']:.2f} / {split['shadow_training']:.2f} / {q:.3f}   "
              f"cached shadow: 0 / 0 / {q:.3f}  (total {uncached:.2f} vs {q:.3f})")


if __name__ == "__main__":
    main()
