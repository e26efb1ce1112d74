"""Benchmark of the unlearning audits on small GPT-2 subjects trained from scratch.

    python benchmarks/bench_unlearning.py [--quick] [--seeds 0 1 2] [--pairs 20] [--algorithms npo rmu]
        [--audits extraction ...] [--no-quantised] [--json out.json] [--cache-dir DIR]

``--quick``: one seed, three algorithms (grad_diff, npo, rmu), no quantised re-audits.
``--report a.json b.json`` prints the tables of earlier ``--json`` runs, merged.
``--pairs N``: also audit N independent gold/reference pairs (seeds 1000.., each its own corpus
and its own three trained subjects) for the gold false-positive rate, with 95% Clopper-Pearson
intervals per audit and for the Holm-corrected battery. ``--seeds`` with no value skips the
algorithm seeds. Trained subjects are cached on disk by seed and recipe (``--cache-dir``,
default ``/tmp/unlearning-bench-cache``), so a rerun only audits.

Per seed: the full model (forget ∪ retain), the gold model (retain only) audited against the
reference (retain only, another seed), and each reference unlearning algorithm applied to the
full model at matched utility (retain accuracy >= 0.9). Prints

- the set-up sanity figures (forget/retain accuracy, LOSS-attack AUC forget vs holdout);
- the main table: which audit flags which model (p-value of "knowledge remains", K when it
  is below alpha), with the battery's Holm-corrected overall verdict, and per algorithm and
  audit over the seeds: how often it is flagged and the AUC against the gold models;
- per audit over all seeds run: faithfulness (AUC of the knowledge score, -log10 p, between
  models holding the knowledge — full — and models that never saw it — gold), AUC gold vs
  the superficially unlearned models, and the gold false-positive rate (one gold/reference
  pair per seed: say how many pairs were run);
- robustness: how each audit's p-value moves under 8-bit weight quantisation of the audited
  model (relearning is the relearning audit's own probe, reported in the main table);
- timings: subject training, each unlearning run, each audit battery.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import table  # noqa: E402

ALPHA = 0.05
PAIR_SEED_BASE = 1000
DEFAULT_CACHE = Path("/tmp/unlearning-bench-cache")


def quantise_8bit(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose matrices are rounded to symmetric per-row int8 and back."""
    quantised = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in quantised.parameters():
            if parameter.dim() < 2:
                continue
            scale = parameter.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
            parameter.copy_(torch.round(parameter / scale).clamp(-127, 127) * scale)
    return quantised


def knowledge_score(p_value: float) -> float:
    """-log10 p: higher means stronger evidence that forget knowledge remains."""
    return -math.log10(max(p_value, 1e-300))


def auc(positive: list[float], negative: list[float]) -> float:
    """P(positive > negative) + half the ties (Mann-Whitney AUC); nan when a side is empty."""
    if not positive or not negative:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for k successes out of n."""
    from scipy import stats

    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def subject_config() -> Any:
    """The benchmark's subjects: the default architecture, trained on the retain set's
    paraphrases too (so the full model answers the forget set's paraphrases)."""
    from models.unlearning.subjects import SubjectConfig

    return SubjectConfig(paraphrase_training=True)


def battery_record(battery: Any, seconds: float) -> dict[str, Any]:
    return {"seconds": seconds, "verdict": battery.verdict,
            "p": {name: float(result.p_value) for name, result in battery.results.items()},
            "skipped": battery.skipped}


def audit_inputs(subjects: Any, model: torch.nn.Module) -> Any:
    from appliance.audits.unlearning import UnlearningInputs
    from models.lm import CausalLM
    from models.textdata import parse_jsonl

    records = {split: parse_jsonl(subjects.dataset_path(split).read_bytes())
               for split in ("forget", "retain", "holdout")}
    return UnlearningInputs(model=CausalLM(model, subjects.tokenizer), forget=records["forget"],
                            holdout=records["holdout"], retain=records["retain"],
                            reference=CausalLM(subjects.reference, subjects.tokenizer),
                            original=CausalLM(subjects.full, subjects.tokenizer))


def run_pair(index: int, args: argparse.Namespace) -> dict[str, Any]:
    """One independent gold/reference pair: its own corpus, gold audited against reference."""
    from appliance.audits.unlearning import run_battery
    from models.unlearning.subjects import make_subjects

    seed = PAIR_SEED_BASE + index
    started = time.perf_counter()
    subjects = make_subjects(seed=seed, cache_dir=args.cache_dir, config=subject_config())
    trained = time.perf_counter() - started
    clock = time.perf_counter()
    battery = run_battery(audit_inputs(subjects, subjects.gold), audits=args.audits, seed=seed, alpha=ALPHA)
    record = {"seed": seed, "subjects_seconds": trained,
              **battery_record(battery, time.perf_counter() - clock)}
    if index == 0:  # same seed, same numbers: the first pair's battery run a second time
        again = run_battery(audit_inputs(subjects, subjects.gold), audits=args.audits, seed=seed, alpha=ALPHA)
        record["repeat_identical"] = battery_record(again, 0.0)["p"] == record["p"]
    low = min(record["p"].values())
    print(f"  pair {index} (seed {seed}): subjects {trained:.1f} s, battery {record['seconds']:.1f} s -> "
          f"{record['verdict']} (smallest p {low:.3g})", flush=True)
    return record


def loss_attack_auc(model: torch.nn.Module, subjects: Any) -> float:
    from models.unlearning.subjects import answer_nll, encode_items

    with torch.no_grad():
        forget = answer_nll(model, encode_items(subjects.tokenizer, subjects.corpus.forget)).tolist()
        holdout = answer_nll(model, encode_items(subjects.tokenizer, subjects.corpus.holdout)).tolist()
    return auc([-x for x in forget], [-x for x in holdout])


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from appliance.audits.unlearning import run_battery
    from models.unlearning.algorithms import RECIPES, unlearn
    from models.unlearning.subjects import answer_accuracy, make_subjects, paraphrased_items

    started = time.perf_counter()
    subjects = make_subjects(seed=seed, cache_dir=args.cache_dir, config=subject_config())
    out: dict[str, Any] = {"seed": seed, "subjects_seconds": time.perf_counter() - started, "models": {}}
    tokenizer, corpus = subjects.tokenizer, subjects.corpus

    def audit(role: str, model: torch.nn.Module, extra: dict[str, Any]) -> None:
        row: dict[str, Any] = {
            "forget_accuracy": answer_accuracy(model, tokenizer, corpus.forget),
            "paraphrase_accuracy": answer_accuracy(model, tokenizer, paraphrased_items(corpus.forget)),
            "retain_accuracy": answer_accuracy(model, tokenizer, corpus.retain),
            "loss_attack_auc": loss_attack_auc(model, subjects),
            **extra,
        }
        variants = {"plain": model}
        if args.quantised and role != "full":
            variants["int8"] = quantise_8bit(model)
        for variant, weights in variants.items():
            clock = time.perf_counter()
            battery = run_battery(audit_inputs(subjects, weights), audits=args.audits, seed=seed, alpha=ALPHA)
            row[variant] = battery_record(battery, time.perf_counter() - clock)
        out["models"][role] = row
        p_values = ", ".join(f"{name} {p:.2g}" for name, p in row["plain"]["p"].items())
        print(f"  seed {seed}: {role} audited in {row['plain']['seconds']:.1f} s -> {row['plain']['verdict']} "
              f"(forget acc {row['forget_accuracy']:.2f}, retain acc {row['retain_accuracy']:.2f}; {p_values})",
              flush=True)

    audit("full", subjects.full, {})
    audit("gold", subjects.gold, {})
    for name in args.algorithms:
        lr, steps, options = RECIPES[name]
        clock = time.perf_counter()
        model, report = unlearn(subjects.full, tokenizer, corpus.forget, corpus.retain, algorithm=name,
                                steps=args.steps or steps, lr=lr, seed=seed, lr_factors=(1.0, 0.5), **options)
        seconds = time.perf_counter() - clock
        print(f"  seed {seed}: {name} unlearned in {seconds:.1f} s", flush=True)
        audit(name, model, {"seconds": seconds, "chosen_lr": report["chosen_lr"],
                            "chosen_step": report["chosen_step"], "target_reached": report["target_reached"]})
    out["seconds"] = time.perf_counter() - started
    return out


def report(results: list[dict[str, Any]], pairs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    audits = sorted({a for r in results for m in r["models"].values() for a in m["plain"]["p"]}
                    | {a for pair in pairs for a in pair["p"]})
    threshold = -math.log10(ALPHA)
    for result in results:
        rows = [[role, m["forget_accuracy"], m["paraphrase_accuracy"], m["retain_accuracy"], m["loss_attack_auc"]]
                for role, m in result["models"].items()]
        print(table(f"Seed {result['seed']}: set-up (exact-match accuracy; LOSS-attack AUC forget vs holdout)",
                    ["model", "forget acc", "forget paraphrase acc", "retain acc", "MIA AUC"], rows))
        print()
        rows = []
        for role, m in result["models"].items():
            p_values = [m["plain"]["p"].get(a, float("nan")) for a in audits]
            cells = [("K " if p < ALPHA else "- ") + f"{p:.2g}" for p in p_values]
            rows.append([role, *cells, m["plain"]["verdict"], round(m["plain"]["seconds"], 1)])
        print(table(f"Seed {result['seed']}: which audit flags which model (K: p < {ALPHA}, uncorrected; "
                    "verdict Holm-corrected)", ["model", *audits, "battery verdict", "s"], rows))
        print()
    # every gold model audited against its reference: the seeds' and the pairs'
    gold = {a: [knowledge_score(r["models"]["gold"]["plain"]["p"][a]) for r in results if "gold" in r["models"]]
            + [knowledge_score(pair["p"][a]) for pair in pairs if a in pair["p"]] for a in audits}
    algorithms = [role for role in (results[0]["models"] if results else {}) if role not in ("full", "gold")]
    if results:
        full = {a: [knowledge_score(r["models"]["full"]["plain"]["p"][a]) for r in results] for a in audits}
        rows = []
        for name in algorithms:
            cells = []
            for a in audits:
                scores = [knowledge_score(r["models"][name]["plain"]["p"][a]) for r in results]
                flagged = sum(x > threshold for x in scores)
                cells.append(f"{flagged}/{len(scores)} AUC {auc(scores, gold[a]):.2f}")
            battery = sum(r["models"][name]["plain"]["verdict"] == "knowledge_detected" for r in results)
            forget = float(np.mean([r["models"][name]["forget_accuracy"] for r in results]))
            retain = float(np.mean([r["models"][name]["retain_accuracy"] for r in results]))
            rows.append([name, round(forget, 3), round(retain, 3), *cells, f"{battery}/{len(results)}"])
        print(table(f"Which audit catches which algorithm over {len(results)} seed(s): flagged at p < {ALPHA} "
                    f"(uncorrected), AUC of -log10 p against {len(next(iter(gold.values()), []))} gold model(s)",
                    ["algorithm", "forget acc", "retain acc", *audits, "battery (Holm)"], rows))
        print()
        unlearned = {a: [knowledge_score(m["plain"]["p"][a]) for r in results for role, m in r["models"].items()
                         if role not in ("full", "gold")] for a in audits}
        rows = []
        for a in audits:
            shifts = [abs(knowledge_score(m["int8"]["p"][a]) - knowledge_score(m["plain"]["p"][a]))
                      for r in results for m in r["models"].values() if "int8" in m]
            rows.append([a, auc(full[a], gold[a]), auc(unlearned[a], gold[a]),
                         float(np.median(shifts)) if shifts else "n/a"])
        print(table("Meta-evaluation: faithfulness (full vs gold), separation (unlearned vs gold), robustness",
                    ["audit", "faithfulness AUC", "AUC unlearned vs gold", "median |d(-log10 p)| under int8"], rows))
        print()
    if pairs:
        n = len(pairs)
        rows = []
        for a in audits:
            p_values = [pair["p"][a] for pair in pairs if a in pair["p"]]
            k = sum(p < ALPHA for p in p_values)
            low, high = clopper_pearson(k, n)
            rows.append([a, f"{k}/{n}", k / n, f"[{low:.3f}, {high:.3f}]", float(np.median(p_values))])
        k = sum(pair["verdict"] == "knowledge_detected" for pair in pairs)
        low, high = clopper_pearson(k, n)
        rows.append(["battery (Holm)", f"{k}/{n}", k / n, f"[{low:.3f}, {high:.3f}]", "-"])
        print(table(f"Gold false-positive rate over {n} independent gold/reference pairs (alpha {ALPHA}; "
                    "95% Clopper-Pearson; a calibrated p-value has median about 0.5)",
                    ["audit", "flagged", "rate", "95% interval", "median p"], rows))
        repeated = [pair["repeat_identical"] for pair in pairs if "repeat_identical" in pair]
        if repeated:
            print(f"\nSame seed, same numbers: pair 0's battery rerun gave identical p-values: {repeated[0]}")
        print()
    timing = [[f"seed {r['seed']}", round(r["subjects_seconds"], 1),
               round(sum(m.get("seconds", 0.0) for m in r["models"].values()), 1),
               round(float(np.median([m["plain"]["seconds"] for m in r["models"].values()])), 1),
               round(r["seconds"], 1)] for r in results]
    if pairs:
        median_training = round(float(np.median([p["subjects_seconds"] for p in pairs])), 1)
        timing.append([f"{len(pairs)} pairs (median)", median_training,
                       "-", round(float(np.median([p["seconds"] for p in pairs])), 1),
                       round(float(np.median([p["subjects_seconds"] + p["seconds"] for p in pairs])), 1)])
    print(table("Timings (seconds, this machine)", ["run", "subjects (train or load)", "unlearning total",
                                                     "battery median", "total"], timing))


def main() -> None:
    from models.unlearning.algorithms import list_algorithms

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--pairs", type=int, default=0, help="independent gold/reference pairs for the FPR")
    parser.add_argument("--first-pair", type=int, default=0,
                        help="index of the first pair (split a long run over processes, merge with --report)")
    parser.add_argument("--algorithms", nargs="+", default=list_algorithms(), choices=list_algorithms())
    parser.add_argument("--audits", nargs="+", default=None, help="audit names (default: the whole battery)")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: each recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-quantised", dest="quantised", action="store_false")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="seed 0, grad_diff/npo/rmu, no int8 re-audits")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="print the tables of earlier --json files (merged) and run nothing")
    args = parser.parse_args()
    if args.report is not None:
        merged: dict[str, list[dict[str, Any]]] = {"seeds": [], "pairs": []}
        for path in args.report:
            loaded = json.loads(path.read_text())
            for part in merged:
                merged[part] += loaded.get(part, [])
        report(merged["seeds"], merged["pairs"], args)
        return
    if args.pairs < 0 or args.first_pair < 0:
        parser.error("--pairs and --first-pair must be >= 0")
    if args.quick:
        args.seeds, args.algorithms, args.quantised = [0], ["grad_diff", "npo", "rmu"], False
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []

    def save() -> None:
        if args.json is not None:
            args.json.write_text(json.dumps({"seeds": results, "pairs": pairs}, indent=1))

    for index in range(args.first_pair, args.first_pair + args.pairs):
        pairs.append(run_pair(index, args))
        save()
    for seed in args.seeds:
        results.append(run_seed(seed, args))
        save()
    print()
    report(results, pairs, args)


if __name__ == "__main__":
    main()
