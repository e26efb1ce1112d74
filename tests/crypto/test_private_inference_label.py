"""The label output: two rounds, a sharp one-hot label, anonymous round-1 values, one-use tickets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import identity_artifact

from crypto import argmax, packing
from crypto.ckks import CiphertextError
from crypto.ensemble import LABEL_ARTIFACT_FORMAT, ArtifactError, EnsembleArtifact
from crypto.private_inference import label as labels
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.server import EnsembleEvaluator
from crypto.private_inference.wire import encode_wide

C = 10


def _identity_artifact(classes: int, **kwargs: object) -> EnsembleArtifact:
    """One member whose logits are its (clipped) embedding: the test chooses the logits."""
    return identity_artifact(classes, output="label", **kwargs)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def label_pair() -> tuple[EnsembleArtifact, PrivateClient, EnsembleEvaluator]:
    art = _identity_artifact(C)
    client = PrivateClient(spec=art.public_spec())
    return art, client, EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())


def _ask(client: PrivateClient, evaluator: EnsembleEvaluator, logits: np.ndarray) -> np.ndarray:
    reply = evaluator.evaluate(client.encrypt(logits[None]))
    answer = evaluator.evaluate(client.label_selection(reply))
    scores = client.decrypt_label(answer)
    assert scores.one_hot is not None and scores.win_counts is None
    return scores.one_hot[0]


def test_labels_are_exact_one_hot_vectors(label_pair) -> None:
    """Labels equal the plaintext argmax, close calls included (scaled gaps from 4.5e-5, above
    the round-1 flooding of 2e-5), and the output is one-hot: 1 on the label and 0 elsewhere,
    up to the flooding noise (1e-4)."""
    art, client, evaluator = label_pair
    assert art.preset == "n8192-d3" and evaluator.sign_rounds == 0 and client.output == "label"
    assert client.layout.pairs and client.layout.n == client.layout.slots  # padded to the ciphertext
    rng = np.random.default_rng(5)
    logits = rng.uniform(-1.0, 1.0, size=(24, C))
    # Close calls: runner-up within 1e-3 of the winner (scaled gaps ~2e-4 of the bound).
    top = logits.argmax(axis=1)
    second = (top[:8] + 1 + rng.integers(0, C - 1, 8)) % C
    logits[np.arange(8), second] = logits[np.arange(8), top[:8]] - rng.uniform(2e-4, 1e-3, 8)
    values = np.stack([_ask(client, evaluator, q) for q in logits])
    assert values.argmax(axis=1).tolist() == logits.argmax(axis=1).tolist()
    label_slots = values[np.arange(len(values)), logits.argmax(axis=1)]
    others = np.where(np.eye(C, dtype=bool)[logits.argmax(axis=1)], 0.0, np.abs(values))
    assert np.all(np.abs(label_slots - 1.0) < 2e-4) and others.max() < 2e-4


def test_round_one_names_no_class(label_pair) -> None:
    """The same query asked 60 times: the anonymous winner of round 1 moves over the classes
    (a fresh secret permutation each time) and the values move with fresh secret factors,
    while round 2 always names the same label."""
    _, client, evaluator = label_pair
    query = np.linspace(-1.0, 1.0, C)[::-1].copy()  # class 0 wins
    keep = labels.round1_keep(client.layout)
    winners, magnitudes = [], []
    for _ in range(60):
        reply = evaluator.evaluate(client.encrypt(query[None]))
        _, message = labels.decode_ticketed(labels.REPLY_MAGIC, reply)
        values = client._open_reply(message)[keep]
        winners.append(labels.tournament(values, C))
        magnitudes.append(np.abs(values))
        answer = evaluator.evaluate(client.label_selection(reply))
        assert client.decrypt_label(answer).labels == (0,)
    counts = np.bincount(winners, minlength=C)
    assert (counts > 0).sum() >= 8 and counts.max() <= 18, counts  # uniform: 6 expected each
    # The true differences span a factor of 9 (2/9 to 2 of the range); times secret factors
    # log-uniform in [1, 4096] the values the client sees span more than 2^10.
    spread = np.log2(np.concatenate(magnitudes))
    assert spread.max() - spread.min() > 10


def test_a_ticket_serves_one_selection(label_pair) -> None:
    _, client, evaluator = label_pair
    query = np.linspace(1.0, -1.0, C)[None]
    selection = client.label_selection(evaluator.evaluate(client.encrypt(query)))
    assert client.decrypt_label(evaluator.evaluate(selection)).labels == (0,)
    with pytest.raises(CiphertextError, match="used or expired"):
        evaluator.evaluate(selection)
    forged = labels.encode_ticketed(labels.SELECT_MAGIC, b"\0" * labels.TICKET_BYTES, selection[20:])
    with pytest.raises(CiphertextError, match="used or expired"):
        evaluator.evaluate(forged)
    for bad in (selection[:20], labels.SELECT_MAGIC + b"x" * 30, labels.SELECT_MAGIC):
        with pytest.raises(CiphertextError):
            evaluator.evaluate(bad)
    # A malformed selection leaves its ticket usable.
    reply = evaluator.evaluate(client.encrypt(query))
    good = client.label_selection(reply)
    with pytest.raises(CiphertextError):
        evaluator.evaluate(good[:-100])
    assert client.decrypt_label(evaluator.evaluate(good)).labels == (0,)
    with pytest.raises(CiphertextError, match="round-1 reply"):
        client.label_selection(selection)


def test_pending_tickets_expire_and_are_bounded() -> None:
    perm = np.arange(3)
    pending = labels.PendingTickets(capacity=2, ttl=60.0)
    first, second, third = (pending.issue(perm) for _ in range(3))
    assert len(pending) == 2
    with pytest.raises(CiphertextError):
        pending.redeem(first)  # dropped: the oldest beyond the capacity
    assert list(pending.redeem(third)) == [0, 1, 2]
    stale = labels.PendingTickets(ttl=0.0)
    ticket = stale.issue(perm)
    with pytest.raises(CiphertextError):
        stale.redeem(ticket)
    assert len(stale) == 0 and pending.redeem(second) is not None


def test_tournament_and_masks() -> None:
    # 0 beats 1 and 2, 1 beats 2: pairs (0,1), (0,2), (1,2).
    assert labels.tournament(np.array([0.3, 2.0, 1e-3]), 3) == 0
    assert labels.tournament(np.array([-0.3, -2.0, 1e-3]), 3) == 1
    assert labels.tournament(np.array([0.1, -0.1, 0.1]), 3) == 0  # a cycle: the first of the tied
    with pytest.raises(ValueError):
        labels.tournament(np.zeros(4), 3)
    lay = PrivateClient(spec=_identity_artifact(4).public_spec()).layout
    perm, factors = np.array([2, 0, 3, 1]), np.arange(1.0, 7.0)
    mask = labels.round1_mask(lay, perm, factors)
    rows = packing.pair_rows(4)
    a, b = labels.anonymous_pairs(4)
    for q in range(6):
        block = mask[q * lay.rows:(q + 1) * lay.rows]
        assert np.count_nonzero(block) == 1
        sign = 1.0 if perm[a[q]] < perm[b[q]] else -1.0
        assert block[rows[perm[a[q]], perm[b[q]]]] == sign * factors[q]
    assert np.count_nonzero(mask) == 6
    selected = labels.selection_slots(4, lay.slots, 2) * labels.round2_mask(4, lay.slots, perm)
    blocks = selected.reshape(-1, 4)[:4].sum(axis=0)
    assert list(blocks) == [0, 0, 0, 1]  # anonymous class 2 is real class 3
    assert labels.round2_strides(10) == (16, 32, 64, 128)


def test_label_artifacts_limits_and_refusals(label_pair) -> None:
    art, client, evaluator = label_pair
    files = art.dumps()
    meta = json.loads(files["ensemble.json"])
    assert meta["format"] == LABEL_ARTIFACT_FORMAT and meta["output"] == "label"
    again = EnsembleArtifact.loads(files)
    assert again.output == "label" and again.public_spec() == art.public_spec()
    for bad in ({**meta, "output": "scores"}, {**meta, "format": "audit-appliance/private-ensemble/v3"}):
        with pytest.raises(ArtifactError):
            EnsembleArtifact.loads({**files, "ensemble.json": json.dumps(bad).encode()})
    assert argmax.max_label_classes(4096) == 11 and argmax.max_label_classes(8192) == 11
    _identity_artifact(11)
    with pytest.raises(ArtifactError, match="at most 11 classes"):
        _identity_artifact(12)
    with pytest.raises(ArtifactError, match="comparison_scale"):
        _identity_artifact(4, comparison_scale=0.5)
    with pytest.raises(CiphertextError, match="two rounds"):
        client.decrypt_result(evaluator.evaluate(client.encrypt(np.ones((1, C)))))
    with pytest.raises(CiphertextError, match="two rounds"):
        client.decrypt_wide_batch(b"", count=1)
    scores = PrivateClient(spec=_identity_artifact(4).public_spec() | {"output": "scores", "format": meta["format"]})
    with pytest.raises(CiphertextError, match="not the two-round label"):
        scores.label_selection(b"PEL1")


def test_hidden_heads_answer_in_two_rounds() -> None:
    rng = np.random.default_rng(9)
    k, h, d, c = 2, 8, 16, 6
    art = EnsembleArtifact(
        templates=["a {}", "b {}"],
        weights=rng.normal(size=(k, c, h)),
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=[f"c{i}" for i in range(c)],
        hidden_weights=rng.normal(size=(k, h, d)) / 4,
        hidden_biases=rng.normal(size=(k, h)) * 0.1,
        activation=(0.5, 1.0, 0.0),
        output="label",
    )
    assert art.preset == "n8192-d5"
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    emb = rng.normal(size=(6, k, d))
    got = [client.decrypt_label(evaluator.evaluate(client.label_selection(evaluator.evaluate(client.encrypt(e)))))
           for e in emb]
    assert [g.labels[0] for g in got] == art.plaintext_logits(emb).argmax(axis=1).tolist()
    assert all(abs(g.one_hot[0].max() - 1.0) < 1e-3 for g in got if g.one_hot is not None)


def test_wide_batches_answer_in_two_rounds(label_pair) -> None:
    """A wide batch (slots index queries; a partial one in regions): one ciphertext each way
    per round but the body, labels exact and one-hot for every query, close calls included;
    tickets do not cross layouts; queries too short to hold their pairs in a block stay in
    the single layout."""
    _, short, short_evaluator = label_pair
    assert short.wide_layout.block == 16 and not short.prefers_wide(64)
    with pytest.raises(packing.LayoutError, match="45 class pairs in its block of 16"):
        short_evaluator.evaluate_wide_batch(b"PEW1")
    # 64-d queries whose first ten coordinates are the logits: blocks of 64 slots.
    art = EnsembleArtifact(templates=["{}"], weights=np.eye(C, 64)[None], biases=np.zeros((1, C)),
                           classes=[f"c{i}" for i in range(C)], norm_bound=float(np.sqrt(C)), output="label")
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    assert client.wide_layout.block == 64 and client.prefers_wide(12)
    rng = np.random.default_rng(8)
    logits = rng.uniform(-1.0, 1.0, size=(40, C))
    top = logits.argmax(axis=1)
    second = (top[:10] + 1 + rng.integers(0, C - 1, 10)) % C
    logits[np.arange(10), second] = logits[np.arange(10), top[:10]] - rng.uniform(2e-4, 1e-3, 10)
    embed = np.zeros((40, 1, 64))
    embed[:, 0, :C] = logits
    reply = evaluator.evaluate_wide_batch(client.encrypt_wide_batch(embed))
    selection = client.label_wide_selection(reply, count=40)
    scores = client.decrypt_wide_label(evaluator.evaluate_wide_batch(selection), count=40)
    assert list(scores.labels) == logits.argmax(axis=1).tolist()
    assert scores.one_hot is not None and np.abs(scores.one_hot - np.eye(C)[logits.argmax(axis=1)]).max() < 2e-4
    with pytest.raises(CiphertextError, match="used or expired"):
        evaluator.evaluate_wide_batch(selection)
    # A partial batch goes in regions (PEW3): the logits of each region move to the first.
    partial = client.encrypt_wide_batch(embed[:5])
    assert partial[:4] == b"PEW3"
    reply = evaluator.evaluate_wide_batch(partial)
    got = client.decrypt_wide_label(evaluator.evaluate_wide_batch(client.label_wide_selection(reply, count=5)), count=5)
    assert list(got.labels) == logits[:5].argmax(axis=1).tolist()
    # A wide ticket's selection posted as a single query, and the other way round.
    wide_ticket = client.label_wide_selection(evaluator.evaluate_wide_batch(partial), count=5)
    with pytest.raises(CiphertextError, match="with layout=wide"):
        evaluator.evaluate(wide_ticket)
    single = client.label_selection(evaluator.evaluate(client.encrypt(embed[0])))
    with pytest.raises(CiphertextError, match="without layout=wide"):
        evaluator.evaluate_wide_batch(single)
    with pytest.raises(CiphertextError):
        evaluator.evaluate_wide_batch(encode_wide([b"x"], layout=client.wide_layout, count=2, regions=2, spread=True))
    # A selection must come at the level of SELECTION_PRIMES primes, where round 2 runs.
    top = labels.encode_ticketed(labels.SELECT_MAGIC, b"\0" * labels.TICKET_BYTES, client.encrypt(embed[0]))
    with pytest.raises(CiphertextError, match="level of 2 primes"):
        evaluator.evaluate(top)
    with pytest.raises(CiphertextError, match="count must lie"):
        client.label_wide_selection(reply, count=65)
