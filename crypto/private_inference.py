"""Private ensemble inference: client (keys, encrypt, decrypt) and server evaluator (no secret key).

Three roles, as in Concrete-ML's deployment split::

    art = EnsembleArtifact(...)                              # owner, server-side only
    client = PrivateClient(spec=art.public_spec())           # keygen on the client
    evaluator = EnsembleEvaluator(artifact=art,              # server, once per session
                                  public_context=client.evaluation_keys())
    reply = evaluator.evaluate(client.encrypt(embeddings))   # embeddings: (K, d)
    scores = client.decrypt_result(reply)                    # scores.labels[0], scores.win_counts
                                                             # (or scores.one_hot, by spec output)

Throughput mode, the wide batch layout (slots index queries, see :mod:`crypto.packing`)::

    body = client.encrypt_wide_batch(embeddings)             # (Q, K, d), Q <= wide_capacity
    reply = evaluator.evaluate_wide_batch(body)              # one ciphertext per class
    scores = client.decrypt_wide_batch(reply, count=Q)

Each layout refuses the other's bodies (the wide frame names its block size and chunk count).
One set of evaluation keys serves both layouts.

Heads are linear (one plaintext diagonal product, preset ``n8192-d3``) or have one hidden
layer with a degree-2 polynomial activation (``EnsembleArtifact(head="quadratic_mlp")``,
preset ``n8192-d5``): stage 1, a ciphertext square and stage 2, each one level, then the
same comparisons (see :mod:`crypto.packing`). Hidden-layer heads use the single layout
only (its lane batching included); the wide layout refuses them and
:meth:`PrivateClient.prefers_wide` never picks it for them.

The server sees only ciphertexts and public keys; the client learns per-class win counts
(score mode) or one-hot values (``output: "onehot"`` in the artifact and public spec, the
owner's choice: ``prod_{j != i} (1 + s_ij) / 2``, see :mod:`crypto.argmax`) but neither the
heads' weights nor per-member logits. Every returned slot carries fresh noise: unused slots
uniform noise as large as the headroom allows (no partial sums or products leak), result
slots uniform noise of amplitude :data:`OUTPUT_FLOOD` (1e-4 on comparison sums, ~20x the
circuit's CKKS error, so the decrypted value is within total-variation distance ~0.05 per
slot of "exact value + noise"), and win-count sums are multiplied by a fresh secret factor in
[:data:`OUTPUT_SCALE_MIN`, 1] per query (folded into the last sign step, no extra level), so
the client does not learn the scale of the logit gaps.

Limits: at the default presets (``n8192-d3``, ``n8192-d5``) one composition of the sign
polynomial fits, so win counts are soft: argmax exact while the top-2 win-count margin exceeds
``OUTPUT_FLOOD / OUTPUT_SCALE_MIN`` (1.3e-4), and the values still reveal the classes' order and
the ratios of their (soft) comparison sums. Outputs that reveal only the label need sharp
comparisons, which the gaps do not allow at these depths: with worst-case scaling (every
clipped embedding stays in the sign's domain) the benchmark's top-2 gap is a median 0.0064 of
the bound (min 7e-5 on 240 queries), and ``f`` gains only 1.5x per two levels. An owner's
calibrated ``comparison_scale`` (:meth:`EnsembleArtifact.calibrated`, capped by
:meth:`EnsembleArtifact.effective_comparison_scale`) lifts the median to ~0.05 (min 5e-4)
and sharpens win counts at ``n8192-d3``; separating gaps ``delta`` still takes
~``log2(1/delta)`` levels, more than any preset a session can hold. Hidden-layer comparisons
are scaled by a worst-case bound over all clipped embeddings, so typical differences use a small part of [-1, 1]: logits
closer than about ``bound * 1e-5`` may tie. One-hot mode adds ``log2 P`` levels (a
rotate-and-multiply tree over strides 1 .. P/2 in the single layout, the same rotation keys as
the block sums; a balanced product of the ``C - 1`` factors in the wide layout), so it needs
``n8192-d5`` (linear heads, up to 4 classes), ``n16384-d7`` (linear heads up to 16 classes;
~76 MB of keys and ~1.25 s CPU per query at K=8 x 384-d, 10 classes), ``n16384-d8`` (linear
heads up to 32 classes, hidden heads up to 8; ~95 MB, ~1.5 s at that shape) or
``n32768-d18`` (keys ~0.9 GB: local use only, the service refuses such sessions); the
depth left sets the sign compositions ``r`` (:func:`sign_rounds`), and with ``r = 1`` the
values stay soft (argmax exact, winner often far below 1). Every slot stays within [0, 1], so
no class count overflows the headroom.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sealapi

from crypto import argmax, packing
from crypto.ckks import (
    PRESETS,
    CiphertextError,
    ContextError,
    _decode_parameters,
    _encode_fields,
    _encode_varint,
    _parse_fields,
    _read_varint,
    _scratch_dir,
    check_public_context,
    galois_element,
    get_preset,
    load_ckks_vector,
    make_context,
    public_context_bytes,
)
from crypto.ensemble import FLOOD_MARGIN_BITS, HEADS, EnsembleArtifact
from crypto.framing import FrameReader, FrameWriter

__all__ = [
    "EnsembleEvaluator",
    "encoded_weight_bytes",
    "PrivateClient",
    "PrivateScores",
    "decode_blobs",
    "decode_wide",
    "embed_with_templates",
    "encode_blobs",
    "encode_wide",
    "wide_query_count",
    "render_templates",
    "sign_rounds",
]

#: Default size limits at n8192-d3; deeper presets scale them by :func:`_size_factor`.
DEFAULT_MAX_CONTEXT_BYTES = 64 << 20
DEFAULT_MAX_QUERY_BYTES = 4 << 20
#: Largest wide-batch body (``chunks`` ciphertexts; ~19.5 MB for K=8 x 384-d at n8192-d3).
DEFAULT_MAX_WIDE_BYTES = 64 << 20
#: The SDK's automatic choice of the wide layout (see :meth:`PrivateClient.prefers_wide`).
WIDE_MIN_QUERIES = 8
WIDE_MAX_CIPHERTEXTS_PER_QUERY = 4
WIDE_MAX_SLOTS = 4096
#: Circuit privacy of the result slots: each gets fresh uniform noise of this amplitude (the
#: units the slot decrypts to: comparison sums, or one-hot values), and win-count sums are
#: scaled by a fresh secret factor in [OUTPUT_SCALE_MIN, 1] per query. The circuit's own CKKS
#: error on a comparison sum is ~5e-6 at n8192-d3 (measured), so the decrypted value is within
#: total-variation distance error / amplitude (~0.05 per slot) of "exact value + uniform noise":
#: it hides the error's dependence on the weights, not the soft value itself. Labels stay exact
#: while the top-2 win-count margin exceeds OUTPUT_FLOOD["scores"] / OUTPUT_SCALE_MIN (1.3e-4;
#: the benchmark's held-out queries have >= 2.9e-4).
OUTPUT_FLOOD = {"scores": 1e-4, "onehot": 1e-6}
OUTPUT_SCALE_MIN = 0.75


@dataclass(frozen=True)
class PrivateScores:
    """Decrypted result: the predicted class per query and, by the ensemble's output mode,
    ``win_counts`` ``(Q, C)`` (``"scores"``) or ``one_hot`` ``(Q, C)`` (``"onehot"``: values in
    [0, 1], the winner's the largest; see :mod:`crypto.argmax`). The other one is ``None``."""

    win_counts: npt.NDArray[np.float64] | None
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    one_hot: npt.NDArray[np.float64] | None = None

    @property
    def predicted_classes(self) -> tuple[str, ...]:
        """Class names of :attr:`labels`."""
        return tuple(self.class_names[i] for i in self.labels)

    @classmethod
    def decode(cls, raw: npt.NDArray[np.float64], *, output: str, class_names: tuple[str, ...]) -> PrivateScores:
        """Scores of ``(Q, C)`` decrypted result slots: comparison sums or one-hot products."""
        values = np.asarray(raw, dtype=np.float64)
        if output == "onehot":
            return cls(None, tuple(int(v) for v in argmax.winner(values)), class_names, one_hot=values)
        counts = argmax.win_counts(values, len(class_names))
        return cls(counts, tuple(int(v) for v in argmax.winner(counts)), class_names)

    @classmethod
    def concat(cls, parts: Sequence[PrivateScores]) -> PrivateScores:
        """The scores of several replies, in order (all of one ensemble)."""

        def stack(arrays: list[npt.NDArray[np.float64] | None]) -> npt.NDArray[np.float64] | None:
            return None if any(a is None for a in arrays) else np.concatenate(arrays)  # type: ignore[arg-type]

        return cls(
            win_counts=stack([p.win_counts for p in parts]),
            labels=tuple(lb for p in parts for lb in p.labels),
            class_names=parts[0].class_names,
            one_hot=stack([p.one_hot for p in parts]),
        )


def _size_factor(preset: str) -> int:
    """How many n8192-d3 ciphertexts (or key sets) one of ``preset``'s weighs: ring degree
    times primes, rounded up (16 at n32768-d18, whose keys are ~0.9 GB at K=8 x 384-d)."""
    p, base = get_preset(preset), get_preset("n8192-d3")
    size, base_size = (x.poly_modulus_degree * len(x.coeff_mod_bit_sizes) for x in (p, base))
    return -(-size // base_size)


def _max_query_bytes(preset: str) -> int:
    return DEFAULT_MAX_QUERY_BYTES * _size_factor(preset)


def _max_wide_bytes(preset: str) -> int:
    return DEFAULT_MAX_WIDE_BYTES * _size_factor(preset)


def _head(spec: dict[str, Any]) -> str:
    head = str(spec.get("head", "linear"))
    if head not in HEADS:
        raise packing.LayoutError(f"unknown head kind {head!r}; expected one of {list(HEADS)}")
    return head


def _output(spec: dict[str, Any]) -> str:
    output = str(spec.get("output", "scores"))
    if output not in argmax.OUTPUTS:
        raise packing.LayoutError(f"unknown output mode {output!r}; expected one of {list(argmax.OUTPUTS)}")
    return output


def sign_rounds(spec: dict[str, Any]) -> int:
    """Compositions of the sign polynomial that fit the spec's preset after its heads and the
    output mode's product (see :mod:`crypto.argmax`); raises :class:`ContextError` if none does."""
    preset = get_preset(str(spec["preset"]))
    levels = argmax.HIDDEN_LEVELS if _head(spec) == "quadratic_mlp" else argmax.LINEAR_LEVELS
    output, classes = _output(spec), len(spec["classes"])
    rounds = argmax.rounds_for(preset.depth, levels, output, classes)
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


def _compact(spec: dict[str, Any]) -> bool:
    """Whether the single layout reads ``C`` comparisons per class (a window sum) instead of
    ``P``: linear heads with win counts do, unless the spec comes from a server whose layout
    predates the compact rows (its ``layout`` lacks ``class_stride``). One-hot products and
    hidden heads keep power-of-two class blocks."""
    if _head(spec) != "linear" or _output(spec) != "scores":
        return False
    served = spec.get("layout")
    return not isinstance(served, dict) or int(served.get("class_stride") or 0) == len(spec["classes"])


def _layout_for(spec: dict[str, Any]) -> packing.EnsembleLayout:
    preset = get_preset(str(spec["preset"]))
    hidden = int(spec["hidden"]) if _head(spec) == "quadratic_mlp" else 0
    if _head(spec) == "quadratic_mlp" and hidden < 1:
        raise packing.LayoutError("hidden-layer heads need hidden >= 1 units")
    return packing.make_layout(
        members=int(spec["members"]),
        dim=int(spec["dim"]),
        classes=len(spec["classes"]),
        slots=preset.slot_count,
        hidden=hidden,
        compact=_compact(spec),
    )


def encoded_weight_bytes(spec: dict[str, Any]) -> int:
    """Memory of the plaintext-encoded weights one evaluator holds for ``spec`` (single layout).

    Each diagonal is an NTT-form plaintext of ``N`` coefficients per prime of its level.
    """
    preset = get_preset(str(spec["preset"]))
    lay = _layout_for(spec)
    primes = len(preset.coeff_mod_bit_sizes) - 1  # data primes of the top level
    if not lay.hidden_rows:
        return lay.rows * preset.poly_modulus_degree * primes * 8
    stage2 = lay.baby * lay.giant * (primes - 2)
    return (lay.hidden_rows * primes + stage2) * preset.poly_modulus_degree * 8


def _refuse_wide(head: str) -> None:
    if head != "linear":
        raise packing.LayoutError(
            f"the wide layout serves linear heads only; this ensemble has {head} heads",
            hint="send single-layout ciphertexts (PrivateClient.encrypt / encrypt_batch, layout=single)",
        )


def _wide_layout_for(spec: dict[str, Any]) -> packing.WideLayout:
    preset = get_preset(str(spec["preset"]))
    return packing.make_wide_layout(
        members=int(spec["members"]),
        dim=int(spec["dim"]),
        classes=len(spec["classes"]),
        slots=preset.slot_count,
    )


def _restore_secret_context(data: bytes, preset: str) -> Any:
    """A secret-bearing context saved by :meth:`PrivateClient.secret_context`, checked
    against ``preset`` (ring degree and modulus chain)."""
    want = get_preset(preset)
    try:
        params = next(v for f, w, v in _parse_fields(bytes(data)) if f == 1 and w == 2)
        assert isinstance(params, bytes)
        degree, bits = _decode_parameters(params)
        ctx = ts.context_from(bytes(data))
    except (ValueError, RuntimeError, TypeError, StopIteration, AssertionError, ContextError):
        raise ContextError("the saved client keys are malformed") from None
    if degree != want.poly_modulus_degree or tuple(bits) != tuple(want.coeff_mod_bit_sizes):
        raise ContextError(f"the saved client keys are not for preset {preset!r}")
    if not ctx.has_secret_key():
        raise ContextError("the saved client keys hold no secret key")
    return ctx


class PrivateClient:
    """Client role: holds the secret key; exports only public evaluation keys and ciphertexts.

    ``spec`` is :meth:`EnsembleArtifact.public_spec` (no weights). Cannot be pickled or
    serialized with its secret key.
    """

    def __init__(self, *, spec: dict[str, Any], secret_context: bytes | None = None,
                 evaluation_keys: bytes | None = None) -> None:
        self._spec = dict(spec)
        self._layout = _layout_for(self._spec)
        self._preset = str(self._spec["preset"])
        self._norm_bound = float(self._spec["norm_bound"])
        self._classes = tuple(str(c) for c in self._spec["classes"])
        self._head = _head(self._spec)
        self._output = _output(self._spec)
        sign_rounds(self._spec)  # refuse a spec whose preset cannot run its output mode
        self._wide = _wide_layout_for(self._spec)
        # A server's spec lists the layouts it serves; a bare artifact spec predates the list.
        layouts = self._spec.get("layouts")
        self._serves_wide = self._head == "linear" and (layouts is None or "wide" in layouts)
        # Partial batches go in regions (PEW2) unless a server's spec predates them.
        served_wide = self._spec.get("wide_layout")
        self._regions_ok = not isinstance(served_wide, dict) or int(served_wide.get("max_regions") or 1) > 1
        # One session serves both layouts: keys for the union of their rotation steps (the
        # single layout's only for hidden-layer heads, which the wide layout does not serve,
        # and beyond N=8192, where its encoded weights exceed the service's limit). One-hot
        # bodies stay in one region, so they need no region moves.
        self._wide_keys = self._serves_wide and self._wide.slots <= WIDE_MAX_SLOTS
        wide_steps: tuple[int, ...] = ()
        if self._wide_keys:
            wide_steps = self._wide.galois_steps if self._output == "scores" else self._wide.sum_strides
        self._steps = tuple(sorted(set(self._layout.galois_steps) | set(wide_steps)))
        if secret_context is None:
            self._ctx = make_context(self._preset, galois_steps=self._steps)
            self._public: bytes | None = None
        else:  # keys kept from an earlier run (see secret_context())
            self._ctx = _restore_secret_context(secret_context, self._preset)
            self._public = evaluation_keys
        self._sym: tuple[Any, Any, Any] | None = None  # SEAL context, encryptor, encoder

    def _secret_encryptor(self) -> tuple[Any, Any, Any]:
        """SEAL's secret-key encryptor for this client's key (built once).

        Secret-key encryption has about a tenth of public-key encryption's noise (which
        matters at n8192-d5's 2^28 scale) and is sent seeded: half the query bytes. TenSEAL
        does not expose it, so the key crosses into ``sealapi`` through a private RAM-backed
        scratch file that is deleted at once (as for the seeded Galois keys in crypto.ckks).
        """
        if self._sym is None:
            raw = self._ctx.serialize(
                save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
            )
            params_blob = next(v for f, w, v in _parse_fields(raw) if f == 1 and w == 2)
            with _scratch_dir() as tmp:
                parms_path, sk_path = os.path.join(tmp, "parms"), os.path.join(tmp, "sk")
                with open(parms_path, "wb") as fh:
                    fh.write(params_blob)  # type: ignore[arg-type]
                parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
                parms.load(parms_path)
                seal_ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
                secret = sealapi.SecretKey()
                try:
                    self._ctx.data.secret_key().save(sk_path)
                    secret.load(seal_ctx, sk_path)
                finally:
                    if os.path.exists(sk_path):
                        os.remove(sk_path)
            self._sym = (seal_ctx, sealapi.Encryptor(seal_ctx, secret), sealapi.CKKSEncoder(seal_ctx))
        return self._sym

    def _encrypt_values(self, values: npt.NDArray[np.float64]) -> bytes:
        """One CKKS vector of ``values`` (all slots) in TenSEAL's wire form, secret-key encrypted."""
        seal_ctx, encryptor, encoder = self._secret_encryptor()
        pt = sealapi.Plaintext()
        scale = 2.0 ** get_preset(self._preset).global_scale_bits
        encoder.encode(np.asarray(values, dtype=np.float64).tolist(), seal_ctx.first_parms_id(), scale, pt)
        with _scratch_dir() as tmp:
            path = os.path.join(tmp, "query")
            encryptor.encrypt_symmetric(pt).save(path)
            blob = _read_file(path)
        return _encode_fields([(1, 2, _encode_varint(len(values))), (2, 2, blob), (3, 1, struct.pack("<d", scale))])

    @property
    def layout(self) -> packing.EnsembleLayout:
        """Slot layout shared with the server."""
        return self._layout

    @property
    def batch_capacity(self) -> int:
        """Queries packed into one ciphertext by :meth:`encrypt_batch`."""
        return self._layout.queries_per_ciphertext

    def secret_context(self) -> bytes:
        """The context WITH its secret key (no Galois keys), to reopen this client later with
        ``PrivateClient(spec=..., secret_context=..., evaluation_keys=...)``; never send it
        anywhere, and store it only encrypted."""
        return bytes(self._ctx.serialize(save_public_key=True, save_secret_key=True,
                                         save_galois_keys=False, save_relin_keys=False))

    def evaluation_keys(self) -> bytes:
        """Public context (public key, relin keys, only the circuit's Galois keys); no secret."""
        if self._public is None:
            self._public = public_context_bytes(self._ctx, galois_steps=self._steps)
        return self._public

    def _encrypt_packed(self, embeddings: npt.NDArray[np.float64]) -> bytes:
        packed = packing.pack_queries(embeddings, self._layout, norm_bound=self._norm_bound)
        return self._encrypt_values(packed)

    def encrypt(self, embeddings: npt.ArrayLike) -> bytes:
        """Encrypt one query's ``(K, d)`` embeddings (one per template) into one ciphertext."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2:
            raise packing.LayoutError(f"embeddings must be (members, dim), got {emb.shape}")
        return self._encrypt_packed(emb[None])

    def encrypt_batch(self, embeddings: npt.ArrayLike) -> list[bytes]:
        """Encrypt ``(Q, K, d)`` embeddings, :attr:`batch_capacity` queries per ciphertext."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 3 or emb.shape[0] == 0:
            raise packing.LayoutError(f"embeddings must be (queries, members, dim), got {emb.shape}")
        cap = self.batch_capacity
        return [self._encrypt_packed(emb[i : i + cap]) for i in range(0, emb.shape[0], cap)]

    @property
    def output(self) -> str:
        """The ensemble's output mode, ``"scores"`` or ``"onehot"`` (from the public spec)."""
        return self._output

    def decrypt_result(self, data: bytes, *, count: int = 1) -> PrivateScores:
        """Decrypt one evaluator reply holding ``count`` queries into labels and win counts
        (or one-hot values, by the ensemble's :attr:`output`)."""
        if not 1 <= count <= self.batch_capacity:
            raise CiphertextError(f"count must lie in [1, {self.batch_capacity}]")
        vec = load_ckks_vector(
            self._ctx, data, expected_size=self._layout.slots, max_bytes=_max_query_bytes(self._preset)
        )
        raw = packing.score_slots(np.asarray(vec.decrypt()), self._layout, count)
        return PrivateScores.decode(raw, output=self._output, class_names=self._classes)

    def decrypt_batch(self, replies: Sequence[bytes], *, total: int) -> PrivateScores:
        """Decrypt the replies to :meth:`encrypt_batch` of ``total`` queries, in order."""
        cap = self.batch_capacity
        if len(replies) != -(-total // cap):
            raise CiphertextError(f"{len(replies)} replies for {total} queries (capacity {cap})")
        return PrivateScores.concat(
            [self.decrypt_result(r, count=min(cap, total - i * cap)) for i, r in enumerate(replies)]
        )

    # -- wide batch layout (slots index queries; throughput mode) ------------------------

    @property
    def wide_layout(self) -> packing.WideLayout:
        """Wide batch layout shared with the server (see :mod:`crypto.packing`)."""
        return self._wide

    @property
    def wide_capacity(self) -> int:
        """Most queries one :meth:`encrypt_wide_batch` body carries."""
        return self._wide.capacity

    def prefers_wide(self, count: int) -> bool:
        """Whether ``count`` queries are better sent in the wide layout than the single one.

        True from :data:`WIDE_MIN_QUERIES` queries on, as long as the wide bodies upload at
        most :data:`WIDE_MAX_CIPHERTEXTS_PER_QUERY` ciphertexts per query (about 1.6 MB at
        n8192-d3, within the 2 MB per-query budget). At K=8 x 384-d this means 12 or more.
        Always false where the spec's ``layouts`` (a server's spec) omits ``"wide"``, for
        hidden-layer heads (the wide layout serves linear heads only) and for
        presets beyond N=8192 (one-hot ensembles: at n16384-d8 the wide layout's encoded
        weights, ~570 MB at K=8 x 384-d and 10 classes, exceed the service's limit).
        """
        if count < WIDE_MIN_QUERIES or not self._serves_wide or self._wide.slots > WIDE_MAX_SLOTS:
            return False
        wide_cts = -(-count // self._wide.capacity) * self._wide.chunks
        return wide_cts <= WIDE_MAX_CIPHERTEXTS_PER_QUERY * count

    def encrypt_wide_batch(self, embeddings: npt.ArrayLike) -> bytes:
        """Encrypt ``(Q, K, d)`` embeddings (``1 <= Q <= wide_capacity``) in the wide layout.

        Returns one framed body (:func:`encode_wide`) of ``wide_layout.chunks`` ciphertexts,
        for :meth:`EnsembleEvaluator.evaluate_wide_batch`; its size does not depend on ``Q``.
        Raises :class:`~crypto.packing.LayoutError` for hidden-layer heads.
        """
        _refuse_wide(self._head)
        if not self._serves_wide:
            raise packing.LayoutError(
                f"the server does not serve the wide layout for this ensemble: "
                f"{self._spec.get('wide_refusal') or 'its spec lists only ' + str(self._spec.get('layouts'))}",
                hint="send single-layout ciphertexts (encrypt / encrypt_batch, layout=single)",
            )
        if not self._wide_keys:
            raise packing.LayoutError(
                f"this session's keys leave out the wide layout's rotations (N={2 * self._wide.slots} > "
                f"{2 * WIDE_MAX_SLOTS}: its encoded weights exceed the service's limit)",
                hint="send single-layout ciphertexts (encrypt / encrypt_batch, layout=single)",
            )
        emb = np.asarray(embeddings, dtype=np.float64)
        count = int(emb.shape[0]) if emb.ndim == 3 else 0
        # A partial batch of win counts is replicated into regions (PEW2): the server then
        # evaluates several classes and pairs per operation. One-hot bodies stay in one region.
        regions = 1
        if self._output == "scores" and self._regions_ok and count >= 1:
            regions = packing.wide_regions(self._wide, count)
        rows = packing.pack_wide(emb, self._wide, norm_bound=self._norm_bound, regions=regions)
        blobs = [self._encrypt_values(row) for row in rows]
        return encode_wide(blobs, layout=self._wide, count=count, regions=regions)

    def decrypt_wide_batch(self, reply: bytes, *, count: int) -> PrivateScores:
        """Decrypt the reply to a wide batch of ``count`` queries (as :meth:`decrypt_result`)."""
        _refuse_wide(self._head)
        lay = self._wide
        if not 1 <= count <= lay.capacity:
            raise CiphertextError(f"count must lie in [1, {lay.capacity}]")
        got, blobs = decode_wide(reply, layout=lay, items=lay.classes, max_bytes=_max_wide_bytes(self._preset))
        if got != count:
            raise CiphertextError(f"the reply is for {got} queries, expected {count}")
        per_class = np.stack(
            [
                np.asarray(
                    load_ckks_vector(
                        self._ctx, b, expected_size=lay.slots, max_bytes=_max_query_bytes(self._preset)
                    ).decrypt()
                )
                for b in blobs
            ]
        )
        raw = packing.wide_score_slots(per_class, lay, count)
        return PrivateScores.decode(raw, output=self._output, class_names=self._classes)

    def __repr__(self) -> str:
        return f"PrivateClient(preset={self._preset!r}, classes={len(self._classes)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("PrivateClient holds a secret key and cannot be pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError("PrivateClient holds a secret key and cannot be serialized")


def render_templates(templates: Sequence[str], text: str) -> list[str]:
    """Fill each template's ``{}`` with ``text`` (appended after a space if it has none)."""
    return [t.replace("{}", text) if "{}" in t else f"{t} {text}" for t in templates]


def embed_with_templates(
    texts: Sequence[str],
    templates: Sequence[str],
    encode: Callable[[list[str]], npt.ArrayLike],
    *,
    normalize: bool = True,
) -> npt.NDArray[np.float64]:
    """Client-side embeddings ``(Q, K, d)``: each text through every template, one encoder call.

    ``encode`` maps a list of strings to ``(n, d)`` embeddings (e.g. MiniLM mean pooling);
    with ``normalize`` rows are scaled to unit norm, matching ``norm_bound=1``.
    """
    prompts = [p for text in texts for p in render_templates(templates, text)]
    emb = np.asarray(encode(prompts), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        raise packing.LayoutError(f"encoder returned {emb.shape} for {len(prompts)} prompts")
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.reshape(len(texts), len(templates), emb.shape[1])


_FRAME_MAGIC = b"PEB1"


def _length_prefixed(header: bytes, blobs: Sequence[bytes]) -> bytes:
    """``header`` then each blob as (u32 big-endian length, bytes), by :mod:`crypto.framing`."""
    writer = FrameWriter(header)
    for blob in blobs:
        writer.prefixed(bytes(blob), 4)
    return writer.to_bytes()


def _read_length_prefixed(data: bytes, pos: int, count: int, *, body: str) -> list[bytes]:
    """Inverse of :func:`_length_prefixed` after the ``pos`` header bytes the caller has
    checked: exactly ``count`` blobs, nothing after (a :class:`CiphertextError` naming ``body``
    otherwise), read by the bounded :class:`crypto.framing.FrameReader`."""
    raw = bytes(data)
    reader = FrameReader(raw, magic=raw[:pos], error=CiphertextError, what=body)
    out = [reader.prefixed(4, limit=len(raw), field="ciphertext") for _ in range(count)]
    reader.end()
    return out


def encode_blobs(blobs: Sequence[bytes]) -> bytes:
    """Frame several ciphertexts into one body: magic, count, then (u32 length, bytes) each."""
    return _length_prefixed(_FRAME_MAGIC + struct.pack(">I", len(blobs)), blobs)


def decode_blobs(data: bytes, *, max_items: int, max_bytes: int) -> list[bytes]:
    """Inverse of :func:`encode_blobs`; raises :class:`CiphertextError` on any inconsistency."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_bytes:
        raise CiphertextError(f"batch body must be bytes of at most {max_bytes} bytes")
    if len(data) < 8 or bytes(data[:4]) != _FRAME_MAGIC:
        raise CiphertextError("batch body lacks the PEB1 header")
    (count,) = struct.unpack(">I", data[4:8])
    if not 1 <= count <= max_items:
        raise CiphertextError(f"batch holds {count} ciphertexts; allowed 1..{max_items}")
    return _read_length_prefixed(data, 8, count, body="batch body")


_WIDE_MAGIC = b"PEW1"
#: A partial wide batch replicated into :func:`crypto.packing.wide_regions` regions.
_WIDE_REGIONS_MAGIC = b"PEW2"
WIDE_MAGICS = (_WIDE_MAGIC, _WIDE_REGIONS_MAGIC)
_WIDE_HEADER = struct.Struct(">4sIIII")  # magic, block, chunks, query count, item count


def is_wide_body(data: bytes) -> bool:
    """Whether ``data`` starts like a wide-layout body (``PEW1`` or ``PEW2``)."""
    return bytes(data[:4]) in WIDE_MAGICS


def encode_wide(blobs: Sequence[bytes], *, layout: packing.WideLayout, count: int, regions: int = 1) -> bytes:
    """Frame a wide-layout body: magic, block, chunks, query count, then blobs.

    The header names the layout so a server refuses bodies built for another layout. The
    magic is ``PEW1`` (replies, and batches in one region) or ``PEW2`` (a partial batch
    replicated into regions; their number follows from the count, see
    :func:`crypto.packing.wide_regions`), which servers that predate regions refuse.
    """
    magic = _WIDE_REGIONS_MAGIC if regions > 1 else _WIDE_MAGIC
    return _length_prefixed(_WIDE_HEADER.pack(magic, layout.block, layout.chunks, count, len(blobs)), blobs)


def decode_wide(data: bytes, *, layout: packing.WideLayout, items: int, max_bytes: int) -> tuple[int, list[bytes]]:
    """Inverse of :func:`encode_wide`: ``(query count, blobs)``, checked against ``layout``.

    Raises :class:`CiphertextError` unless the header matches the layout, the query count
    fits its capacity, exactly ``items`` blobs follow and nothing trails them.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_bytes:
        raise CiphertextError(f"wide body must be bytes of at most {max_bytes} bytes")
    if len(data) < _WIDE_HEADER.size or not is_wide_body(data):
        raise CiphertextError("body is not in the wide layout (no PEW1 header)")
    _, block, chunks, count, n = _WIDE_HEADER.unpack(bytes(data[: _WIDE_HEADER.size]))
    if (block, chunks) != (layout.block, layout.chunks):
        raise CiphertextError(
            f"wide body has block {block} x {chunks} chunks; this ensemble uses {layout.block} x {layout.chunks}"
        )
    if not 1 <= count <= layout.capacity:
        raise CiphertextError(f"wide body declares {count} queries; allowed 1..{layout.capacity}")
    if n != items:
        raise CiphertextError(f"wide body holds {n} ciphertexts, expected {items}")
    return count, _read_length_prefixed(data, _WIDE_HEADER.size, n, body="wide body")


def wide_query_count(data: bytes) -> int:
    """Query count declared in a wide body's header (0 if it is not a wide body)."""
    if len(data) < _WIDE_HEADER.size or not is_wide_body(data):
        return 0
    return int(_WIDE_HEADER.unpack(bytes(data[: _WIDE_HEADER.size]))[3])


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class EnsembleEvaluator:
    """Server role: evaluates the ensemble on ciphertexts with public evaluation keys only.

    ``public_context`` must be the bytes of :meth:`PrivateClient.evaluation_keys`; anything
    holding a secret key, of other parameters, or lacking a needed Galois key raises
    :class:`~crypto.ckks.ContextError`. Plaintext weights are encoded once here
    (:func:`encoded_weight_bytes`: 67 MB at n8192-d3 with 10 classes, 59 / 84 MB at n8192-d5
    for K=8 hidden heads of 16 / 32 units); pass ``shared`` (an evaluator of the same
    artifact) to reuse them for another session's keys.
    """

    def __init__(
        self,
        *,
        artifact: EnsembleArtifact,
        public_context: bytes,
        max_context_bytes: int | None = None,
        max_query_bytes: int | None = None,
        max_wide_bytes: int | None = None,
        shared: EnsembleEvaluator | None = None,
    ) -> None:
        if isinstance(public_context, ts.Context):
            secret = "a secret-key " if public_context.has_secret_key() else "a "
            raise ContextError(f"the evaluator takes public context bytes, not {secret}context object")
        if not isinstance(public_context, (bytes, bytearray)):
            raise ContextError("public_context must be bytes")
        self._artifact = artifact
        self._preset = get_preset(artifact.preset)
        factor = _size_factor(artifact.preset)
        self._max_query_bytes = max_query_bytes or DEFAULT_MAX_QUERY_BYTES * factor
        self._max_wide_bytes = max_wide_bytes or DEFAULT_MAX_WIDE_BYTES * factor
        spec = artifact.public_spec()
        self._wide = _wide_layout_for(spec)
        self._layout = _layout_for(spec)
        self._hidden = artifact.head == "quadratic_mlp"
        self._onehot = _output(spec) == "onehot"
        self._rounds = sign_rounds(spec)
        # Rotations after the rescale only where the scale keeps key-switching noise small.
        self._late_rescale = self._preset.global_scale_bits < 35 or self._hidden
        # Checked (no secret key, the preset's parameters, a public key) without building a
        # TenSEAL context: the circuit runs on the SEAL objects of _load_seal, whose loaders
        # validate the keys, and a TenSEAL copy would parse and expand every key twice.
        check_public_context(
            bytes(public_context),
            preset=artifact.preset,
            max_bytes=max_context_bytes or DEFAULT_MAX_CONTEXT_BYTES * factor,
        )
        self._load_seal(bytes(public_context))
        if (
            shared is not None
            and shared._artifact is artifact
            and shared._seal_ctx.first_parms_id() == self._seal_ctx.first_parms_id()
        ):
            self._bound = shared._bound
            self._diagonals = shared._diagonals
            self._bias_values = shared._bias_values
            self._hidden_diagonals = shared._hidden_diagonals
            self._hidden_bias_values = shared._hidden_bias_values
            self._keep = shared._keep
            self._onehot_constants = shared._onehot_constants
            self._wide_state = shared._wide_state
            return
        lay = self._layout
        first = self._seal_ctx.first_context_data()
        if self._hidden:
            assert artifact.hidden_weights is not None and artifact.hidden_biases is not None
            assert artifact.activation is not None
            stage1, bias1, matrix, bias, self._bound = packing.hidden_matrices(
                artifact.hidden_weights,
                artifact.hidden_biases,
                artifact.weights,
                artifact.biases,
                artifact.activation,
                norm_bound=artifact.norm_bound,
                layout=lay,
            )
            self._hidden_diagonals = self._encode_diagonals(packing.hidden_diagonals(stage1, lay), first)
            self._hidden_bias_values = packing.hidden_bias_slots(bias1, lay)
            # Stage 2 runs two levels down (after stage 1 and the square).
            self._diagonals = self._encode_diagonals(
                packing.diagonals(matrix, lay), first.next_context_data().next_context_data()
            )
        else:
            scale = artifact.effective_comparison_scale()
            matrix, bias, self._bound = packing.difference_matrix(
                artifact.weights, artifact.biases, norm_bound=artifact.norm_bound, layout=lay, scale=scale
            )
            self._diagonals = self._encode_diagonals(packing.diagonals(matrix, lay), first)
            self._hidden_diagonals, self._hidden_bias_values = [], np.zeros(0)
        self._bias_values = packing.bias_slots(bias, lay)
        self._keep = packing.output_mask(lay)
        self._onehot_constants = packing.onehot_constants(lay).tolist()
        self._wide_state = {"plain": None}
        if not self._hidden:
            wide_w, wide_b, wide_bound = packing.wide_weights(
                artifact.weights,
                artifact.biases,
                norm_bound=artifact.norm_bound,
                layout=self._wide,
                scale=artifact.effective_comparison_scale(),
            )
            # Encoded lazily on the first wide batch, then shared with sibling sessions.
            self._wide_state = {"weights": wide_w, "bias": wide_b, "bound": wide_bound, "plain": None}

    def _encode_diagonals(self, diags: list[npt.NDArray[np.float64]], level: Any) -> list[Any]:
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

    # -- setup ---------------------------------------------------------------------------

    _diagonals: list[Any]
    _hidden_diagonals: list[Any]
    _bound: float
    _bias_values: npt.NDArray[np.float64]
    _hidden_bias_values: npt.NDArray[np.float64]
    _keep: npt.NDArray[np.bool_]
    _onehot_constants: list[float]
    _wide_state: dict[str, Any]

    def with_session(self, public_context: bytes) -> EnsembleEvaluator:
        """Evaluator for another session's evaluation keys, sharing the encoded weights."""
        return EnsembleEvaluator(
            artifact=self._artifact,
            public_context=public_context,
            max_query_bytes=self._max_query_bytes,
            max_wide_bytes=self._max_wide_bytes,
            shared=self,
        )

    def _load_seal(self, data: bytes) -> None:
        try:
            top = {f: v for f, _, v in _parse_fields(data)}
            public_blob = top[2]
            if not isinstance(public_blob, bytes) or not isinstance(top[1], bytes):
                raise ValueError("public context is not a message")
            public = {f: v for f, _, v in _parse_fields(public_blob)}
        except (KeyError, ValueError):
            raise ContextError("malformed public context") from None
        if not isinstance(public.get(4), bytes) or not isinstance(public.get(5), bytes):
            raise ContextError("evaluation keys must include relinearisation and Galois keys")
        with _scratch_dir() as tmp:
            paths = {}
            if not isinstance(public.get(1), bytes):
                raise ContextError("context has no public key")
            for name, blob in (("parms", top[1]), ("public", public[1]), ("relin", public[4]), ("galois", public[5])):
                paths[name] = os.path.join(tmp, name)
                with open(paths[name], "wb") as fh:
                    fh.write(blob)  # type: ignore[arg-type]
            parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
            parms.load(paths["parms"])
            self._seal_ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
            if not self._seal_ctx.parameters_set():
                raise ContextError("CKKS parameters are not valid at 128-bit security")
            self._relin = sealapi.RelinKeys()
            self._galois = sealapi.GaloisKeys()
            try:
                sealapi.PublicKey().load(self._seal_ctx, paths["public"])  # validated, not kept
            except Exception:
                raise ContextError("the public key is malformed or of other parameters") from None
            try:
                self._relin.load(self._seal_ctx, paths["relin"])
                self._galois.load(self._seal_ctx, paths["galois"])
            except Exception:
                raise ContextError("relinearisation or Galois keys are malformed") from None
        n = self._preset.poly_modulus_degree
        missing = [s for s in self._layout.galois_steps if not self._galois.has_key(galois_element(s, n))]
        if missing:
            raise ContextError(f"evaluation keys lack the rotations {missing} the circuit needs")
        self._evaluator = sealapi.Evaluator(self._seal_ctx)
        self._encoder = sealapi.CKKSEncoder(self._seal_ctx)

    @property
    def layout(self) -> packing.EnsembleLayout:
        """Slot layout (public)."""
        return self._layout

    @property
    def wide_layout(self) -> packing.WideLayout:
        """Wide batch layout (public)."""
        return self._wide

    @property
    def sign_rounds(self) -> int:
        """Compositions of the sign polynomial this preset's depth allows (after the one-hot
        product in one-hot mode)."""
        return self._rounds

    # -- circuit -------------------------------------------------------------------------

    def _rotate(self, ct: Any, step: int) -> Any:
        out = sealapi.Ciphertext()
        self._evaluator.rotate_vector(ct, step, self._galois, out)
        return out

    def _encode_like(self, values: Any, ct: Any) -> Any:
        pt = sealapi.Plaintext()
        self._encoder.encode(values, ct.parms_id(), ct.scale, pt)
        return pt

    def _mul_rescale(self, a: Any, b: Any, *, rescale: bool = True) -> Any:
        out = sealapi.Ciphertext()
        self._evaluator.multiply(a, b, out)
        self._evaluator.relinearize_inplace(out, self._relin)
        if rescale:
            self._evaluator.rescale_to_next_inplace(out)
        return out

    def _half(self, ct: Any, value: float | list[float] = 0.5) -> Any:
        data = self._seal_ctx.get_context_data(ct.parms_id())
        prime = float(data.parms().coeff_modulus()[-1].value())
        pt = sealapi.Plaintext()
        self._encoder.encode(value, ct.parms_id(), prime, pt)
        out = sealapi.Ciphertext()
        self._evaluator.multiply_plain(ct, pt, out)
        self._evaluator.rescale_to_next_inplace(out)
        return out

    def _sign_step(self, z: Any, *, rescale: bool = True, half: float | list[float] = 0.5) -> Any:
        """One composition of f(z) = z (3 - z^2) / 2, depth 2 (the last rescale optional);
        ``half=0.25`` gives f(z) / 2 at no extra level (the one-hot factors' slope), a slot
        vector ``0.5 * a`` gives ``a * f(z)`` (the secret output scale)."""
        square = self._mul_rescale(z, z)
        self._evaluator.negate_inplace(square)
        self._evaluator.add_plain_inplace(square, self._encode_like(3.0, square))
        return self._mul_rescale(self._half(z, half), square, rescale=rescale)

    def _signs(self, z: Any, *, rescale: bool, scale: npt.NDArray[np.float64] | None = None) -> Any:
        """``f^(r)(z)`` (times the per-slot ``scale`` if given), or ``f^(r)(z) / 2`` in one-hot
        mode; the last rescale optional."""
        for r in range(self._rounds):
            last = r == self._rounds - 1
            half: float | list[float] = 0.5
            if last and self._onehot:
                half = 0.25
            elif last and scale is not None:
                half = (0.5 * scale).tolist()
            z = self._sign_step(z, rescale=rescale or not last, half=half)
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

    def _product_tree(self, y: Any, strides: Sequence[int]) -> Any:
        """``prod_{t < 2 * strides[-1]} rot(y, t)`` in every slot: one level per stride.

        ``y`` comes unrescaled; each rotation acts on a product before its rescale, where the
        scale is a prime larger, so key-switching noise stays negligible (as in the block sums).
        """
        ev = self._evaluator
        rot = self._rotate(y, strides[0])
        for k in range(len(strides)):
            ev.rescale_to_next_inplace(y)
            ev.rescale_to_next_inplace(rot)
            y = self._mul_rescale(y, rot, rescale=False)
            if k + 1 < len(strides):
                rot = self._rotate(y, strides[k + 1])
        ev.rescale_to_next_inplace(y)
        return y

    def _balanced_product(self, factors: list[Any]) -> Any:
        """Product of rescaled ciphertexts in ``ceil(log2 len)`` levels (an odd one waits a level)."""
        while len(factors) > 1:
            paired = [self._mul_rescale(a, b) for a, b in zip(factors[0::2], factors[1::2], strict=False)]
            if len(factors) % 2:
                waiting = sealapi.Ciphertext()
                self._evaluator.mod_switch_to_next(factors[-1], waiting)
                paired.append(waiting)
            factors = paired
        return factors[0]

    def _flood(self, ct: Any, keep: npt.NDArray[np.bool_], rng: np.random.Generator) -> None:
        """Add fresh uniform noise to every slot: as large as the headroom allows outside
        ``keep`` (no partial results leak), :data:`OUTPUT_FLOOD` on the result slots."""
        amplitude = 2.0 ** (self._preset.coeff_mod_bit_sizes[0] - self._preset.global_scale_bits - FLOOD_MARGIN_BITS)
        noise = rng.uniform(-amplitude, amplitude, keep.size)
        small = OUTPUT_FLOOD["onehot" if self._onehot else "scores"]
        noise[keep] = rng.uniform(-small, small, int(keep.sum()))
        self._evaluator.add_plain_inplace(ct, self._encode_like(noise.tolist(), ct))

    def _babies(self, x: Any, count: int) -> list[Any]:
        """``rot(x, a)`` for ``a < count``, each built from power-of-two rotations (at most
        ``log2(count)`` deep instead of ``a``: key-switching noise adds up along the chain)."""
        babies = [x]
        for a in range(1, count):
            low = a & -a
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
        late = self._late_rescale
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

    def _differences(self, x: Any) -> Any:
        """Scaled pairwise differences ``(L_i - L_j) / bound`` in slots ``i * P + j``."""
        lay = self._layout
        if self._hidden:
            s = self._matvec(
                x,
                self._hidden_diagonals,
                baby=lay.hidden_baby,
                giant=lay.hidden_giant,
                strides=lay.hidden_sum_strides,
                bias=self._hidden_bias_values,
            )
            x = self._mul_rescale(s, s)  # s^2, replicated with period m1 over lane slots [0, n]
        return self._matvec(
            x, self._diagonals, baby=lay.baby, giant=lay.giant, strides=lay.sum_strides, bias=self._bias_values
        )

    def _evaluate_ct(self, ct: Any) -> Any:
        # The block sums and the product tree rotate before the last rescale (less noise).
        rng = np.random.default_rng(secrets.randbits(128))
        lay = self._layout
        scale = None if self._onehot else self._output_scale(rng, lay.queries_per_ciphertext, lay.lane)
        z = self._signs(self._differences(ct), rescale=False, scale=scale)
        if self._onehot:
            # (1 + s) / 2 in comparison slots, 1 in padded and diagonal ones (s = 0 there).
            self._evaluator.add_plain_inplace(z, self._encode_like(self._onehot_constants, z))
            z = self._product_tree(z, self._layout.block_strides)
        else:
            z = self._window_sum(z, self._layout.stride)
            self._evaluator.rescale_to_next_inplace(z)
        self._flood(z, self._keep, rng)
        return z

    # -- wire ----------------------------------------------------------------------------

    def _load_query(self, data: bytes) -> Any:
        """A query ciphertext straight into SEAL (no TenSEAL round trip), validated.

        The wire form is TenSEAL's CKKS vector message (shape, SEAL ciphertext, scale); SEAL's
        own loader checks the ciphertext against the session parameters (sizes, moduli,
        coefficient ranges).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CiphertextError(f"ciphertext must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > self._max_query_bytes:
            raise CiphertextError(f"ciphertext is {len(data)} bytes, above the limit {self._max_query_bytes}")
        if not data:
            raise CiphertextError("ciphertext is empty")
        try:
            fields = _parse_fields(data)
            if [(f, w) for f, w, _ in fields] != [(1, 2), (2, 2), (3, 1)]:
                raise ValueError("unexpected message layout")
            shape, blob, scale_raw = (v for _, _, v in fields)
            assert isinstance(shape, bytes) and isinstance(blob, bytes) and isinstance(scale_raw, bytes)
            size, end = _read_varint(shape, 0)
            if end != len(shape):
                raise ValueError("a vector has one dimension")
        except ValueError:
            raise CiphertextError("malformed or truncated ciphertext (unexpected message layout)") from None
        if size != self._layout.slots:
            raise CiphertextError(f"ciphertext packs {size} values, expected {self._layout.slots}")
        (scale,) = struct.unpack("<d", scale_raw)
        expected_scale = 2.0**self._preset.global_scale_bits
        if not abs(scale - expected_scale) <= 1e-6 * expected_scale:
            raise CiphertextError("query ciphertext has an unexpected scale")
        ct = sealapi.Ciphertext()
        with _scratch_dir() as tmp:
            path = os.path.join(tmp, "query")
            with open(path, "wb") as fh:
                fh.write(blob)
            try:
                ct.load(self._seal_ctx, path)
            except Exception:
                raise CiphertextError("malformed or truncated ciphertext, or one for other parameters") from None
        if ct.size() != 2:
            raise CiphertextError(f"ciphertext has {ct.size()} polynomials, expected 2")
        if ct.parms_id() != self._seal_ctx.first_parms_id():
            raise CiphertextError("query ciphertext is not at the top level of the chain")
        if not abs(ct.scale - expected_scale) <= 1e-6 * expected_scale:
            raise CiphertextError("query ciphertext has an unexpected scale")
        return ct

    def _dump_reply(self, ct: Any) -> bytes:
        with _scratch_dir() as tmp:
            path = os.path.join(tmp, "reply")
            ct.save(path)
            blob = _read_file(path)
        return _encode_fields(
            [
                (1, 2, _encode_varint(self._layout.slots)),
                (2, 2, blob),
                (3, 1, struct.pack("<d", ct.scale)),
            ]
        )

    def evaluate(self, query: bytes) -> bytes:
        """Evaluate the ensemble and encrypted argmax on one query ciphertext; return ciphertext.

        Raises :class:`~crypto.ckks.CiphertextError` for malformed, truncated, oversize or
        foreign ciphertexts. The same call serves batch ciphertexts from ``encrypt_batch``.
        """
        return self._dump_reply(self._evaluate_ct(self._load_query(query)))

    def evaluate_batch(self, queries: Sequence[bytes]) -> list[bytes]:
        """Evaluate every ciphertext of :meth:`PrivateClient.encrypt_batch`, in order."""
        return [self.evaluate(q) for q in queries]

    # -- wide batch layout -------------------------------------------------------------------

    def _wide_plains(self) -> list[list[Any]]:
        """Plaintext weight pieces ``[class][chunk]`` (``None`` where all zero), encoded once."""
        state = self._wide_state
        if state["plain"] is None:
            first = self._seal_ctx.first_context_data()
            drop_prime = float(first.parms().coeff_modulus()[-1].value())
            plains: list[list[Any]] = []
            for cls_pieces in state["weights"]:
                row: list[Any] = []
                for piece in cls_pieces:
                    if not np.any(piece):
                        row.append(None)
                        continue
                    pt = sealapi.Plaintext()
                    values = packing.wide_weight_slots(piece, self._wide).tolist()
                    self._encoder.encode(values, first.parms_id(), drop_prime, pt)
                    row.append(pt)
                plains.append(row)
            state["plain"] = plains
        return state["plain"]  # type: ignore[no-any-return]

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

    def _wide_logits(self, cts: Sequence[Any]) -> list[Any]:
        """Scaled averaged logit of every class, query ``b`` in slot ``b * block``."""
        ev, lay = self._evaluator, self._wide
        out: list[Any] = []
        tmp = sealapi.Ciphertext()
        for row in self._wide_plains():
            acc = self._row_product(cts, row, tmp)
            if acc is not None:
                ev.rescale_to_next_inplace(acc)
                for stride in lay.sum_strides:
                    ev.add_inplace(acc, self._rotate(acc, stride))
            out.append(acc)
        return out

    def _evaluate_wide(self, cts: Sequence[Any], count: int) -> list[Any]:
        ev, lay = self._evaluator, self._wide
        logits = self._wide_logits(cts)
        bias = self._wide_state["bias"]
        c = lay.classes
        rng = np.random.default_rng(secrets.randbits(128))
        scale = None if self._onehot else self._output_scale(rng, lay.capacity, lay.block)
        signs: dict[tuple[int, int], Any] = {}
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
                signs[(i, j)] = self._signs(diff, rescale=True, scale=scale)
        keep = packing.wide_output_mask(lay, count)
        replies = []
        for i in range(c):
            acc = self._onehot_wide(signs, i) if self._onehot else self._wins_wide(signs, i)
            self._flood(acc, keep, rng)
            replies.append(acc)
        return replies

    def _region_plains(self, regions: int) -> list[list[Any]]:
        """Plaintext weight pieces ``[accumulator][chunk]``: accumulator ``a`` carries class
        ``a * R + k`` in region ``k`` (zero where that class does not exist); encoded once per
        region count and shared with sibling sessions."""
        state = self._wide_state
        cache = state.setdefault("regions", {})
        if regions not in cache:
            lay = self._wide
            first = self._seal_ctx.first_context_data()
            drop_prime = float(first.parms().coeff_modulus()[-1].value())
            size = lay.slots // regions
            weights = state["weights"]  # (C, chunks, block)
            plains: list[list[Any]] = []
            for a in range(-(-lay.classes // regions)):
                row: list[Any] = []
                for t in range(lay.chunks):
                    values = np.zeros(lay.slots)
                    for k in range(regions):
                        c = a * regions + k
                        if c < lay.classes:
                            values[k * size : (k + 1) * size] = np.tile(weights[c, t], size // lay.block)
                    if not np.any(values):
                        row.append(None)
                        continue
                    pt = sealapi.Plaintext()
                    self._encoder.encode(values.tolist(), first.parms_id(), drop_prime, pt)
                    row.append(pt)
                plains.append(row)
            cache[regions] = plains
        return cache[regions]  # type: ignore[no-any-return]

    def _rotate_pow2(self, ct: Any, step: int) -> Any:
        """Rotation by ``step`` as a product of power-of-two rotations (keys exist for those)."""
        out = ct
        bit = 1
        while step:
            if step & 1:
                out = self._rotate(out, bit)
            step >>= 1
            bit <<= 1
        return out

    def _evaluate_regions(self, cts: Sequence[Any], count: int, regions: int) -> list[Any]:
        """Win counts of a partial batch replicated into ``regions`` regions (PEW2 bodies).

        Accumulator ``a`` holds class ``a * R + k``'s scaled logit in region ``k``; pairs are
        differences of an accumulator and a region-rotated one (``R`` pairs per ciphertext),
        so the linear stage, the rotate-and-sums and the sign evaluations all shrink by about
        ``R``. Each class's win count is then gathered into region 0, where the client reads
        it (the reply is the same as for a one-region batch).
        """
        ev, lay = self._evaluator, self._wide
        size = lay.slots // regions
        classes = lay.classes
        bias = self._wide_state["bias"]
        accs: list[Any] = []
        tmp = sealapi.Ciphertext()
        for a, row in enumerate(self._region_plains(regions)):
            acc = self._row_product(cts, row, tmp)
            if acc is None:
                raise ContextError("a group of classes has all-zero weights; the wide circuit cannot compare them")
            ev.rescale_to_next_inplace(acc)
            for stride in lay.sum_strides:
                ev.add_inplace(acc, self._rotate(acc, stride))
            shift = np.zeros(lay.slots)
            for k in range(regions):
                if a * regions + k < classes:
                    shift[k * size : (k + 1) * size] = bias[a * regions + k]
            ev.add_plain_inplace(acc, self._encode_like(shift.tolist(), acc))
            accs.append(acc)
        rotated: dict[tuple[int, int], Any] = {}

        def moved(b: int, r: int) -> Any:  # accumulator b with region k + r moved to region k
            if r == 0:
                return accs[b]
            if (b, r) not in rotated:
                rotated[(b, r)] = self._rotate_pow2(accs[b], r * size)
            return rotated[(b, r)]

        rng = np.random.default_rng(secrets.randbits(128))
        scale = np.tile(np.repeat(rng.uniform(OUTPUT_SCALE_MIN, 1.0, lay.capacity // regions), lay.block), regions)
        # (sign ciphertext, region) of each unordered pair i < j, with the sign of s_ij there.
        where: dict[tuple[int, int], tuple[int, int, float]] = {}
        signs: list[Any] = []
        for a in range(len(accs)):
            for b in range(a, len(accs)):
                for r in range(regions) if b > a else range(1, regions // 2 + 1):
                    pairs = []
                    for k in range(regions):
                        i, j = a * regions + k, b * regions + (k + r) % regions
                        if i < classes and j < classes and i != j and (min(i, j), max(i, j)) not in where:
                            pairs.append((k, i, j))
                    if not pairs:
                        continue
                    diff = sealapi.Ciphertext()
                    ev.sub(accs[a], moved(b, r), diff)
                    # Rescaled now: gathering them into region 0 then rotates at the last level,
                    # the cheapest key switch (its noise, at the 2^37 scale, is far below the flood).
                    signs.append(self._signs(diff, rescale=True, scale=scale))
                    for k, i, j in pairs:
                        where[(min(i, j), max(i, j))] = (len(signs) - 1, k, 1.0 if i < j else -1.0)
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

    def _onehot_wide(self, halves: dict[tuple[int, int], Any], i: int) -> Any:
        """``prod_{j != i} (1 + s_ij) / 2`` from ``s_ij / 2`` of the pairs ``i < j``."""
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
        return self._balanced_product(factors)

    def evaluate_wide_batch(self, body: bytes) -> bytes:
        """Evaluate a wide batch body from :meth:`PrivateClient.encrypt_wide_batch`.

        Returns a framed reply of one ciphertext per class (win-count sums, query ``b`` in
        slot ``b * block``; every other slot flooded with noise). Raises
        :class:`~crypto.ckks.CiphertextError` for bodies of another layout (a single-layout
        ciphertext or PEB1 batch, another block size or chunk count), malformed, truncated,
        oversize or foreign ciphertexts, :class:`~crypto.ckks.ContextError` when the
        session's keys lack the wide layout's rotations, and
        :class:`~crypto.packing.LayoutError` for hidden-layer heads (single layout only).
        """
        _refuse_wide(self._artifact.head)
        lay = self._wide
        count, blobs = decode_wide(body, layout=lay, items=lay.chunks, max_bytes=self._max_wide_bytes)
        n = self._preset.poly_modulus_degree
        missing = [s for s in lay.sum_strides if s < lay.slots and not self._galois.has_key(galois_element(s, n))]
        if missing:
            raise ContextError(f"evaluation keys lack the rotations {missing} of the wide layout")
        regions = 1
        if bytes(body[:4]) == _WIDE_REGIONS_MAGIC:
            if self._onehot:
                raise CiphertextError("one-hot ensembles take wide bodies in one region (PEW1)")
            regions = packing.wide_regions(lay, count)
            n_keys = [s for s in lay.region_steps if not self._galois.has_key(galois_element(s, n))]
            if n_keys and regions > 1:
                raise ContextError(f"evaluation keys lack the rotations {n_keys} of partial wide batches")
        cts = [self._load_query(b) for b in blobs]
        results = self._evaluate_regions(cts, count, regions) if regions > 1 else self._evaluate_wide(cts, count)
        return encode_wide([self._dump_reply(ct) for ct in results], layout=lay, count=count)

    def __reduce__(self) -> NoReturn:
        raise TypeError("EnsembleEvaluator holds the owner's weights; rebuild it from the artifact")
