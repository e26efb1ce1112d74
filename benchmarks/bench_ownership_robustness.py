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
defaults (``ShadowTraining()``: SimCLR with the appliance's augmentations, 400 epochs, 3 seeds)
on the alternative set, through the same code the service runs: the appliance's conv_encoder
(``--shadows conv``, the default), or, as ``architecture: auto`` trains them for a suspect
registered as ONNX, shadows of the suspect's graph with every weight redrawn (``--shadows
graph``). Either way the shadows differ from the suspects in recipe (augmentations with flips,
no projection MLP, 400 epochs), and conv shadows in architecture and resolution too. Audits use
the service's defaults.

Seeds below 1000 are the development part; ``--final`` reports only the part kept aside
(seeds 1000+), which was not looked at while the method was tuned; ``--replicate`` (3000+) is a
second such part, run after ``--final`` was reported. In those three parts every suspect is
audited on one fixed D_pub / D_pvt split, so their FPR is conditional on that single draw;
``--owners`` (5000+) makes every suspect its own data owner with its own random split (see
``OWNERS_BASE``), which is what the test's guarantee averages over; ``--holdout`` (7000+) is
another such part, kept aside until it was first run, with ``--shadows graph``; ``--fifth``
(9000+) another, for the shadow recipes compared with ``--recipe-shadows``; ``--sixth``
(11000+) another, kept aside until the shadows' views were chosen from the suspect's invariance
(``--auto-shadows``); ``--eighth`` (15000+) another, for shadows distilled from the
suspect (``--auto-shadows --distilled``); ``--ninth`` (17000+) another, for the
whole benchmark with the service's default shadows (``--shadows default``).

Prints: TPR and FPR at alpha 0.05 with 95% Clopper-Pearson intervals (calibrated and reference tests),
the ordering of positives > partials > negatives by statistic, the distinct images and queries
of an audit, null sets under each view policy (random public/private splits of one pool: of
D_pub with the positives, which saw every image, and of D_pub + D_pvt with the negatives, which
saw none), and wall time of an audit with kept shadows over the bare forward time of its
queries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
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
            self.blocks = nn.Sequential(SeparableBlock(16, 32, 2), SeparableBlock(32, 48, 2), SeparableBlock(48, 48, 1))
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


#: Seeds from here on (``--owners``) are each their own data owner: D_pub and D_pvt are that seed's
#: own random split of the 1100 images (700 / 400), the positives and partials train on it and
#: every audit of the seed uses it. Below, every suspect shares the one fixed split of
#: :func:`digits_native`, so its TPR and FPR are conditional on a single draw of the split (the
#: randomness the permutation test's guarantee is over).
OWNERS_BASE = 5000
#: ``--holdout``: seeds from here on are a fourth part, each its own owner (as ``--owners``),
#: kept aside until the shadows of the suspect's graph were the default.
HOLDOUT_BASE = 7000
#: ``--fifth``: a fifth part (9000+), each its own owner, first run to check the shadow options
#: chosen with ``--recipe-shadows`` on ``--owners``.
FIFTH_BASE = 9000
#: ``--sixth``: a sixth part (11000+), each its own owner, first run to check ``views: "auto"``
#: for the shadows once it was chosen on ``--owners``.
SIXTH_BASE = 11000
#: A seventh part (13000+), each its own owner, first audited by ``ownership_statistics.py
#: --base 13000`` to check a statistic chosen on ``--owners``.
SEVENTH_BASE = 13000
#: ``--eighth``: an eighth part (15000+), each its own owner, first run to check shadows
#: distilled from the suspect (``--auto-shadows --distilled``) once they were compared on
#: ``--owners``.
EIGHTH_BASE = 15000
#: ``--ninth``: a ninth part (17000+), each its own owner, first run with ``--shadows default``
#: (the whole benchmark, partials and null sets included, with the service's default shadows:
#: the recipe's three and a student distilled from the suspect). A next part starts at 19000.
NINTH_BASE = 17000


def owner_sets(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (D_pub, D_pvt) a suspect of ``seed`` is audited on (and, if it saw D_pub, trained on)."""
    pub, pvt, _ = digits_native()
    if seed < OWNERS_BASE:
        return pub, pvt
    pool = np.concatenate([pub, pvt])
    order = np.random.default_rng([2026, seed]).permutation(len(pool))
    return pool[order[: len(pub)]], pool[order[len(pub) :]]


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
    _, _, alt = digits_native()
    pub, _ = owner_sets(seed)
    rng = np.random.default_rng(seed)
    if role == "positive":
        data = pub
    elif role == "negative":
        data = alt[rng.choice(len(alt), 600, replace=True)]
    else:
        seen = round(700 * share_of(role))
        data = np.concatenate(
            [pub[rng.choice(700, seen, replace=False)], alt[rng.choice(len(alt), 700 - seen, replace=False)]]
        )
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
            batch = x[order[start : start + 128]]
            z = F.normalize(
                torch.cat(
                    [projector(encoder(_suspect_views(batch, gen))), projector(encoder(_suspect_views(batch, gen)))]
                ),
                dim=1,
            )
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


class RowCache:
    """An embedding function that remembers the embedding of every row it was asked for (keyed
    by the row's bytes): a null set that differs from the last only in its split costs no
    forward passes."""

    def __init__(self, embed: Any) -> None:
        self.embed = embed
        self.rows: dict[bytes, np.ndarray] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        keys = [row.tobytes() for row in x]
        missing = [i for i, key in enumerate(keys) if key not in self.rows]
        if missing:
            for i, row in zip(missing, np.asarray(self.embed(x[missing])), strict=True):
                self.rows[keys[i]] = row
        return np.stack([self.rows[key] for key in keys])


def load_suspect(role: str, seed: int) -> Any:
    from safetensors.torch import load_file

    from models.vision import embed_fn

    encoder = _independent_encoder(seed)
    encoder.load_state_dict(load_file(str(CACHE / f"{role}-{seed}.safetensors")))
    return embed_fn(encoder.eval())


def appliance_shadows(
    alt: np.ndarray, value_range: tuple[float, float], options: dict[str, Any] | None = None, tag: str = ""
) -> list[Any]:
    """Shadows exactly as the service trains them (kept in the cache under ``tag``): its
    defaults, ``ShadowTraining()`` (conv_encoder), or with the service's recipe ``options``
    (``views``, ``projection_head``, ``input_size``)."""
    from safetensors.torch import load_file, save_file

    from appliance.capabilities.ownership.job import ShadowTraining
    from models.augment import to_unit
    from models.vision import ENCODERS, Rescaled, Resized, build_model, embed_fn, train_contrastive

    spec = ShadowTraining(dataset_id="alt", architecture="conv_encoder", **{"views": {}, **(options or {})})
    shadows = []
    for i in range(spec.count):
        seed = spec.seed + i
        encoder = build_model(ENCODERS[spec.architecture], seed=seed, in_channels=1, image_size=spec.input_size or 8)
        if spec.input_size is not None:
            encoder = Resized(encoder, spec.input_size)
        path = CACHE / f"shadow-{spec.objective}-{spec.epochs}-{seed}{tag}.safetensors"
        if path.is_file():
            encoder.load_state_dict(load_file(str(path)))
            encoder.eval()
        else:
            encoder = train_contrastive(
                encoder,
                to_unit(alt, value_range),
                objective=spec.objective,
                seed=seed,
                epochs=spec.epochs,
                batch_size=min(spec.batch_size, len(alt)),
                view=spec.views.spec(),
                projection_head=spec.projection_head,
            )
            CACHE.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
        shadows.append(embed_fn(Rescaled(encoder, *value_range)))
    return shadows


#: The suspects' views (:func:`_suspect_views`) as the service's shadow options: no flips, crops
#: of 0.75-1 of the side (area 0.56-1), rotations up to 20 degrees, contrast 0.6-1.4 and no
#: brightness jitter, noise of 0.6 on the 0..16 scale.
SUSPECT_VIEWS = {
    "flip": False,
    "scale": [0.56, 1.0],
    "rotation": 20.0,
    "brightness": 0.0,
    "contrast": 0.4,
    "noise": 0.6 / 16,
}
#: ``--recipe-shadows``: the appliance's conv_encoder with more and more of the suspects' recipe.
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "suspects' views": ("-views", {"views": SUSPECT_VIEWS}),
    "views + projector + 16x16": ("-recipe", {"views": SUSPECT_VIEWS, "projection_head": True, "input_size": 16}),
}


#: A design of shadows chosen per suspect: ``(suspect, D_pub, D_pvt, seed) -> (shadows,
#: invariance)``, where ``invariance`` is the profile measured on the way and its query count.
ShadowChoice = Callable[[Any, np.ndarray, np.ndarray, int], tuple[list[Any], tuple[dict[str, float], int] | None]]


def auto_views_design(
    method: Any,
    alt: np.ndarray,
    value_range: tuple[float, float],
    fixed: list[Any],
    extra: dict[str, Any] | None = None,
    graph: bytes | None = None,
) -> ShadowChoice:
    """Shadows as the service trains them with ``views: "auto"`` (its default): the suspect's
    invariance profile measured as the audit measures it, the appliance's recipe adapted to it
    (:func:`~appliance.capabilities.ownership.job.matched_views`), one set of shadows per
    distinct adaptation (``fixed`` where none is needed), kept in the cache; ``extra``: further
    shadow options (``projection_head``), the same for every suspect; ``graph``: shadows of this
    ONNX graph (``architecture: "suspect"``; the part's suspects share one structure) instead of
    the conv_encoder."""
    from appliance.audits.ownership.dov4cl import suspect_profile
    from appliance.audits.suspects import CountedQuery
    from appliance.capabilities.ownership.job import ShadowViews, matched_views

    params = method.resolve_params({})
    recipe = json.dumps(ShadowViews().model_dump(mode="json"), sort_keys=True)
    sets: dict[str, list[Any]] = {} if extra or graph else {recipe: fixed}

    def choose(suspect: Any, public: np.ndarray, private: np.ndarray, seed: int) -> Any:
        counted = CountedQuery(suspect, kind="embed")
        profile = suspect_profile(public, private, counted, params, seed)
        matched = matched_views(profile, float(params["flip_threshold"]))
        views, changed = matched.model_dump(mode="json"), matched.departures()
        key = json.dumps(views, sort_keys=True)
        if key not in sets:
            t0 = time.perf_counter()
            tag = "-auto-" + hashlib.sha256(key.encode()).hexdigest()[:8] + ("-proj" if extra else "")
            options = {"views": views, **(extra or {})}
            sets[key] = (
                graph_shadows(graph, alt, value_range, options, tag=tag)
                if graph
                else appliance_shadows(alt, value_range, options, tag=tag)
            )
            print(
                f"  auto views {changed}: {len(sets[key])} shadows ({time.perf_counter() - t0:.0f} s "
                "including training)",
                flush=True,
            )
        shown = ", ".join(f"{name} {value:.2f}" for name, value in profile.items())
        print(f"  seed {seed}: invariance {shown} -> {changed or 'the appliance recipe'}", flush=True)
        return sets[key], (profile, counted.queries)

    return choose


def distilled_design(
    alt: np.ndarray, value_range: tuple[float, float], views: int = 32, epochs: int = 40
) -> ShadowChoice:
    """One shadow distilled from the suspect, as the service distils it (``shadow_training``
    ``distilled: 1``, its ``distill_views`` and ``distill_epochs``, seed 0): the suspect queried on
    ``views`` views of each image of the alternative set (the image, then the audit's global
    views; no flips, as the audit's own for these suspects, which are not flip-invariant), the
    appliance's conv_encoder of the suspect's width trained to reproduce those answers
    (:func:`models.vision.distill_encoder`). It never sees D_pub or D_pvt, so the audit's
    per-image scores stay blind to the split. Kept in the cache per suspect seed."""

    def choose(suspect: Any, public: np.ndarray, private: np.ndarray, seed: int) -> Any:
        from safetensors.torch import load_file, save_file

        from appliance.audits.ownership.dov4cl import VIEW_DEFAULTS, view_specs
        from models.augment import from_unit, to_unit
        from models.vision import ENCODERS, Rescaled, build_model, distill_encoder, distillation_inputs, embed_fn

        view = view_specs(VIEW_DEFAULTS, flip=False)[0]
        inputs = distillation_inputs(to_unit(alt, value_range), views=views, view=view, seed=0)
        path = CACHE / f"distilled-service-{seed}-{views}-{epochs}.safetensors"
        width = np.asarray(suspect(from_unit(inputs[:2], value_range))).shape[1]
        student = build_model(
            ENCODERS["conv_encoder"], seed=1000, in_channels=1, image_size=alt.shape[-1], embed_dim=width
        )
        if path.is_file():
            student.load_state_dict(load_file(str(path)))
        else:
            t0 = time.perf_counter()
            targets = np.asarray(suspect(from_unit(inputs, value_range)), dtype=np.float32)
            distill_encoder(student, inputs, targets, seed=1000, epochs=epochs)
            save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(path))
            print(
                f"  seed {seed}: student distilled on {len(inputs)} queries in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        return [embed_fn(Rescaled(student.eval(), *value_range))], None

    return choose


def train_suspects(tasks: list[tuple[str, int]], workers: int) -> None:
    """Train (or find in the cache) the suspects of ``tasks``, ``workers`` at once."""
    todo = [task for task in tasks if not (CACHE / f"{task[0]}-{task[1]}.safetensors").is_file()]
    if not todo:
        return
    print(f"training {len(todo)} suspects ({workers} at once) ...", flush=True)
    if workers <= 1:
        for task in todo:
            train_suspect(task)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for role, seed, seconds in pool.map(train_suspect, todo):
            print(f"  {role} {seed}: {seconds:.0f} s", flush=True)


def suspect_onnx(role: str, seed: int) -> bytes:
    """The suspect as its owner would register it: its trained weights exported to ONNX."""
    import io

    import torch
    from safetensors.torch import load_file

    encoder = _independent_encoder(seed)
    encoder.load_state_dict(load_file(str(CACHE / f"{role}-{seed}.safetensors")))
    out = io.BytesIO()
    torch.onnx.export(
        encoder.eval(),
        (torch.zeros(2, 1, 8, 8),),
        out,
        input_names=["x"],
        output_names=["e"],
        dynamic_axes={"x": {0: "b"}, "e": {0: "b"}},
        dynamo=False,
    )
    return out.getvalue()


def graph_shadows(
    graph: bytes,
    alt: np.ndarray,
    value_range: tuple[float, float],
    options: dict[str, Any] | None = None,
    tag: str = "",
) -> list[Any]:
    """Shadows as the service trains them with ``architecture: "suspect"``: the suspect's graph,
    every weight redrawn, trained by the appliance's fixed recipe (``"views": {}`` and no
    projector, as in the runs of the fourth part) or with the service's recipe ``options``
    (``views``, ``projection_head``); kept in the cache by the graph's structure digest and ``tag``."""
    import onnxruntime as ort

    from appliance.capabilities.ownership.job import ShadowTraining
    from models.augment import to_unit
    from models.onnx_train import structure_digest, train_graph_encoder

    spec = ShadowTraining(dataset_id="alt", **{"views": {}, "projection_head": False, **(options or {})})
    shadows = []
    for i in range(spec.count):
        seed = spec.seed + i
        path = CACHE / f"graph-{structure_digest(graph)[:16]}-{spec.objective}-{spec.epochs}-{seed}{tag}.onnx"
        if not path.is_file():
            module = train_graph_encoder(
                graph,
                to_unit(alt, value_range),
                value_range,
                objective=spec.objective,
                seed=seed,
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                view=spec.views.spec(),
                projection_head=spec.projection_head,
            )
            CACHE.mkdir(parents=True, exist_ok=True)
            path.write_bytes(module.to_onnx())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        shadows.append(lambda x, s=session, n=name: s.run(None, {n: np.ascontiguousarray(x, np.float32)})[0])
    return shadows


def clopper_pearson(k: int, n: int) -> str:
    """k/n with its exact (Clopper-Pearson) 95% interval."""
    if n == 0:
        return "-"
    from scipy.stats import beta

    low = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return f"{k}/{n} = {k / n:.0%} [{low:.0%}, {high:.0%}]"


#: partial suspects: role -> (share of their 700 training images taken from D_pub, seed offset)
PARTIALS = {"partial": (0.5, 200), "partial-25": (0.25, 300), "partial-75": (0.75, 400)}


def share_of(role: str) -> float:
    """The share of D_pub in a suspect's training set (the rest from the alternative set)."""
    fixed = {"positive": 1.0, "negative": 0.0}
    return fixed[role] if role in fixed else PARTIALS[role][0]


def _interleaved(n_pos: int, n_neg: int, n_part: int, base: int, shares: list[str]) -> list[tuple[str, int]]:
    """Positives, negatives and partials (``n_part`` per share) taken in turn, so a run stopped
    early is still balanced."""
    tasks: list[tuple[str, int]] = []
    for i in range(max(n_pos, n_neg, n_part)):
        tasks += [("positive", base + i)] if i < n_pos else []
        tasks += [("negative", base + 100 + i)] if i < n_neg else []
        tasks += [(role, base + PARTIALS[role][1] + i) for role in shares] if i < n_part else []
    return tasks


def _load_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def summarise(records: list[dict[str, Any]]) -> None:
    """Print the tables from the records kept so far (all of them, or a run stopped early)."""
    from scipy.stats import spearmanr

    suspects = [r for r in records if r["kind"] == "suspect"]
    rows: dict[str, list[dict[str, Any]]] = {"positive": [], "negative": [], **{role: [] for role in PARTIALS}}
    for record in suspects:
        rows[record["role"]].append(record)
    detected = {role: sum(r["p"] < ALPHA for r in rs) for role, rs in rows.items()}
    reference = {role: sum(r["reference_p"] < ALPHA for r in rs) for role, rs in rows.items()}
    walls = np.array([r["wall"] for r in suspects]) if suspects else np.zeros(0)
    bares = np.array([r["bare"] for r in suspects]) if suspects else np.ones(0)
    by_share = sorted((share_of(role), role) for role, rs in rows.items() if rs)
    medians = [float(np.median([r["statistic"] for r in rows[role]])) for _, role in by_share]
    shares = [share_of(r["role"]) for r in suspects]
    rho = spearmanr(shares, [r["statistic"] for r in suspects]) if len(set(shares)) > 1 else None
    print()
    print(
        table(
            "DOV4CL on independent suspects (alpha 0.05, 95% Clopper-Pearson intervals)",
            ["figure", "value"],
            [
                ["TPR (positives)", clopper_pearson(detected["positive"], len(rows["positive"]))],
                ["FPR (negatives)", clopper_pearson(detected["negative"], len(rows["negative"]))],
                *[
                    [f"detected: {role} ({share:.0%} of D_pub)", f"{detected[role]}/{len(rows[role])}"]
                    for share, role in by_share
                    if role in PARTIALS
                ],
                ["reference t-test: TPR", clopper_pearson(reference["positive"], len(rows["positive"]))],
                ["reference t-test: FPR", clopper_pearson(reference["negative"], len(rows["negative"]))],
                ["audit size", suspects[-1]["shape"] if suspects else "-"],
                *[
                    [
                        f"statistic, {share:.0%} of D_pub ({role}): median [min..max]",
                        f"{np.median([r['statistic'] for r in rows[role]]):+.4f} "
                        f"[{_span([r['statistic'] for r in rows[role]])}]",
                    ]
                    for share, role in by_share
                ],
                [
                    "medians monotone in the share of D_pub",
                    "yes" if all(a < b for a, b in zip(medians, medians[1:], strict=False)) else "no",
                ],
                [
                    "Spearman rho (statistic vs share), p",
                    f"{rho.statistic:+.3f}, p = {rho.pvalue:.2g} ({len(suspects)} suspects)" if rho else "-",
                ],
                ["view policy chosen (first suspects)", "; ".join(r["views"] for r in rows["positive"][:2])],
                [
                    "audit wall / (suspect + shadow queries), median",
                    f"{np.median(walls / bares):.2f}x" if len(walls) else "-",
                ],
                ["audit wall with kept shadows, median", f"{np.median(walls):.1f} s" if len(walls) else "-"],
            ],
        )
    )
    nulls = [r for r in records if r["kind"] == "null"]
    if nulls:
        policies = list(dict.fromkeys(r["policy"] for r in nulls))
        null_rows = [
            [
                f"flip={policy}",
                clopper_pearson(
                    sum(r["p"] < ALPHA for r in nulls if r["policy"] == policy),
                    sum(1 for r in nulls if r["policy"] == policy),
                ),
            ]
            for policy in policies
        ]
        print()
        print(
            table(
                "Null sets: random public/private splits of one pool (D_pub + D_pvt with the negatives, "
                "D_pub with the positives)",
                ["view policy", "p < 0.05"],
                null_rows,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 positives, 4 negatives, 1 partial, 8 null sets")
    parser.add_argument("--final", action="store_true", help="report the part kept aside (seeds 1000+)")
    parser.add_argument(
        "--holdout",
        action="store_true",
        help=f"a fourth part kept aside (seeds {HOLDOUT_BASE}+), every suspect its own owner (first run with "
        "--shadows graph)",
    )
    parser.add_argument(
        "--sixth",
        action="store_true",
        help=f"a sixth part kept aside (seeds {SIXTH_BASE}+), every suspect its own owner",
    )
    parser.add_argument(
        "--eighth",
        action="store_true",
        help=f"an eighth part kept aside (seeds {EIGHTH_BASE}+), every suspect its own owner",
    )
    parser.add_argument(
        "--ninth",
        action="store_true",
        help=f"a ninth part kept aside (seeds {NINTH_BASE}+), every suspect its own owner",
    )
    parser.add_argument(
        "--fifth",
        action="store_true",
        help=f"a fifth part kept aside (seeds {FIFTH_BASE}+), every suspect its own owner",
    )
    parser.add_argument(
        "--shadows",
        choices=("graph", "conv", "auto", "default"),
        default="conv",
        help="the appliance's shadows: its conv_encoder by its fixed recipe (conv), as the service's recipe "
        "trains them (auto: views chosen from each suspect's invariance on its owner's sets, a projector), "
        "those and a student distilled from the suspect, kept (default: the service's defaults), or "
        "of the suspect's ONNX graph (graph: architecture auto or suspect)",
    )
    parser.add_argument(
        "--replicate",
        action="store_true",
        help="a second part kept aside (seeds 3000+), for a replicate after --final was reported",
    )
    parser.add_argument(
        "--owners",
        action="store_true",
        help=f"a third part kept aside (seeds {OWNERS_BASE}+), every suspect its own owner with its own random split",
    )
    parser.add_argument(
        "--shares",
        default="0.5",
        help="shares of D_pub in the partials' training sets, of 0.25, 0.5, 0.75 (--partials per share)",
    )
    parser.add_argument("--workers", type=int, default=2, help="suspects trained at once (1: in this process)")
    parser.add_argument("--positives", type=int, help="override the number of positives")
    parser.add_argument("--negatives", type=int, help="override the number of negatives")
    parser.add_argument("--partials", type=int, help="override the number of partials")
    parser.add_argument("--nulls", type=int, help="null sets per view policy")
    parser.add_argument("--policies", default="auto,false,true", help="view policies for the null sets")
    parser.add_argument(
        "--results",
        type=Path,
        help="JSON lines, one per audit, appended as each ends; a "
        "rerun resumes from it (default: in the cache, per part)",
    )
    parser.add_argument("--summary", action="store_true", help="only print the tables from --results")
    parser.add_argument(
        "--family-shadows",
        type=int,
        metavar="N",
        help="only audit the part's (trained) suspects on their split three ways: against the appliance's "
        "shadows, against the last N negatives (the suspects' own family, never saw D_pub) as shadows, and "
        "against both",
    )
    parser.add_argument(
        "--graph-shadows",
        action="store_true",
        help="only audit the part's (trained) suspects against the appliance's shadows and against shadows "
        "of the suspect's own graph (architecture: suspect), both trained by the appliance's default recipe",
    )
    parser.add_argument(
        "--recipe-shadows",
        action="store_true",
        help="only audit the part's suspects (trained first if missing) against the appliance's conv shadows, "
        "the same trained with the suspects' views, with their views, an MLP projector and 16x16 inputs, and "
        "all of them together",
    )
    parser.add_argument(
        "--auto-shadows",
        action="store_true",
        help="only audit the part's suspects (trained first if missing) against the appliance's conv shadows of "
        "its fixed recipe and of the views chosen from each suspect's invariance profile (views: auto)",
    )
    parser.add_argument(
        "--auto-projector",
        action="store_true",
        help="with --auto-shadows: also shadows of the chosen views trained through an MLP projector",
    )
    parser.add_argument(
        "--first", type=int, default=0, help="with --auto-shadows: skip the first suspects (negatives, then positives)"
    )
    parser.add_argument(
        "--distilled",
        action="store_true",
        help="with --auto-shadows: the service's defaults, a shadow distilled from the suspect on the "
        "alternative set, and both",
    )
    parser.add_argument(
        "--graph-auto",
        action="store_true",
        help="with --auto-shadows: only the service's defaults (conv_encoder, views: auto, a projector) and the same "
        "recipe on shadows of the suspect's graph (architecture: suspect)",
    )
    parser.add_argument(
        "--noflip-shadows",
        action="store_true",
        help="only audit the part's (trained) suspects against the appliance's conv shadows and against the same "
        "shadows trained without flips in their views",
    )
    parser.add_argument(
        "--split-study",
        type=int,
        metavar="K",
        help="only audit the part's (trained) negatives on the owner's split and K - 1 other random "
        "splits of the same pool, every negative on every split: FPR and median statistic per split",
    )
    args = parser.parse_args()
    part = (
        "ninth"
        if args.ninth
        else "eighth"
        if args.eighth
        else "sixth"
        if args.sixth
        else "fifth"
        if args.fifth
        else "holdout"
        if args.holdout
        else "owners"
        if args.owners
        else "replicate"
        if args.replicate
        else "final"
        if args.final
        else "development"
    )
    suffix = {"conv": "", "graph": "-graph", "auto": "-auto", "default": "-default"}[args.shadows]
    results = args.results or CACHE / f"results-{part}{suffix}.jsonl"
    named_shares = {str(share): role for role, (share, _) in PARTIALS.items()}
    shares = [named_shares[share.strip()] for share in args.shares.split(",") if share.strip()]
    if args.summary:
        summarise(_load_results(results))
        return
    import torch

    from appliance.audits.ownership.dov4cl import DOV4CLInputs
    from appliance.audits.registry import create_method

    torch.set_num_threads(1)
    base = {
        "ninth": NINTH_BASE,
        "eighth": EIGHTH_BASE,
        "sixth": SIXTH_BASE,
        "fifth": FIFTH_BASE,
        "holdout": HOLDOUT_BASE,
        "owners": OWNERS_BASE,
        "replicate": 3000,
        "final": 1000,
        "development": 0,
    }[part]
    n_pos, n_neg, n_part, n_null = (4, 4, 1, 8) if args.quick else (10, 10, 2, 32)
    n_pos = n_pos if args.positives is None else args.positives
    n_neg = n_neg if args.negatives is None else args.negatives
    n_part = n_part if args.partials is None else args.partials
    n_null = n_null if args.nulls is None else args.nulls
    tasks = _interleaved(n_pos, n_neg, n_part, base, shares)
    records = _load_results(results)
    done = {(r["role"], r["seed"]) for r in records if r["kind"] == "suspect"}
    print(f"results: {results} ({len(records)} kept from an earlier run)", flush=True)
    pub, pvt, alt = digits_native()
    value_range = (0.0, 16.0)
    t0 = time.perf_counter()
    shadows = appliance_shadows(alt, value_range)
    print(f"conv_encoder shadows: {len(shadows)} ({time.perf_counter() - t0:.0f} s including training)", flush=True)

    method = create_method("dov4cl")
    adapted = student = None
    if args.shadows in ("auto", "default"):
        adapted = auto_views_design(method, alt, value_range, shadows, {"projection_head": True})
    if args.shadows == "default":
        student = distilled_design(alt, value_range)

    def shadows_for(role: str, seed: int) -> list[Any]:
        """The shadows this run audits the suspect with (of its graph, or adapted to it: as the
        service trains them for it; adapted on its owner's sets, also for its null sets; and
        with a student of the suspect, distilled once and kept, as the service keeps it)."""
        if adapted is not None:
            suspect, sets = load_suspect(role, seed), owner_sets(seed)
            kept = adapted(suspect, *sets, seed)[0]
            return kept + student(suspect, *sets, seed)[0] if student is not None else kept
        return graph_shadows(suspect_onnx(role, seed), alt, value_range) if args.shadows == "graph" else shadows

    if args.split_study:
        split_study(method, shadows, base, n_neg, args.split_study)
        return
    if args.family_shadows:
        family_shadows(method, shadows, base, n_pos, n_neg, args.family_shadows)
        return
    if args.noflip_shadows:
        t0 = time.perf_counter()
        noflip = appliance_shadows(alt, value_range, {"views": {"flip": False}}, tag="-noflip")
        print(f"no-flip shadows: {len(noflip)} ({time.perf_counter() - t0:.0f} s including training)", flush=True)
        compare_shadows(
            method,
            {"appliance's": shadows, "without flips": noflip},
            base,
            n_pos,
            n_neg,
            "Shadows of the appliance's recipe, with and without flips in their training views",
        )
        return
    if args.auto_shadows:
        roles = [("negative", base + 100 + j) for j in range(n_neg)] + [("positive", base + j) for j in range(n_pos)]
        train_suspects(roles, args.workers)
        designs: dict[str, list[Any] | ShadowChoice] = {
            "appliance's recipe": shadows,
            "auto views": auto_views_design(method, alt, value_range, shadows),
        }
        if args.distilled:
            designs = {
                "defaults (conv_encoder)": auto_views_design(
                    method, alt, value_range, shadows, {"projection_head": True}
                ),
                "distilled": distilled_design(alt, value_range),
            }
            defaults, student = designs["defaults (conv_encoder)"], designs["distilled"]
            assert callable(defaults) and callable(student)
            designs["both"] = lambda s, pub, pvt, seed: (
                defaults(s, pub, pvt, seed)[0] + student(s, pub, pvt, seed)[0],
                None,
            )
        elif args.graph_auto:
            # the service's defaults against the same with architecture "suspect"
            designs = {
                "defaults (conv_encoder)": auto_views_design(
                    method, alt, value_range, shadows, {"projection_head": True}
                ),
                "suspect's graph": auto_views_design(
                    method, alt, value_range, shadows, {"projection_head": True}, graph=suspect_onnx("positive", base)
                ),
            }
        elif args.auto_projector:
            designs["auto views + projector"] = auto_views_design(
                method, alt, value_range, shadows, {"projection_head": True}
            )
        title = "The appliance's conv shadows: its fixed recipe, and views chosen from the suspect's invariance"
        compare_shadows(method, designs, base, n_pos, n_neg, f"{title} (views: auto, the default)", first=args.first)
        return
    if args.recipe_shadows:
        roles = [("negative", base + 100 + j) for j in range(n_neg)] + [("positive", base + j) for j in range(n_pos)]
        train_suspects(roles, args.workers)
        designs = {"appliance's": shadows}
        for name, (tag, options) in RECIPES.items():
            t0 = time.perf_counter()
            designs[name] = appliance_shadows(alt, value_range, options, tag=tag)
            print(
                f"{name} shadows: {len(designs[name])} ({time.perf_counter() - t0:.0f} s including training)",
                flush=True,
            )
        designs["all three"] = [s for kept in designs.values() for s in kept]
        compare_shadows(
            method,
            designs,
            base,
            n_pos,
            n_neg,
            "The appliance's conv shadows trained with more and more of the suspects' recipe",
        )
        return
    if args.graph_shadows:
        t0 = time.perf_counter()
        graph = graph_shadows(suspect_onnx("positive", base), alt, value_range)
        print(f"graph shadows: {len(graph)} ({time.perf_counter() - t0:.0f} s including training)", flush=True)
        compare_shadows(
            method,
            {"appliance's": shadows, "suspect's graph": graph, "both": shadows + graph},
            base,
            n_pos,
            n_neg,
            "Shadows of the appliance's architecture vs of the suspect's graph (both by the appliance's recipe)",
        )
        return
    todo = [task for task in tasks if task not in done]
    if args.workers <= 1:
        trained_iter: Any = map(train_suspect, todo)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=args.workers)
        trained_iter = pool.map(train_suspect, todo)
    for role, seed, train_s in trained_iter:
        suspect = load_suspect(role, seed)
        kept = shadows_for(role, seed)  # before the clock: shadows are trained (or found) before an audit
        started = time.perf_counter()
        owner_pub, owner_pvt = owner_sets(seed)
        result = method.run(
            DOV4CLInputs(public=owner_pub, private=owner_pvt, suspect=suspect, shadow=kept),
            seed=seed,
        )
        wall = time.perf_counter() - started
        st = result.statistics
        shape = (
            f"{st['distinct_public_images']} + {st['distinct_private_images']} images x "
            f"{st.get('views_per_image', '-')} views; {st['queries']} suspect queries "
            f"({st['queries'] - st.get('audit_queries', st['queries'])} for the view policy)"
        )
        record = {
            "kind": "suspect",
            "role": role,
            "seed": seed,
            "p": result.p_value,
            "statistic": st["calibrated_statistic"],
            "reference_p": st["reference_p"],
            "wall": wall,
            "bare": result.timings["suspect_query_s"] + result.timings["shadow_query_s"],
            "shape": shape,
            "views": f"flip={st['views']['flip']} inv={st['views']['flip_invariance']:.2f}",
            "train_s": train_s,
        }
        _append(results, record)
        records.append(record)
        print(
            f"  {role} {seed}: p = {result.p_value:.4f}, statistic {st['calibrated_statistic']:+.4f}, "
            f"reference p = {st['reference_p']:.2g}, {wall:.1f} s (trained in {train_s:.0f} s)",
            flush=True,
        )
    if pool is not None:
        pool.shutdown()
    summarise(records)

    pool_images = np.concatenate([pub, pvt])
    named = {"auto": "auto", "false": False, "true": True}
    done_nulls = {(r["policy"], r["i"]) for r in records if r["kind"] == "null"}
    for k, name in enumerate(args.policies.split(",")):
        policy = named[name.strip().lower()]

        # Null set i: even i, a negative on a split of D_pub + D_pvt (never seen); odd i, a positive
        # on a split of D_pub (every image seen): both nulls, the second the harder one. The seed
        # (hence the views) is one per suspect and pool, so the sets of one suspect differ only
        # in the split and its embeddings are computed once (cached by the rows' bytes); sets
        # are taken suspect by suspect so the cache stays small. Each policy has its own seeds:
        # where "auto" picks the same flips as a fixed policy, its sets are still other draws.
        def null_suspect(i: int) -> tuple[str, int]:
            if i % 2 == 0 or not n_pos:
                return "negative", base + 100 + (i // 2) % n_neg
            return "positive", base + (i // 2) % n_pos

        cached: dict[tuple[str, int], tuple[Any, list[Any]]] = {}
        for i in sorted(range(n_null), key=lambda i: (null_suspect(i), i)):
            if (str(policy), i) in done_nulls:
                continue
            role, seed = null_suspect(i)
            if (role, seed) not in cached:
                cached = {
                    (role, seed): (RowCache(load_suspect(role, seed)), [RowCache(s) for s in shadows_for(role, seed)])
                }
            suspect, kept_shadows = cached[(role, seed)]
            images = pool_images if role == "negative" else owner_sets(seed)[0]
            order = np.random.default_rng([7, i]).permutation(len(images))
            half = len(images) // 2
            result = method.run(
                DOV4CLInputs(
                    public=images[order[:half]], private=images[order[half:]], suspect=suspect, shadow=kept_shadows
                ),
                params={"views": {"flip": policy}},
                seed=10_000 + 1000 * k + 2 * (seed % 100) + (role == "positive"),
            )
            record = {"kind": "null", "policy": str(policy), "i": i, "p": result.p_value, "suspect": f"{role}-{seed}"}
            _append(results, record)
            records.append(record)
            print(f"  null set {i} ({role} {seed}), flip={policy}: p = {result.p_value:.4f}", flush=True)
    summarise(records)


def split_study(method: Any, shadows: list[Any], base: int, n_neg: int, k: int) -> None:
    """Every negative audited on the same K splits of D_pub + D_pvt (split 0 the owner's): the
    test is exact over the randomness of the split, so over many splits its FPR is alpha,
    while on any one split the negatives share that split's draw and their FPR may be above or
    below it."""
    from appliance.audits.ownership.dov4cl import DOV4CLInputs

    pub, pvt, _ = digits_native()
    pool = np.concatenate([pub, pvt])
    splits = [np.arange(len(pool))] + [np.random.default_rng([99, s]).permutation(len(pool)) for s in range(1, k)]
    kept = [RowCache(s) for s in shadows]
    found: list[list[tuple[float, float]]] = [[] for _ in splits]
    for j in range(n_neg):
        seed = base + 100 + j
        suspect = RowCache(load_suspect("negative", seed))
        for s, order in enumerate(splits):
            result = method.run(
                DOV4CLInputs(
                    public=pool[order[: len(pub)]], private=pool[order[len(pub) :]], suspect=suspect, shadow=kept
                ),
                seed=seed,
            )
            found[s].append((result.p_value, result.statistics["calibrated_statistic"]))
        print(f"  negative {seed}: p = " + ", ".join(f"{found[s][-1][0]:.3f}" for s in range(k)), flush=True)
    rows = []
    for s, values in enumerate(found):
        p = np.array([v[0] for v in values])
        rows.append(
            [
                "owner's" if s == 0 else f"random {s}",
                clopper_pearson(int((p < ALPHA).sum()), len(p)),
                f"{np.median([v[1] for v in values]):+.4f}",
                f"{p.mean():.2f}",
            ]
        )
    every = np.array([v[0] for values in found for v in values])
    rows.append(["all", clopper_pearson(int((every < ALPHA).sum()), len(every)), "", f"{every.mean():.2f}"])
    print()
    header = ["split", "FPR", "median statistic", "mean p"]
    print(table(f"{n_neg} negatives, each on the same {k} splits", header, rows))


def family_shadows(method: Any, shadows: list[Any], base: int, n_pos: int, n_neg: int, n_family: int) -> None:
    """The appliance's shadows against shadows of the suspects' own family: the last
    ``n_family`` negatives (trained on the alternative set, like the appliance's shadows) serve
    as shadows for the other negatives and the positives, on each suspect's split."""
    family = [RowCache(load_suspect("negative", base + 100 + j)) for j in range(n_neg - n_family, n_neg)]
    compare_shadows(
        method,
        {"appliance's": shadows, "own family": family, "both": shadows + family},
        base,
        n_pos,
        n_neg - n_family,
        f"Shadows of the appliance's recipe vs of the suspects' own family ({n_family})",
    )


def compare_shadows(
    method: Any,
    designs: dict[str, list[Any] | ShadowChoice],
    base: int,
    n_pos: int,
    n_neg: int,
    title: str,
    first: int = 0,
) -> None:
    """The part's first ``n_neg`` negatives and ``n_pos`` positives, each on its own split,
    audited against every design of shadows (a list, or a :data:`ShadowChoice` per suspect);
    ``first``: skip the first suspects of that list (negatives, then positives), to share a
    part between processes."""
    from appliance.audits.ownership.dov4cl import DOV4CLInputs

    cached = {name: [RowCache(s) for s in kept] for name, kept in designs.items() if isinstance(kept, list)}
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    roles = [("negative", base + 100 + j) for j in range(n_neg)] + [("positive", base + j) for j in range(n_pos)]
    for role, seed in roles[first:]:
        suspect = RowCache(load_suspect(role, seed))
        public, private = owner_sets(seed)
        line = []
        for name, design in designs.items():
            if isinstance(design, list):
                kept, invariance = cached[name], None
            else:
                kept, invariance = design(suspect, public, private, seed)
            result = method.run(
                DOV4CLInputs(public=public, private=private, suspect=suspect, shadow=kept, invariance=invariance),
                seed=seed,
            )
            found.setdefault((role, name), []).append((result.p_value, result.statistics["calibrated_statistic"]))
            line.append(f"{name} p = {result.p_value:.4f} ({result.statistics['calibrated_statistic']:+.4f})")
        print(f"  {role} {seed}: " + "; ".join(line), flush=True)
    rows = []
    for (role, name), values in found.items():
        p = np.array([v[0] for v in values])
        rows.append(
            [
                role,
                name,
                clopper_pearson(int((p < ALPHA).sum()), len(p)),
                f"{np.median([v[1] for v in values]):+.4f}",
                f"{np.median(p):.4f}",
            ]
        )
    print()
    header = ["suspects", "shadows", "p < 0.05", "median statistic", "median p"]
    print(table(title, header, rows))


def _span(values: list[float]) -> str:
    return f"{min(values):+.4f}..{max(values):+.4f}" if values else "-"


if __name__ == "__main__":
    main()
