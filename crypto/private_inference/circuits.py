"""The homomorphic circuits of the ensemble on SEAL objects (public evaluation keys only).

    circuit = Circuit(seal=keys, preset=p, rounds=r, hidden=False, onehot=False,
                      late_rescale=True, layout=lay, wide=wide_lay)
    reply_ct = circuit.single(query_ct, weights)             # one ciphertext, single layout
    reply_cts = circuit.wide(cts, count, plains, bias)       # one ciphertext per class

Pieces: the plaintext-diagonal matrix-vector product (baby-step/giant-step) and the optional
square of a hidden layer; the sign polynomial ``f(z) = z (3 - z^2) / 2`` composed
``rounds`` times on pairwise logit differences; per-class win-count sums (a window sum, or
per-pair sums in the wide layout) or one-hot products (a rotate-and-multiply window over a
class block, or a balanced product); row products of plaintext weight pieces for the wide and
region layouts; and fresh output noise. Encoding the owner's weights as SEAL plaintexts
happens here too, so the server only decides what to encode and keep.

The label output's two rounds (:mod:`crypto.private_inference.label`) have circuits of their
own: :meth:`Circuit.label_round1` / :meth:`Circuit.label_round2` in the single layout,
:meth:`Circuit.label_wide_round1` / :meth:`Circuit.label_wide_round2` for wide batches (their
logits from :meth:`Circuit.wide_logits` or, in regions, :meth:`Circuit.region_logits`).

Circuit privacy of the result slots: each gets fresh uniform noise of :data:`OUTPUT_FLOOD`
(the units the slot decrypts to), unused slots noise as large as the headroom allows, and
win-count sums a fresh secret factor in [:data:`OUTPUT_SCALE_MIN`, 1] per query.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sealapi

from crypto import packing
from crypto.ckks import CkksPreset, ContextError, galois_element, level_with
from crypto.ensemble import FLOOD_MARGIN_BITS

__all__ = ["OUTPUT_FLOOD", "OUTPUT_SCALE_MIN", "Circuit", "SealKeys", "SingleWeights", "region_class",
           "region_comparisons"]

#: Circuit privacy of the result slots: each gets fresh uniform noise of this amplitude (the
#: units the slot decrypts to: comparison sums, or one-hot values), and win-count sums are
#: scaled by a fresh secret factor in [OUTPUT_SCALE_MIN, 1] per query. The circuit's own CKKS
#: error on a comparison sum is ~5e-6 at n8192-d3 (measured), so the decrypted value is within
#: total-variation distance error / amplitude (~0.05 per slot) of "exact value + uniform noise":
#: it hides the error's dependence on the weights, not the soft value itself. Labels stay exact
#: while the top-2 win-count margin exceeds OUTPUT_FLOOD["scores"] / OUTPUT_SCALE_MIN (1.3e-4;
#: the benchmark's held-out queries have >= 2.9e-4).
OUTPUT_FLOOD = {"scores": 1e-4, "onehot": 1e-6, "label": 1e-4}
OUTPUT_SCALE_MIN = 0.75
#: Label output, round 1: each anonymous pair's value carries uniform noise of this amplitude
#: (times its secret factor, in the units of the scaled differences, which lie in [-1, 1]);
#: every other slot noise of 2^LABEL_UNUSED_BITS. Set from the measured CKKS error of the
#: differences (see crypto.private_inference.label).
LABEL_FLOOD = 2e-5
LABEL_UNUSED_BITS = 20


def region_class(accumulator: int, region: int, regions: int, classes: int) -> int:
    """The class whose logit accumulator ``a`` holds in region ``k`` of the region layout.

    Class ``a * R + k``; in the last accumulator, whose ``m < R`` classes do not fill its
    regions, region ``k`` repeats class ``a * R + k % m`` instead of staying empty, so its
    differences with a rotated accumulator compare as many distinct pairs as a full one
    (10 classes in 4 regions: 13 sign evaluations instead of 17, the least possible being 12).
    """
    base = accumulator * regions
    if not 0 <= region < regions or not 0 <= base < classes:
        raise ValueError(f"no accumulator {accumulator}, region {region} for {classes} classes in {regions} regions")
    return base + region % min(regions, classes - base)


def region_comparisons(
    classes: int, regions: int
) -> tuple[list[tuple[int, int, int]], dict[tuple[int, int], tuple[int, int, float]]]:
    """The region layout's sign evaluations and where each pair of classes is compared.

    Returns ``differences``, a list of ``(a, b, r)``: accumulator ``a`` minus accumulator ``b``
    rotated so that its region ``k + r`` lands in region ``k``, and ``where``, mapping each
    unordered pair ``i < j`` to ``(index in differences, region, sign)`` with
    ``s_ij = sign * value there``. Every pair is compared exactly once; a difference is
    evaluated only if it compares a pair not compared before.
    """
    accumulators = -(-classes // regions)
    differences: list[tuple[int, int, int]] = []
    where: dict[tuple[int, int], tuple[int, int, float]] = {}
    for a in range(accumulators):
        for b in range(a, accumulators):
            for r in range(regions) if b > a else range(1, regions // 2 + 1):
                fresh = []
                for k in range(regions):
                    i, j = region_class(a, k, regions, classes), region_class(b, (k + r) % regions, regions, classes)
                    if i != j and (min(i, j), max(i, j)) not in where:
                        where[(min(i, j), max(i, j))] = (len(differences), k, 1.0 if i < j else -1.0)
                        fresh.append(k)
                if fresh:
                    differences.append((a, b, r))
    return differences, where


@dataclass(frozen=True)
class SealKeys:
    """One session's SEAL objects: context, evaluator, encoder, relinearisation and Galois keys,
    and an encryptor under the session's public key (it re-randomises every reply)."""

    context: Any
    evaluator: Any
    encoder: Any
    relin: Any
    galois: Any
    encryptor: Any


@dataclass(frozen=True)
class SingleWeights:
    """The single layout's encoded weights (plaintexts, ``None`` where a diagonal is zero) and
    slot constants; shared by every session of one artifact and parameter set."""

    diagonals: list[Any]
    bias: npt.NDArray[np.float64]
    hidden_diagonals: list[Any]
    hidden_bias: npt.NDArray[np.float64]
    keep: npt.NDArray[np.bool_]
    onehot_constants: list[float]
    #: The last sign step's per-slot weights of a pairs layout (``packing.pair_signs``), else None.
    signs: npt.NDArray[np.float64] | None = None


def _memoised(memo: dict[Any, Any] | None, key: Any, make: Callable[[], Any]) -> Any:
    """``memo[key]``, made by ``make()`` and kept on first use; always ``make()`` without a memo."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


class Circuit:
    """The ensemble's circuits for one session's keys: single, wide and region layouts.

    ``rounds`` compositions of the sign polynomial; ``hidden`` heads add a stage-1 product and a
    square; ``onehot`` selects one-hot products over
    win-count sums; with ``late_rescale`` rotations act before the rescale (less key-switching
    noise at small scales).
    """

    def __init__(
        self,
        *,
        seal: SealKeys,
        preset: CkksPreset,
        rounds: int,
        hidden: bool,
        onehot: bool,
        late_rescale: bool,
        layout: packing.EnsembleLayout,
        wide: packing.WideLayout,
    ) -> None:
        self._seal_ctx = seal.context
        self._evaluator = seal.evaluator
        self._encoder = seal.encoder
        self._relin = seal.relin
        self._galois = seal.galois
        self._encryptor = seal.encryptor
        self._preset = preset
        self._rounds = rounds
        self._hidden = hidden
        self._onehot = onehot
        self.late_rescale = late_rescale
        #: One-region wide win counts: each class's signs summed before one relinearisation
        #: (``False``: every pair relinearised and rescaled, the previous circuit; the
        #: benchmark's baseline).
        self.sum_signs_unrelinearised = True
        self._layout = layout
        self._wide = wide
        self._routes: dict[int, tuple[int, ...]] = {}

    # -- encoding the owner's weights ------------------------------------------------------

    def encode_diagonals(self, diags: list[npt.NDArray[np.float64]], level: Any) -> list[Any]:
        """NTT plaintexts at ``level`` (SEAL context data), ``None`` for all-zero diagonals.

        The scale is the prime the next rescale drops, so each product comes back to the
        ciphertext's own scale exactly.
        """
        drop_prime = float(level.parms().coeff_modulus()[-1].value())
        out: list[Any] = []
        for diag in diags:
            if not np.any(diag):
                out.append(None)  # SEAL refuses products that are exactly zero
                continue
            pt = sealapi.Plaintext()
            self._encoder.encode(diag.tolist(), level.parms_id(), drop_prime, pt)
            out.append(pt)
        return out

    def encode_wide_weights(self, weights: Sequence[Sequence[npt.NDArray[np.float64]]], *,
                            lazy: bool = False) -> list[Iterable[Any]]:
        """Plaintext weight pieces ``[class][chunk]`` (``None`` where all zero) of
        :func:`crypto.packing.wide_weights`; with ``lazy`` each class's pieces are encoded
        one at a time as :meth:`wide_logits` consumes them (one plaintext alive at a time)."""
        rows = ((self._encode_top(packing.wide_weight_slots(piece, self._wide)) for piece in pieces)
                for pieces in weights)
        return list(rows) if lazy else [list(row) for row in rows]

    def encode_region_weights(self, weights: npt.NDArray[np.float64], regions: int) -> list[list[Any]]:
        """Plaintext weight pieces ``[accumulator][chunk]`` of ``weights`` ``(C, chunks, block)``:
        accumulator ``a`` carries class :func:`region_class` ``(a, k)`` in region ``k``."""
        lay = self._wide
        return [
            [
                self._encode_top(self._region_tiles(weights, regions, [
                    (k, region_class(a, k, regions, lay.classes), t) for k in range(regions)
                ]))
                for t in range(lay.chunks)
            ]
            for a in range(-(-lay.classes // regions))
        ]

    def encode_spread_weights(self, weights: npt.NDArray[np.float64], regions: int) -> list[list[list[Any]]]:
        """Plaintext weight pieces ``[accumulator][r][u]`` for bodies spread over ``regions``
        regions (``PEW3``): region ``j`` of ``[a][r][u]`` weighs piece ``u * R + j`` for class
        :func:`region_class` ``(a, j - r)``, so that the product's region ``j``, moved ``r``
        regions down, adds to that class's logit in its own region."""
        lay = self._wide
        return [
            [
                [
                    self._encode_top(self._region_tiles(weights, regions, [
                        (j, region_class(a, (j - r) % regions, regions, lay.classes), u * regions + j)
                        for j in range(regions)
                        if u * regions + j < lay.chunks
                    ]))
                    for u in range(packing.spread_rows(lay, regions))
                ]
                for r in range(regions)
            ]
            for a in range(-(-lay.classes // regions))
        ]

    def _region_tiles(
        self, weights: npt.NDArray[np.float64], regions: int, placed: Sequence[tuple[int, int, int]]
    ) -> npt.NDArray[np.float64]:
        """Slots holding, for each ``(region, class, piece)`` of ``placed``, that class's weight
        piece tiled over every query block of that region; zero elsewhere."""
        lay = self._wide
        size = lay.slots // regions
        values = np.zeros(lay.slots)
        for region, c, t in placed:
            values[region * size : (region + 1) * size] = np.tile(weights[c, t], size // lay.block)
        return values

    def _encode_top(self, values: npt.NDArray[np.float64]) -> Any:
        """``values`` as an NTT plaintext at the top level, at the scale of the prime the first
        rescale drops; ``None`` where all zero (SEAL refuses products that are exactly zero)."""
        if not np.any(values):
            return None
        first = self._seal_ctx.first_context_data()
        pt = sealapi.Plaintext()
        self._encoder.encode(values.tolist(), first.parms_id(), float(first.parms().coeff_modulus()[-1].value()), pt)
        return pt

    # -- primitives --------------------------------------------------------------------------

    def _rotate(self, ct: Any, step: int) -> Any:
        """``ct`` rotated by ``step``: one key switch where the session has that step's key,
        else a sum of the power-of-two steps it has (see :meth:`_route`)."""
        first, *rest = self._route(step)
        out = sealapi.Ciphertext()
        self._evaluator.rotate_vector(ct, first, self._galois, out)
        for part in rest:
            self._evaluator.rotate_vector_inplace(out, part, self._galois)
        return out

    def can_rotate(self, step: int) -> bool:
        """Whether the session's keys make a rotation by ``step`` (see :meth:`_route`)."""
        try:
            self._route(step)
        except ContextError:
            return False
        return True

    def _route(self, step: int) -> tuple[int, ...]:
        """The key steps whose rotations add up to ``step``: ``(step,)`` where the session has
        its key, else greedily the largest power-of-two steps it has. A layout may leave keys
        out (:attr:`crypto.packing.EnsembleLayout.galois_steps`) to make keys smaller."""
        route = self._routes.get(step)
        if route is None:
            degree = self._preset.poly_modulus_degree
            if self._galois.has_key(galois_element(step, degree)):
                route = (step,)
            else:
                rest, parts = step % (degree // 2), []
                for power in reversed([1 << k for k in range((degree // 2).bit_length() - 1)]):
                    if power <= rest and self._galois.has_key(galois_element(power, degree)):
                        parts += [power] * (rest // power)
                        rest %= power
                if rest or not parts:
                    raise ContextError(f"the session's Galois keys cannot rotate by {step}")
                route = tuple(parts)
            self._routes[step] = route
        return route

    def _encode_like(self, values: Any, ct: Any) -> Any:
        pt = sealapi.Plaintext()
        self._encoder.encode(values, ct.parms_id(), ct.scale, pt)
        return pt

    def _mul_rescale(self, a: Any, b: Any, *, rescale: bool = True, relin: bool = True) -> Any:
        out = sealapi.Ciphertext()
        self._evaluator.multiply(a, b, out)
        if relin:
            self._evaluator.relinearize_inplace(out, self._relin)
        if rescale:
            self._evaluator.rescale_to_next_inplace(out)
        return out

    def _encode_to_rescale(self, values: float | list[float], ct: Any) -> Any:
        """``values`` as a plaintext at ``ct``'s level and at the scale of the prime the next
        rescale drops, so ``ct`` times it, rescaled, keeps ``ct``'s scale."""
        data = self._seal_ctx.get_context_data(ct.parms_id())
        pt = sealapi.Plaintext()
        self._encoder.encode(values, ct.parms_id(), float(data.parms().coeff_modulus()[-1].value()), pt)
        return pt

    def _half(self, ct: Any, value: float | list[float] = 0.5, *, memo: dict[Any, Any] | None = None) -> Any:
        """``ct * value``, rescaled (the plaintext at the scale of the prime the rescale drops,
        kept in ``memo`` under the level for the next ciphertext of the same batch)."""
        pt = _memoised(memo, ("half", tuple(ct.parms_id())), lambda: self._encode_to_rescale(value, ct))
        out = sealapi.Ciphertext()
        self._evaluator.multiply_plain(ct, pt, out)
        self._evaluator.rescale_to_next_inplace(out)
        return out

    def _sign_step(
        self,
        z: Any,
        *,
        rescale: bool = True,
        relin: bool = True,
        half: float | list[float] = 0.5,
        memo: dict[Any, Any] | None = None,
    ) -> Any:
        """One composition of f(z) = z (3 - z^2) / 2, depth 2 (the last relinearisation and
        rescale optional: ``relin=False`` leaves a three-part ciphertext, and implies no rescale);
        ``half=0.25`` gives f(z) / 2 at no extra level (the one-hot factors' slope), a slot
        vector ``0.5 * a`` gives ``a * f(z)`` (the secret output scale)."""
        square = self._mul_rescale(z, z)
        self._evaluator.negate_inplace(square)
        key = ("three", tuple(square.parms_id()), square.scale)
        three = _memoised(memo, key, lambda: self._encode_like(3.0, square))
        self._evaluator.add_plain_inplace(square, three)
        return self._mul_rescale(self._half(z, half, memo=memo), square, rescale=rescale and relin, relin=relin)

    def _signs(
        self,
        z: Any,
        *,
        rescale: bool,
        relin: bool = True,
        scale: npt.NDArray[np.float64] | None = None,
        memo: dict[Any, Any] | None = None,
    ) -> Any:
        """``f^(r)(z)`` (times the per-slot ``scale`` if given), or ``f^(r)(z) / 2`` in one-hot
        mode; the last rescale optional, and the last relinearisation (then no rescale either:
        sums of such results are relinearised and rescaled once). Calls that share ``memo`` (a
        batch's comparisons, all with the same ``scale``) encode each constant once per level."""
        for r in range(self._rounds):
            last = r == self._rounds - 1
            half: float | list[float] = 0.5
            if last and self._onehot:
                half = 0.25
            elif last and scale is not None:
                half = (0.5 * scale).tolist()
            z = self._sign_step(z, rescale=rescale or not last, relin=relin or not last, half=half, memo=memo)
        return z

    def _output_scale(self, rng: np.random.Generator, count: int, width: int) -> npt.NDArray[np.float64]:
        """Secret factors in [OUTPUT_SCALE_MIN, 1], one per run of ``width`` slots (a query)."""
        factors = rng.uniform(OUTPUT_SCALE_MIN, 1.0, count)
        out: npt.NDArray[np.float64] = np.repeat(factors, width)[: self._preset.slot_count]
        return out

    def _window_sum(self, z: Any, length: int) -> Any:
        """``sum_{u < length} rot(z, u)`` with power-of-two rotations (:func:`packing.window_plan`)."""
        ev = self._evaluator
        top, extras = packing.window_plan(length)
        kept: dict[int, Any] = {}
        width = 1
        while width < top:
            if width in extras:
                kept[width] = sealapi.Ciphertext()
                ev.negate(z, kept[width])
                ev.negate_inplace(kept[width])  # a copy: SEAL's Python binding has no copy constructor
            ev.add_inplace(z, self._rotate(z, width))
            width *= 2
        for b in extras:
            z = self._rotate(z, b)
            ev.add_inplace(z, kept[b])
        return z

    def _window_product(self, y: Any, length: int, *, rescale: bool = True) -> Any:
        """``prod_{u < length} rot(y, u)`` in every slot, in :func:`packing.window_levels` levels:
        products of 2, 4, ... slots by doubling, then each extra ``b`` of
        :func:`packing.window_plan` lengthens the window (``R = P_b * rot(R, b)``).

        ``y`` comes unrescaled; each rotation acts on a product before its rescale, where the
        scale is a prime larger, so key-switching noise stays negligible (as in the block sums).
        """
        ev = self._evaluator
        top, extras = packing.window_plan(length)
        kept: dict[int, Any] = {}
        width = 1
        while width < top:
            rot = self._rotate(y, width)
            ev.rescale_to_next_inplace(y)
            if width in extras:
                kept[width] = y
            ev.rescale_to_next_inplace(rot)
            y = self._mul_rescale(y, rot, rescale=False)
            width *= 2
        for b in extras:
            rot = self._rotate(y, b)
            ev.rescale_to_next_inplace(rot)
            factor = kept[b]
            ev.mod_switch_to_inplace(factor, rot.parms_id())
            y = self._mul_rescale(factor, rot, rescale=False)
        if rescale:
            ev.rescale_to_next_inplace(y)
        return y

    def _balanced_product(self, factors: list[Any], *, rescale: bool = True) -> Any:
        """Product of rescaled ciphertexts in ``ceil(log2 len)`` levels (an odd one waits a
        level); the last rescale optional."""
        while len(factors) > 1:
            last = len(factors) == 2
            paired = [
                self._mul_rescale(a, b, rescale=rescale or not last)
                for a, b in zip(factors[0::2], factors[1::2], strict=False)
            ]
            if len(factors) % 2:
                waiting = sealapi.Ciphertext()
                self._evaluator.mod_switch_to_next(factors[-1], waiting)
                paired.append(waiting)
            factors = paired
        return factors[0]

    def _flood(
        self,
        ct: Any,
        keep: npt.NDArray[np.bool_],
        rng: np.random.Generator,
        *,
        rescale: bool = False,
        small: float | npt.NDArray[np.float64] | None = None,
        unused: float | None = None,
    ) -> None:
        """Add fresh uniform noise to every slot: as large as the last prime's headroom allows
        outside ``keep`` (no partial results leak; ``unused`` instead, for a reply that keeps
        more primes), :data:`OUTPUT_FLOOD` on the result slots (``small``: another amplitude,
        or one per kept slot in slot order); then re-randomise the ciphertext, and rescale it if
        asked. Where the reply still has a rescale to come (``rescale=True``), the fresh
        encryption's noise is divided by the prime it drops. (At the 2^27 scale of ``n8192-d5``,
        one-hot, the same 150 query ciphertexts: error against the plaintext reference rms
        2.14e-5 this way, 2.15e-5 without any re-randomisation, 2.36e-5 re-randomised after the
        last rescale.)"""
        if unused is None:
            unused = 2.0 ** (self._preset.coeff_mod_bit_sizes[0] - self._preset.global_scale_bits - FLOOD_MARGIN_BITS)
        noise = rng.uniform(-unused, unused, keep.size)
        if small is None:
            small = OUTPUT_FLOOD["onehot" if self._onehot else "scores"]
        noise[keep] = rng.uniform(-1.0, 1.0, int(keep.sum())) * small
        self._evaluator.add_plain_inplace(ct, self._encode_like(noise.tolist(), ct))
        self._rerandomise(ct)
        if rescale:
            self._evaluator.rescale_to_next_inplace(ct)

    def _drop_to_last(self, ct: Any, primes: int = 1) -> None:
        """Switch ``ct`` down to the level of ``primes`` primes (no rescale: same scale, fewer
        bytes), or leave it where it has fewer already."""
        data = level_with(self._seal_ctx.get_context_data(ct.parms_id()), primes)
        if data.parms_id() != ct.parms_id():
            self._evaluator.mod_switch_to_inplace(ct, data.parms_id())

    def _rerandomise(self, ct: Any) -> None:
        """Add a fresh public-key encryption of zero. The flooding hides the decrypted value's
        error; this hides the ciphertext itself: without it the reply's mask part is a
        deterministic function of the query's (which the client chose) and of the owner's
        weights, which a client holding the secret key could study. With it the mask part is
        ``c1 + u * pk1 + e``, pseudorandom under RLWE for the fresh ternary ``u``. SEAL
        encrypts a level up and divides by the prime it drops, so the noise is about one
        rounding (a test checks the decrypted values move by less than 1e-6 at ``n8192-d3``)."""
        zero = sealapi.Ciphertext()
        self._encryptor.encrypt_zero(ct.parms_id(), zero)
        zero.scale = ct.scale  # an encryption of 0 at any scale; SEAL adds only equal scales
        self._evaluator.add_inplace(ct, zero)

    def _babies(self, x: Any, count: int) -> list[Any]:
        """``rot(x, a)`` for ``a < count``, each built from power-of-two rotations (at most
        ``log2(count)`` deep instead of ``a``: key-switching noise adds up along the chain), or
        in a chain of the power-of-two steps the session has keys for."""
        babies = [x]
        for a in range(1, count):
            low = a & -a
            while len(self._route(low)) > 1:  # a step without its own key: build from a nearer baby
                low //= 2
            babies.append(self._rotate(babies[a - low], low))
        return babies

    def _matvec(
        self,
        x: Any,
        plains: Sequence[Any],
        *,
        baby: int,
        giant: int,
        strides: Sequence[int],
        bias: npt.NDArray[np.float64],
    ) -> Any:
        """Diagonal method in baby-step/giant-step form, rotate-and-sum, one rescale, bias.

        With ``late_rescale`` the giant steps and the rotate-and-sum act before the rescale,
        where the ciphertext's scale is a prime larger, so their key-switching noise is
        negligible (needed at small scales such as n8192-d5's 2^27). Otherwise each giant
        step's inner sum is rescaled first, so those rotations run one prime lower (about 40%
        cheaper at n8192-d3, whose 2^37 scale keeps their noise near 1e-7).
        """
        ev = self._evaluator
        babies = self._babies(x, baby)
        acc: Any = None
        late = self.late_rescale
        for b in reversed(range(giant)):
            inner: Any = None
            for a in range(baby):
                plain = plains[a + baby * b]
                if plain is None:
                    continue
                prod = sealapi.Ciphertext()
                ev.multiply_plain(babies[a], plain, prod)
                if inner is None:
                    inner = prod
                else:
                    ev.add_inplace(inner, prod)
            if inner is not None and not late:
                ev.rescale_to_next_inplace(inner)
            if acc is not None:
                acc = self._rotate(acc, baby)
                if inner is not None:
                    ev.add_inplace(acc, inner)
            else:
                acc = inner
        if acc is None:
            raise ContextError("the ensemble's difference matrix is identically zero")
        for stride in strides:
            ev.add_inplace(acc, self._rotate(acc, stride))
        if late:
            ev.rescale_to_next_inplace(acc)
        ev.add_plain_inplace(acc, self._encode_like(bias.tolist(), acc))
        return acc

    def _row_product(self, cts: Sequence[Any], row: Sequence[Any], tmp: Any) -> Any:
        """``sum_i cts[i] * row[i]`` over the non-zero plaintexts (``None`` if there are none);
        ``tmp`` is scratch space."""
        acc: Any = None
        for ct, plain in zip(cts, row, strict=True):
            if plain is None:
                continue
            if acc is None:
                acc = sealapi.Ciphertext()
                self._evaluator.multiply_plain(ct, plain, acc)
            else:
                self._evaluator.multiply_plain(ct, plain, tmp)
                self._evaluator.add_inplace(acc, tmp)
        return acc

    def _spread_product(self, cts: Sequence[Any], moves: Sequence[Sequence[Any]], size: int) -> Any:
        """``sum_r rot(sum_u cts[u] * moves[r][u], r * size)``, rescaled. Each product is
        rescaled before it moves: a rotation at the top level costs about twice as much."""
        acc: Any = None
        tmp = sealapi.Ciphertext()
        for row in reversed(moves):
            for step in self._route(size) if acc is not None else ():
                self._evaluator.rotate_vector_inplace(acc, step, self._galois)
            part = self._row_product(cts, row, tmp)
            if part is None:
                continue
            self._evaluator.rescale_to_next_inplace(part)
            if acc is None:
                acc = part
            else:
                self._evaluator.add_inplace(acc, part)
        return acc

    # -- single layout -----------------------------------------------------------------------

    def differences(self, x: Any, weights: SingleWeights) -> Any:
        """Scaled pairwise differences ``(L_i - L_j) / bound`` in slots ``i * P + j``."""
        lay = self._layout
        if self._hidden:
            s = self._matvec(
                x,
                weights.hidden_diagonals,
                baby=lay.hidden_baby,
                giant=lay.hidden_giant,
                strides=lay.hidden_sum_strides,
                bias=weights.hidden_bias,
            )
            x = self._mul_rescale(s, s)  # s^2, replicated with period m1 over lane slots [0, n]
        return self._matvec(
            x, weights.diagonals, baby=lay.baby, giant=lay.giant, strides=lay.sum_strides, bias=weights.bias
        )

    def single(self, ct: Any, weights: SingleWeights) -> Any:
        """The reply to one single-layout query ciphertext: win-count sums or one-hot values
        in the result slots, every slot flooded."""
        # The block sums and the product tree rotate before the last rescale (less noise).
        rng = np.random.default_rng(secrets.randbits(128))
        lay = self._layout
        scale = None if self._onehot else self._output_scale(rng, lay.queries_per_ciphertext, lay.lane)
        if scale is not None and weights.signs is not None:
            scale = scale * weights.signs  # block i: +-1 on class i's pairs, 0 elsewhere
        z = self._signs(self.differences(ct, weights), rescale=False, scale=scale)
        if self._onehot:
            # (1 + s) / 2 in comparison slots, 1 in padded and diagonal ones (s = 0 there).
            self._evaluator.add_plain_inplace(z, self._encode_like(weights.onehot_constants, z))
            z = self._window_product(z, self._layout.stride, rescale=False)
        else:
            z = self._window_sum(z, self._layout.stride)
        self._flood(z, weights.keep, rng, rescale=True)
        return z

    # -- label output (two rounds, see crypto.private_inference.label) -----------------------

    def label_round1(
        self, ct: Any, weights: SingleWeights, mask: npt.NDArray[np.float64], factors: npt.NDArray[np.float64]
    ) -> Any:
        """Round 1: the pairwise differences, picked and scaled by ``mask`` (one real pair per
        block, times its secret factor), each block summed into its first slot. The reply keeps
        the two last primes (its values reach ``2^MASK_BITS``); the first slot of block ``q``
        gets noise of ``factors[q] * LABEL_FLOOD``, every other slot of ``2^LABEL_UNUSED_BITS``
        (partial sums of at most two masked values, ``2^(MASK_BITS + 1)``)."""
        rng = np.random.default_rng(secrets.randbits(128))
        lay = self._layout
        z = self._half(self.differences(ct, weights), mask.tolist())
        z = self._window_sum(z, lay.rows)
        self._drop_to_last(z, primes=2)
        keep = np.zeros(lay.slots, dtype=bool)
        keep[np.arange(factors.size) * lay.rows] = True  # in pair order, as factors
        self._flood(z, keep, rng, small=factors * LABEL_FLOOD, unused=2.0**LABEL_UNUSED_BITS)
        return z

    def label_round2(self, ct: Any, mask: npt.NDArray[np.float64], strides: Sequence[int], classes: int) -> Any:
        """Round 2: the client's selection times ``mask`` (block ``a``'s slot of class
        ``pi(a)``), the blocks summed into the first (``strides``): the real label's slot holds
        the selection's 1. The first ``classes`` slots get :data:`OUTPUT_FLOOD` ``["label"]``."""
        rng = np.random.default_rng(secrets.randbits(128))
        y = self._half(ct, mask.tolist())
        for stride in strides:
            self._evaluator.add_inplace(y, self._rotate(y, stride))
        self._drop_to_last(y)
        keep = np.zeros(self._layout.slots, dtype=bool)
        keep[:classes] = True
        self._flood(y, keep, rng, small=OUTPUT_FLOOD["label"])
        return y

    def _weighted_sum(self, cts: Sequence[Any], weights: Sequence[npt.NDArray[np.float64] | None]) -> Any:
        """``sum_i cts[i] * weights[i]`` (slot-wise plaintext weights, ``None`` for zero ones),
        rescaled once: the weights are encoded at the scale of the prime the rescale drops, so
        the result keeps the ciphertexts' scale. ``None`` where every weight is ``None``."""
        acc: Any = None
        tmp = sealapi.Ciphertext()
        for ct, weight in zip(cts, weights, strict=True):
            if weight is None or ct is None:  # a zero weight, or an all-zero logit
                continue
            pt = self._encode_to_rescale(weight.tolist(), ct)
            if acc is None:
                acc = sealapi.Ciphertext()
                self._evaluator.multiply_plain(ct, pt, acc)
            else:
                self._evaluator.multiply_plain(ct, pt, tmp)
                self._evaluator.add_inplace(acc, tmp)
        if acc is not None:
            self._evaluator.rescale_to_next_inplace(acc)
        return acc

    def _stagger(self, cts: Sequence[Any]) -> Any:
        """``sum_i rot(cts[i], i)`` in Horner form (one rotation by 1 per ciphertext; ``None``
        entries count as zero)."""
        acc: Any = None
        for ct in reversed(cts):
            if acc is not None:
                acc = self._rotate(acc, 1)
            if ct is None:
                continue
            if acc is None:
                acc = ct
            else:
                self._evaluator.add_inplace(acc, ct)
        if acc is None:
            raise ContextError("nothing to gather")
        return acc

    def label_wide_round1(
        self,
        logits: Sequence[Any],
        selections: Sequence[Sequence[npt.NDArray[np.float64] | None]],
        biases: Sequence[npt.NDArray[np.float64]] | None,
        gap_factors: Sequence[npt.NDArray[np.float64]],
        keep: npt.NDArray[np.bool_],
        amplitudes: npt.NDArray[np.float64],
    ) -> Any:
        """Round 1 of the label output for a wide batch: from every class's logit (query ``b``
        in slot ``b * block``, :meth:`wide_logits` or :meth:`region_logits`), each query's
        anonymous class ``a`` (``selections[a][c]``: 1 in slot ``b * block`` where query ``b``'s
        permutation sends ``a`` to ``c``) plus its bias (``None``: the logits carry theirs),
        gathered as ``P`` (class ``a`` in slot ``b * block - a``); then for each gap ``g`` the
        differences ``E_g = rot(P, g) - P`` times their secret factors (``gap_factors``, 0 where
        ``E_g`` holds no pair), packed into one reply ciphertext as
        :func:`crypto.private_inference.label.wide_pairs` lays them out."""
        rng = np.random.default_rng(secrets.randbits(128))
        anonymous = []
        for a, row in enumerate(selections):
            acc = self._weighted_sum(logits, row)
            if acc is None:
                raise ContextError("the wide circuit has no logits to compare")
            if biases is not None:
                self._evaluator.add_plain_inplace(acc, self._encode_like(biases[a].tolist(), acc))
            anonymous.append(acc)
        gathered = self._stagger(anonymous)
        del anonymous
        gaps, moved = [], gathered
        for factors in gap_factors:
            moved = self._rotate(moved, 1)
            diff = sealapi.Ciphertext()
            self._evaluator.sub(moved, gathered, diff)
            gaps.append(self._weighted_sum([diff], [factors]))
        classes = len(selections)
        reply = gaps[-1]
        for gap in range(classes - 2, 0, -1):  # gap g ends up moved by sum_{h < g} (C - 1 - h)
            reply = self._rotate(reply, classes - 1 - gap)
            self._evaluator.add_inplace(reply, gaps[gap - 1])
        self._drop_to_last(reply, primes=2)  # values reach 2^MASK_BITS (n8192-d3: one prime, 2^14 of room)
        self._flood(reply, keep, rng, small=amplitudes[keep])
        return reply

    def label_wide_round2(
        self, ct: Any, shifts: Sequence[npt.NDArray[np.float64] | None], keep: npt.NDArray[np.bool_]
    ) -> Any:
        """Round 2 for a wide batch: the client's selection (1 in slot ``b * block + a*`` of each
        query's anonymous winner) times ``shifts[s]`` (1 in slot ``b * block + a`` where
        ``a + perm_b(a) == s``), each product moved left by ``s``: anonymous class ``a`` of
        query ``b`` lands on slot ``b * block - perm_b(a)``, so the reply holds 1 on each
        query's label (class ``c`` in slot ``b * block - c``) and 0 elsewhere."""
        rng = np.random.default_rng(secrets.randbits(128))
        reply = self._stagger([self._weighted_sum([ct], [mask]) for mask in shifts])
        self._drop_to_last(reply)
        self._flood(reply, keep, rng, small=OUTPUT_FLOOD["label"])
        return reply

    # -- wide layout -------------------------------------------------------------------------

    def wide_logits(self, cts: Iterable[Any], plains: Iterable[Iterable[Any]]) -> list[Any]:
        """Scaled averaged logit of every class, query ``b`` in slot ``b * block``.

        Chunk by chunk: each ciphertext meets every class's piece and is then dropped, so only
        the class accumulators stay alive (``cts`` may load them as they are reached, and
        ``plains`` encode the pieces as they are reached, see :meth:`encode_wide_weights`).
        """
        ev, lay = self._evaluator, self._wide
        rows = [iter(row) for row in plains]
        out: list[Any] = [None] * len(rows)
        tmp = sealapi.Ciphertext()
        for ct in cts:
            for c, row in enumerate(rows):
                plain = next(row)
                if plain is None:
                    continue
                if out[c] is None:
                    out[c] = sealapi.Ciphertext()
                    ev.multiply_plain(ct, plain, out[c])
                else:
                    ev.multiply_plain(ct, plain, tmp)
                    ev.add_inplace(out[c], tmp)
        for acc in out:
            if acc is not None:
                ev.rescale_to_next_inplace(acc)
                for stride in lay.sum_strides:
                    ev.add_inplace(acc, self._rotate(acc, stride))
        return out

    def wide(
        self, cts: Iterable[Any], count: int, plains: Iterable[Iterable[Any]], bias: npt.NDArray[np.float64]
    ) -> list[Any]:
        """One reply ciphertext per class for a wide batch of ``count`` queries in one region."""
        ev, lay = self._evaluator, self._wide
        logits = self.wide_logits(cts, plains)
        c = lay.classes
        rng = np.random.default_rng(secrets.randbits(128))
        scale = None if self._onehot else self._output_scale(rng, lay.capacity, lay.block)
        signs: dict[tuple[int, int], Any] = {}
        memo: dict[Any, Any] = {}
        keep = packing.wide_output_mask(lay, count)
        replies = []
        # Class by class: class i's reply as soon as its last pairs (i, j > i) are compared,
        # then the pairs (k < i, i), which both their classes have used, are dropped (at 10
        # classes at most 25 comparisons alive instead of 45), and so is class i's logit.
        # Win counts add up a class's C - 1 signs unrelinearised (three parts each), then
        # relinearise and rescale once: C key switches instead of C (C - 1) / 2.
        each = self._onehot or not self.sum_signs_unrelinearised  # every sign relinearised, rescaled
        for i in range(c):
            for j in range(i + 1, c):
                a, b = logits[i], logits[j]
                if a is None and b is None:
                    raise ContextError("two classes have all-zero weights; the wide circuit cannot compare them")
                diff = sealapi.Ciphertext()
                if a is None:
                    ev.negate(b, diff)
                elif b is None:
                    ev.negate(a, diff)  # a copy: SEAL's Python binding has no copy constructor
                    ev.negate_inplace(diff)
                else:
                    ev.sub(a, b, diff)
                ev.add_plain_inplace(diff, self._encode_like(float(bias[i] - bias[j]), diff))
                signs[(i, j)] = self._signs(diff, rescale=each, relin=each, scale=scale, memo=memo)
            if self._onehot:
                acc = self._onehot_wide(signs, i, rescale=False)
                pending = c > 2  # a product of one factor (two classes) is rescaled already
            else:
                acc = self._wins_wide(signs, i)
                pending = not each
                if pending:
                    ev.relinearize_inplace(acc, self._relin)
            self._flood(acc, keep, rng, rescale=pending)
            replies.append(acc)
            logits[i] = None
            for k in range(i):
                del signs[(k, i)]
        return replies

    def _wins_wide(self, signs: dict[tuple[int, int], Any], i: int) -> Any:
        """``sum_{j != i} s_ij`` from the signs of the pairs ``i < j`` (``s_ji = -s_ij``)."""
        ev = self._evaluator
        acc: Any = None
        for j in range(self._wide.classes):
            if j == i:
                continue
            term = signs[(min(i, j), max(i, j))]
            if acc is None:
                acc = sealapi.Ciphertext()
                ev.negate(term, acc)  # -s_ji = s_ij for j < i; negated twice (a copy) for j > i
                if j > i:
                    ev.negate_inplace(acc)
            elif j > i:
                ev.add_inplace(acc, term)
            else:
                ev.sub_inplace(acc, term)
        return acc

    def _onehot_wide(self, halves: dict[tuple[int, int], Any], i: int, *, rescale: bool = True) -> Any:
        """``prod_{j != i} (1 + s_ij) / 2`` from ``s_ij / 2`` of the pairs ``i < j`` (the last
        rescale optional, as in :meth:`_balanced_product`)."""
        ev = self._evaluator
        factors = []
        for j in range(self._wide.classes):
            if j == i:
                continue
            factor = sealapi.Ciphertext()
            if j > i:
                ev.negate(halves[(i, j)], factor)
                ev.negate_inplace(factor)  # a copy: SEAL's Python binding has no copy constructor
            else:
                ev.negate(halves[(j, i)], factor)  # s_ij / 2 = -s_ji / 2
            ev.add_plain_inplace(factor, self._encode_like(0.5, factor))
            factors.append(factor)
        return self._balanced_product(factors, rescale=rescale)

    # -- region layout (partial wide batches, PEW2 and PEW3) ---------------------------------

    def _region_accumulators(
        self, cts: Sequence[Any], regions: int, plains: Sequence[Any], bias: npt.NDArray[np.float64], *, spread: bool
    ) -> list[Any]:
        """Accumulator ``a``: class ``a * R + k``'s scaled logit plus its bias in region ``k``
        (:func:`region_class`), query ``b`` in slot ``k * size + b * block``; rescaled once."""
        ev, lay = self._evaluator, self._wide
        size = lay.slots // regions
        accs: list[Any] = []
        tmp = sealapi.Ciphertext()
        for a, row in enumerate(plains):
            acc = self._spread_product(cts, row, size) if spread else self._row_product(cts, row, tmp)
            if acc is None:
                raise ContextError("a group of classes has all-zero weights; the wide circuit cannot compare them")
            if not spread:
                ev.rescale_to_next_inplace(acc)
            for stride in lay.sum_strides:
                ev.add_inplace(acc, self._rotate(acc, stride))
            shift = np.zeros(lay.slots)
            for k in range(regions):
                shift[k * size : (k + 1) * size] = bias[region_class(a, k, regions, lay.classes)]
            ev.add_plain_inplace(acc, self._encode_like(shift.tolist(), acc))
            accs.append(acc)
        return accs

    def region_logits(
        self, cts: Sequence[Any], regions: int, plains: Sequence[Any], bias: npt.NDArray[np.float64], *, spread: bool
    ) -> list[Any]:
        """Every class's scaled logit plus its bias for a partial batch in ``regions`` regions
        (PEW2, or PEW3 with ``spread``), each moved to region 0: query ``b`` in slot ``b * block``
        (the other regions hold other classes)."""
        accs = self._region_accumulators(cts, regions, plains, bias, spread=spread)
        size = self._wide.slots // regions
        out = []
        for c in range(self._wide.classes):
            a, k = divmod(c, regions)
            out.append(accs[a] if k == 0 else self._rotate(accs[a], k * size))
        return out

    def regions(
        self,
        cts: Sequence[Any],
        count: int,
        regions: int,
        plains: Sequence[Any],
        bias: npt.NDArray[np.float64],
        *,
        spread: bool = False,
    ) -> list[Any]:
        """Win counts of a partial batch replicated into ``regions`` regions (PEW2 bodies), or
        spread over them (PEW3, ``plains`` of :meth:`encode_spread_weights`).

        Accumulator ``a`` holds class ``a * R + k``'s scaled logit in region ``k`` (the last one
        repeats its classes, :func:`region_class`); pairs are
        differences of an accumulator and a region-rotated one (``R`` pairs per ciphertext),
        so the linear stage, the rotate-and-sums and the sign evaluations all shrink by about
        ``R``. A spread body's accumulator is ``sum_r rot(P_r, r * size)`` (Horner, ``R - 1``
        region moves), ``P_r`` the products with ``plains[a][r]``. Each class's win count is
        then gathered into region 0, where the client reads it (the reply is the same as for a
        one-region batch).
        """
        ev, lay = self._evaluator, self._wide
        size = lay.slots // regions
        classes = lay.classes
        accs = self._region_accumulators(cts, regions, plains, bias, spread=spread)
        rotated: dict[tuple[int, int], Any] = {}

        def moved(b: int, r: int) -> Any:  # accumulator b with region k + r moved to region k
            if r == 0:
                return accs[b]
            if (b, r) not in rotated:  # one rotation from the move by r less its lowest bit
                low = r & -r
                rotated[(b, r)] = self._rotate(moved(b, r - low), low * size)
            return rotated[(b, r)]

        rng = np.random.default_rng(secrets.randbits(128))
        scale = np.tile(np.repeat(rng.uniform(OUTPUT_SCALE_MIN, 1.0, lay.capacity // regions), lay.block), regions)
        differences, where = region_comparisons(classes, regions)
        signs: list[Any] = []
        memo: dict[Any, Any] = {}
        for a, b, r in differences:
            diff = sealapi.Ciphertext()
            ev.sub(accs[a], moved(b, r), diff)
            # Rescaled now: gathering them into region 0 then rotates at the last level,
            # the cheapest key switch (its noise, at the 2^37 scale, is far below the flood).
            signs.append(self._signs(diff, rescale=True, scale=scale, memo=memo))
        keep = packing.wide_output_mask(lay, count)
        replies = []
        for i in range(classes):
            # T_k: class i's comparisons that sit in region k; then Horner over the regions,
            # T_0 + rot(T_1 + rot(T_2 + ..., size), size), one region-size rotation per region.
            parts: list[Any] = [None] * regions
            for j in range(classes):
                if j == i:
                    continue
                idx, k, sign = where[(min(i, j), max(i, j))]
                positive = sign > 0 if i < j else sign < 0  # s_ij = sign * value, s_ji = -s_ij
                if parts[k] is None:
                    parts[k] = sealapi.Ciphertext()
                    ev.negate(signs[idx], parts[k])
                    if positive:
                        ev.negate_inplace(parts[k])  # a copy: SEAL's Python binding has no copy constructor
                elif positive:
                    ev.add_inplace(parts[k], signs[idx])
                else:
                    ev.sub_inplace(parts[k], signs[idx])
            out: Any = None
            for k in reversed(range(regions)):
                if out is not None:
                    out = self._rotate(out, size)
                if parts[k] is not None:
                    if out is None:
                        out = parts[k]
                    else:
                        ev.add_inplace(out, parts[k])
            if out is None:
                raise ContextError("a class has no comparisons")
            self._flood(out, keep, rng)
            replies.append(out)
        return replies
