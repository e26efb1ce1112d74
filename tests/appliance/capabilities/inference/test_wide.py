"""Wide batch layout through the Flask app: ``layout=wide`` predictions and layout refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
from support import auth, make_token, register_ensemble

from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.wire import encode_blobs

OCTET = {"Content-Type": "application/octet-stream"}


def _post(client: Any, token: str, path: str, body: bytes) -> Any:
    return client.post(path, headers={**auth(token), **OCTET}, data=body)


def test_wide_layout_predictions_and_refusals(client: Any, settings: Any, token_a: str) -> None:
    rng = np.random.default_rng(21)
    k, c, d = 2, 4, 40  # 80 features: block 64, 2 ciphertexts per wide batch of <= 64 queries
    art = EnsembleArtifact(
        templates=("a {}", "b {}"),
        weights=rng.normal(size=(k, c, d)),
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=tuple(f"class-{i}" for i in range(c)),
    )
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ens = resp.get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec = client.get(f"/v1/ensembles/{ens}", headers=auth(user)).get_json()
    steps = [1, 2, 4, 8, 16, 32, 512, 1024, 2048]  # block sums, then region moves of partial batches
    assert spec["wide_layout"] == {"block": 64, "chunks": 2, "capacity": 64, "galois_steps": steps, "max_regions": 8,
                                   "spread_regions": True, "single_keys": False}
    # A spec from a server that predates regions: the client keeps partial batches in one region;
    # from one that predates spread regions, it replicates them (PEW2).
    for dropped, magic in [({"max_regions", "spread_regions"}, b"PEW1"), ({"spread_regions"}, b"PEW2")]:
        legacy = PrivateClient(spec={**spec, "wide_layout": {k: v for k, v in spec["wide_layout"].items()
                                                              if k not in dropped}})
        assert legacy.encrypt_wide_batch(np.ones((3, k, d)) / np.sqrt(d))[:4] == magic
    assert spec["layouts"] == ["single", "wide"] and spec["wide_refusal"] is None
    private = PrivateClient(spec=spec)
    resp = _post(client, user, f"/v1/inference/sessions?ensemble_id={ens}", private.evaluation_keys())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ses = resp.get_json()["id"]
    path = f"/v1/ensembles/{ens}/predict?session={ses}"

    emb = rng.normal(size=(50, k, d))
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    truth = art.plaintext_logits(emb).argmax(axis=1)
    assert private.prefers_wide(50) and private.prefers_wide(4) and not private.prefers_wide(3)
    wide = private.encrypt_wide_batch(emb)
    resp = _post(client, user, path + "&layout=wide", wide)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/octet-stream"
    assert list(private.decrypt_wide_batch(resp.get_data(), count=50).labels) == truth.tolist()

    # A partial batch travels spread over regions (PEW3, one ciphertext instead of two); labels
    # are the same.
    spread = private.encrypt_wide_batch(emb[:16])
    assert spread[:4] == b"PEW3" and len(spread) < 0.6 * len(wide)
    part = _post(client, user, path + "&layout=wide", spread)
    assert part.status_code == 200, part.get_data(as_text=True)
    assert list(private.decrypt_wide_batch(part.get_data(), count=16).labels) == truth[:16].tolist()

    single = private.encrypt(emb[0])
    for body, url in [
        (single, path + "&layout=wide"),  # single-layout ciphertext sent as wide
        (encode_blobs([single]), path + "&layout=wide"),  # PEB1 batch sent as wide
        (wide, path),  # wide body sent as one single-layout query
        (wide, path + "&batch=true"),  # wide body sent as a PEB1 batch
        (wide[: len(wide) // 2], path + "&layout=wide"),  # truncated
    ]:
        bad = _post(client, user, url, body)
        assert bad.status_code == 422, (url, bad.status_code, bad.get_data(as_text=True)[:200])
        assert bad.mimetype == "application/problem+json"
        if body is wide and "layout=wide" not in url:
            assert "wide body" in bad.get_json()["detail"] and "layout=wide" in bad.get_json()["hint"]
    # A wide body above the single-query limit: named as a wide body (422), not a 413 on size.
    from appliance.capabilities.inference import service

    big = wide + b"\0" * (service.MAX_QUERY_BYTES + 1 - len(wide))
    bad = _post(client, user, path, big)
    assert bad.status_code == 422 and "wide body" in bad.get_json()["detail"], bad.get_data(as_text=True)[:200]
    assert _post(client, user, path, b"\1" * (service.MAX_QUERY_BYTES + 1)).status_code == 413
    # a well-formed query whose values the API refuses: 422 validation-failed, both
    both = _post(client, user, path + "&layout=wide&batch=true", wide)
    assert both.status_code == 422 and "batch" in both.get_json()["detail"], both.get_json()
    unknown = _post(client, user, path + "&layout=diagonal", wide)
    assert unknown.status_code == 422, unknown.get_json()
    assert unknown.get_json()["type"].endswith("/validation-failed")
