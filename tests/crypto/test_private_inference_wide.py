"""Wide batch layout (slots index queries): encrypted logits and argmax, layout refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from support import assert_argmax_agrees, assert_scaled_win_counts

from crypto import argmax, packing
from crypto.ckks import CiphertextError, ContextError, make_context, public_context_bytes
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.circuits import region_class, region_comparisons
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.server import EnsembleEvaluator
from crypto.private_inference.wire import decode_wide, encode_blobs, encode_wide


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _session(seed: int, **kwargs: object) -> tuple[EnsembleArtifact, PrivateClient, EnsembleEvaluator]:
    """3 members x 50-d = 150 features, 6 classes (random heads), its client and evaluator."""
    rng = np.random.default_rng(seed)
    art = EnsembleArtifact(
        templates=[f"t{i}: {{}}" for i in range(3)],
        weights=rng.normal(size=(3, 6, 50)) * 0.2,
        biases=rng.normal(size=(3, 6)) * 0.1,
        classes=[f"c{i}" for i in range(6)],
        **kwargs,  # type: ignore[arg-type]
    )
    client = PrivateClient(spec=art.public_spec())
    return art, client, EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())


@pytest.fixture(scope="module")
def multi() -> tuple[EnsembleArtifact, PrivateClient, EnsembleEvaluator]:
    """At n8192-d3: block 64, 3 ciphertexts per batch, a padded last piece."""
    return _session(11)


def test_wide_layout_geometry_and_packing() -> None:
    lay = packing.make_wide_layout(members=8, dim=384, classes=10, slots=4096)
    assert (lay.block, lay.chunks, lay.capacity) == (64, 48, 64)
    # Block sums, then the region moves of partial batches (slots/2, slots/4, slots/8).
    assert lay.galois_steps == (1, 2, 4, 8, 16, 32, 512, 1024, 2048)
    assert [packing.wide_regions(lay, q) for q in (1, 8, 9, 16, 17, 32, 33, 64)] == [8, 8, 4, 4, 2, 2, 1, 1]
    pure = packing.make_wide_layout(members=8, dim=384, classes=10, slots=4096, block=1)
    assert (pure.chunks, pure.capacity, pure.galois_steps) == (3072, 4096, (512, 1024, 2048))
    rng = np.random.default_rng(0)
    emb = _unit(rng, (5, 3, 50)) * 0.5
    small = packing.make_wide_layout(members=3, dim=50, classes=4, slots=4096)
    rows = packing.pack_wide(emb, small, norm_bound=1.0)
    assert rows.shape == (3, 4096)
    # query b's feature f sits in row f // block, slot b * block + f % block
    flat = emb.reshape(5, 150)
    for b, f in [(0, 0), (4, 149), (2, 64), (3, 127)]:
        assert rows[f // 64, b * 64 + f % 64] == flat[b, f]
    assert not rows[:, 5 * 64 :].any() and not rows[2, 22:64].any()
    with pytest.raises(packing.LayoutError):
        packing.pack_wide(_unit(rng, (65, 3, 50)), small, norm_bound=1.0)
    # A partial batch replicated into regions: the same rows at the start of each region.
    rep = packing.pack_wide(emb, small, norm_bound=1.0, regions=4)
    for k in range(4):
        np.testing.assert_array_equal(rep[:, k * 1024 : (k + 1) * 1024], rows[:, :1024])
    with pytest.raises(packing.LayoutError):
        packing.pack_wide(_unit(rng, (17, 3, 50)), small, norm_bound=1.0, regions=4)
    # Spread over the regions: region j of row u holds piece u * R + j, zero past the last piece.
    for regions in (2, 4):
        spread = packing.pack_wide(emb, small, norm_bound=1.0, regions=regions, spread=True)
        size = 4096 // regions
        assert spread.shape == (packing.spread_rows(small, regions), 4096) == (-(-3 // regions), 4096)
        for u in range(spread.shape[0]):
            for j in range(regions):
                t = u * regions + j
                expected = rows[t, :size] if t < 3 else np.zeros(size)
                np.testing.assert_array_equal(spread[u, j * size : (j + 1) * size], expected)
    with pytest.raises(packing.LayoutError):
        packing.make_wide_layout(members=1, dim=4, classes=2, slots=4096, block=3)


def test_wide_logits_match_numpy(multi) -> None:
    art, client, evaluator = multi
    assert client.wide_layout.chunks == 3
    rng = np.random.default_rng(12)
    emb = _unit(rng, (40, art.members, art.dim))
    _, blobs = decode_wide(client.encrypt_wide_batch(emb), layout=client.wide_layout, items=3, max_bytes=1 << 26)
    cts = [evaluator._load_query(b) for b in blobs]
    # test-only look inside, decrypted with the client key
    logits_ct = evaluator._circuit.wide_logits(cts, evaluator._wide_plains())
    bound, bias = evaluator._wide_state["bound"], evaluator._wide_state["bias"]
    got = np.stack(
        [
            np.array(ts.ckks_vector_from(client._ctx, evaluator._dump_reply(ct)).decrypt())[: 40 * 64 : 64]
            for ct in logits_ct
        ]
    ).T
    got = (got + bias) * bound
    assert np.max(np.abs(got - art.plaintext_logits(emb))) < 1e-4


def test_wide_win_counts_match_reference(multi) -> None:
    art, client, evaluator = multi
    emb = _unit(np.random.default_rng(13), (64, art.members, art.dim))
    scores = client.decrypt_wide_batch(evaluator.evaluate_wide_batch(client.encrypt_wide_batch(emb)), count=64)
    logits = art.plaintext_logits(emb)
    ref = argmax.reference_win_counts(logits, evaluator._wide_state["bound"], evaluator.sign_rounds)
    # Up to the secret output scale and the result-slot flooding (circuit privacy).
    factors = assert_scaled_win_counts(scores.win_counts, ref, tol=3e-4)
    assert np.ptp(factors) > 0.01  # one fresh factor per query, not one per batch
    assert list(scores.labels) == list(logits.argmax(axis=1))


def test_wide_encrypted_argmax_on_random_logits() -> None:
    rng = np.random.default_rng(3)
    c, count = 10, 208
    art = EnsembleArtifact(
        templates=["{}"],
        weights=np.eye(c)[None],
        biases=np.zeros((1, c)),
        classes=[str(i) for i in range(c)],
        norm_bound=float(np.sqrt(c)),
    )
    client = PrivateClient(spec=art.public_spec())
    assert client.wide_capacity >= count
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    logits = rng.uniform(-1.0, 1.0, size=(count, c))
    reply = evaluator.evaluate_wide_batch(client.encrypt_wide_batch(logits[:, None, :]))
    assert_argmax_agrees(np.array(client.decrypt_wide_batch(reply, count=count).labels), logits)


def test_wide_reply_floods_unread_slots(multi) -> None:
    art, client, evaluator = multi
    emb = _unit(np.random.default_rng(14), (3, art.members, art.dim))
    _, blobs = decode_wide(
        evaluator.evaluate_wide_batch(client.encrypt_wide_batch(emb)),
        layout=client.wide_layout,
        items=len(art.classes),
        max_bytes=1 << 26,
    )
    values = np.array(ts.ckks_vector_from(client._ctx, blobs[0]).decrypt())
    keep = packing.wide_output_mask(client.wide_layout, 3)
    assert np.all(np.abs(values[keep]) <= len(art.classes))
    assert np.median(np.abs(values[~keep])) > 100.0  # noise, not partial sums or other queries


def test_layouts_refuse_each_other(multi) -> None:
    art, client, evaluator = multi
    rng = np.random.default_rng(15)
    single = client.encrypt(_unit(rng, (art.members, art.dim)))
    wide = client.encrypt_wide_batch(_unit(rng, (40, art.members, art.dim)))  # one region: PEW1
    with pytest.raises(CiphertextError, match="wide layout"):
        evaluator.evaluate_wide_batch(single)  # single-layout ciphertext sent as wide
    with pytest.raises(CiphertextError, match="wide layout"):
        evaluator.evaluate_wide_batch(encode_blobs([single]))  # PEB1 batch sent as wide
    with pytest.raises(CiphertextError):
        evaluator.evaluate(wide)  # wide body sent as a single query
    lay = client.wide_layout
    _, blobs = decode_wide(wide, layout=lay, items=lay.chunks, max_bytes=1 << 26)
    with pytest.raises(CiphertextError, match="ciphertexts, expected"):
        evaluator.evaluate_wide_batch(encode_wide(blobs[:-1], layout=lay, count=2))
    # spread over 4 regions, 2 queries take one ciphertext, not the chunks of a replicated body
    with pytest.raises(CiphertextError, match="3 ciphertexts, expected 1"):
        evaluator.evaluate_wide_batch(encode_wide(blobs, layout=lay, count=2, regions=4, spread=True))
    with pytest.raises(CiphertextError, match="queries"):
        evaluator.evaluate_wide_batch(encode_wide(blobs, layout=lay, count=lay.capacity + 1))
    other = packing.make_wide_layout(members=3, dim=50, classes=6, slots=lay.slots, block=32)
    with pytest.raises(CiphertextError, match="block"):
        evaluator.evaluate_wide_batch(encode_wide(blobs, layout=other, count=2))
    with pytest.raises(CiphertextError):
        evaluator.evaluate_wide_batch(wide[:-100])  # truncated
    # a wide piece that is not a ciphertext of the session (other size) is refused too
    small_vec = bytes(ts.ckks_vector(client._ctx, [1.0, 2.0]).serialize())
    with pytest.raises(CiphertextError):
        evaluator.evaluate_wide_batch(encode_wide([small_vec] * lay.chunks, layout=lay, count=1))
    # the circuit loads each piece as it reaches it: a bad last one is still refused, and the
    # evaluator serves the next body
    with pytest.raises(CiphertextError):
        evaluator.evaluate_wide_batch(encode_wide([*blobs[:-1], small_vec], layout=lay, count=40))
    assert len(client.decrypt_wide_batch(evaluator.evaluate_wide_batch(wide), count=40).labels) == 40


def test_wide_needs_its_rotation_keys(multi) -> None:
    art, client, _ = multi
    ctx = make_context(art.preset, galois_steps=client.layout.galois_steps)
    missing = set(client.wide_layout.galois_steps) - set(client.layout.galois_steps)
    assert missing  # block-sum strides beyond the single layout's
    evaluator = EnsembleEvaluator(artifact=art, public_context=public_context_bytes(ctx))
    body = encode_wide([bytes(ts.ckks_vector(ctx, [0.1] * 4096).serialize())] * 3, layout=client.wide_layout, count=1)
    with pytest.raises(ContextError, match="wide layout"):
        evaluator.evaluate_wide_batch(body)


@pytest.mark.parametrize("classes", [2, 3, 5, 6, 10, 13, 16])
@pytest.mark.parametrize("regions", [2, 4, 8])
def test_region_comparisons_compare_every_pair_once(classes, regions) -> None:
    """The region plan compares each pair of classes exactly once, where it says, with the sign
    it says; the last accumulator repeats its classes instead of leaving regions empty."""
    if regions > classes:
        return
    differences, where = region_comparisons(classes, regions)
    assert sorted(where) == [(i, j) for i in range(classes) for j in range(i + 1, classes)]
    for (i, j), (idx, k, sign) in where.items():
        a, b, r = differences[idx]
        here = (region_class(a, k, regions, classes), region_class(b, (k + r) % regions, regions, classes))
        assert here == ((i, j) if sign > 0 else (j, i))
    assert {idx for idx, _, _ in where.values()} == set(range(len(differences)))  # none wasted
    accumulators = -(-classes // regions)
    assert {region_class(accumulators - 1, k, regions, classes) for k in range(regions)} == set(
        range((accumulators - 1) * regions, classes))


def test_region_plan_for_ten_classes() -> None:
    """10 classes: 13 sign evaluations in 4 regions (17 with empty regions; at least 12), 25 in
    2 (at least 23), 7 in 8 (at least 6)."""
    assert [len(region_comparisons(10, r)[0]) for r in (2, 4, 8)] == [25, 13, 7]
    with pytest.raises(ValueError):
        region_class(3, 0, 4, 10)


@pytest.mark.parametrize("spread", [True, False])
@pytest.mark.parametrize("count", [1, 5, 16, 17, 33])
def test_partial_wide_batches_in_regions_match_reference(multi, count, spread) -> None:
    """Partial batches are spread over regions (PEW3; replicated, PEW2, for clients of servers
    before that) so one product, rotate-and-sum and sign evaluation serve several classes and
    pairs; the reply is read as before."""
    art, client, evaluator = multi
    if not spread:
        served = {"max_regions": packing.WIDE_MAX_REGIONS}  # a server's spec before spread regions
        spec = {**art.public_spec(), "wide_layout": served}
        client = PrivateClient(spec=spec, secret_context=client.secret_context())
    emb = _unit(np.random.default_rng(30 + count), (count, art.members, art.dim))
    body = client.encrypt_wide_batch(emb)
    regions = packing.wide_regions(client.wide_layout, count)
    assert (regions > 1) == (count <= 32)
    assert body[:4] == (b"PEW1" if regions == 1 else b"PEW3" if spread else b"PEW2")
    _, blobs = decode_wide(body, layout=client.wide_layout, items=None, max_bytes=1 << 26)
    assert len(blobs) == (-(-3 // regions) if spread else 3)  # 3 pieces: 1 or 2 ciphertexts spread
    scores = client.decrypt_wide_batch(evaluator.evaluate_wide_batch(body), count=count)
    logits = art.plaintext_logits(emb)
    assert list(scores.labels) == list(logits.argmax(axis=1))
    ref = argmax.reference_win_counts(logits, evaluator._wide_state["bound"], evaluator.sign_rounds)
    assert_scaled_win_counts(scores.win_counts, ref, tol=3e-4)


def test_wide_is_preferred_from_four_queries_where_partial_batches_are_spread() -> None:
    """K=8 x 384-d: a spread body of up to 8 queries is 6 ciphertexts, within the upload budget
    from 4 queries on; a server that takes partial batches only replicated (48 ciphertexts)
    gets them from 12 on."""
    art = EnsembleArtifact(
        templates=tuple(f"t{i}: {{}}" for i in range(8)),
        weights=np.zeros((8, 10, 384)),
        biases=np.zeros((8, 10)),
        classes=tuple(f"c{i}" for i in range(10)),
    )
    served = {"max_regions": packing.WIDE_MAX_REGIONS}
    spread = PrivateClient(spec={**art.public_spec(), "wide_layout": {**served, "spread_regions": True}})
    assert [spread.prefers_wide(q) for q in (3, 4, 8, 9, 40)] == [False, True, True, True, True]
    replicated = PrivateClient(spec={**art.public_spec(), "wide_layout": served},
                               secret_context=spread.secret_context())
    assert [replicated.prefers_wide(q) for q in (4, 11, 12, 40)] == [False, False, True, True]


def test_single_region_partial_body_still_served(multi) -> None:
    """A partial batch framed PEW1 in one region (SDKs before regions) is evaluated as before."""
    art, client, evaluator = multi
    emb = _unit(np.random.default_rng(40), (7, art.members, art.dim))
    rows = packing.pack_wide(emb, client.wide_layout, norm_bound=art.norm_bound)
    body = encode_wide([client._encrypt_values(r) for r in rows], layout=client.wide_layout, count=7)
    assert body[:4] == b"PEW1"
    scores = client.decrypt_wide_batch(evaluator.evaluate_wide_batch(body), count=7)
    assert list(scores.labels) == list(art.plaintext_logits(emb).argmax(axis=1))


def test_win_counts_at_n16384_go_wide_in_one_region_under_the_single_layouts_keys() -> None:
    """Beyond N=8192 the wide weights are encoded as each batch goes and the block sums'
    rotations come from the single layout's keys: the client sends no wide keys, partial
    batches stay in one region (PEW1), and region bodies are refused."""
    art, client, evaluator = _session(17, preset="n16384-d7")
    rng = np.random.default_rng(17)
    assert client._steps == client.layout.galois_steps  # no keys for the wide layout
    emb = _unit(rng, (5, art.members, art.dim))
    body = client.encrypt_wide_batch(emb)
    assert body[:4] == b"PEW1"
    scores = client.decrypt_wide_batch(evaluator.evaluate_wide_batch(body), count=5)
    assert list(scores.labels) == list(art.plaintext_logits(emb).argmax(axis=1))
    assert evaluator._wide_state["plain"] is None
    lay = client.wide_layout
    regions = packing.wide_regions(lay, 5)  # what a client at N=8192 would spread them over
    assert regions > 1
    rows = packing.pack_wide(emb, lay, norm_bound=1.0, regions=regions, spread=True)
    spread = encode_wide([client._encrypt_values(r) for r in rows], layout=lay, count=5, regions=regions,
                         spread=True)
    with pytest.raises(CiphertextError, match="one region"):
        evaluator.evaluate_wide_batch(spread)
