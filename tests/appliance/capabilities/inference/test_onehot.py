"""One-hot ensembles through the Flask app: registration, spec, one HTTP prediction, the SDK."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import numpy as np
import pytest
from support import auth, make_token, register_ensemble

from appliance.client import Client
from crypto.ensemble import EnsembleArtifact
from crypto.packing import LayoutError
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.templates import embed_with_templates

OCTET = {"Content-Type": "application/octet-stream"}


def _encode(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in text encoder (16-d, seeded by each text's hash)."""
    return np.stack(
        [
            np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")).normal(size=16)
            for t in texts
        ]
    )


def test_onehot_ensemble_over_http_and_sdk(app: Any, client: Any, settings: Any, token_a: str) -> None:
    rng = np.random.default_rng(41)
    k, c, d = 2, 4, 16
    art = EnsembleArtifact(
        templates=("a {}", "b {}"),
        weights=rng.normal(size=(k, c, d)),
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=tuple(f"class-{i}" for i in range(c)),
        output="onehot",
    )
    # The benchmark shape (K=8 x 384-d, 10 classes) defaults to n16384-d7 and fits the service.
    big = EnsembleArtifact(
        templates=[f"t{i} {{}}" for i in range(8)],
        weights=rng.normal(size=(8, 10, 384)),
        biases=np.zeros((8, 10)),
        classes=[str(i) for i in range(10)],
        output="onehot",
    )
    resp = register_ensemble(client, token_a, big)
    assert resp.get_json()["preset"] == "n16384-d7"
    # Served in the wide layout too: no weights kept, no keys beyond the single layout's, one region.
    big_spec = client.get(f"/v1/ensembles/{resp.get_json()['id']}", headers=auth(token_a)).get_json()
    assert big_spec["layouts"] == ["single", "wide"] and big_spec["wide_refusal"] is None
    assert big_spec["wide_layout"] == {"block": 64, "chunks": 48, "capacity": 128, "galois_steps": [],
                                       "max_regions": 1, "spread_regions": False, "single_keys": True}
    # A spec from a server that predates this lists no such wide layout: the client keeps to single.
    legacy = PrivateClient(spec={**big_spec, "wide_layout": {**big_spec["wide_layout"], "single_keys": False}})
    assert not legacy.prefers_wide(128)
    with pytest.raises(LayoutError, match="predates"):
        legacy.encrypt_wide_batch(np.ones((16, 8, 384)) / np.sqrt(384))
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["output"] == "onehot"
    ens = resp.get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec = client.get(f"/v1/ensembles/{ens}", headers=auth(user)).get_json()
    assert spec["output"] == "onehot" and spec["preset"] == "n8192-d5" and spec["format"].endswith("/v3")

    private = PrivateClient(spec=spec)
    resp = client.post(
        f"/v1/inference/sessions?ensemble_id={ens}", headers={**auth(user), **OCTET}, data=private.evaluation_keys()
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    emb = rng.normal(size=(k, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    resp = client.post(
        f"/v1/ensembles/{ens}/predict?session={resp.get_json()['id']}",
        headers={**auth(user), **OCTET},
        data=private.encrypt(emb),
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    scores = private.decrypt_result(resp.get_data())
    assert scores.win_counts is None and scores.one_hot is not None
    assert scores.labels[0] == int(art.plaintext_logits(emb).argmax())

    sdk = Client("http://appliance.test", token=user, transport=httpx.WSGITransport(app=app), retries=0)
    texts = ["first text", "second text", "third"]
    result = sdk.private_predict(ens, texts, encode=_encode)
    expected = art.plaintext_logits(embed_with_templates(texts, art.templates, _encode)).argmax(axis=1)
    assert result.indices == expected.tolist() and result.labels == [art.classes[i] for i in expected]
    assert result.win_counts is None and result.one_hot is not None and result.one_hot.shape == (3, c)
    assert np.all(result.one_hot.argmax(axis=1) == expected)


def test_deep_onehot_batches_go_wide_through_the_sdk(app: Any, client: Any, settings: Any, token_a: str) -> None:
    """K=8 x 384-d, 10 classes at n16384-d7: from 12 texts the SDK sends one wide body (48
    ciphertexts) under the session's five single-layout keys; labels match plaintext."""
    rng = np.random.default_rng(43)
    big = EnsembleArtifact(
        templates=[f"t{i} {{}}" for i in range(8)],
        weights=rng.normal(size=(8, 10, 384)),
        biases=rng.normal(size=(8, 10)) * 0.1,
        classes=[str(i) for i in range(10)],
        output="onehot",
    )
    ens = register_ensemble(client, token_a, big).get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    sdk = Client("http://appliance.test", token=user, transport=httpx.WSGITransport(app=app), retries=0)

    def encode(texts: list[str]) -> np.ndarray:
        return np.concatenate([_encode([f"{t}#{i}" for t in texts]) for i in range(24)], axis=1)

    texts = [f"paragraph {i}" for i in range(12)]
    session = sdk.open_inference_session(ens)
    assert session.choose_layout(len(texts)) == "wide" and session.choose_layout(11) == "single"
    sent: list[dict[str, str]] = []
    post = session._post
    session._post = lambda params, content: sent.append(params) or post(params, content)  # type: ignore[method-assign]
    result = sdk.private_predict(ens, texts, encode=encode, session=session)
    expected = big.plaintext_logits(embed_with_templates(texts, big.templates, encode)).argmax(axis=1)
    assert sent == [{"layout": "wide"}] and result.indices == expected.tolist()
    assert result.one_hot is not None and result.one_hot.shape == (12, 10)


def test_preset_whose_keys_cannot_be_uploaded_is_refused_at_registration(client: Any, token_a: str) -> None:
    art = EnsembleArtifact(
        templates=("{}",),
        weights=np.eye(4)[None],
        biases=np.zeros((1, 4)),
        classes=("a", "b", "c", "d"),
        output="onehot",
        preset="n32768-d18",
    )
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 422, resp.get_json()
    body = resp.get_json()
    assert resp.mimetype == "application/problem+json" and "cannot be served" in body["detail"]
    assert "n16384-d8" in body["hint"]


def test_a_session_whose_client_packs_queries_another_way_is_refused(client: Any, settings: Any, token_a: str) -> None:
    """Three one-hot classes now use compact 3-slot class blocks; a client that predates the
    layout digest packs 4-slot blocks and would decrypt wrong labels, so the server refuses
    its session (422, upgrade hint) before reading the keys, as it does a digest that is not
    its own. The SDK's digest opens the session; a layout that did not change needs none."""
    art = EnsembleArtifact(
        templates=("{}",),
        weights=np.eye(3)[None],
        biases=np.zeros((1, 3)),
        classes=("a", "b", "c"),
        norm_bound=float(np.sqrt(3)),
        output="onehot",
    )
    ens = register_ensemble(client, token_a, art).get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec = client.get(f"/v1/ensembles/{ens}", headers=auth(user)).get_json()
    assert spec["layout"]["class_stride"] == 3
    # Every layout field the service computes reaches the client (the response model once
    # dropped "chunk", and clients then packed chunked shapes the old way).
    from appliance.capabilities.inference.service import _layout_info, _wide_layout_info

    assert spec["layout"] == _layout_info(art.public_spec())
    private = PrivateClient(spec=spec)
    keys = private.evaluation_keys()
    url = f"/v1/inference/sessions?ensemble_id={ens}"
    for suffix, reason in (("", "predates"), ("&layout=" + "0" * 32, "is not this server's")):
        resp = client.post(url + suffix, headers={**auth(user), **OCTET}, data=keys)
        assert resp.status_code == 422 and reason in resp.get_json()["detail"], resp.get_data(as_text=True)
        assert "upgrade" in resp.get_json()["hint"]
    assert client.post(url + "&layout=xyz", headers={**auth(user), **OCTET}, data=keys).status_code in (400, 422)
    resp = client.post(url + f"&layout={private.layout_digest}", headers={**auth(user), **OCTET}, data=keys)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    emb = np.array([[0.2, 1.1, -0.4]])
    reply = client.post(f"/v1/ensembles/{ens}/predict?session={resp.get_json()['id']}",
                        headers={**auth(user), **OCTET}, data=private.encrypt(emb))
    assert reply.status_code == 200 and list(private.decrypt_result(reply.get_data()).labels) == [1]
    # Win counts with linear heads kept their layout: a session without a digest still opens.
    scores = EnsembleArtifact(templates=("{}",), weights=np.eye(3)[None], biases=np.zeros((1, 3)),
                              classes=("a", "b", "c"))
    sid = register_ensemble(client, token_a, scores).get_json()["id"]
    plain_spec = client.get(f"/v1/ensembles/{sid}", headers=auth(user)).get_json()
    assert plain_spec["wide_layout"] == _wide_layout_info(scores.public_spec())  # all of it, too
    plain = PrivateClient(spec=plain_spec)
    resp = client.post(f"/v1/inference/sessions?ensemble_id={sid}", headers={**auth(user), **OCTET},
                       data=plain.evaluation_keys())
    assert resp.status_code == 201, resp.get_data(as_text=True)
