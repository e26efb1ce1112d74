"""What both roles read from an ensemble's public spec: head and output mode, sign rounds,
slot layouts and size limits.

    layout = single_layout(art.public_spec())                # packing.EnsembleLayout
    rounds = sign_rounds(art.public_spec())                  # sign compositions that fit

``spec`` is :meth:`crypto.ensemble.EnsembleArtifact.public_spec` (no weights), or a server's
copy of it with the layouts it serves. Nothing here touches keys or ciphertexts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from crypto import argmax, packing
from crypto.ckks import PRESETS, ContextError, get_preset
from crypto.ensemble import HEADS

__all__ = [
    "DEFAULT_MAX_CONTEXT_BYTES",
    "DEFAULT_MAX_QUERY_BYTES",
    "DEFAULT_MAX_WIDE_BYTES",
    "WIDE_KEPT_SLOTS",
    "chunked_lane",
    "client_geometry",
    "compact_rows",
    "encoded_weight_bytes",
    "head_kind",
    "layout_digest",
    "legacy_layout",
    "max_query_bytes",
    "max_wide_bytes",
    "output_mode",
    "pair_layout",
    "refuse_wide",
    "session_layout",
    "session_layouts",
    "sign_rounds",
    "single_layout",
    "size_factor",
    "wide_kept",
    "wide_layout",
]

#: Default size limits at n8192-d3; deeper presets scale them by :func:`size_factor`.
DEFAULT_MAX_CONTEXT_BYTES = 64 << 20
DEFAULT_MAX_QUERY_BYTES = 4 << 20
#: Largest wide-batch body (``chunks`` ciphertexts; ~19.5 MB for K=8 x 384-d at n8192-d3).
DEFAULT_MAX_WIDE_BYTES = 64 << 20


#: Ring slots up to which the wide layout's weights are encoded once per evaluator and kept
#: (N = 8192). Beyond, as for one-hot presets at N = 16384, they would take ~500 MB at
#: K=8 x 384-d and 10 classes, so an evaluator encodes each piece just before its product,
#: every batch (about 1.5 s of an ~8 s batch of 128 queries at n16384-d7). There the client
#: sends no keys beyond the single layout's (the server makes the wide rotations from them)
#: and bodies stay in one region.
WIDE_KEPT_SLOTS = 4096


def wide_kept(spec: dict[str, Any]) -> bool:
    """Whether the wide layout of ``spec`` keeps encoded weights, keys of its own and regions
    (see :data:`WIDE_KEPT_SLOTS`)."""
    return get_preset(str(spec["preset"])).slot_count <= WIDE_KEPT_SLOTS


def size_factor(preset: str) -> int:
    """How many n8192-d3 ciphertexts (or key sets) one of ``preset``'s weighs: ring degree
    times primes, rounded up (16 at n32768-d18, whose keys are ~0.9 GB at K=8 x 384-d)."""
    p, base = get_preset(preset), get_preset("n8192-d3")
    size, base_size = (x.poly_modulus_degree * len(x.coeff_mod_bit_sizes) for x in (p, base))
    return -(-size // base_size)


def max_query_bytes(preset: str) -> int:
    """Largest single-layout ciphertext accepted at ``preset``."""
    return DEFAULT_MAX_QUERY_BYTES * size_factor(preset)


def max_wide_bytes(preset: str) -> int:
    """Largest wide-layout body accepted at ``preset``."""
    return DEFAULT_MAX_WIDE_BYTES * size_factor(preset)


def head_kind(spec: dict[str, Any]) -> str:
    """The spec's head kind (one of :data:`crypto.ensemble.HEADS`); raises :class:`~crypto.packing.LayoutError`."""
    head = str(spec.get("head", "linear"))
    if head not in HEADS:
        raise packing.LayoutError(f"unknown head kind {head!r}; expected one of {list(HEADS)}")
    return head


def output_mode(spec: dict[str, Any]) -> str:
    """The spec's output mode (one of :data:`crypto.argmax.OUTPUTS`); raises :class:`~crypto.packing.LayoutError`."""
    output = str(spec.get("output", "scores"))
    if output not in argmax.OUTPUTS:
        raise packing.LayoutError(f"unknown output mode {output!r}; expected one of {list(argmax.OUTPUTS)}")
    return output


def sign_rounds(spec: dict[str, Any]) -> int:
    """Compositions of the sign polynomial that fit the spec's preset after its heads and the
    output mode's product (see :mod:`crypto.argmax`); raises :class:`ContextError` if none does."""
    preset = get_preset(str(spec["preset"]))
    levels = argmax.HIDDEN_LEVELS if head_kind(spec) == "quadratic_mlp" else argmax.LINEAR_LEVELS
    output, classes = output_mode(spec), len(spec["classes"])
    rounds = argmax.rounds_for(preset.depth, levels, output, classes)
    if output == "label" and preset.depth >= argmax.min_depth(levels, output, classes):
        return 0  # no sign polynomial: two rounds (crypto.private_inference.label)
    if rounds < 1:
        need = argmax.min_depth(levels, output, classes)
        deeper = sorted((p.poly_modulus_degree, p.depth, p.name) for p in PRESETS.values() if p.depth >= need)
        product = f" and the {argmax.onehot_levels(classes)}-level one-hot product" if output == "onehot" else ""
        raise ContextError(
            f"preset {preset.name!r} (depth {preset.depth}) has no depth left for the comparisons{product}; "
            f"{need} levels are needed",
            hint=f"register the ensemble with preset {deeper[0][2]!r}" if deeper else "use output 'scores'",
        )
    return rounds


def compact_rows(spec: dict[str, Any]) -> bool:
    """Whether the single layout reads ``C`` comparisons per class instead of ``P``: linear
    heads with win counts (a window sum) do, and with one-hot outputs where the window product
    of ``C`` slots takes no more levels than the product over ``P``
    (:func:`crypto.packing.window_levels`); unless the spec comes from a server whose layout
    predates them (its ``layout`` gives no ``class_stride`` of ``C``). Hidden heads keep
    power-of-two class blocks."""
    classes = len(spec["classes"])
    if head_kind(spec) != "linear" or output_mode(spec) == "label":
        return False
    if output_mode(spec) == "onehot" and packing.window_levels(classes) > argmax.onehot_levels(classes):
        return False
    served = spec.get("layout")
    return not isinstance(served, dict) or int(served.get("class_stride") or 0) == classes


def pair_layout(spec: dict[str, Any]) -> bool:
    """Whether the single layout computes each class pair once (``packing.make_layout(pairs=
    True)``: half the rows of compact ones for 10 classes): win counts (linear or hidden heads)
    where a query fills the ciphertext, unless the spec comes from a server whose layout predates it
    (a ``layout`` without ``pairs: true``). The label output always reads pair rows (see
    :func:`single_layout`)."""
    if output_mode(spec) == "label":
        return True
    if output_mode(spec) != "scores":
        return False
    served = spec.get("layout")
    if isinstance(served, dict) and not served.get("pairs"):
        return False
    try:
        _single_layout(spec, compact=False, chunked=chunked_lane(spec), pairs=True)
    except packing.LayoutError:
        return False
    return True


def chunked_lane(spec: dict[str, Any]) -> bool:
    """Whether a query that fills the ciphertext is laid out in chunks (see
    :mod:`crypto.packing`): linear heads, unless the spec comes from a server whose layout
    predates the chunked lane (a ``layout`` without ``chunk``). Servers that announce
    ``chunk: 0`` have a layout where it does not apply, and so does the client."""
    if head_kind(spec) != "linear":
        return False
    served = spec.get("layout")
    return not isinstance(served, dict) or "chunk" in served


def single_layout(spec: dict[str, Any]) -> packing.EnsembleLayout:
    """The single (one query per lane) slot layout of ``spec``. The label output reads pair rows
    replicated over the whole ciphertext: where a query does not fill it, its vector is padded
    to every slot (``fill``), and classes beyond :func:`crypto.argmax.max_label_classes`
    raise :class:`~crypto.packing.LayoutError`."""
    if output_mode(spec) == "label":
        classes, slots = len(spec["classes"]), get_preset(str(spec["preset"])).slot_count
        if classes > argmax.max_label_classes(slots):
            raise packing.LayoutError(f"the label output serves at most {argmax.max_label_classes(slots)} "
                                      f"classes at {slots} slots, not {classes}")
        try:
            return _single_layout(spec, compact=False, chunked=chunked_lane(spec), pairs=True)
        except packing.LayoutError:
            return _single_layout(spec, compact=False, chunked=False, pairs=True, fill=True)
    pairs = pair_layout(spec)
    return _single_layout(spec, compact=compact_rows(spec) and not pairs, chunked=chunked_lane(spec), pairs=pairs)


def _single_layout(
    spec: dict[str, Any], *, compact: bool, chunked: bool, pairs: bool = False, fill: bool = False
) -> packing.EnsembleLayout:
    preset = get_preset(str(spec["preset"]))
    hidden = int(spec["hidden"]) if head_kind(spec) == "quadratic_mlp" else 0
    if head_kind(spec) == "quadratic_mlp" and hidden < 1:
        raise packing.LayoutError("hidden-layer heads need hidden >= 1 units")
    return packing.make_layout(
        members=int(spec["members"]),
        dim=int(spec["dim"]),
        classes=len(spec["classes"]),
        slots=preset.slot_count,
        hidden=hidden,
        compact=compact,
        chunked=chunked,
        pairs=pairs,
        fill=fill,
    )


def client_geometry(layout: packing.EnsembleLayout) -> dict[str, int]:
    """What of a single layout the client relies on: how it packs a query (block, ``n``, lane,
    the chunked lane's rows and ``K``) and where it reads the result (class stride). The
    server's baby/giant split is its own; the keys it needs are checked on their own."""
    fields = ("members", "dim", "classes", "slots", "block", "n", "lane", "rows", "chunk", "hidden")
    return {**{f: int(getattr(layout, f)) for f in fields}, "stride": layout.stride}


def layout_digest(layout: packing.EnsembleLayout) -> str:
    """A short digest of :func:`client_geometry`: a client sends it when it opens a session,
    so a server whose layout differs (another version's packing) refuses the session instead
    of answering ciphertexts packed another way with wrong labels."""
    canonical = json.dumps(client_geometry(layout), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def legacy_layout(spec: dict[str, Any]) -> packing.EnsembleLayout:
    """The single layout a client that predates :func:`layout_digest` computes for ``spec``:
    compact rows for linear win counts only, no chunked lane. A session opened without a
    digest is served only where this is the server's layout too."""
    linear_scores = head_kind(spec) == "linear" and output_mode(spec) == "scores"
    return _single_layout(spec, compact=linear_scores, chunked=False)


def session_layouts(spec: dict[str, Any]) -> list[packing.EnsembleLayout]:
    """The single layouts a server opens sessions of ``spec`` in: its own first and, where that
    one has pair rows, the ones older clients compute: a client that knows the served layout's
    ``class_stride`` and ``chunk`` but not ``pairs`` (so ``P * P`` class blocks), and one that
    predates the layout digest (:func:`legacy_layout`). Every role computes the same list."""
    ours = single_layout(spec)
    out = [ours]
    if ours.pairs and output_mode(spec) != "label":  # no client predates the label output
        older = _single_layout(spec, compact=False, chunked=chunked_lane(spec))
        for lay in (older, legacy_layout(spec)):
            if all(client_geometry(lay) != client_geometry(o) for o in out):
                out.append(lay)
    return out


def session_layout(spec: dict[str, Any], digest: str | None) -> packing.EnsembleLayout:
    """The layout of :func:`session_layouts` a client packs in, from the digest it sent when it
    opened the session (``None``: a client that predates the digest, :func:`legacy_layout`).
    Raises :class:`~crypto.packing.LayoutError` where the server serves none of them."""
    layouts = session_layouts(spec)
    if digest is None:
        legacy = client_geometry(legacy_layout(spec))
        for lay in layouts:
            if client_geometry(lay) == legacy:
                return lay
        raise packing.LayoutError("this client predates the server's slot layout for this ensemble")
    for lay in layouts:
        if layout_digest(lay) == digest:
            return lay
    raise packing.LayoutError(f"the client's slot layout {digest} is not this server's {layout_digest(layouts[0])}")


def wide_layout(spec: dict[str, Any]) -> packing.WideLayout:
    """The wide batch slot layout of ``spec`` (slots index queries, see :mod:`crypto.packing`)."""
    preset = get_preset(str(spec["preset"]))
    return packing.make_wide_layout(
        members=int(spec["members"]),
        dim=int(spec["dim"]),
        classes=len(spec["classes"]),
        slots=preset.slot_count,
    )


def label_wide_refusal(spec: dict[str, Any]) -> str | None:
    """Why the wide layout cannot serve ``spec``'s label output (``None``: it can): its round 1
    keeps each query's ``C (C - 1) / 2`` pair values in that query's block of slots."""
    if output_mode(spec) != "label":
        return None
    classes, block = len(spec["classes"]), wide_layout(spec).block
    pairs = classes * (classes - 1) // 2
    if pairs > block:
        return (f"the label output's wide batches keep a query's {pairs} class pairs in its block of "
                f"{block} slots; this ensemble's queries are too short for that")
    return None


def refuse_wide(head: str) -> None:
    """Raise :class:`~crypto.packing.LayoutError` unless ``head`` is served by the wide layout (linear only)."""
    if head != "linear":
        raise packing.LayoutError(
            f"the wide layout serves linear heads only; this ensemble has {head} heads",
            hint="send single-layout ciphertexts (PrivateClient.encrypt / encrypt_batch, layout=single)",
        )


def encoded_weight_bytes(spec: dict[str, Any], layout: packing.EnsembleLayout | None = None) -> int:
    """Memory of the plaintext-encoded weights one evaluator holds for ``spec`` (its single
    layout, or ``layout``: 17 MB at n8192-d3, K=8 x 384-d, 10 classes with pair rows).

    Each diagonal is an NTT-form plaintext of ``N`` coefficients per prime of its level.
    """
    preset = get_preset(str(spec["preset"]))
    lay = single_layout(spec) if layout is None else layout
    primes = len(preset.coeff_mod_bit_sizes) - 1  # data primes of the top level
    if not lay.hidden_rows:
        return lay.baby * lay.giant * preset.poly_modulus_degree * primes * 8
    stage2 = lay.baby * lay.giant * (primes - 2)
    return (lay.hidden_rows * primes + stage2) * preset.poly_modulus_degree * 8
