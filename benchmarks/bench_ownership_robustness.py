"""DOV4CL against suspects the appliance did not train and whose recipe it does not know.

    python benchmarks/bench_ownership_robustness.py [--quick] [--workers 2] [--final]
        [--positives 10 --negatives 10 --partials 2 --nulls 32]

The suspects differ from the appliance's shadows along four axes at once:
- architecture family: depthwise-separable convolutions with GroupNorm and SiLU (the
  appliance's shadows are plain conv-BN-ReLU), and an MLP embedding head (48-d, not 64);
- input resolution: the digits' native 8x8, upsampled to 16x16 inside the model;
- augmentations: crops, rotation, shifts, contrast and noise, **never flips**, written here
  (not the appliance's augmentation module);
- epochs: 240-320 (the shadows use the appliance's default, 400), SimCLR with an MLP
  projection head that is discarded.
Data: scikit-learn digits on their own 0..16 scale, cut once into D_pub (700), D_pvt (400)
and an alternative set (697). Positives train on D_pub, negatives on bootstrap resamples of
the alternative set, partials on half of each. Shadows are trained by the appliance's own
defaults (``ShadowTraining()``: conv_encoder, SimCLR, 400 epochs, 3 seeds) on the alternative
set, through the same code the service runs. Audits use the service's defaults.

Seeds below 1000 are the development part; ``--final`` reports only the part kept aside
(seeds 1000+), which was not looked at while the method was tuned.

Prints: TPR and FPR at alpha 0.05 with 95% Wilson intervals (calibrated and reference tests),
the ordering of positives > partials > negatives by statistic, the distinct images and queries
of an audit, null sets under each view policy (random public/private splits of one pool: of
D_pub with the positives, which saw every image, and of D_pub + D_pvt with the negatives, which
saw none), and wall time of an audit with kept shadows over the bare forward time of its
queries.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import table  # noqa: E402

ALPHA = 0.05
CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/bench_ownership_robustness"))


def digits_native() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D_pub (700), D_pvt (400), alternative (697): 8x8 digits on their 0..16 scale."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32)[:, None]
    order = np.random.default_rng(2026).permutation(len(x))
    return x[order[:700]], x[order[700:1100]], x[order[1100:]]


def _independent_encoder(seed: int) -> Any:
    import torch
    from torch import nn

    class SeparableBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in)
            self.pointwise = nn.Conv2d(c_in, c_out, 1)
            self.norm = nn.GroupNorm(1, c_out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.silu(self.norm(self.pointwise(self.depthwise(x))))

    class IndependentEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3, padding=1)
            self.blocks = nn.Sequential(SeparableBlock(16, 32, 2), SeparableBlock(32, 48, 2),
                                        SeparableBlock(48, 48, 1))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(48 * 16, 96), nn.SiLU(), nn.Linear(96, 48))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.interpolate(x / 16.0, size=(16, 16), mode="bilinear", align_corners=False)
            return self.head(self.blocks(nn.functional.silu(self.stem(x))))

    torch.manual_seed(seed)
    return IndependentEncoder()


def _suspect_views(batch: Any, gen: Any) -> Any:
    """Crop/shift, rotation up to 20 degrees, contrast 0.6-1.4, Gaussian noise; no flips."""
    import torch
    import torch.nn.functional as F

    n = batch.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(20)
    scale = 0.75 + 0.25 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle), -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle), scale * torch.cos(angle)
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)) + mean
    out = out + 0.6 * torch.randn(out.shape, generator=gen)
    return out.clamp(0.0, 16.0)


def train_suspect(task: tuple[str, int]) -> tuple[str, int, float]:
    """Train one independent suspect (SimCLR with an MLP projector) and cache its weights."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    role, seed = task
    path = CACHE / f"{role}-{seed}.safetensors"
    if path.is_file():
        return role, seed, 0.0
    pub, _, alt = digits_native()
    rng = np.random.default_rng(seed)
    if role == "positive":
        data = pub
    elif role == "negative":
        data = alt[rng.choice(len(alt), 600, replace=True)]
    else:
        data = np.concatenate([pub[rng.choice(700, 350, replace=False)], alt[rng.choice(len(alt), 350, replace=False)]])
    started = time.perf_counter()
    encoder = _independent_encoder(seed)
    projector = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32))
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(projector.parameters()), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data)
    epochs = 240 + 20 * (seed % 5)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x) - 127, 128):
            batch = x[order[start:start + 128]]
            z = F.normalize(torch.cat([projector(encoder(_suspect_views(batch, gen))),
                                       projector(encoder(_suspect_views(batch, gen)))]), dim=1)
            logits = z @ z.T / 0.3
            logits.fill_diagonal_(float("-inf"))
            n = len(batch)
            loss = F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    CACHE.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return role, seed, time.perf_counter() - started


def load_suspect(role: str, seed: int) -> Any:
    from safetensors.torch import load_file

    from models.vision import embed_fn

    encoder = _independent_encoder(seed)
    encoder.load_state_dict(load_file(str(CACHE / f"{role}-{seed}.safetensors")))
    return embed_fn(encoder.eval())


def appliance_shadows(alt: np.ndarray, value_range: tuple[float, float]) -> list[Any]:
    """Shadows exactly as the service trains them with its defaults (kept in the cache)."""
    from safetensors.torch import load_file, save_file

    from appliance.capabilities.ownership.job import ShadowTraining
    from models.augment import to_unit
    from models.vision import ENCODERS, Rescaled, build_model, embed_fn, train_contrastive

    spec = ShadowTraining(dataset_id="alt")
    shadows = []
    for i in range(spec.count):
        seed = spec.seed + i
        encoder = build_model(ENCODERS[spec.architecture], seed=seed, in_channels=1, image_size=8)
        path = CACHE / f"shadow-{spec.objective}-{spec.epochs}-{seed}.safetensors"
        if path.is_file():
            encoder.load_state_dict(load_file(str(path)))
            encoder.eval()
        else:
            encoder = train_contrastive(encoder, to_unit(alt, value_range), objective=spec.objective, seed=seed,
                                        epochs=spec.epochs, batch_size=min(spec.batch_size, len(alt)))
            CACHE.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
        shadows.append(embed_fn(Rescaled(encoder, *value_range)))
    return shadows


def wilson(k: int, n: int) -> str:
    if n == 0:
        return "-"
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{k}/{n} = {p:.0%} [{max(0.0, centre - half):.0%}, {min(1.0, centre + half):.0%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 positives, 4 negatives, 1 partial, 8 null sets")
    parser.add_argument("--final", action="store_true", help="report the part kept aside (seeds 1000+)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--positives", type=int, help="override the number of positives")
    parser.add_argument("--negatives", type=int, help="override the number of negatives")
    parser.add_argument("--partials", type=int, help="override the number of partials")
    parser.add_argument("--nulls", type=int, help="null sets per view policy")
    parser.add_argument("--policies", default="auto,false,true", help="view policies for the null sets")
    args = parser.parse_args()
    from appliance.audits.ownership.dov4cl import DOV4CLInputs
    from appliance.audits.registry import create_method

    base = 1000 if args.final else 0
    n_pos, n_neg, n_part, n_null = (4, 4, 1, 8) if args.quick else (10, 10, 2, 32)
    n_pos = n_pos if args.positives is None else args.positives
    n_neg = n_neg if args.negatives is None else args.negatives
    n_part = n_part if args.partials is None else args.partials
    n_null = n_null if args.nulls is None else args.nulls
    tasks = ([("positive", base + i) for i in range(n_pos)] + [("negative", base + 100 + i) for i in range(n_neg)]
             + [("partial", base + 200 + i) for i in range(n_part)])
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        trained = list(pool.map(train_suspect, tasks))
    print(f"suspects: {len(trained)} ({sum(1 for *_, s in trained if s > 0)} trained now, "
          f"{time.perf_counter() - t0:.0f} s)")
    pub, pvt, alt = digits_native()
    value_range = (0.0, 16.0)
    t0 = time.perf_counter()
    shadows = appliance_shadows(alt, value_range)
    print(f"shadows: {len(shadows)} (appliance defaults; {time.perf_counter() - t0:.0f} s including training)")

    method = create_method("dov4cl")
    rows: dict[str, list[tuple[float, float, str]]] = {"positive": [], "negative": [], "partial": []}
    reference: dict[str, int] = {"positive": 0, "negative": 0, "partial": 0}
    walls, bares = [], []
    shape = ""
    for role, seed, _ in trained:
        suspect = load_suspect(role, seed)
        started = time.perf_counter()
        result = method.run(DOV4CLInputs(public=pub, private=pvt, suspect=suspect, shadow=shadows), seed=seed)
        walls.append(time.perf_counter() - started)
        bares.append(result.timings["suspect_query_s"] + result.timings["shadow_query_s"])
        reference[role] += result.statistics["reference_p"] < ALPHA
        st = result.statistics
        shape = (f"{st['distinct_public_images']} + {st['distinct_private_images']} images x "
                 f"{st.get('views_per_image', '-')} views; {st['queries']} suspect queries "
                 f"({st['queries'] - st.get('audit_queries', st['queries'])} for the view policy)")
        print(f"  {role} {seed}: p = {result.p_value:.4f}, statistic {st['calibrated_statistic']:+.4f}, "
              f"reference p = {st['reference_p']:.2g}, {walls[-1]:.1f} s", flush=True)
        rows[role].append((result.p_value, result.statistics["calibrated_statistic"],
                           f"flip={result.statistics['views']['flip']} "
                           f"inv={result.statistics['views']['flip_invariance']:.2f}"))
    detected = {role: sum(p < ALPHA for p, *_ in r) for role, r in rows.items()}
    print()
    print(table("DOV4CL on independent suspects (alpha 0.05, 95% Wilson intervals)", ["figure", "value"], [
        ["TPR (positives)", wilson(detected["positive"], len(rows["positive"]))],
        ["FPR (negatives)", wilson(detected["negative"], len(rows["negative"]))],
        ["partials detected", f"{detected['partial']}/{len(rows['partial'])}"],
        ["reference t-test: TPR", wilson(reference["positive"], len(rows["positive"]))],
        ["reference t-test: FPR", wilson(reference["negative"], len(rows["negative"]))],
        ["audit size", shape],
        ["statistic: positives (min..max)", _span([s for _, s, _ in rows["positive"]])],
        ["statistic: partials", _span([s for _, s, _ in rows["partial"]])],
        ["statistic: negatives", _span([s for _, s, _ in rows["negative"]])],
        ["ordered positive > partial > negative",
         _ordered([s for _, s, _ in rows["positive"]], [s for _, s, _ in rows["partial"]],
                  [s for _, s, _ in rows["negative"]])],
        ["view policy chosen (first suspects)", "; ".join(v for *_, v in rows["positive"][:2])],
        ["audit wall / (suspect + shadow queries), median", f"{np.median(np.array(walls) / np.array(bares)):.2f}x"],
        ["audit wall with kept shadows, median", f"{np.median(walls):.1f} s"],
    ]))

    pool_images = np.concatenate([pub, pvt])
    null_rows = []
    named = {"auto": "auto", "false": False, "true": True}
    for policy in [named[name.strip().lower()] for name in args.policies.split(",")]:
        hits, rng = 0, np.random.default_rng(7)
        for i in range(n_null):
            # even: the negatives on a split of D_pub + D_pvt (never seen); odd: the positives on
            # a split of D_pub (every image seen): both are nulls, the second the harder one
            if i % 2 == 0 or not n_pos:
                images, suspect = pool_images, load_suspect("negative", base + 100 + (i // 2) % n_neg)
            else:
                images, suspect = pub, load_suspect("positive", base + (i // 2) % n_pos)
            order = rng.permutation(len(images))
            half = len(images) // 2
            result = method.run(DOV4CLInputs(public=images[order[:half]], private=images[order[half:]],
                                             suspect=suspect, shadow=shadows),
                                params={"views": {"flip": policy}}, seed=10_000 + i)
            hits += result.p_value < ALPHA
        null_rows.append([f"flip={policy}", wilson(hits, n_null)])
        print(f"  null sets, flip={policy}: {hits}/{n_null}", flush=True)
    print()
    print(table("Null sets: random public/private splits of one pool (D_pub + D_pvt with the negatives, "
                "D_pub with the positives)", ["view policy", "p < 0.05"], null_rows))


def _span(values: list[float]) -> str:
    return f"{min(values):+.4f}..{max(values):+.4f}" if values else "-"


def _ordered(pos: list[float], part: list[float], neg: list[float]) -> str:
    if not (pos and part and neg):
        return "-"
    return "yes" if min(pos) > max(part) and min(part) > max(neg) else \
        f"no (median {np.median(pos):+.4f} > {np.median(part):+.4f} > {np.median(neg):+.4f}: " \
        f"{np.median(pos) > np.median(part) > np.median(neg)})"


if __name__ == "__main__":
    main()
