"""Server role: the owner's ensemble evaluated on a client's ciphertexts, with public keys only.

    evaluator = EnsembleEvaluator(artifact=art, public_context=client_keys)   # once per session
    reply = evaluator.evaluate(query)                                         # single layout
    reply = evaluator.evaluate_wide_batch(body)                               # PEW1 / PEW2 / PEW3 body
    other = evaluator.with_session(other_keys)                                # shares the weights

The evaluator checks the session's keys (no secret key, the artifact's parameters, every
rotation the circuit needs), encodes the owner's weights once as SEAL plaintexts, reads
queries straight into SEAL and runs :mod:`crypto.private_inference.circuits` on them. It
never holds a secret key and cannot be pickled (it holds the owner's weights).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from crypto import packing
from crypto.ckks import (
    CiphertextError,
    ContextError,
    _parse_fields,
    check_public_context,
    galois_element,
    get_preset,
    level_with,
)
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference import label as labels
from crypto.private_inference import spec as specs
from crypto.private_inference.circuits import LABEL_FLOOD, Circuit, SealKeys, SingleWeights
from crypto.private_inference.wire import (
    WIDE_MAGICS,
    WIDE_REGIONS_MAGIC,
    WIDE_SPREAD_MAGIC,
    decode_wide,
    encode_wide,
    read_vector_message,
    vector_message,
)
from crypto.seal_bridge import SealBridgeError, seal_from_bytes, seal_to_bytes

__all__ = ["EnsembleEvaluator"]


def _same_parameters(context: Any, parms: Any) -> bool:
    """Whether ``parms`` are the CKKS parameters ``context`` was built from (ring degree and
    every prime of the modulus chain, special prime included)."""
    mine = context.key_context_data().parms()
    return bool(
        parms.scheme() == mine.scheme()
        and parms.poly_modulus_degree() == mine.poly_modulus_degree()
        and [q.value() for q in parms.coeff_modulus()] == [q.value() for q in mine.coeff_modulus()]
    )


class EnsembleEvaluator:
    """Server role: evaluates the ensemble on ciphertexts with public evaluation keys only.

    ``public_context`` must be the bytes of :meth:`PrivateClient.evaluation_keys`; anything
    holding a secret key, of other parameters, or lacking a needed Galois key raises
    :class:`~crypto.ckks.ContextError`. Plaintext weights are encoded once here
    (:func:`~crypto.private_inference.spec.encoded_weight_bytes`); pass ``shared`` (an evaluator
    of the same artifact and single layout) to reuse them for another session's keys.
    ``layout`` is one of :func:`~crypto.private_inference.spec.session_layouts` (the one an
    older client packs in, see :func:`~crypto.private_inference.spec.session_layout`);
    by default the spec's own.
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
        layout: packing.EnsembleLayout | None = None,
    ) -> None:
        if isinstance(public_context, ts.Context):
            secret = "a secret-key " if public_context.has_secret_key() else "a "
            raise ContextError(f"the evaluator takes public context bytes, not {secret}context object")
        if not isinstance(public_context, (bytes, bytearray)):
            raise ContextError("public_context must be bytes")
        self._artifact = artifact
        self._preset = get_preset(artifact.preset)
        factor = specs.size_factor(artifact.preset)
        self._max_query_bytes = max_query_bytes or specs.DEFAULT_MAX_QUERY_BYTES * factor
        self._max_wide_bytes = max_wide_bytes or specs.DEFAULT_MAX_WIDE_BYTES * factor
        spec = artifact.public_spec()
        self._wide = specs.wide_layout(spec)
        self._layout = specs.single_layout(spec) if layout is None else layout
        if layout is not None and layout not in specs.session_layouts(spec):
            raise ContextError("the evaluator serves the single layouts of specs.session_layouts only")
        self._hidden = artifact.head == "quadratic_mlp"
        self._onehot = specs.output_mode(spec) == "onehot"
        self._label = specs.output_mode(spec) == "label"
        self._label_wide_refusal = specs.label_wide_refusal(spec)
        #: Label output: the secret permutations of round-1 answers awaiting their selection.
        self.pending = labels.PendingTickets()
        self._wide_kept = specs.wide_kept(spec)
        self._rounds = specs.sign_rounds(spec)
        # Checked (no secret key, the preset's parameters, a public key) without building a
        # TenSEAL context: the circuit runs on the SEAL objects of _load_seal, whose loaders
        # validate the keys, and a TenSEAL copy would parse and expand every key twice.
        check_public_context(
            bytes(public_context),
            preset=artifact.preset,
            max_bytes=max_context_bytes or specs.DEFAULT_MAX_CONTEXT_BYTES * factor,
        )
        keys = self._load_seal(bytes(public_context), shared)
        self._seal = keys
        self._circuit = Circuit(
            seal=keys,
            preset=self._preset,
            rounds=self._rounds,
            hidden=self._hidden,
            onehot=self._onehot,
            # Rotations after the rescale only where the scale keeps key-switching noise small.
            late_rescale=self._preset.global_scale_bits < 35 or self._hidden,
            layout=self._layout,
            wide=self._wide,
        )
        if (
            shared is not None
            and shared._artifact is artifact
            and shared._layout == self._layout
            and shared._seal.context.first_parms_id() == self._seal.context.first_parms_id()
        ):
            self._bound = shared._bound
            self._weights = shared._weights
            self._wide_state = shared._wide_state
            return
        self._weights, self._bound = self._encode_single(artifact)
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

    _seal: SealKeys
    _bound: float
    _weights: SingleWeights
    _wide_state: dict[str, Any]

    def _encode_single(self, artifact: EnsembleArtifact) -> tuple[SingleWeights, float]:
        """The single layout's weights as plaintexts at their levels, and the comparison bound."""
        lay, circuit = self._layout, self._circuit
        first = self._seal.context.first_context_data()
        if self._hidden:
            assert artifact.hidden_weights is not None and artifact.hidden_biases is not None
            assert artifact.activation is not None
            stage1, bias1, matrix, bias, bound = packing.hidden_matrices(
                artifact.hidden_weights,
                artifact.hidden_biases,
                artifact.weights,
                artifact.biases,
                artifact.activation,
                norm_bound=artifact.norm_bound,
                layout=lay,
            )
            hidden_diagonals = circuit.encode_diagonals(packing.hidden_diagonals(stage1, lay), first)
            hidden_bias = packing.hidden_bias_slots(bias1, lay)
            # Stage 2 runs two levels down (after stage 1 and the square).
            diagonals = circuit.encode_diagonals(
                packing.diagonals(matrix, lay), first.next_context_data().next_context_data()
            )
        else:
            scale = artifact.effective_comparison_scale()
            matrix, bias, bound = packing.difference_matrix(
                artifact.weights, artifact.biases, norm_bound=artifact.norm_bound, layout=lay, scale=scale
            )
            diagonals = circuit.encode_diagonals(packing.diagonals(matrix, lay), first)
            hidden_diagonals, hidden_bias = [], np.zeros(0)
        weights = SingleWeights(
            diagonals=diagonals,
            bias=packing.bias_slots(bias, lay),
            hidden_diagonals=hidden_diagonals,
            hidden_bias=hidden_bias,
            keep=packing.output_mask(lay),
            onehot_constants=packing.onehot_constants(lay).tolist() if self._onehot else [],
            signs=packing.pair_signs(lay) if lay.pairs else None,
        )
        return weights, bound

    def with_session(self, public_context: bytes) -> EnsembleEvaluator:
        """Evaluator for another session's evaluation keys (in the same single layout), sharing
        the encoded weights."""
        return EnsembleEvaluator(
            artifact=self._artifact,
            public_context=public_context,
            max_query_bytes=self._max_query_bytes,
            max_wide_bytes=self._max_wide_bytes,
            shared=self,
            layout=self._layout,
        )

    def _load_seal(self, data: bytes, shared: EnsembleEvaluator | None = None) -> SealKeys:
        """The session's SEAL context and evaluation keys, loaded (and so validated) by SEAL.

        A sibling session's context, evaluator and encoder are reused where the parameters are
        the same: they hold no key, and a SEALContext's precomputed tables cost ~55 MB at
        N=16384 with 8 primes (~9 MB at n8192-d3) per session otherwise.
        """
        try:
            top = {f: v for f, _, v in _parse_fields(data)}
            public_blob = top[2]
            if not isinstance(public_blob, bytes) or not isinstance(top[1], bytes):
                raise ValueError("public context is not a message")
            public = {f: v for f, _, v in _parse_fields(public_blob)}
        except (KeyError, ValueError):
            raise ContextError("malformed public context") from None
        params_blob, public_key, relin_blob, galois_blob = top[1], public.get(1), public.get(4), public.get(5)
        if not isinstance(relin_blob, bytes) or not isinstance(galois_blob, bytes):
            raise ContextError("evaluation keys must include relinearisation and Galois keys")
        if not isinstance(public_key, bytes):
            raise ContextError("context has no public key")
        parms = seal_from_bytes(
            sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS), params_blob, max_bytes=len(data)
        )
        base = shared._seal if shared is not None else None
        if base is not None and _same_parameters(base.context, parms):
            seal_ctx, evaluator, encoder = base.context, base.evaluator, base.encoder
        else:
            seal_ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
            if not seal_ctx.parameters_set():
                raise ContextError("CKKS parameters are not valid at 128-bit security")
            evaluator, encoder = sealapi.Evaluator(seal_ctx), sealapi.CKKSEncoder(seal_ctx)
        try:
            pk = seal_from_bytes(sealapi.PublicKey(), public_key, seal_ctx, max_bytes=len(data))
        except SealBridgeError:
            raise ContextError("the public key is malformed or of other parameters") from None
        try:
            relin = seal_from_bytes(sealapi.RelinKeys(), relin_blob, seal_ctx, max_bytes=len(data))
            galois = seal_from_bytes(sealapi.GaloisKeys(), galois_blob, seal_ctx, max_bytes=len(data))
        except SealBridgeError:
            raise ContextError("relinearisation or Galois keys are malformed") from None
        n = self._preset.poly_modulus_degree
        missing = [s for s in self._layout.galois_steps if not galois.has_key(galois_element(s, n))]
        if missing:
            raise ContextError(f"evaluation keys lack the rotations {missing} the circuit needs")
        return SealKeys(
            context=seal_ctx,
            evaluator=evaluator,
            encoder=encoder,
            relin=relin,
            galois=galois,
            encryptor=sealapi.Encryptor(seal_ctx, pk),
        )

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

    # -- ciphertexts in and out ------------------------------------------------------------

    def _load_query(self, data: bytes, *, primes: int | None = None) -> Any:
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
        size, blob, scale = read_vector_message(data)
        if size != self._layout.slots:
            raise CiphertextError(f"ciphertext packs {size} values, expected {self._layout.slots}")
        expected_scale = 2.0**self._preset.global_scale_bits
        if not abs(scale - expected_scale) <= 1e-6 * expected_scale:
            raise CiphertextError("query ciphertext has an unexpected scale")
        try:
            ct = seal_from_bytes(sealapi.Ciphertext(), blob, self._seal.context, max_bytes=len(data))
        except SealBridgeError:
            raise CiphertextError("malformed or truncated ciphertext, or one for other parameters") from None
        if ct.size() != 2:
            raise CiphertextError(f"ciphertext has {ct.size()} polynomials, expected 2")
        if ct.parms_id() != level_with(self._seal.context.first_context_data(), primes).parms_id():
            where = "the top level of the chain" if primes is None else f"the level of {primes} primes (a selection)"
            raise CiphertextError(f"query ciphertext is not at {where}")
        if not abs(ct.scale - expected_scale) <= 1e-6 * expected_scale:
            raise CiphertextError("query ciphertext has an unexpected scale")
        return ct

    def _dump_reply(self, ct: Any) -> bytes:
        return vector_message(self._layout.slots, seal_to_bytes(ct), ct.scale)

    # -- single layout -----------------------------------------------------------------------

    def evaluate(self, query: bytes) -> bytes:
        """Evaluate the ensemble and encrypted argmax on one query ciphertext; return ciphertext.

        Raises :class:`~crypto.ckks.CiphertextError` for malformed, truncated, oversize or
        foreign ciphertexts. The same call serves batch ciphertexts from ``encrypt_batch``.
        """
        if self._label:
            return self._evaluate_label(query)
        return self._dump_reply(self._circuit.single(self._load_query(query), self._weights))

    def _evaluate_label(self, data: bytes) -> bytes:
        """Label output (:mod:`crypto.private_inference.label`): a query ciphertext gets round 1
        (``PEL1``: a ticket and the permuted, masked pair values), a ``PES1`` selection with
        its ticket gets round 2 (the one-hot label). A ticket serves one selection."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CiphertextError(f"ciphertext must be bytes, got {type(data).__name__}")
        data = bytes(data)
        classes, slots = self._layout.classes, self._layout.slots
        if data[: len(labels.SELECT_MAGIC)] == labels.SELECT_MAGIC:
            selection, perm = self._redeem_selection(data, wide=False)
            reply = self._circuit.label_round2(
                selection, labels.round2_mask(classes, slots, perm), labels.round2_strides(classes), classes
            )
            return self._dump_reply(reply)
        query = self._load_query(data)
        perm, factors = labels.draw(classes, np.random.default_rng(secrets.randbits(128)))
        mask = labels.round1_mask(self._layout, perm, factors)
        reply = self._circuit.label_round1(query, self._weights, mask, factors)
        return labels.encode_ticketed(labels.REPLY_MAGIC, self.pending.issue(perm), self._dump_reply(reply))

    def _redeem_selection(self, data: bytes, *, wide: bool) -> tuple[Any, Any]:
        """A round-2 body's selection ciphertext (validated, at its level) and the permutation
        under its ticket, which is used up; :class:`CiphertextError` where the ticket answered
        the other layout (one permutation per query in a wide batch)."""
        ticket, message = labels.decode_ticketed(labels.SELECT_MAGIC, data)
        selection = self._load_query(message, primes=labels.SELECTION_PRIMES)
        perm = self.pending.redeem(ticket)
        if perm.ndim != (2 if wide else 1):
            raise CiphertextError("this ticket answers a single-layout query: post its selection without layout=wide"
                                  if wide else "this ticket answers a wide batch: post its selection with layout=wide")
        return selection, perm

    def evaluate_batch(self, queries: Sequence[bytes]) -> list[bytes]:
        """Evaluate every ciphertext of :meth:`PrivateClient.encrypt_batch`, in order."""
        return [self.evaluate(q) for q in queries]

    # -- wide batch layout -------------------------------------------------------------------

    def _wide_plains(self) -> Sequence[Iterable[Any]]:
        """Plaintext weight pieces ``[class][chunk]`` (``None`` where all zero): encoded once
        and kept, or beyond :data:`~crypto.private_inference.spec.WIDE_KEPT_SLOTS` encoded
        piece by piece as the batch's products consume them."""
        state = self._wide_state
        if not self._wide_kept:
            return self._circuit.encode_wide_weights(state["weights"], lazy=True)
        if state["plain"] is None:
            state["plain"] = self._circuit.encode_wide_weights(state["weights"])
        return state["plain"]  # type: ignore[no-any-return]

    def _region_plains(self, regions: int, *, spread: bool) -> list[Any]:
        """Plaintext weight pieces per accumulator of ``regions`` regions, for replicated
        (PEW2) or spread (PEW3) bodies; encoded once per region count and body kind, and
        shared with sibling sessions."""
        state = self._wide_state
        cache = state.setdefault("regions", {})
        if (regions, spread) not in cache:
            encode = self._circuit.encode_spread_weights if spread else self._circuit.encode_region_weights
            cache[(regions, spread)] = encode(state["weights"], regions)
        return cache[(regions, spread)]  # type: ignore[no-any-return]

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
        specs.refuse_wide(self._artifact.head)
        if self._label:
            if self._label_wide_refusal is not None:
                raise packing.LayoutError(self._label_wide_refusal,
                                          hint="send single-layout ciphertexts (layout=single)")
            self._check_wide_keys()
            return self._evaluate_label_wide(body)
        lay = self._wide
        count, blobs = decode_wide(body, layout=lay, items=None, max_bytes=self._max_wide_bytes)
        self._check_wide_keys()
        regions, spread = 1, bytes(body[:4]) == WIDE_SPREAD_MAGIC
        if spread or bytes(body[:4]) == WIDE_REGIONS_MAGIC:
            regions = self._regions_allowed(count)
        bias = self._wide_state["bias"]
        if regions > 1:
            cts = [self._load_query(b) for b in blobs]
            plains = self._region_plains(regions, spread=spread)
            results = self._circuit.regions(cts, count, regions, plains, bias, spread=spread)
        else:  # each ciphertext loaded as the circuit reaches it (one alive at a time)
            results = self._circuit.wide((self._load_query(b) for b in blobs), count, self._wide_plains(), bias)
        return encode_wide([self._dump_reply(ct) for ct in results], layout=lay, count=count)

    def _regions_allowed(self, count: int) -> int:
        """The regions of a partial wide batch of ``count`` queries (PEW2/PEW3 bodies); raises
        where the output mode or the preset takes wide bodies in one region only, or the keys
        lack the region moves."""
        lay, n = self._wide, self._preset.poly_modulus_degree
        if self._onehot or not self._wide_kept:
            raise CiphertextError(f"{'one-hot ensembles' if self._onehot else f'presets of N={n}'} "
                                  "take wide bodies in one region (PEW1)")
        regions = packing.wide_regions(lay, count)
        missing = [s for s in lay.region_steps if not self._seal.galois.has_key(galois_element(s, n))]
        if missing and regions > 1:
            raise ContextError(f"evaluation keys lack the rotations {missing} of partial wide batches")
        return regions

    def _check_wide_keys(self) -> None:
        """Raise :class:`~crypto.ckks.ContextError` unless the session's keys make the wide
        layout's block sums: its own keys where the client sends them, else from the single
        layout's keys."""
        lay, n = self._wide, self._preset.poly_modulus_degree

        def held(step: int) -> bool:
            if self._wide_kept:  # the client sends the wide layout's own keys
                return bool(self._seal.galois.has_key(galois_element(step, n)))
            return self._circuit.can_rotate(step)  # made from the single layout's keys

        missing = [s for s in lay.sum_strides if s < lay.slots and not held(s)]
        if missing:
            raise ContextError(f"evaluation keys lack the rotations {missing} of the wide layout")

    def _evaluate_label_wide(self, body: bytes) -> bytes:
        """The label output for a wide batch: a wide body (one region, PEW1, or a partial batch
        in regions, PEW2/PEW3) gets round 1 (``PEL1``: a ticket and one ciphertext, pair ``q``
        of query ``b`` in slot ``b * block - q``), a ``PES1`` selection with its ticket gets
        round 2 (one ciphertext, class ``c`` of query ``b`` in slot ``b * block - c``)."""
        lay, classes = self._wide, self._wide.classes
        data = bytes(body)
        if data[: len(labels.SELECT_MAGIC)] == labels.SELECT_MAGIC:
            selection, perms = self._redeem_selection(data, wide=True)
            keep = np.zeros(lay.slots, dtype=bool)
            keep[labels.wide_slots(lay, perms.shape[0], classes).ravel()] = True
            reply = self._circuit.label_wide_round2(selection, labels.wide_shift_masks(perms, lay), keep)
            return self._dump_reply(reply)
        count, blobs = decode_wide(data, layout=lay, items=None, max_bytes=self._max_wide_bytes)
        slots = labels.wide_pair_slots(lay, count)
        perms, factors = labels.draw_wide(count, classes, np.random.default_rng(secrets.randbits(128)))
        bias = self._wide_state["bias"]
        if data[:4] == WIDE_MAGICS[0]:
            logits = self._circuit.wide_logits((self._load_query(b) for b in blobs), self._wide_plains())
            biases: list[Any] | None = labels.wide_biases(perms, bias, lay)
        else:
            spread = data[:4] == WIDE_SPREAD_MAGIC
            regions = self._regions_allowed(count)
            cts = [self._load_query(b) for b in blobs]
            plains = self._region_plains(regions, spread=spread)
            logits, biases = self._circuit.region_logits(cts, regions, plains, bias, spread=spread), None
        keep, amplitudes = np.zeros(lay.slots, dtype=bool), np.zeros(lay.slots)
        keep[slots.ravel()] = True
        amplitudes[slots.ravel()] = (factors * LABEL_FLOOD).ravel()
        reply = self._circuit.label_wide_round1(
            logits, labels.wide_selections(perms, lay), biases, labels.wide_gap_factors(factors, lay), keep, amplitudes)
        return labels.encode_ticketed(labels.REPLY_MAGIC, self.pending.issue(perms), self._dump_reply(reply))

    def __reduce__(self) -> NoReturn:
        raise TypeError("EnsembleEvaluator holds the owner's weights; rebuild it from the artifact")
