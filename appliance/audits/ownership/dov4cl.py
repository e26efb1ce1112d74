"""DOV4CL: was a self-supervised encoder trained on a released dataset? (black-box)

Maths after "Dataset Ownership Verification for Contrastive Pre-trained Models"
(ICLR 2025). The verifier only calls ``embed(x)`` on augmented views of images from the
released set D_pub and a same-distribution private set D_pvt that was never released, each
image seen through global and local views (random-resized crops at two scales, optional flips,
rotation, brightness/contrast jitter and noise).

* Unary relationship: mean cosine between views of one image, for global-global,
  local-local and global-local view pairs.
* Binary relationship: distance between the image-by-image cosine matrices of two view
  slots (again gg / ll / gl slot pairs). Memorised images keep their relationships.

Before any cosine, each model's embeddings are centred on their mean over all of the
audit's queries (public and private alike, so no label is used): encoders trained without
negatives (SimSiam/BYOL) keep a large common offset that otherwise dominates every cosine
and hides the relations (on the digits benchmark it raises the calibrated test's SimSiam
detection rate from 1/10 to 10/10 and keeps SimCLR's at 10/10 with smaller p-values).
``center=False`` gives the raw cosines of the paper.

Gaps are public-minus-private (unary) and private-minus-public (binary): an encoder
trained on D_pub has larger gaps than a shadow encoder trained without it.

Two designs. ``design: "images"`` (default) uses every image of D_pub and D_pvt (or a random
``max_images`` of each): ``n_global`` global (and ``n_local`` local) views per image, drawn for
the pooled images in a content-defined order (SHA-256 of each image), so the views an image gets
never depend on which set it came from. Suspect and shadows answer the same queries. Per image
and model the score is its unary relation (mean cosine between its own view pairs), standardised
over all images; ``relations: "all"`` adds the binary relation against all other images (on the
digits benchmark it only adds noise at this granularity). ``design: "rounds"`` is the earlier
design: rounds of ``k`` images from each set, scores averaged over the rounds that drew an image
(the private pool may hold up to ``private_pool`` times as many images as the public one).

Two tests are computed and both reported:

``reference`` (the paper's): per round and model, the 3 unary + 3 binary set-level gaps
are pooled over ``K`` rounds and compared with an unpaired one-sided Welch t-test
(suspect > shadow). In the images design the rounds are resampled from the per-image
embeddings (at most 4 global and 4 local slots), without further queries. Suspect and shadow
see the same images, rounds re-use images and the six gaps are on different scales, so the
t-test's independence assumption fails.

``permutation`` (default, calibrated): the suspect's per-image score is adjusted for the shadows'
scores of the same images by a label-free least-squares fit (``S - a - sum_j b_j Q_j``; with
identical models the residual is zero): this removes the image difficulty that every encoder
shares more efficiently than the plain difference ``S - mean(Q)``. The statistic
(``statistic``) is mean(D_pub) - mean(D_pvt) of the residuals (``"mean"``), or that and the
difference of the two sets' upper quartiles combined by their smaller permutation p-value
(``"mean_or_upper_quartile"``, :func:`~appliance.audits.stats.permutation_mean_or_upper`: the
residuals have a long lower tail, images the suspect finds far harder than its shadows predict,
which adds noise to the mean and none to the upper quartile); its null distribution comes from
re-labelling which distinct images are public. Views, centring, standardisation, the fit and the view
policy are all functions of the pooled images, never of the labels, so when D_pub and D_pvt are
exchangeable samples and the suspect is independent of D_pub the test is exact (the null-set
tests check it). Power grows with the number of distinct images, not with repeated rounds: the
statistic's noise is the per-image scatter over ``sqrt(n_pub n_pvt / (n_pub + n_pvt))``.

Defaults and why: 16 global views, no local ones (an 8x8 image cropped to 15-45% of its area
holds a few pixels; such views carry view noise, not identity), no brightness jitter
(multiplicative brightness moves a CNN's embedding along the intensity direction unless the
suspect was trained for it; an invariance the suspect lacks adds noise to its unary relation and
none to the signal), contrast jitter kept (a common augmentation that keeps the image's mean),
flips only if the suspect is flip-invariant (below).

Views fit the suspect and its data. Images are mapped from their ``value_range`` (declared,
or the min/max of D_pub and D_pvt together) onto [0, 1], augmented there and mapped back, so
the suspect is always queried on its own scale; views that saturate far more pixels than the
images themselves raise a warning in the statistics. The view families (flips, crop scales,
rotation, brightness/contrast jitter, noise) are parameters. With ``flip: "auto"`` (default)
flips are used only if the suspect is flip-invariant, measured label-blind on a random sample
of D_pub and D_pvt pooled: ``(cos(e(x), e(flip x)) - b) / (cos(e(x), e(view x)) - b)`` with
``b`` the mean cosine between different images and ``view`` a flip-free global view. The
choice depends on the pooled images only, never on which are public, so the permutation test
stays exact under the chosen policy.

    result = create_method("dov4cl").run(
        DOV4CLInputs(public=x_pub, private=x_pvt, suspect=embed_s, shadow=embed_0),
        params={"rounds": 50}, seed=7)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from appliance.audits.errors import AuditInputError, AuditParameterError, QueryBudgetExceeded
from appliance.audits.registry import (
    VERDICT_NEGATIVE,
    VERDICT_POSITIVE,
    AuditMethod,
    AuditResult,
    LogFn,
    ProgressFn,
    register_method,
)
from appliance.audits.stats import permutation_mean_diff, permutation_mean_or_upper, welch_greater
from appliance.audits.suspects import CountedQuery, EmbedFn, check_images
from models.augment import GLOBAL_VIEW, ViewSpec, multi_view, to_unit

GLOBAL_SCALE = GLOBAL_VIEW.scale

TYPES = ("gg", "ll", "gl")

#: View families of the audit's queries; ``flip`` is ``"auto"``, true or false.
VIEW_DEFAULTS: dict[str, Any] = {
    "flip": "auto",
    "global_scale": [0.5, 1.0],
    "local_scale": [0.15, 0.45],
    "rotation": 0.0,
    "brightness": 0.0,
    "contrast": 0.4,
    "noise": 0.0,
}
#: Share of view pixels at the range's ends, beyond the images' own, that earns a warning.
SATURATION_WARNING = 0.2


def view_specs(views: Mapping[str, Any], *, flip: bool) -> tuple[ViewSpec, ViewSpec]:
    """The global and local :class:`~models.augment.ViewSpec` for ``views`` (over the defaults)."""
    if not isinstance(views, Mapping):
        raise AuditParameterError(f"views must be an object, got {views!r}")
    unknown = set(views) - set(VIEW_DEFAULTS)
    if unknown:
        raise AuditParameterError(f"unknown view parameters {sorted(unknown)}; accepted: {sorted(VIEW_DEFAULTS)}")
    v = {**VIEW_DEFAULTS, **views}
    if v["flip"] not in ("auto", True, False):
        raise AuditParameterError(f"views.flip must be 'auto', true or false, got {v['flip']!r}")
    try:
        return tuple(  # type: ignore[return-value]
            ViewSpec(scale=_pair(v[scale]), flip_p=0.5 if flip else 0.0, rotation=float(v["rotation"]),
                     brightness=float(v["brightness"]), contrast=float(v["contrast"]),
                     noise=float(v["noise"]))
            for scale in ("global_scale", "local_scale"))
    except (TypeError, ValueError) as exc:
        raise AuditParameterError(f"bad view parameters: {exc}") from None


def _pair(value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"a scale must be [lo, hi], got {value!r}")
    return float(value[0]), float(value[1])


def data_range(public: np.ndarray, private: np.ndarray, declared: Sequence[float] | None) -> tuple[float, float]:
    """The images' value range: ``declared`` (checked against the data) or the min/max of both
    sets together (label-blind)."""
    lo = float(min(public.min(), private.min()))
    hi = float(max(public.max(), private.max()))
    if declared is None:
        if not hi > lo:
            raise AuditInputError("the images are constant; there is nothing to audit")
        return lo, hi
    d_lo, d_hi = float(declared[0]), float(declared[1])
    span = d_hi - d_lo
    if lo < d_lo - 1e-6 * span or hi > d_hi + 1e-6 * span:
        raise AuditInputError(
            f"the images take values in [{lo:.4g}, {hi:.4g}], outside the declared value_range "
            f"[{d_lo:.4g}, {d_hi:.4g}]", hint="declare the range of the data the suspect takes, or omit "
            "value_range to use the data's own")
    return d_lo, d_hi


def saturation_warnings(images: np.ndarray, views: np.ndarray, value_range: tuple[float, float]) -> list[str]:
    """Warn when views sit at the ends of the range far more often than the images do (the
    jitter is too strong for this data, or the range is implausible)."""
    lo, hi = value_range
    tol = 1e-6 * (hi - lo)

    def at_ends(x: np.ndarray) -> float:
        return float(np.mean((x <= lo + tol) | (x >= hi - tol)))

    base, seen = at_ends(images), at_ends(views)
    if seen - base > SATURATION_WARNING:
        return [f"{seen:.0%} of view pixels sit at the ends of the value range [{lo:.4g}, {hi:.4g}] "
                f"against {base:.0%} of image pixels: lower brightness/contrast/noise or check value_range"]
    return []


#: The transforms of an invariance profile: a mirror image, a rotation of up to 20 degrees
#: either way, Gaussian noise of 5% of the value range (each on the whole image, no jitter), and
#: a crop of 20-30% of the image's area (resized back, no flip or jitter).
PROFILE_TRANSFORMS: dict[str, ViewSpec] = {
    "flip": ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, brightness=0.0, contrast=0.0),
    "rotation": ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0,
                         rotation=20.0),
    "noise": ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0,
                      noise=0.05),
    "crop": ViewSpec(scale=(0.2, 0.3), flip_p=0.0, brightness=0.0, contrast=0.0),
}


#: How far the suspect's invariance to each transform may lie from the shadows' mean before the
#: report carries a caution. Measured on digits: encoders trained with flips score ~1.0 on
#: flips, without ~0.5; with rotations of 20 degrees ~1.15 on rotations, without ~0.9; with
#: crops down to 20% of the area ~0.65 on small crops, with crops of 50-100% ~0.4.
PROFILE_TOLERANCE = {"flip": 0.5, "rotation": 0.2, "noise": 0.2, "crop": 0.2}


def invariance_profile(images: np.ndarray, embed: EmbedFn, *, probe: int, seed: int,
                       value_range: tuple[float, float],
                       transforms: Sequence[str] = tuple(PROFILE_TRANSFORMS)) -> dict[str, float]:
    """How invariant ``embed`` is to each of ``transforms`` (:data:`PROFILE_TRANSFORMS`) on a
    random sample of ``images``, label-blind: ``(cos(x, T x) - b) / (cos(x, view x) - b)``, 1
    as invariant to ``T`` as to a flip-free global view, 0 no more similar than two different
    images (``b``). Costs ``(2 + len(transforms)) * probe`` queries, in one batch. An encoder
    trained with an augmentation is invariant to it: a profile unlike the shadows' says they
    were trained with other augmentations."""
    rng = np.random.default_rng([seed, 0xF11B])
    # A canonical order (by content) makes the sample a function of the pooled set alone, not
    # of which images came first: relabelling public and private cannot change the policy.
    canonical = np.argsort([hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest() for x in images],
                           kind="stable")
    sample = images[canonical[rng.choice(len(images), min(probe, len(images)), replace=False)]]
    plain = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0)
    view = ViewSpec(scale=GLOBAL_SCALE, flip_p=0.0)
    seed_views = int(rng.integers(2**31 - 1))
    specs = [plain, view, *(PROFILE_TRANSFORMS[name] for name in transforms)]
    drawn = [multi_view(sample, n_global=1, n_local=0, seed=seed_views, global_spec=spec,
                        value_range=value_range)[:, 0] for spec in specs]
    n = len(sample)
    emb = np.asarray(embed(np.concatenate(drawn)), np.float64).reshape(len(specs), n, -1)
    # centred on the plain images' mean alone, so a transform's score does not depend on which
    # other transforms are probed beside it
    e = _normalise(emb - emb[0].mean(axis=0))
    cos_view = float(np.mean(np.sum(e[0] * e[1], axis=1)))
    others = e[0][rng.permutation(n)]
    base = float(np.mean(np.sum(e[0] * others, axis=1)))
    if cos_view - base <= 1e-9:
        return dict.fromkeys(transforms, 0.0)
    return {name: (float(np.mean(np.sum(e[0] * e[2 + i], axis=1))) - base) / (cos_view - base)
            for i, name in enumerate(transforms)}


def suspect_profile(public: np.ndarray, private: np.ndarray, suspect: EmbedFn, p: Mapping[str, Any],
                    seed: int) -> dict[str, float]:
    """The suspect's :func:`invariance_profile` as a DOV4CL audit with resolved parameters ``p``
    and ``seed`` measures it: on D_pub and D_pvt pooled (label-blind, so whatever is chosen from
    it leaves the permutation test exact), ``invariance_probe`` images, the audit's value range."""
    value_range = data_range(public, private, p["value_range"])
    return invariance_profile(np.concatenate([public, private]), suspect, probe=int(p["invariance_probe"]),
                              seed=seed, value_range=value_range)


def flip_invariance(images: np.ndarray, embed: EmbedFn, *, probe: int, seed: int,
                    value_range: tuple[float, float]) -> float:
    """The ``flip`` entry of :func:`invariance_profile` alone (``3 * probe`` queries)."""
    return invariance_profile(images, embed, probe=probe, seed=seed, value_range=value_range,
                              transforms=("flip",))["flip"]


@dataclass
class DOV4CLInputs:
    """Inputs of a DOV4CL audit.

    ``public`` / ``private``: float arrays ``[n, C, H, W]`` in the suspect's input scale
    (same C, H, W). ``suspect``: black-box ``embed(x [n, C, H, W]) -> [n, d]`` (a
    :class:`~appliance.audits.suspects.RemoteEndpoint` works). ``shadow``: one such function
    or a list of them (encoders trained without D_pub; several are averaged, which
    lowers the false-positive rate due to one unlucky shadow).
    ``query_budget``: optional cap on suspect queries.
    ``invariance``: the suspect's invariance profile and the suspect queries it cost, where the
    caller measured it already with :func:`suspect_profile` (the same seed and parameters as
    this audit), e.g. to choose the shadows' training views from it: the audit takes it instead
    of measuring again, and counts its queries.
    """

    public: np.ndarray
    private: np.ndarray
    suspect: EmbedFn
    shadow: EmbedFn | Sequence[EmbedFn]
    query_budget: int | None = None
    invariance: tuple[dict[str, float], int] | None = None


def _slot_pairs(n_global: int, n_views: int) -> dict[str, list[tuple[int, int]]]:
    pairs: dict[str, list[tuple[int, int]]] = {t: [] for t in TYPES}
    for a in range(n_views):
        for b in range(a + 1, n_views):
            kind = "gg" if b < n_global else "ll" if a >= n_global else "gl"
            pairs[kind].append((a, b))
    return {t: p for t, p in pairs.items() if p}


def _normalise(e: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(e, axis=-1, keepdims=True)
    return cast("np.ndarray", e / np.maximum(norm, 1e-12))


def _set_binary(sim: np.ndarray, a: np.ndarray, b: np.ndarray, part: slice, k: int) -> float:
    # Frobenius distance between the k x k similarity matrices of slots a and b, per k.
    block = sim[a][:, part, part] - sim[b][:, part, part]
    return float(np.sqrt((block**2).sum(axis=(1, 2))).mean() / k)


def round_relations(
    emb: np.ndarray, *, k: int, n_global: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """Relations of one round for one model.

    ``emb`` is ``[2k, V, d]`` (first ``k`` public images, then ``k`` private). Returns
    per-image unary ``{type: [2k]}``, per-image binary ``{type: [2k]}`` (over all 2k
    round-mates) and the reference set-level gaps ``{type: (unary_gap, binary_gap)}``.
    """
    e = _normalise(emb.astype(np.float64))
    n, n_views, _ = e.shape
    pairs = _slot_pairs(n_global, n_views)
    # Within-image cosines between view slots: [n, V, V].
    view_cos = np.einsum("ivd,iwd->ivw", e, e)
    # Image-by-image cosine matrix per view slot: [V, n, n].
    sim = np.einsum("ivd,jvd->vij", e, e)
    off = ~np.eye(n, dtype=bool)
    pub, pvt = slice(0, k), slice(k, n)
    unary: dict[str, np.ndarray] = {}
    binary: dict[str, np.ndarray] = {}
    gaps: dict[str, tuple[float, float]] = {}
    for kind, plist in pairs.items():
        a = np.array([p[0] for p in plist])
        b = np.array([p[1] for p in plist])
        u = view_cos[:, a, b].mean(axis=1)
        diff = np.abs(sim[a] - sim[b])  # [P, n, n]
        bin_img = (diff * off).sum(axis=2).mean(axis=0) / (n - 1)
        unary[kind] = u
        binary[kind] = bin_img
        gaps[kind] = (
            float(u[pub].mean() - u[pvt].mean()),
            _set_binary(sim, a, b, pvt, k) - _set_binary(sim, a, b, pub, k),
        )
    return unary, binary, gaps


def image_relations(
    emb: np.ndarray, *, n_global: int, binary: bool = True, block: int = 1 << 23
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Relations of every image with every other, for one model.

    ``emb`` is ``[n, V, d]`` (all distinct images, ``V`` views each). Returns per-image unary
    ``{type: [n]}`` (mean cosine between the image's own view pairs of that type) and binary
    ``{type: [n]}`` (mean over the other ``n - 1`` images and the slot pairs of the absolute
    change of their cosine between the two slots). The image-by-image matrices are computed
    in row blocks of about ``block`` entries, so memory stays bounded for large sets;
    ``binary=False`` skips them (and returns no binary relations).
    """
    e = _normalise(emb.astype(np.float64))
    n, n_views, _ = e.shape
    pairs = _slot_pairs(n_global, n_views)
    view_cos = np.einsum("ivd,iwd->ivw", e, e)
    unary = {kind: view_cos[:, [a for a, _ in plist], [b for _, b in plist]].mean(axis=1)
             for kind, plist in pairs.items()}
    if not binary:
        return unary, {}
    rel = {kind: np.zeros(n) for kind in pairs}
    by_slot = np.ascontiguousarray(e.transpose(1, 0, 2))  # [V, n, d]
    rows = max(1, block // max(1, n_views * n))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sim = np.einsum("vid,vjd->vij", by_slot[:, start:stop], by_slot)  # [V, B, n]
        for kind, plist in pairs.items():
            total = np.zeros(stop - start)
            for a, b in plist:
                diff = np.abs(sim[a] - sim[b])
                # an image's cosine with itself is 1 in every slot: its own column adds 0
                diff[np.arange(stop - start), np.arange(start, stop)] = 0.0
                total += diff.sum(axis=1)
            rel[kind][start:stop] = total / (len(plist) * max(1, n - 1))
    return unary, rel


def canonical_order(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``images`` defined by their content (SHA-256 of the bytes; exact
    duplicates in random order): a function of the pooled set alone, so any draw made in this
    order cannot depend on which images are public."""
    ties = rng.permutation(len(images))
    digests = [hashlib.sha256(np.ascontiguousarray(images[i]).tobytes()).digest() for i in ties]
    return ties[np.array(sorted(range(len(ties)), key=digests.__getitem__), dtype=np.int64)]


def image_scores(unary: dict[str, np.ndarray], binary: dict[str, np.ndarray]) -> np.ndarray:
    """Label-free per-image score: mean of standardised unary minus standardised binary.

    Each ``{type: [n]}`` array holds one relation per distinct image (or per draw); a type
    missing from ``binary`` contributes its unary relation only.
    """
    parts = []
    for kind in unary:
        for values, sign in ((unary[kind], 1.0), (binary.get(kind), -1.0)):
            if values is None:
                continue
            sd = values.std()
            parts.append(sign * (values - values.mean()) / (sd if sd > 0 else 1.0))
    return cast("np.ndarray", np.mean(parts, axis=0))


def centred(emb: np.ndarray) -> np.ndarray:
    """``emb`` ``[..., d]`` minus its mean over every leading axis (all queries of one model)."""
    e = np.asarray(emb, np.float64)
    return cast("np.ndarray", e - e.reshape(-1, e.shape[-1]).mean(axis=0))


def shadow_adjusted(suspect: np.ndarray, shadows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Residual of the suspect's per-image scores after a least-squares fit on the shadows'.

    ``suspect`` and each of ``shadows`` are ``[n]`` scores of the same images. The fit
    ``suspect ~ a + sum_j b_j shadow_j`` uses no group labels, so a permutation test on the
    residuals stays exact. With too few images for the fit (n <= 2 (J + 1)) the plain
    difference from the shadows' mean is returned. Returns ``(residual, [a, b_1..b_J])``.
    """
    s = np.asarray(suspect, np.float64)
    q = np.stack([np.asarray(x, np.float64) for x in shadows], axis=1)
    if len(s) <= 2 * (q.shape[1] + 1):
        coef = np.concatenate([[0.0], np.full(q.shape[1], 1.0 / q.shape[1])])
        return s - q.mean(axis=1), coef
    design = np.column_stack([np.ones(len(s)), q])
    coef, *_ = np.linalg.lstsq(design, s, rcond=None)
    return s - design @ coef, coef


#: The calibrated test's statistics of the per-image residuals (see the module docstring).
PERMUTATION_STATISTICS = ("mean", "mean_or_upper_quartile")


class DOV4CL(AuditMethod):
    """Dataset-ownership verification for contrastive encoders (see module docstring)."""

    name = "dov4cl"
    version = "1.0"
    inputs_type = DOV4CLInputs

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "design": "images",
            "relations": "unary",
            "max_images": 4096,
            "k": 32,
            "n_global": 16,
            "n_local": 0,
            "rounds": 50,
            "alpha": 0.05,
            "test": "permutation",
            "statistic": "mean",
            "permutations": 5000,
            "private_pool": 1.0,
            "center": True,
            "max_batch": 4096,
            "value_range": None,
            "views": dict(VIEW_DEFAULTS),
            "invariance_probe": 256,
            "flip_threshold": 0.9,
        }

    def _check(self, p: dict[str, Any]) -> None:
        if p["relations"] not in ("unary", "all"):
            raise AuditParameterError(f"relations must be 'unary' or 'all', got {p['relations']!r}")
        if p["design"] not in ("images", "rounds"):
            raise AuditParameterError(f"design must be 'images' or 'rounds', got {p['design']!r}")
        for key in ("k", "rounds", "permutations", "max_batch", "max_images"):
            if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
                raise AuditParameterError(f"{key} must be a positive integer, got {p[key]!r}")
        if p["k"] < 3 or p["max_images"] < 3:
            raise AuditParameterError("k and max_images must be at least 3")
        if not isinstance(p["n_global"], int) or not isinstance(p["n_local"], int):
            raise AuditParameterError("n_global and n_local must be integers")
        if p["n_global"] < 0 or p["n_local"] < 0 or p["n_global"] + p["n_local"] < 2:
            raise AuditParameterError("need n_global, n_local >= 0 and at least two views")
        if not 0.0 < float(p["alpha"]) < 1.0:
            raise AuditParameterError(f"alpha must be in (0, 1), got {p['alpha']!r}")
        ratio = p["private_pool"]
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 1.0 <= float(ratio) <= 100.0:
            raise AuditParameterError(f"private_pool must be a number in [1, 100], got {ratio!r}")
        if not isinstance(p["center"], bool):
            raise AuditParameterError(f"center must be true or false, got {p['center']!r}")
        if p["test"] not in ("permutation", "reference"):
            raise AuditParameterError("test must be 'permutation' or 'reference'")
        if p["statistic"] not in PERMUTATION_STATISTICS:
            raise AuditParameterError(f"statistic must be one of {', '.join(PERMUTATION_STATISTICS)}, "
                                      f"got {p['statistic']!r}")
        if isinstance(p["invariance_probe"], bool) or not isinstance(p["invariance_probe"], int) \
                or not 8 <= p["invariance_probe"] <= 100_000:
            raise AuditParameterError("invariance_probe must be an integer in [8, 100000]")
        if isinstance(p["flip_threshold"], bool) or not isinstance(p["flip_threshold"], int | float):
            raise AuditParameterError("flip_threshold must be a number")
        if p["value_range"] is not None:
            vr = p["value_range"]
            if not isinstance(vr, list | tuple) or len(vr) != 2 \
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vr) \
                    or not (np.isfinite(vr).all() and float(vr[0]) < float(vr[1])):
                raise AuditParameterError(f"value_range must be [lo, hi] with lo < hi, got {vr!r}")
        view_specs(p["views"], flip=False)  # raises on bad view parameters

    def build_image_queries(
        self, public: np.ndarray, private: np.ndarray, p: Mapping[str, Any], seed: int, *,
        specs: tuple[ViewSpec, ViewSpec] | None = None, value_range: tuple[float, float] = (0.0, 1.0),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Views of every image (the ``images`` design).

        Each set is used whole, or a random ``max_images`` of it. The views are drawn for the
        pooled images in their content-defined order, so which view an image gets depends on
        the pooled set and the seed, never on which images are public. Returns ``views
        [n_pub + n_pvt, V, C, S, S]`` (public first) and ``is_public [n_pub + n_pvt]``.
        """
        global_spec, local_spec = specs or view_specs(p.get("views", {}), flip=True)
        rng = np.random.default_rng([seed, 0x1A6E])
        cap = int(p["max_images"])
        pub = public if len(public) <= cap else public[np.sort(rng.choice(len(public), cap, replace=False))]
        pvt = private if len(private) <= cap else private[np.sort(rng.choice(len(private), cap, replace=False))]
        pooled = np.concatenate([pub, pvt])
        # ordered by content on the common [0, 1] scale: the same data on another scale gets
        # the same views
        order = canonical_order(to_unit(pooled, value_range), rng)
        drawn = multi_view(pooled[order], n_global=int(p["n_global"]), n_local=int(p["n_local"]),
                           seed=int(rng.integers(2**31 - 1)), global_spec=global_spec,
                           local_spec=local_spec, value_range=value_range)
        views = np.empty_like(drawn)
        views[order] = drawn
        is_public = np.arange(len(pooled)) < len(pub)
        return views, is_public

    def build_queries(
        self, public: np.ndarray, private: np.ndarray, p: Mapping[str, Any], seed: int, *,
        specs: tuple[ViewSpec, ViewSpec] | None = None, value_range: tuple[float, float] = (0.0, 1.0),
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Sample the rounds and draw their views.

        Returns ``ids [K, 2k]`` (indices into ``concat(pool_pub, pool_pvt)``, public first),
        ``views [K, 2k, V, C, S, S]`` and the public pool size (ids below it are public).
        The public pool has ``min(len(public), len(private))`` images, the private pool up
        to ``private_pool`` times as many; each round draws ``k`` images from each.
        """
        global_spec, local_spec = specs or view_specs(p.get("views", {}), flip=True)
        k, rounds = int(p["k"]), int(p["rounds"])
        rng = np.random.default_rng([seed, 0x0D0F])
        n_pool = min(len(public), len(private))
        n_pvt = min(len(private), int(float(p.get("private_pool", 1.0)) * n_pool))
        if k > n_pool:
            raise AuditInputError(
                f"k={k} images per set but the smaller of public ({len(public)}) and "
                f"private ({len(private)}) has only {n_pool}"
            )
        pool_pub = rng.choice(len(public), n_pool, replace=False)
        pool_pvt = rng.choice(len(private), n_pvt, replace=False)
        images = np.concatenate([public[pool_pub], private[pool_pvt]])
        ids = np.empty((rounds, 2 * k), dtype=np.int64)
        views = []
        for r in range(rounds):
            ids[r, :k] = rng.choice(n_pool, k, replace=False)
            ids[r, k:] = n_pool + rng.choice(n_pvt, k, replace=False)
            view_seed = int(rng.integers(2**31 - 1))
            views.append(
                multi_view(
                    images[ids[r]],
                    n_global=int(p["n_global"]),
                    n_local=int(p["n_local"]),
                    seed=view_seed,
                    global_spec=global_spec,
                    local_spec=local_spec,
                    value_range=value_range,
                )
            )
        return ids, np.stack(views), n_pool

    def check_params(self, params: dict[str, Any]) -> None:
        super().check_params(params)
        self._check(params)

    def execute(self, inputs: DOV4CLInputs, params: dict[str, Any], *, seed: int,
                progress: ProgressFn, log: LogFn) -> AuditResult:
        p = params
        public = check_images("public dataset", inputs.public, min_count=3)
        private = check_images("private dataset", inputs.private, min_count=3)
        if public.shape[1:] != private.shape[1:]:
            raise AuditInputError(
                f"public images {public.shape[1:]} and private images {private.shape[1:]} must have the same [C, H, W]"
            )
        suspect = CountedQuery(
            inputs.suspect,
            kind="embed",
            name="suspect",
            budget=inputs.query_budget,
            max_batch=int(p["max_batch"]),
        )
        shadow_fns: list[EmbedFn] = (
            list(inputs.shadow) if isinstance(inputs.shadow, list | tuple) else [cast(EmbedFn, inputs.shadow)]
        )
        if not shadow_fns:
            raise AuditInputError("dov4cl needs at least one shadow encoder")
        shadows = [
            CountedQuery(fn, kind="embed", name=f"shadow {i}", max_batch=int(p["max_batch"]))
            for i, fn in enumerate(shadow_fns)
        ]
        k, rounds, n_global = int(p["k"]), int(p["rounds"]), int(p["n_global"])
        n_views = n_global + int(p["n_local"])

        value_range = data_range(public, private, p["value_range"])
        t0 = time.perf_counter()
        measured: dict[str, float] | None = None
        if inputs.invariance is not None:
            measured, cost = inputs.invariance
            if set(measured) != set(PROFILE_TRANSFORMS) or isinstance(cost, bool) or not isinstance(cost, int) \
                    or cost < 0:
                raise AuditInputError(f"invariance must be a profile of {sorted(PROFILE_TRANSFORMS)} and "
                                      "the queries it cost")
            suspect.queries += cost  # spent by the caller, on the same suspect
        flip, profile = self._flip_policy(public, private, p, seed, suspect, measured)
        invariance = None if profile is None else profile["flip"]
        specs = view_specs(p["views"], flip=flip)
        if p["design"] == "images":
            if int(p["k"]) > min(len(public), len(private), int(p["max_images"])):
                raise AuditInputError(
                    f"k={k} images per set for the reference test but the smaller of public "
                    f"({len(public)}) and private ({len(private)}) has only {min(len(public), len(private))}")
            views, is_public = self.build_image_queries(public, private, p, seed, specs=specs,
                                                        value_range=value_range)
            shape: tuple[int, ...] = (len(views), n_views)
        else:
            ids, views, n_pool = self.build_queries(public, private, p, seed, specs=specs,
                                                    value_range=value_range)
            shape = (rounds, 2 * k, n_views)
        flat = views.reshape(-1, *views.shape[-3:])
        warnings = saturation_warnings(np.concatenate([public, private]), flat, value_range)
        t_aug = time.perf_counter() - t0
        for warning in warnings:
            log(f"dov4cl: warning: {warning}")
        what = f"{shape[0]} images" if p["design"] == "images" else f"{rounds} rounds x {2 * k} images"
        log(f"dov4cl: {what} x {n_views} views = {len(flat)} queries")
        if suspect.budget is not None and suspect.queries + len(flat) > suspect.budget:
            raise QueryBudgetExceeded(
                f"dov4cl needs {suspect.queries + len(flat)} suspect queries but the budget is "
                f"{suspect.budget}; lower max_images or the number of views"
            )
        emb_s = suspect(flat).reshape(*shape, -1)
        progress(0.45)
        emb_0 = [shadow(flat).reshape(*shape, -1) for shadow in shadows]
        progress(0.9)

        t0 = time.perf_counter()
        if p["design"] == "images":
            stats = self._image_statistics(emb_s, emb_0, is_public, n_global=n_global, p=p, seed=seed)
        else:
            stats = self._statistics(emb_s, emb_0, ids, n_pool=n_pool, k=k, n_global=n_global, p=p, seed=seed)
        stats["views"] = {"value_range": list(value_range), "flip": flip, "flip_invariance": invariance,
                          "invariance": profile, "global": asdict(specs[0]), "local": asdict(specs[1])}
        stats["warnings"] = warnings
        stats["cautions"], stats["views"]["shadow_invariance"] = self._mismatch_cautions(
            emb_s, emb_0, profile, public, private, p, seed, shadows, value_range)
        stats["queries"] = suspect.queries
        stats["audit_queries"] = len(flat)  # the rest went to the view-policy probe
        t_stats = time.perf_counter() - t0
        alpha = float(p["alpha"])
        p_value = stats["calibrated_p"] if p["test"] == "permutation" else stats["reference_p"]
        return AuditResult(
            method=self.name,
            version=self.version,
            statistics=stats,
            p_value=float(p_value),
            verdict=VERDICT_POSITIVE if p_value < alpha else VERDICT_NEGATIVE,
            alpha=alpha,
            queries=suspect.queries,
            parameters={},
            timings={
                "augment_s": t_aug,
                "suspect_query_s": suspect.seconds,
                "shadow_query_s": sum(shadow.seconds for shadow in shadows),
                "statistics_s": t_stats,
            },
        )

    @staticmethod
    def _flip_policy(
        public: np.ndarray, private: np.ndarray, p: Mapping[str, Any], seed: int,
        suspect: CountedQuery, measured: dict[str, float] | None,
    ) -> tuple[bool, dict[str, float] | None]:
        """Whether views may flip, and the suspect's invariance profile (``measured`` where the
        caller measured it; ``None`` if the flips were chosen by hand and nothing was measured)."""
        choice = p["views"].get("flip", VIEW_DEFAULTS["flip"])
        if choice != "auto":
            return bool(choice), measured
        profile = measured if measured is not None else suspect_profile(public, private, suspect, p, seed)
        return profile["flip"] >= float(p["flip_threshold"]), profile

    @staticmethod
    def _mismatch_cautions(
        emb_s: np.ndarray, emb_0: list[np.ndarray], profile: dict[str, float] | None, public: np.ndarray,
        private: np.ndarray, p: Mapping[str, Any], seed: int, shadows: Sequence[CountedQuery],
        value_range: tuple[float, float],
    ) -> tuple[list[str], dict[str, float] | None]:
        """Signs that the shadows do not resemble the suspect (another embedding size, another
        invariance profile), and the shadows' mean profile where the suspect's was measured: the
        test stays valid, but loses power and the shadows explain less."""
        cautions = []
        dims = sorted({int(e.shape[-1]) for e in emb_0})
        if dims != [int(emb_s.shape[-1])]:
            cautions.append(f"the suspect embeds in {emb_s.shape[-1]} dimensions, the shadows in "
                            f"{', '.join(map(str, dims))}: shadows of the suspect's recipe explain its "
                            "image difficulty better")
        if profile is None:
            return cautions, None
        pooled = np.concatenate([public, private])
        profiles = [invariance_profile(pooled, shadow, probe=int(p["invariance_probe"]), seed=seed,
                                       value_range=value_range) for shadow in shadows]
        theirs = {name: float(np.mean([q[name] for q in profiles])) for name in profile}
        differ = [f"{name} {profile[name]:.2f} against {theirs[name]:.2f}" for name in profile
                  if abs(profile[name] - theirs[name]) > PROFILE_TOLERANCE[name]]
        if differ:
            cautions.append(f"the suspect's invariance differs from the shadows' ({'; '.join(differ)}): they "
                            "were likely trained with other augmentations (shadow_training.views can match "
                            "the suspect's)")
        return cautions, theirs

    @staticmethod
    def _image_statistics(
        emb_s: np.ndarray,
        emb_0: list[np.ndarray],
        is_public: np.ndarray,
        *,
        n_global: int,
        p: Mapping[str, Any],
        seed: int,
    ) -> dict[str, Any]:
        """Statistics of the ``images`` design: ``emb_*`` are ``[n, V, d]``, one row per distinct
        image (public first)."""
        if p.get("center", True):
            emb_s, emb_0 = centred(emb_s), [centred(e) for e in emb_0]
        k, rounds = int(p["k"]), int(p["rounds"])
        # The paper's set-level gaps on rounds of k public and k private images resampled from
        # the same embeddings (no further queries), for the reference t-test.
        rng = np.random.default_rng([seed, 0x0D0F])
        pub_ids, pvt_ids = np.flatnonzero(is_public), np.flatnonzero(~is_public)
        ids = np.stack([np.concatenate([rng.choice(pub_ids, k, replace=False),
                                        rng.choice(pvt_ids, k, replace=False)]) for _ in range(rounds)])
        # at most 4 global and 4 local slots: the paper's view counts, and the reference test
        # on all 16 x 16 slot pairs would cost more than the rest of the audit
        n_local = emb_s.shape[1] - n_global
        slots = list(range(min(n_global, 4))) + list(range(n_global, n_global + min(n_local, 4)))
        ref_global = min(n_global, 4)

        def relations(emb: np.ndarray) -> tuple[np.ndarray, dict[str, list[float]], np.ndarray]:
            ref_gaps: list[np.ndarray] = []
            named: dict[str, list[float]] = {}
            for r in range(rounds):
                _, _, gaps = round_relations(emb[ids[r]][:, slots], k=k, n_global=ref_global)
                ref_gaps.append(np.array([g for kind in gaps for g in gaps[kind]]))
                for kind, (ug, bg) in gaps.items():
                    named.setdefault(f"unary_{kind}", []).append(ug)
                    named.setdefault(f"binary_{kind}", []).append(bg)
            unary, binary = image_relations(emb, n_global=n_global, binary=p["relations"] == "all")
            score = image_scores(unary, binary)
            return np.stack(ref_gaps), named, score

        return {**DOV4CL._suspect_against_shadows(relations, emb_s, emb_0, is_public, p, seed),
                "design": "images", "views_per_image": int(emb_s.shape[1])}

    @staticmethod
    def _suspect_against_shadows(
        relations: Callable[[np.ndarray], tuple[np.ndarray, dict[str, list[float]], np.ndarray]],
        emb_s: np.ndarray, emb_0: list[np.ndarray], is_public: np.ndarray,
        p: Mapping[str, Any], seed: int,
    ) -> dict[str, Any]:
        """Both designs' tests from their ``relations`` (per-round gaps, named gaps, per-image
        score): the reference Welch test of the suspect's gaps against the shadows' (averaged
        per round), and the calibrated permutation test of the suspect's per-image score
        regressed on every shadow's, over the distinct images."""
        ref_s, named_s, score_s = relations(emb_s)
        shadow_rel = [relations(e) for e in emb_0]
        ref_0 = np.mean([r[0] for r in shadow_rel], axis=0)
        residual, coef = shadow_adjusted(score_s, [r[2] for r in shadow_rel])
        named_0 = {key: list(np.mean([r[1][key] for r in shadow_rel], axis=0)) for key in named_s}
        t_ref, p_ref = welch_greater(ref_s.ravel(), ref_0.ravel())
        rng = np.random.default_rng([seed, 0x9E47])
        tail: dict[str, float] = {}
        if p["statistic"] == "mean":
            t_perm, p_perm = permutation_mean_diff(residual, is_public, permutations=int(p["permutations"]),
                                                   rng=rng)
        else:
            t_perm, upper, p_perm = permutation_mean_or_upper(residual, is_public,
                                                              permutations=int(p["permutations"]), rng=rng)
            tail = {"upper_quartile_difference": upper}
        return {
            "reference_t": t_ref,
            "reference_p": p_ref,
            "calibrated_statistic": t_perm,
            "calibrated_p": p_perm,
            "statistic": p["statistic"],
            **tail,
            "test": p["test"],
            "mean_gaps": {label: {key: float(np.mean(v)) for key, v in gaps.items()}
                          for label, gaps in (("suspect", named_s), ("shadow", named_0))},
            "distinct_public_images": int(is_public.sum()),
            "distinct_private_images": int((~is_public).sum()),
            "shadows": len(emb_0),
            "shadow_coefficients": [float(c) for c in coef],
        }

    @staticmethod
    def _statistics(
        emb_s: np.ndarray,
        emb_0: list[np.ndarray],
        ids: np.ndarray,
        *,
        n_pool: int,
        k: int,
        n_global: int,
        p: Mapping[str, Any],
        seed: int,
    ) -> dict[str, Any]:
        rounds = len(ids)
        if p.get("center", True):
            emb_s, emb_0 = centred(emb_s), [centred(e) for e in emb_0]

        def relations(emb: np.ndarray) -> tuple[np.ndarray, dict[str, list[float]], np.ndarray]:
            ref_gaps: list[np.ndarray] = []
            named: dict[str, list[float]] = {}
            inst: dict[str, list[np.ndarray]] = {}
            for r in range(rounds):
                unary, binary, gaps = round_relations(emb[r], k=k, n_global=n_global)
                ref_gaps.append(np.array([g for kind in gaps for g in gaps[kind]]))
                for kind, (ug, bg) in gaps.items():
                    named.setdefault(f"unary_{kind}", []).append(ug)
                    named.setdefault(f"binary_{kind}", []).append(bg)
                for kind in unary:
                    inst.setdefault(f"u_{kind}", []).append(unary[kind])
                    inst.setdefault(f"b_{kind}", []).append(binary[kind])
            u = {key[2:]: per_image(np.concatenate(v)) for key, v in inst.items() if key[0] == "u"}
            b = {key[2:]: per_image(np.concatenate(v)) for key, v in inst.items() if key[0] == "b"}
            return np.stack(ref_gaps), named, image_scores(u, b)

        flat_ids = ids.ravel()
        n_distinct = int(flat_ids.max()) + 1
        counts = np.bincount(flat_ids, minlength=n_distinct)
        seen = counts > 0

        def per_image(values: np.ndarray) -> np.ndarray:
            # Average of one relation over the rounds that drew each distinct image.
            return np.bincount(flat_ids, weights=values, minlength=n_distinct)[seen] / counts[seen]

        is_public = (np.arange(n_distinct) < n_pool)[seen]
        return {**DOV4CL._suspect_against_shadows(relations, emb_s, emb_0, is_public, p, seed),
                "design": "rounds"}


register_method(DOV4CL.name, DOV4CL)

__all__ = [
    "DOV4CL",
    "DOV4CLInputs",
    "VIEW_DEFAULTS",
    "canonical_order",
    "centred",
    "data_range",
    "flip_invariance",
    "invariance_profile",
    "image_relations",
    "image_scores",
    "round_relations",
    "saturation_warnings",
    "shadow_adjusted",
    "view_specs",
]
