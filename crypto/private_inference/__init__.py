"""Private ensemble inference: client (keys, encrypt, decrypt) and server evaluator (no secret key).

Three roles, as in Concrete-ML's deployment split::

    from crypto.ensemble import EnsembleArtifact                 # owner, server-side only
    from crypto.private_inference.client import PrivateClient    # keygen on the client
    from crypto.private_inference.server import EnsembleEvaluator

    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art,                  # server, once per session
                                  public_context=client.evaluation_keys())
    reply = evaluator.evaluate(client.encrypt(embeddings))       # embeddings: (K, d)
    scores = client.decrypt_result(reply)                        # scores.labels[0], scores.win_counts
                                                                 # (or scores.one_hot, by spec output)

Modules (the client and the server never import each other; both build on the rest):

- :mod:`~crypto.private_inference.spec`: what both roles read from the public spec (head,
  output mode, sign rounds, slot layouts, size limits).
- :mod:`~crypto.private_inference.wire`: the bytes exchanged (a ciphertext message, PEB1
  batches, PEW1/PEW2/PEW3 wide bodies).
- :mod:`~crypto.private_inference.circuits`: the homomorphic circuits on SEAL objects.
- :mod:`~crypto.private_inference.client`: :class:`PrivateClient` and :class:`PrivateScores`.
- :mod:`~crypto.private_inference.server`: :class:`EnsembleEvaluator`.
- :mod:`~crypto.private_inference.templates`: client-side embeddings through the templates.
- :mod:`~crypto.private_inference.label`: the two-round label output (permuted, masked pair
  values; the client's selection; tickets).

Label output (``output: "label"``), two requests per query, the client learning the label only::

    reply = evaluator.evaluate(client.encrypt(embeddings))  # round 1: PEL1 (ticket, pair values)
    answer = evaluator.evaluate(client.label_selection(reply))  # round 2: PES1 selection in
    scores = client.decrypt_label(answer)                    # scores.one_hot: exactly one-hot

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
:meth:`~crypto.private_inference.client.PrivateClient.prefers_wide` never picks it for them.

The server sees only ciphertexts and public keys; the client learns per-class win counts
(score mode) or one-hot values (``output: "onehot"`` in the artifact and public spec, the
owner's choice: ``prod_{j != i} (1 + s_ij) / 2``, see :mod:`crypto.argmax`) but neither the
heads' weights nor per-member logits. Every returned slot carries fresh noise: unused slots
uniform noise as large as the headroom allows (no partial sums or products leak), result
slots uniform noise of amplitude :data:`~crypto.private_inference.circuits.OUTPUT_FLOOD`
(1e-4 on comparison sums, ~20x the circuit's CKKS error, so the decrypted value is within
total-variation distance ~0.05 per slot of "exact value + noise"), and win-count sums are
multiplied by a fresh secret factor in [:data:`~crypto.private_inference.circuits.OUTPUT_SCALE_MIN`,
1] per query (folded into the last sign step, no extra level), so the client does not learn
the scale of the logit gaps. The flooding covers what a reply decrypts to; the ciphertext
itself is re-randomised with a fresh encryption of zero under the session's public key (2-4 ms
per reply ciphertext), since otherwise its mask part ``c1`` is a deterministic function of the
query ciphertexts (whose randomness the client chose) and of the owner's weights, which a
client that holds the secret key could collect over many queries and solve for.

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
rotate-and-multiply window over a class block in the single layout, with the block sums'
rotations; a balanced product of the ``C - 1`` factors in the wide layout), so it needs
``n8192-d5`` (linear heads, up to 4 classes), ``n16384-d7`` (linear heads up to 16 classes;
at K=8 x 384-d, 10 classes a query fills the ciphertext and runs in a chunked lane, see
:mod:`crypto.packing`: 64 diagonals, 5 keys of ~39 MB in all, ~1.0-1.2 s CPU per query against
256, 76 MB and ~1.4-1.6 s before), ``n16384-d8`` (hidden heads up to 8 classes) or
``n32768-d18`` (keys ~0.9 GB: local use only, the service refuses such sessions); the
depth left sets the sign compositions ``r`` (:func:`~crypto.private_inference.spec.sign_rounds`), and with ``r = 1`` the
values stay soft (argmax exact, winner often far below 1). Every slot stays within [0, 1], so
no class count overflows the headroom; but soft values are about ``2^-(C-1)``, so beyond
:data:`crypto.argmax.MAX_ONEHOT_CLASSES` (16) they would sink below the flooding noise and
such artifacts are refused.

The label output (``output: "label"``, :mod:`~crypto.private_inference.label`) reaches what no
polynomial at these depths does: an exact one-hot label and nothing else, for the price of a
second request. The server returns the pairwise differences under a secret permutation of the
classes and secret positive factors (one level after the heads, no sign polynomial, the win
counts' keys); the client picks the anonymous winner and the server maps its encrypted
selection back to the real class. Single layout, up to 11 classes at N=8192.
"""
