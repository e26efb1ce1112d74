"""Label-output ensembles through the Flask app (evaluators in their child process): the spec,
both rounds over HTTP, one-use tickets as 422 problems, the SDK's two rounds and its retry."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from support import auth, make_token, mutate, register_ensemble

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
    assert spec["layouts"] == ["single", "wide"] and spec["wide_refusal"] is None
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
    # A wide batch: one body, one selection.
    batch = np.random.default_rng(4).normal(size=(6, 2, 16))
    wide1 = client.post(url + "&layout=wide", headers={**auth(user), **OCTET}, data=private.encrypt_wide_batch(batch))
    assert wide1.status_code == 200 and wide1.get_data()[:4] == b"PEL1", wide1.get_data()[:200]
    wide2 = client.post(url + "&layout=wide", headers={**auth(user), **OCTET},
                        data=private.label_wide_selection(wide1.get_data(), count=6))
    assert wide2.status_code == 200, wide2.get_data(as_text=True)
    got = private.decrypt_wide_label(wide2.get_data(), count=6)
    assert list(got.labels) == art.plaintext_logits(batch).argmax(axis=1).tolist()
    crossed = client.post(url + "&layout=wide", headers={**auth(user), **OCTET},
                          data=private.label_selection(client.post(url, headers={**auth(user), **OCTET},
                                                                   data=private.encrypt(emb)).get_data()))
    assert crossed.status_code == 422 and "without layout=wide" in crossed.get_json()["detail"]
    bad = client.post(url + "&layout=wide", headers={**auth(user), **OCTET}, data=b"PEW1" + bytes(16))
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"


def test_sdk_answers_label_ensembles_in_two_rounds(app: Any, client: Any, settings: Any, token_a: str) -> None:
    art = _artifact()
    ens = register_ensemble(client, token_a, art).get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    sdk = Client("http://appliance.test", token=user, transport=httpx.WSGITransport(app=app), retries=0)
    texts = [f"text number {i}" for i in range(5)]
    expected = art.plaintext_logits(embed_with_templates(texts, art.templates, _encode)).argmax(axis=1)
    sent: list[dict[str, str]] = []
    for batch, layout, params in ((True, None, {"layout": "wide"}), (True, "single", {"batch": "true"}),
                                  (False, None, {})):
        session = sdk.open_inference_session(ens)
        post = session._post
        session._post = lambda p, content, post=post: sent.append(p) or post(p, content)  # type: ignore[method-assign]
        result = sdk.private_predict(ens, texts, encode=_encode, batch=batch, layout=layout, session=session)
        assert sent and all(p == params for p in sent), (sent, params)
        sent.clear()
        session.close()
        assert result.indices == expected.tolist() and result.win_counts is None
        assert result.one_hot is not None and result.one_hot.shape == (5, 5)
        assert np.allclose(result.one_hot, np.eye(5)[expected], atol=1e-3)

    # The evaluator (with the round-1 tickets) is lost between the rounds: the SDK asks again,
    # in the single layout (3 texts) and in the wide one (5).
    cache = app.extensions["appliance.inference_cache"]
    for count, layout in ((3, "single"), (5, "wide")):
        session = sdk.open_inference_session(ens)
        calls: list[str] = []
        post = session._post

        def losing(params: dict[str, str], content: bytes, post: Any = post, calls: list[str] = calls) -> bytes:
            out = post(params, content)
            if not calls:
                cache.clear()
            calls.append(params.get("layout", "single"))
            return out

        session._post = losing  # type: ignore[method-assign]
        result = sdk.private_predict(ens, texts[:count], encode=_encode, session=session)
        assert result.indices == expected[:count].tolist() and calls == [layout] * 3, calls
        session.close()


@hyp_settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_mutated_selections_get_4xx_or_a_reply(label_session: dict[str, Any], data: Any) -> None:
    """Bit flips, cuts and splices of real round-2 selections (magic, ticket and ciphertext
    alike), each after a fresh round 1: a reply or a 4xx problem, never a 5xx."""
    web, private, url, headers = (label_session[k] for k in ("web", "private", "url", "headers"))
    round1 = web.post(url, headers=headers, data=private.encrypt(np.full((2, 16), 0.1)))
    assert round1.status_code == 200
    # Positions drawn apart from the blob's length (seeded encryption varies it): in the magic
    # and ticket, or anywhere.
    def position(b: bytes) -> int:
        head, raw = data.draw(st.booleans()), data.draw(st.integers(0, 1 << 24))
        return raw % 24 if head else raw % len(b)

    blob = mutate(private.label_selection(round1.get_data()), data, data.draw(st.integers(1, 3)), position)
    resp = web.post(url, headers=headers, data=bytes(blob))
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.status_code
    if resp.status_code >= 400:
        assert resp.mimetype == "application/problem+json"
    counted = web.get("/v1/ensembles", headers=headers)  # the service still answers
    assert counted.status_code == 200


@pytest.fixture(scope="module")
def label_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path_factory.mktemp("label-fuzz") / "home", rate_limit="100000 per minute",
                        log_level="ERROR", inference_evaluators="inline")
    app = create_app(settings)
    token = make_token(settings, "fuzzer")
    web = app.test_client()
    ens = register_ensemble(web, token, _artifact()).get_json()["id"]
    spec = web.get(f"/v1/ensembles/{ens}", headers=auth(token)).get_json()
    private = PrivateClient(spec=spec)
    headers = {**auth(token), **OCTET}
    ses = web.post(f"/v1/inference/sessions?ensemble_id={ens}&layout={private.layout_digest}", headers=headers,
                   data=private.evaluation_keys()).get_json()["id"]
    return {"web": web, "private": private, "url": f"/v1/ensembles/{ens}/predict?session={ses}",
            "headers": headers}
