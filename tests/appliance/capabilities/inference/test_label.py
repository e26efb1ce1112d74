"""Label-output ensembles through the Flask app (evaluators in their child process): the spec,
both rounds over HTTP, one-use tickets as 422 problems, the SDK's two rounds and its retry."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import numpy as np
from support import auth, make_token, register_ensemble

from appliance.client import Client
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.templates import embed_with_templates

OCTET = {"Content-Type": "application/octet-stream"}


def _encode(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in text encoder (16-d, seeded by each text's hash)."""
    return np.stack([
        np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")).normal(size=16)
        for t in texts
    ])


def _artifact() -> EnsembleArtifact:
    rng = np.random.default_rng(47)
    k, c, d = 2, 5, 16
    return EnsembleArtifact(templates=("a {}", "b {}"), weights=rng.normal(size=(k, c, d)),
                            biases=rng.normal(size=(k, c)) * 0.1, classes=tuple(f"class-{i}" for i in range(c)),
                            output="label")


def test_label_ensemble_over_http(client: Any, settings: Any, token_a: str) -> None:
    art = _artifact()
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["output"] == "label"
    ens = resp.get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec = client.get(f"/v1/ensembles/{ens}", headers=auth(user)).get_json()
    assert spec["output"] == "label" and spec["format"].endswith("/v4") and spec["preset"] == "n8192-d3"
    assert spec["layouts"] == ["single"] and spec["wide_layout"] is None and "label" in spec["wide_refusal"]
    assert spec["layout"]["pairs"] and spec["layout"]["n"] == spec["layout"]["slots"]

    private = PrivateClient(spec=spec)
    resp = client.post(f"/v1/inference/sessions?ensemble_id={ens}&layout={private.layout_digest}",
                       headers={**auth(user), **OCTET}, data=private.evaluation_keys())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    url = f"/v1/ensembles/{ens}/predict?session={resp.get_json()['id']}"
    emb = np.random.default_rng(3).normal(size=(2, 16))
    round1 = client.post(url, headers={**auth(user), **OCTET}, data=private.encrypt(emb))
    assert round1.status_code == 200 and round1.get_data()[:4] == b"PEL1"
    selection = private.label_selection(round1.get_data())
    round2 = client.post(url, headers={**auth(user), **OCTET}, data=selection)
    assert round2.status_code == 200, round2.get_data(as_text=True)
    scores = private.decrypt_label(round2.get_data())
    assert scores.labels == (int(art.plaintext_logits(emb[None]).argmax()),)
    assert scores.one_hot is not None and abs(scores.one_hot.max() - 1.0) < 1e-3
    again = client.post(url, headers={**auth(user), **OCTET}, data=selection)
    assert again.status_code == 422 and again.mimetype == "application/problem+json"
    assert "used or expired" in again.get_json()["detail"]
    wide = client.post(url + "&layout=wide", headers={**auth(user), **OCTET}, data=b"PEW1" + bytes(16))
    assert wide.status_code == 422 and "single layout only" in wide.get_json()["detail"]


def test_sdk_answers_label_ensembles_in_two_rounds(app: Any, client: Any, settings: Any, token_a: str) -> None:
    art = _artifact()
    ens = register_ensemble(client, token_a, art).get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    sdk = Client("http://appliance.test", token=user, transport=httpx.WSGITransport(app=app), retries=0)
    texts = [f"text number {i}" for i in range(5)]
    expected = art.plaintext_logits(embed_with_templates(texts, art.templates, _encode)).argmax(axis=1)
    for batch in (True, False):
        result = sdk.private_predict(ens, texts, encode=_encode, batch=batch)
        assert result.indices == expected.tolist() and result.win_counts is None
        assert result.one_hot is not None and result.one_hot.shape == (5, 5)
        assert np.allclose(result.one_hot, np.eye(5)[expected], atol=1e-3)

    # The evaluator (with the round-1 tickets) is lost between the rounds: the SDK asks again.
    session = sdk.open_inference_session(ens)
    cache = app.extensions["appliance.inference_cache"]
    sent: list[int] = []
    send = session._send

    def losing(bodies: list[bytes], *, batch: bool) -> list[bytes]:
        out = send(bodies, batch=batch)
        if not sent:
            cache.clear()
        sent.append(len(bodies))
        return out

    session._send = losing  # type: ignore[method-assign]
    result = sdk.private_predict(ens, texts[:3], encode=_encode, session=session)
    assert result.indices == expected[:3].tolist() and sent == [3, 3, 3]
    session.close()
