"""The label output: two rounds in which the client learns the ensemble's label and nothing else.

A polynomial cannot make the outputs sharp at the depths a session affords (separating gaps
``delta`` takes ~``log2(1/delta)`` levels, see :mod:`crypto.argmax`), so this output mode asks
the client one question in between, in the manner of the interactive argmax of Bost et al.
("Machine learning classification over encrypted data", NDSS 2015):

1. **Round 1.** The server computes every pairwise difference ``d_ij = (L_i - L_j) / bound``
   (the pair rows of :mod:`crypto.packing`, replicated in every block of ``m`` slots), draws
   a secret permutation ``pi`` of the classes and one secret factor ``rho_q`` per pair,
   log-uniform in ``[1, 2^MASK_BITS]``, and returns, for every *anonymous* pair ``q = (a, b)``
   with ``a < b``, the value ``rho_q * (d_{pi(a) pi(b)} + u_q)`` in slot ``q * m`` (one
   plaintext mask picks block ``q``'s row of the real pair, a window sum of ``m`` slots brings
   it to the block's first slot); ``u_q`` is uniform flooding noise. The reply carries a
   fresh ticket; the server keeps ``pi`` under it.
2. **The client** reads the signs: a tournament between anonymous classes, whose winner
   ``a*`` is the anonymous name of the label. It encrypts a selection, ones in block ``a*``
   (``P`` slots, ``P`` = classes rounded up to a power of two), at the level of
   :data:`SELECTION_PRIMES` primes (round 2 needs one level), and sends it with the ticket.
3. **Round 2.** The server multiplies the selection by the mask with a 1 in slot
   ``a * P + pi(a)`` of every block ``a`` and sums the blocks: slot ``t`` of the result is 1
   for ``t = pi(a*)``, the real label, and 0 elsewhere (flooded). The ticket is used up.

Wide batches (slots index queries, query ``b`` in block ``b``; a partial batch in regions,
whose logits the server first moves into the first region) follow the same steps with one
permutation and one set of factors per query: every anonymous class's logit is picked from
the class logits by per-slot masks and gathered as ``P`` (class ``a`` at slot ``b * block -
a``); the differences ``rot(P, g) - P`` of each gap ``g`` hold the pairs ``(a - g, a)``, and are
masked by their factors and packed into one reply (:func:`wide_pairs`). The client's selection
has a 1 in slot ``b * block + a*``; round 2 multiplies it by one mask per shift ``s`` (slots
``b * block + a`` with ``a + pi_b(a) = s``) and moves each product left by ``s``, which sends
anonymous class ``a`` to slot ``b * block - pi_b(a)``: the label's slot (:func:`wide_slots`).
Each round is one ciphertext each way (the first round's body aside).

What the client learns. Round 1: the signs of a total order of anonymous classes (nothing,
as ``pi`` is uniform and secret) and, per pair, the magnitude of a difference times an
independent secret factor spanning ``MASK_BITS`` bits (so ``log2 |d|`` within that window,
never which classes it belongs to). Round 2: the label, as an exact one-hot vector. This holds
for a client that follows the protocol (semi-honest, as for the flooding of the other modes);
a client that sends another selection in round 2 (say weights ``2^a`` on block ``a``) can read
``pi`` for that query, and with it the order of the classes for its own query with masked
gaps, which is what the win counts of ``scores`` reveal anyway. A ticket serves one selection
only, so no query's ``pi`` can be probed twice.

What it costs. One level after the heads (two in wide batches: the selection of anonymous
classes, then the factors; ``n8192-d3`` for linear heads, ``n8192-d5`` for hidden ones, which
the wide layout does not serve), no sign polynomial, the win counts' keys, and a second
request. The pair blocks must fit the ciphertext: ``C (C - 1) / 2`` blocks of ``m`` slots (11
classes at ``N = 8192``, :func:`max_classes`); wide batches need ``C (C - 1) / 2`` slots per
query block (:func:`crypto.private_inference.spec.label_wide_refusal`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from crypto import argmax, packing
from crypto.ckks import CiphertextError

__all__ = [
    "MASK_BITS",
    "PENDING_MAX",
    "PENDING_TTL_SECONDS",
    "REPLY_MAGIC",
    "SELECTION_PRIMES",
    "SELECT_MAGIC",
    "TICKET_BYTES",
    "PendingTickets",
    "anonymous_pairs",
    "check_classes",
    "decode_ticketed",
    "draw",
    "draw_wide",
    "encode_ticketed",
    "max_classes",
    "pair_count",
    "round1_keep",
    "round1_mask",
    "round2_mask",
    "round2_strides",
    "selection_slots",
    "tournament",
    "wide_biases",
    "wide_gap_factors",
    "wide_pair_slots",
    "wide_pairs",
    "wide_selection_slots",
    "wide_shift_masks",
    "wide_selections",
    "wide_slots",
]

#: A selection is encrypted at the level of this many primes, not the top: round 2 takes one
#: level, and its products and rotations cost less there (the selection is smaller, too).
SELECTION_PRIMES = 2
#: A round-1 reply: magic, ticket, ciphertext message.
REPLY_MAGIC = b"PEL1"
#: A round-2 body: magic, the round-1 reply's ticket, the selection ciphertext.
SELECT_MAGIC = b"PES1"
TICKET_BYTES = 16
#: The secret factor of each anonymous pair is log-uniform in [1, 2^MASK_BITS].
MASK_BITS = 12
#: Round-1 answers a session keeps awaiting their selection (the oldest are dropped beyond).
PENDING_MAX = 256
#: How long a round-1 answer waits for its selection.
PENDING_TTL_SECONDS = 600.0

FloatArray = npt.NDArray[np.float64]


def pair_count(classes: int) -> int:
    """Pairs ``i < j`` of ``classes`` classes."""
    return classes * (classes - 1) // 2


def max_classes(slots: int) -> int:
    """Most classes whose ``C (C - 1) / 2`` pair blocks of ``m`` slots fit ``slots``."""
    return argmax.max_label_classes(slots)


def check_classes(classes: int, slots: int) -> None:
    """Raise :class:`~crypto.packing.LayoutError` where the round-1 blocks do not fit."""
    if classes > max_classes(slots):
        raise packing.LayoutError(
            f"the label output serves at most {max_classes(slots)} classes at {slots} slots, not {classes}: "
            f"its {pair_count(classes)} pair blocks do not fit one ciphertext",
            hint="use output 'scores' or 'onehot', or fewer classes",
        )


def anonymous_pairs(classes: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The anonymous pairs ``(a, b)``, ``a < b``, in slot order (that of :func:`crypto.packing.pair_rows`)."""
    a, b = np.triu_indices(classes, k=1)
    return a.astype(np.int64), b.astype(np.int64)


def round1_mask(layout: packing.EnsembleLayout, perm: npt.NDArray[np.int64], factors: FloatArray) -> FloatArray:
    """Slot weights of round 1: in block ``q`` (anonymous pair ``(a, b)``) the real pair's row
    ``pair_rows[pi(a), pi(b)]`` times ``+-factors[q]`` (minus where ``pi(a) > pi(b)``: the row
    holds ``d`` of the smaller class first), 0 everywhere else."""
    if not layout.pairs:
        raise packing.LayoutError("the label output reads the pair rows")
    c, m = layout.classes, layout.rows
    check_classes(c, layout.slots)
    rows = packing.pair_rows(c)
    a, b = anonymous_pairs(c)
    real_a, real_b = perm[a], perm[b]
    out = np.zeros(layout.slots)
    slots = np.arange(a.size) * m + rows[real_a, real_b]
    out[slots] = np.where(real_a < real_b, 1.0, -1.0) * factors
    return out


def round1_keep(layout: packing.EnsembleLayout) -> npt.NDArray[np.bool_]:
    """The slots a round-1 reply is read from: the first of each pair block."""
    keep = np.zeros(layout.slots, dtype=bool)
    keep[np.arange(pair_count(layout.classes)) * layout.rows] = True
    return keep


def _block(classes: int) -> int:
    return 1 << max(0, (classes - 1).bit_length())


def round2_mask(classes: int, slots: int, perm: npt.NDArray[np.int64]) -> FloatArray:
    """Slot weights of round 2: a 1 in slot ``a * P + pi(a)`` of every anonymous block ``a``."""
    block = _block(classes)
    out = np.zeros(slots)
    out[np.arange(classes) * block + perm] = 1.0
    return out


def round2_strides(classes: int) -> tuple[int, ...]:
    """Rotations that add the ``P`` blocks of round 2 into the first: ``P, 2 P, ..., P^2 / 2``."""
    block = _block(classes)
    return tuple(block << k for k in range(max(0, (block - 1).bit_length())))


def selection_slots(classes: int, slots: int, winner: int) -> FloatArray:
    """The client's round-2 plaintext: ones in anonymous block ``winner`` (its first ``C`` slots)."""
    if not 0 <= winner < classes:
        raise ValueError(f"winner must lie in [0, {classes})")
    out = np.zeros(slots)
    start = winner * _block(classes)
    out[start : start + classes] = 1.0
    return out


def tournament(
    values: FloatArray, classes: int, pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
) -> int:
    """The anonymous winner of round 1's decrypted pair values (value ``q`` of pair
    ``(a, b)``, by default in :func:`anonymous_pairs` order: positive where ``a`` beats
    ``b``): the class with most wins; among equals (a cycle, where flooding noise flipped a
    near tie) the first."""
    vals = np.asarray(values, dtype=np.float64)
    a, b = anonymous_pairs(classes) if pairs is None else pairs
    if vals.shape != (a.size,):
        raise ValueError(f"expected {a.size} pair values, got {vals.shape}")
    wins = np.zeros(classes, dtype=np.int64)
    np.add.at(wins, np.where(vals > 0, a, b), 1)
    return int(np.argmax(wins))


# -- the wide layout: query b's items in slots b * block - i --------------------------------


def wide_slots(layout: packing.WideLayout, count: int, items: int) -> npt.NDArray[np.int64]:
    """``(count, items)`` slot of class ``i`` of query ``b`` in a round-2 wide reply:
    ``b * block - i`` (cyclic), where :meth:`~crypto.private_inference.circuits.Circuit.label_wide_round2`
    leaves it."""
    if items > layout.block:
        raise packing.LayoutError(f"{items} items per query do not fit wide blocks of {layout.block} slots")
    b = np.arange(count)[:, None] * layout.block
    out: npt.NDArray[np.int64] = (b - np.arange(items)[None, :]) % layout.slots
    return out


def wide_selections(
    perms: npt.NDArray[np.int64], layout: packing.WideLayout
) -> list[list[FloatArray | None]]:
    """``[a][c]``: 1 in slot ``b * block`` where query ``b``'s permutation sends anonymous class
    ``a`` to class ``c`` (``None`` where no query does)."""
    count, classes = perms.shape
    out: list[list[FloatArray | None]] = []
    for a in range(classes):
        row: list[FloatArray | None] = []
        for c in range(classes):
            hits = np.flatnonzero(perms[:, a] == c)
            if hits.size:
                mask = np.zeros(layout.slots)
                mask[hits * layout.block] = 1.0
                row.append(mask)
            else:
                row.append(None)
        out.append(row)
    return out


def wide_biases(perms: npt.NDArray[np.int64], bias: FloatArray, layout: packing.WideLayout) -> list[FloatArray]:
    """Per anonymous class ``a``: query ``b``'s bias of class ``perm_b(a)`` in slot ``b * block``."""
    count, classes = perms.shape
    out = []
    for a in range(classes):
        vec = np.zeros(layout.slots)
        vec[np.arange(count) * layout.block] = np.asarray(bias, dtype=np.float64)[perms[:, a]]
        out.append(vec)
    return out


def wide_pairs(classes: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where round 1 of a wide batch leaves each anonymous pair: ``(offsets, first, second)``,
    pair ``(first, second)`` (``first < second``, the value ``A_first - A_second``) of query
    ``b`` in slot ``b * block - offset``. The circuit gathers the anonymous classes into
    ``P`` (class ``a`` at offset ``a``), takes ``E_g = rot(P, g) - P`` for each gap ``g``
    (pairs ``(a - g, a)`` at offset ``a``) and packs the gaps together, gap ``g`` moved by
    ``R_g = sum_{h < g} (C - 1 - h)``: offsets 1 .. C (C - 1) / 2, each once."""
    offsets, first, second = [], [], []
    moved = 0
    for gap in range(1, classes):
        for a in range(gap, classes):
            offsets.append(a + moved)
            first.append(a - gap)
            second.append(a)
        moved += classes - 1 - gap
    return (np.array(offsets, dtype=np.int64), np.array(first, dtype=np.int64), np.array(second, dtype=np.int64))


def wide_pair_slots(layout: packing.WideLayout, count: int) -> npt.NDArray[np.int64]:
    """``(count, pairs)`` slot of each pair of :func:`wide_pairs` in a round-1 wide reply."""
    offsets, _, _ = wide_pairs(layout.classes)
    if offsets.size and offsets.max() > layout.block:
        raise packing.LayoutError(
            f"{offsets.size} class pairs per query do not fit wide blocks of {layout.block} slots")
    out: npt.NDArray[np.int64] = (np.arange(count)[:, None] * layout.block - offsets[None, :]) % layout.slots
    return out


def wide_gap_factors(factors: FloatArray, layout: packing.WideLayout) -> list[FloatArray]:
    """Round 1's secret factors ``(count, pairs)`` (pairs in :func:`wide_pairs` order) as one
    mask per gap ``g``: pair ``(a - g, a)``'s factor in slot ``b * block - a`` of ``E_g``, 0
    where ``a < g`` (there ``E_g`` holds ``-A_a`` alone)."""
    count = factors.shape[0]
    _, first, second = wide_pairs(layout.classes)
    out = []
    for gap in range(1, layout.classes):
        mask = np.zeros(layout.slots)
        for p in np.flatnonzero(second - first == gap):
            mask[(np.arange(count) * layout.block - second[p]) % layout.slots] = factors[:, p]
        out.append(mask)
    return out


def wide_shift_masks(perms: npt.NDArray[np.int64], layout: packing.WideLayout) -> list[FloatArray | None]:
    """Round 2's masks for a wide batch: ``[s]`` has a 1 in slot ``b * block + a`` where
    ``a + perm_b(a) == s`` (``s < 2 C - 1``; ``None`` where empty), so moving its product with
    the selection left by ``s`` takes anonymous class ``a`` of query ``b`` to slot
    ``b * block - perm_b(a)``: the real class's slot of :func:`wide_slots`."""
    count, classes = perms.shape
    base = np.arange(count)[:, None] * layout.block + np.arange(classes)[None, :]
    shift = np.arange(classes)[None, :] + perms
    out: list[FloatArray | None] = []
    for s in range(2 * classes - 1):
        hits = base[shift == s]
        if hits.size:
            mask = np.zeros(layout.slots)
            mask[hits] = 1.0
            out.append(mask)
        else:
            out.append(None)
    return out


def wide_selection_slots(winners: npt.NDArray[np.int64], classes: int, layout: packing.WideLayout) -> FloatArray:
    """The client's round-2 plaintext for a wide batch: 1 in slot ``b * block + winner_b``."""
    winners = np.asarray(winners, dtype=np.int64)
    if np.any((winners < 0) | (winners >= classes)):
        raise ValueError(f"winners must lie in [0, {classes})")
    out = np.zeros(layout.slots)
    out[np.arange(winners.size) * layout.block + winners] = 1.0
    return out


def draw_wide(count: int, classes: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """One secret permutation per query ``(count, C)`` and factors ``(count, pairs)``, as :func:`draw`."""
    perms = np.stack([rng.permutation(classes) for _ in range(count)]).astype(np.int64)
    factors = np.exp2(rng.uniform(0.0, MASK_BITS, (count, pair_count(classes))))
    return perms, factors


def encode_ticketed(magic: bytes, ticket: bytes, message: bytes) -> bytes:
    """``magic || ticket || message`` (a round-1 reply or a round-2 body)."""
    if len(ticket) != TICKET_BYTES:
        raise ValueError(f"a ticket is {TICKET_BYTES} bytes")
    return magic + ticket + message


def decode_ticketed(magic: bytes, data: bytes) -> tuple[bytes, bytes]:
    """``(ticket, message)`` of :func:`encode_ticketed` bytes; :class:`CiphertextError` otherwise."""
    data = bytes(data)
    head = len(magic) + TICKET_BYTES
    if len(data) <= head or data[: len(magic)] != magic:
        kind = "a round-1 reply" if magic == REPLY_MAGIC else "a round-2 selection"
        raise CiphertextError(f"not {kind} of the label output (expected {magic.decode()}, a ticket, a ciphertext)")
    return data[len(magic) : head], data[head:]


class PendingTickets:
    """Secret permutations of round-1 answers awaiting their selection: each ticket serves once,
    for at most ``ttl`` seconds; beyond ``capacity`` the oldest are dropped (their clients get
    a 422 and ask again)."""

    def __init__(self, *, capacity: int = PENDING_MAX, ttl: float = PENDING_TTL_SECONDS) -> None:
        self.capacity, self.ttl = capacity, ttl
        self._items: OrderedDict[bytes, tuple[float, npt.NDArray[np.int64]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def issue(self, perm: npt.NDArray[np.int64]) -> bytes:
        """A fresh ticket for ``perm``."""
        ticket = secrets.token_bytes(TICKET_BYTES)
        with self._lock:
            self._items[ticket] = (time.monotonic() + self.ttl, perm)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return ticket

    def redeem(self, ticket: bytes) -> npt.NDArray[np.int64]:
        """The permutation under ``ticket``, forgotten; :class:`CiphertextError` if unknown,
        used or expired."""
        with self._lock:
            item = self._items.pop(bytes(ticket), None)
            now = time.monotonic()
            for key in [k for k, (expiry, _) in self._items.items() if expiry <= now]:
                del self._items[key]
        if item is None or item[0] <= now:
            raise CiphertextError(
                "unknown, used or expired round-1 ticket: send the query again (each round-1 answer "
                "takes one selection, within its session and "
                f"{int(PENDING_TTL_SECONDS)} s)")
        return item[1]


def draw(classes: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """A secret permutation of the classes and one factor per pair, log-uniform in [1, 2^MASK_BITS]."""
    perm = rng.permutation(classes).astype(np.int64)
    factors = np.exp2(rng.uniform(0.0, MASK_BITS, pair_count(classes)))
    return perm, factors
