"""Client role: the secret key, encryption of embeddings, and decoding of the server's replies.

    client = PrivateClient(spec=art.public_spec())            # keygen on the client
    keys = client.evaluation_keys()                            # public: what the server gets
    reply = server_evaluate(client.encrypt(embeddings))        # embeddings: (K, d)
    scores = client.decrypt_result(reply)                      # scores.labels[0], scores.win_counts

The client learns per-class win counts (score mode) or one-hot values (``output: "onehot"``
in the public spec) but neither the heads' weights nor per-member logits. A client can be
reopened from its saved secret context; it cannot be pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sealapi

from crypto import argmax, packing
from crypto.ckks import (
    CiphertextError,
    ContextError,
    _decode_parameters,
    _parse_fields,
    get_preset,
    level_with,
    load_ckks_vector,
    make_context,
    public_context_bytes,
)
from crypto.private_inference import label as labels
from crypto.private_inference import spec as specs
from crypto.private_inference.wire import decode_wide, encode_wide, vector_message
from crypto.seal_bridge import seal_from_bytes, seal_to_bytes

__all__ = [
    "WIDE_MAX_CIPHERTEXTS_PER_QUERY",
    "WIDE_MIN_QUERIES",
    "PrivateClient",
    "PrivateScores",
]

#: The SDK's automatic choice of the wide layout (see :meth:`PrivateClient.prefers_wide`).
#: At K=8 x 384-d a body of up to 8 queries spread over 8 regions costs the server ~0.25 s of
#: CPU whatever their number; the single layout ~0.15 s per query.
WIDE_MIN_QUERIES = 4
WIDE_MAX_CIPHERTEXTS_PER_QUERY = 4


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
        if output in ("onehot", "label"):
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

    def __init__(
        self, *, spec: dict[str, Any], secret_context: bytes | None = None, evaluation_keys: bytes | None = None
    ) -> None:
        self._spec = dict(spec)
        self._layout = specs.single_layout(self._spec)
        self._preset = str(self._spec["preset"])
        self._norm_bound = float(self._spec["norm_bound"])
        self._classes = tuple(str(c) for c in self._spec["classes"])
        self._head = specs.head_kind(self._spec)
        self._output = specs.output_mode(self._spec)
        specs.sign_rounds(self._spec)  # refuse a spec whose preset cannot run its output mode
        self._wide = specs.wide_layout(self._spec)
        # A server's spec lists the layouts it serves; a bare artifact spec predates the list.
        layouts = self._spec.get("layouts")
        self._serves_wide = (self._head == "linear" and (layouts is None or "wide" in layouts)
                             and specs.label_wide_refusal(self._spec) is None)
        served_wide = self._spec.get("wide_layout")
        self._wide_kept = specs.wide_kept(self._spec)
        # A server before wide rotations from the single layout's keys lists the wide layout
        # beyond N=8192 only for shapes whose keys the client would not send.
        self._wide_predates = (not self._wide_kept and isinstance(served_wide, dict)
                               and not served_wide.get("single_keys"))
        self._serves_wide = self._serves_wide and not self._wide_predates
        # Partial batches go in regions (PEW2/PEW3) unless a server's spec predates them ...
        self._regions_ok = not isinstance(served_wide, dict) or int(served_wide.get("max_regions") or 1) > 1
        # ... spread over the regions (PEW3, R times fewer ciphertexts) unless it predates that.
        self._spread_ok = not isinstance(served_wide, dict) or bool(served_wide.get("spread_regions"))
        # One session serves both layouts: keys for the union of their rotation steps (the
        # single layout's only for hidden-layer heads, which the wide layout does not serve,
        # and beyond N=8192, where the server makes the wide rotations from them, see
        # specs.WIDE_KEPT_SLOTS). One-hot bodies, and every body beyond N=8192, stay in one
        # region, so they need no region moves.
        wide_steps: tuple[int, ...] = ()
        if self._serves_wide and self._wide_kept:
            # (Region moves for win counts and labels, whose partial batches go in regions.)
            wide_steps = self._wide.galois_steps if self._output in ("scores", "label") else self._wide.sum_strides
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
        does not expose it, so the key crosses into ``sealapi`` through
        :mod:`crypto.seal_bridge`'s private RAM-backed scratch file, deleted at once.
        """
        if self._sym is None:
            raw = self._ctx.serialize(
                save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
            )
            params_blob = next(v for f, w, v in _parse_fields(raw) if f == 1 and w == 2)
            assert isinstance(params_blob, bytes)
            parms = seal_from_bytes(
                sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS), params_blob, max_bytes=len(params_blob)
            )
            seal_ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
            secret_blob = seal_to_bytes(self._ctx.data.secret_key())
            secret = seal_from_bytes(sealapi.SecretKey(), secret_blob, seal_ctx, max_bytes=len(secret_blob))
            self._sym = (seal_ctx, sealapi.Encryptor(seal_ctx, secret), sealapi.CKKSEncoder(seal_ctx))
        return self._sym

    def _encrypt_values(self, values: npt.NDArray[np.float64], *, primes: int | None = None) -> bytes:
        """One CKKS vector of ``values`` (all slots) in TenSEAL's wire form, secret-key encrypted,
        at the top level or at the level of ``primes`` primes (smaller, cheaper to evaluate)."""
        seal_ctx, encryptor, encoder = self._secret_encryptor()
        pt = sealapi.Plaintext()
        scale = 2.0 ** get_preset(self._preset).global_scale_bits
        level = level_with(seal_ctx.first_context_data(), primes)
        encoder.encode(np.asarray(values, dtype=np.float64).tolist(), level.parms_id(), scale, pt)
        return vector_message(len(values), seal_to_bytes(encryptor.encrypt_symmetric(pt)), scale)

    @property
    def layout(self) -> packing.EnsembleLayout:
        """Slot layout shared with the server."""
        return self._layout

    @property
    def layout_digest(self) -> str:
        """The digest of this client's single layout, sent when it opens a session
        (:func:`~crypto.private_inference.spec.layout_digest`)."""
        return specs.layout_digest(self._layout)

    @property
    def batch_capacity(self) -> int:
        """Queries packed into one ciphertext by :meth:`encrypt_batch`."""
        return self._layout.queries_per_ciphertext

    def secret_context(self) -> bytes:
        """The context WITH its secret key (no Galois keys), to reopen this client later with
        ``PrivateClient(spec=..., secret_context=..., evaluation_keys=...)``; never send it
        anywhere, and store it only encrypted."""
        return bytes(
            self._ctx.serialize(
                save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
            )
        )

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

    def _open_reply(self, data: bytes) -> npt.NDArray[np.float64]:
        vec = load_ckks_vector(
            self._ctx, data, expected_size=self._layout.slots, max_bytes=specs.max_query_bytes(self._preset)
        )
        return np.asarray(vec.decrypt(), dtype=np.float64)

    def _need_label(self, wanted: bool) -> None:
        if (self._output == "label") != wanted:
            raise CiphertextError(
                "the label output answers in two rounds: label_selection(reply), then decrypt_label(reply)"
                if not wanted else f"this ensemble's output is {self._output!r}, not the two-round label")

    def label_selection(self, reply: bytes) -> bytes:
        """Round 2 of the label output (:mod:`crypto.private_inference.label`): from the server's
        round-1 reply, the encrypted selection of the anonymous winner, with the reply's ticket.
        Post it like a query; :meth:`decrypt_label` opens the answer."""
        self._need_label(True)
        ticket, message = labels.decode_ticketed(labels.REPLY_MAGIC, reply)
        values = self._open_reply(message)[labels.round1_keep(self._layout)]
        classes, slots = len(self._classes), self._layout.slots
        winner = labels.tournament(values, classes)
        selection = self._encrypt_values(labels.selection_slots(classes, slots, winner), primes=labels.SELECTION_PRIMES)
        return labels.encode_ticketed(labels.SELECT_MAGIC, ticket, selection)

    def label_wide_selection(self, reply: bytes, *, count: int) -> bytes:
        """Round 2 for a wide batch of ``count`` queries (the round-1 reply to
        :meth:`encrypt_wide_batch`): one ciphertext selecting each query's anonymous winner,
        with the reply's ticket. Post it with ``layout=wide``; :meth:`decrypt_wide_label` opens
        the answer."""
        self._need_label(True)
        classes = len(self._classes)
        ticket, message = labels.decode_ticketed(labels.REPLY_MAGIC, reply)
        values = self._open_reply(message)[labels.wide_pair_slots(self._wide, self._count(count))]
        _, first, second = labels.wide_pairs(classes)
        winners = np.array([labels.tournament(row, classes, (first, second)) for row in values], dtype=np.int64)
        selection = self._encrypt_values(labels.wide_selection_slots(winners, classes, self._wide),
                                         primes=labels.SELECTION_PRIMES)
        return labels.encode_ticketed(labels.SELECT_MAGIC, ticket, selection)

    def decrypt_wide_label(self, reply: bytes, *, count: int) -> PrivateScores:
        """The labels of a wide batch of ``count`` queries from the round-2 reply (``one_hot``
        ``(count, C)``, as :meth:`decrypt_label`)."""
        self._need_label(True)
        values = self._open_reply(reply)[labels.wide_slots(self._wide, self._count(count), len(self._classes))]
        return PrivateScores.decode(values, output="label", class_names=self._classes)

    def _count(self, count: int) -> int:
        if not 1 <= count <= self._wide.capacity:
            raise CiphertextError(f"count must lie in [1, {self._wide.capacity}]")
        return count

    def decrypt_label(self, reply: bytes) -> PrivateScores:
        """The label from the server's round-2 reply: ``one_hot`` ``(1, C)``, 1 on the label's
        class and 0 elsewhere (up to the flooding noise)."""
        self._need_label(True)
        values = self._open_reply(reply)[None, : len(self._classes)]
        return PrivateScores.decode(values, output="label", class_names=self._classes)

    def decrypt_result(self, data: bytes, *, count: int = 1) -> PrivateScores:
        """Decrypt one evaluator reply holding ``count`` queries into labels and win counts
        (or one-hot values, by the ensemble's :attr:`output`)."""
        self._need_label(False)
        if not 1 <= count <= self.batch_capacity:
            raise CiphertextError(f"count must lie in [1, {self.batch_capacity}]")
        raw = packing.score_slots(self._open_reply(data), self._layout, count)
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

    def _no_wide(self) -> str:
        if self._wide_predates:
            return f"it predates wide batches that need no keys of their own (N={2 * self._wide.slots})"
        return f"its spec lists only {self._spec.get('layouts')}"

    def prefers_wide(self, count: int) -> bool:
        """Whether ``count`` queries are better sent in the wide layout than the single one.

        True from :data:`WIDE_MIN_QUERIES` queries on, as long as the wide bodies upload at
        most :data:`WIDE_MAX_CIPHERTEXTS_PER_QUERY` ciphertexts per query (about 1.6 MB at
        n8192-d3, within the 2 MB per-query budget). At K=8 x 384-d this means 4 or more
        (a partial batch spread over its regions is 6 to 24 ciphertexts), or 12 or more for a
        server that takes partial batches replicated (48 ciphertexts at any size).
        Beyond N=8192 (one-hot presets) bodies stay in one region: at K=8 x 384-d that is 48
        ciphertexts, so 12 queries or more (a batch of 128 costs the server ~0.05-0.07 s of CPU
        per query at n16384-d7, against ~1 s for a single-layout query). Always false where the
        spec's ``layouts`` (a server's spec) omits ``"wide"`` and for hidden-layer heads (the
        wide layout serves linear heads only).
        """
        if count < WIDE_MIN_QUERIES or not self._serves_wide:
            return False
        full, rest = divmod(count, self._wide.capacity)
        wide_cts = full * self._wide.chunks + (self._wide_rows(rest) if rest else 0)
        return wide_cts <= WIDE_MAX_CIPHERTEXTS_PER_QUERY * count

    def _regions(self, count: int) -> tuple[int, bool]:
        """Regions of a wide body of ``count`` queries and whether it is spread over them."""
        regions = 1
        if self._output in ("scores", "label") and self._regions_ok and self._wide_kept and count >= 1:
            regions = packing.wide_regions(self._wide, count)
        return regions, regions > 1 and self._spread_ok

    def _wide_rows(self, count: int) -> int:
        """Ciphertexts in the wide body of ``count`` queries."""
        regions, spread = self._regions(count)
        return packing.spread_rows(self._wide, regions) if spread else self._wide.chunks

    def encrypt_wide_batch(self, embeddings: npt.ArrayLike) -> bytes:
        """Encrypt ``(Q, K, d)`` embeddings (``1 <= Q <= wide_capacity``) in the wide layout.

        Returns one framed body (:func:`~crypto.private_inference.wire.encode_wide`) of
        ``wide_layout.chunks`` ciphertexts, for :meth:`EnsembleEvaluator.evaluate_wide_batch`;
        ``R`` times fewer for a partial batch spread over ``R`` regions. Raises
        :class:`~crypto.packing.LayoutError` for hidden-layer heads.
        """
        specs.refuse_wide(self._head)
        if not self._serves_wide:
            raise packing.LayoutError(
                f"the server does not serve the wide layout for this ensemble: "
                f"{self._spec.get('wide_refusal') or self._no_wide()}",
                hint="send single-layout ciphertexts (encrypt / encrypt_batch, layout=single)",
            )
        emb = np.asarray(embeddings, dtype=np.float64)
        count = int(emb.shape[0]) if emb.ndim == 3 else 0
        # A partial batch of win counts goes in regions: the server then evaluates several
        # classes and pairs per operation. Spread over them (PEW3), each ciphertext carries R
        # pieces; servers before that take it replicated (PEW2). One-hot bodies stay in one region.
        regions, spread = self._regions(count)
        rows = packing.pack_wide(emb, self._wide, norm_bound=self._norm_bound, regions=regions, spread=spread)
        blobs = [self._encrypt_values(row) for row in rows]
        return encode_wide(blobs, layout=self._wide, count=count, regions=regions, spread=spread)

    def decrypt_wide_batch(self, reply: bytes, *, count: int) -> PrivateScores:
        """Decrypt the reply to a wide batch of ``count`` queries (as :meth:`decrypt_result`)."""
        self._need_label(False)
        specs.refuse_wide(self._head)
        lay = self._wide
        self._count(count)
        got, blobs = decode_wide(reply, layout=lay, items=lay.classes, max_bytes=specs.max_wide_bytes(self._preset))
        if got != count:
            raise CiphertextError(f"the reply is for {got} queries, expected {count}")
        per_class = np.stack([self._open_reply(b) for b in blobs])  # the wide layout has the same slots
        raw = packing.wide_score_slots(per_class, lay, count)
        return PrivateScores.decode(raw, output=self._output, class_names=self._classes)

    def __repr__(self) -> str:
        return f"PrivateClient(preset={self._preset!r}, classes={len(self._classes)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("PrivateClient holds a secret key and cannot be pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError("PrivateClient holds a secret key and cannot be serialized")
