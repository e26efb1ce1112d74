"""Private ensemble inference through the Flask app: registration, sessions, encrypted queries,
refusals (secret keys, foreign parameters, malformed ciphertexts), expiry and tenant isolation."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from support import auth, make_token, register_ensemble

from crypto.ckks import make_context, public_context_bytes
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.wire import decode_blobs, encode_blobs

OCTET = {"Content-Type": "application/octet-stream"}


def _artifact(seed: int, *, k: int = 2, c: int = 3, d: int = 16) -> EnsembleArtifact:
    rng = np.random.default_rng(seed)
    return EnsembleArtifact(
        templates=tuple(f"view {i}: {{}}" for i in range(k)),
        weights=rng.normal(size=(k, c, d)),
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=tuple(f"class-{i}" for i in range(c)),
        norm_bound=1.0,
        metadata={"name": f"synthetic-{seed}"},
    )


@pytest.fixture(scope="module")
def art() -> EnsembleArtifact:
    return _artifact(7)


@pytest.fixture(scope="module")
def private(art: EnsembleArtifact) -> PrivateClient:
    return PrivateClient(spec=art.public_spec())


def _open(client: Any, token: str, ensemble_id: str, keys: bytes, **params: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in {"ensemble_id": ensemble_id, **params}.items())
    return client.post(f"/v1/inference/sessions?{query}", headers={**auth(token), **OCTET},
                       data=keys)


def _predict(client: Any, token: str, ensemble_id: str, session_id: str, body: bytes,
             batch: bool = False) -> Any:
    flag = "&batch=true" if batch else ""
    return client.post(f"/v1/ensembles/{ensemble_id}/predict?session={session_id}{flag}",
                       headers={**auth(token), **OCTET}, data=body)


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _is_problem(resp: Any, status: int) -> None:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/problem+json"


def _home_files(settings: Any) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in Path(settings.blob_dir).rglob("*") if p.is_file()}


@pytest.fixture
def setup(client: Any, settings: Any, art: EnsembleArtifact, private: PrivateClient,
          token_a: str) -> dict[str, Any]:
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ensemble = resp.get_json()
    user = make_token(settings, "tenant-a", role="client")
    resp = _open(client, user, ensemble["id"], private.evaluation_keys())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return {"ensemble": ensemble, "session": resp.get_json(), "user": user}


def test_register_list_spec_without_weights(client: Any, settings: Any, art: EnsembleArtifact,
                                            token_a: str, token_b: str) -> None:
    user = make_token(settings, "tenant-a", role="client")
    _is_problem(register_ensemble(client, user, art), 403)  # clients do not register ensembles
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201
    out = resp.get_json()
    assert out["name"] == "synthetic-7" and out["classes"] == list(art.classes)
    listed = client.get("/v1/ensembles", headers=auth(user)).get_json()["items"]
    assert [e["id"] for e in listed] == [out["id"]]
    spec_resp = client.get(f"/v1/ensembles/{out['id']}", headers=auth(user))
    spec = spec_resp.get_json()
    assert spec["templates"] == list(art.templates) and spec["preset"] == art.preset
    assert spec["norm_bound"] == 1.0 and spec["layout"]["galois_steps"]
    assert set(spec) >= {"templates", "classes", "encoder", "preset", "norm_bound", "layout"}
    text = spec_resp.get_data(as_text=True)
    assert "weights" not in text and "biases" not in text
    assert f"{art.weights[0, 0, 0]:.6f}"[:8] not in text
    # another tenant sees nothing
    assert client.get("/v1/ensembles", headers=auth(token_b)).get_json()["items"] == []
    _is_problem(client.get(f"/v1/ensembles/{out['id']}", headers=auth(token_b)), 404)
    # malformed artifacts are a 422, not a 500
    files = art.dumps()
    bad = client.post("/v1/ensembles", headers=auth(token_a), content_type="multipart/form-data",
                      data={"ensemble_json": (io.BytesIO(b"{}"), "ensemble.json"),
                            "ensemble_safetensors": (io.BytesIO(files["ensemble.safetensors"]),
                                                     "ensemble.safetensors")})
    _is_problem(bad, 422)
    _is_problem(client.post("/v1/ensembles", headers=auth(token_a), json={}), 415)
    # too many classes for one process's memory (64 classes: 4096 encoded diagonals)
    resp = register_ensemble(client, token_a, _artifact(1, k=1, c=64, d=4))
    _is_problem(resp, 422)
    assert "encoded weights" in resp.get_json()["detail"]


def test_encrypted_predictions_single_batch_and_lazy_reload(client: Any, app: Any,
                                                            art: EnsembleArtifact,
                                                            private: PrivateClient,
                                                            setup: dict[str, Any]) -> None:
    ens, ses, user = setup["ensemble"]["id"], setup["session"]["id"], setup["user"]
    assert setup["session"]["expires_at"] > setup["session"]["created_at"]
    rng = np.random.default_rng(11)
    emb = _unit(rng, (9, art.members, art.dim))
    truth = art.plaintext_logits(emb).argmax(axis=1)
    one = _predict(client, user, ens, ses, private.encrypt(emb[0]))
    assert one.status_code == 200 and one.mimetype == "application/octet-stream"
    assert private.decrypt_result(one.get_data()).labels[0] == truth[0]
    cts = private.encrypt_batch(emb)
    resp = _predict(client, user, ens, ses, encode_blobs(cts), batch=True)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    replies = decode_blobs(resp.get_data(), max_items=len(cts), max_bytes=1 << 30)
    assert list(private.decrypt_batch(replies, total=len(emb)).labels) == truth.tolist()
    # another gunicorn process has an empty cache: the evaluator is rebuilt from the key blob
    cache = app.extensions["appliance.inference_cache"]
    builds = cache.builds
    cache.clear()
    again = _predict(client, user, ens, ses, private.encrypt(emb[1]))
    assert again.status_code == 200
    assert private.decrypt_result(again.get_data()).labels[0] == truth[1]
    assert cache.builds == builds + 1


def test_secret_key_context_refused_and_never_stored(client: Any, settings: Any,
                                                     private: PrivateClient,
                                                     setup: dict[str, Any]) -> None:
    ens, user = setup["ensemble"]["id"], setup["user"]
    before = _home_files(settings)
    secret_ctx = private._ctx.serialize(save_secret_key=True)
    resp = _open(client, user, ens, secret_ctx)
    _is_problem(resp, 422)
    assert "private key material" in resp.get_json()["detail"]
    assert _home_files(settings) == before  # nothing of it was written
    # the session table holds only the one good session
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        assert store.conn.execute("SELECT COUNT(*) FROM inference_sessions").fetchone()[0] == 1
    finally:
        store.close()


def test_keys_of_other_parameters_oversize_and_media_type(client: Any, art: EnsembleArtifact,
                                                          setup: dict[str, Any]) -> None:
    from appliance.capabilities.inference.service import MAX_CONTEXT_BYTES

    ens, user = setup["ensemble"]["id"], setup["user"]
    steps = PrivateClient(spec=art.public_spec()).layout.galois_steps
    other = make_context("n16384-d8", galois_steps=steps)
    resp = _open(client, user, ens, public_context_bytes(other))
    _is_problem(resp, 422)
    assert "do not match preset" in resp.get_json()["detail"]
    few = make_context(art.preset, galois_steps=[1])
    _is_problem(_open(client, user, ens, public_context_bytes(few)), 422)  # lacks rotations
    _is_problem(_open(client, user, ens, b"\x0a\x03abc"), 422)
    _is_problem(_open(client, user, ens, b""), 422)
    _is_problem(_open(client, user, ens, b"\0" * (MAX_CONTEXT_BYTES + 1)), 413)
    resp = client.post(f"/v1/inference/sessions?ensemble_id={ens}",
                       headers={**auth(user), "Content-Type": "text/plain"}, data=b"x")
    _is_problem(resp, 415)
    _is_problem(_open(client, user, ens, b"x", ttl_seconds=0), 422)


def test_malformed_truncated_and_foreign_ciphertexts(client: Any, art: EnsembleArtifact,
                                                     private: PrivateClient,
                                                     setup: dict[str, Any]) -> None:
    ens, ses, user = setup["ensemble"]["id"], setup["session"]["id"], setup["user"]
    good = private.encrypt(_unit(np.random.default_rng(3), (art.members, art.dim)))
    foreign_ctx = make_context("n16384-d8")
    other_keys = PrivateClient(spec=art.public_spec())  # same parameters, another key pair
    bad_bodies = {
        "empty": b"",
        "garbage": b"\x00" * 64,
        "truncated": good[: len(good) // 2],
        "tail cut": good[:-9],
        "wrong size": ts.ckks_vector(private._ctx, [0.1] * 10).serialize(),
        "foreign parameters": ts.ckks_vector(foreign_ctx, [0.1] * 8192).serialize(),
        "flipped header": bytes([good[0] ^ 0xFF]) + good[1:],
    }
    for name, body in bad_bodies.items():
        resp = _predict(client, user, ens, ses, body)
        assert 400 <= resp.status_code < 500, (name, resp.status_code)
        assert resp.mimetype == "application/problem+json", name
    for body in (b"PEB1", b"PEB1\x00\x00\x00\x02\x00\x00\x00\x05abc", good, b"xx"):
        resp = _predict(client, user, ens, ses, body, batch=True)
        _is_problem(resp, 422)
    # a ciphertext under another key pair with the same parameters is evaluated (the server
    # cannot tell) but only its own key opens the reply: the session's client decrypts noise
    alien = other_keys.encrypt(_unit(np.random.default_rng(4), (art.members, art.dim)))
    assert _predict(client, user, ens, ses, alien).status_code == 200
    from appliance.capabilities.inference.service import MAX_QUERY_BYTES

    _is_problem(_predict(client, user, ens, ses, b"\0" * (MAX_QUERY_BYTES + 1)), 413)
    resp = client.post(f"/v1/ensembles/{ens}/predict?session={ses}",
                       headers={**auth(user), "Content-Type": "application/json"}, data=b"{}")
    _is_problem(resp, 415)


def test_expired_session_is_gone(client: Any, art: EnsembleArtifact, private: PrivateClient,
                                 setup: dict[str, Any], settings: Any) -> None:
    ens, user = setup["ensemble"]["id"], setup["user"]
    resp = _open(client, user, ens, private.evaluation_keys(), ttl_seconds=1)
    assert resp.status_code == 201
    short = resp.get_json()
    query = private.encrypt(_unit(np.random.default_rng(5), (art.members, art.dim)))
    time.sleep(1.1)
    resp = _predict(client, user, ens, short["id"], query)
    _is_problem(resp, 410)
    assert "expired" in resp.get_json()["detail"]
    # the next session opened sweeps the expired session's stored keys; it stays 410
    assert _open(client, user, ens, private.evaluation_keys()).status_code == 201
    _is_problem(_predict(client, user, ens, short["id"], query), 410)


def test_other_tenant_gets_404_and_sessions_are_bound(client: Any, settings: Any,
                                                      art: EnsembleArtifact,
                                                      private: PrivateClient, token_a: str,
                                                      token_b: str,
                                                      setup: dict[str, Any]) -> None:
    ens, ses, user = setup["ensemble"]["id"], setup["session"]["id"], setup["user"]
    query = private.encrypt(_unit(np.random.default_rng(6), (art.members, art.dim)))
    _is_problem(_predict(client, token_b, ens, ses, query), 404)
    _is_problem(_open(client, token_b, ens, private.evaluation_keys()), 404)
    _is_problem(client.delete(f"/v1/inference/sessions/{ses}", headers=auth(token_b)), 404)
    # tenant b's own ensemble with tenant a's session id: still 404
    ens_b = register_ensemble(client, token_b, _artifact(8)).get_json()["id"]
    _is_problem(_predict(client, token_b, ens_b, ses, query), 404)
    # a session belongs to the token that opened it: another token of the same tenant (even
    # its admin) can neither query nor close it, and the session survives the attempt
    _is_problem(_predict(client, token_a, ens, ses, query), 404)
    _is_problem(client.delete(f"/v1/inference/sessions/{ses}", headers=auth(token_a)), 404)
    colleague = make_token(settings, "tenant-a", role="client")
    _is_problem(client.delete(f"/v1/inference/sessions/{ses}", headers=auth(colleague)), 404)
    assert _predict(client, user, ens, ses, query).status_code == 200
    # a session of one ensemble cannot query another ensemble of the same tenant
    ens_a2 = register_ensemble(client, token_a, _artifact(9)).get_json()["id"]
    _is_problem(_predict(client, user, ens_a2, ses, query), 409)
    # closing deletes the stored keys; the session is then unknown
    store_keys = _home_files(settings)
    resp = client.delete(f"/v1/inference/sessions/{ses}", headers=auth(user))
    assert resp.status_code == 204
    assert len(_home_files(settings)) == len(store_keys) - 1
    _is_problem(_predict(client, user, ens, ses, query), 404)


def test_openapi_documents_binary_routes(client: Any) -> None:
    doc = client.get("/openapi.json").get_json()
    sessions = doc["paths"]["/v1/inference/sessions"]["post"]
    assert "application/octet-stream" in sessions["requestBody"]["content"]
    predict = doc["paths"]["/v1/ensembles/{ensemble_id}/predict"]["post"]
    assert "application/octet-stream" in predict["requestBody"]["content"]
    assert {"410", "413", "415", "422"} <= set(predict["responses"])
    assert "multipart/form-data" in doc["paths"]["/v1/ensembles"]["post"]["requestBody"]["content"]
    assert json.dumps(doc)  # serialisable


def test_fortran_ordered_heads_survive_registration() -> None:
    """scikit-learn's coef_ can be Fortran-ordered; safetensors must not scramble it."""
    base = _artifact(12, k=2, c=3, d=5)
    strided = EnsembleArtifact(templates=base.templates, weights=np.asfortranarray(base.weights),
                               biases=np.asfortranarray(base.biases), classes=base.classes)
    again = EnsembleArtifact.loads(strided.dumps())
    assert np.array_equal(again.weights, base.weights)
    assert np.array_equal(again.biases, base.biases)


def test_hidden_layer_ensemble_registered_and_predicted(client: Any, settings: Any,
                                                        token_a: str) -> None:
    rng = np.random.default_rng(17)
    k, c, d, h = 2, 3, 16, 6
    art = EnsembleArtifact(
        templates=("view a: {}", "view b: {}"), hidden_weights=rng.normal(size=(k, h, d)) * 0.5,
        hidden_biases=rng.normal(size=(k, h)) * 0.1, activation=(0.25, 0.5, 0.0),
        weights=rng.normal(size=(k, c, h)), biases=rng.normal(size=(k, c)) * 0.1,
        classes=("red", "green", "blue"))
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ens = resp.get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec_resp = client.get(f"/v1/ensembles/{ens}", headers=auth(user))
    spec = spec_resp.get_json()
    assert spec["head"] == "quadratic_mlp" and spec["hidden"] == h and spec["preset"] == "n8192-d5"
    assert spec["wide_layout"] is None and spec["layout"]["hidden_rows"] == 16
    assert spec["layouts"] == ["single"] and "linear heads only" in spec["wide_refusal"]
    text = spec_resp.get_data(as_text=True)
    assert "activation" not in text and "hidden_weights" not in text
    private = PrivateClient(spec=spec)  # the SDK's path: the served spec, not the artifact
    resp = _open(client, user, ens, private.evaluation_keys())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ses = resp.get_json()["id"]
    emb = _unit(rng, (art.members, art.dim))
    reply = _predict(client, user, ens, ses, private.encrypt(emb))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert private.decrypt_result(reply.get_data()).labels[0] == int(art.plaintext_logits(emb).argmax())
    wide = client.post(f"/v1/ensembles/{ens}/predict?session={ses}&layout=wide",
                       headers={**auth(user), **OCTET}, data=b"PEW1" + b"\0" * 16)
    _is_problem(wide, 422)
    assert "linear heads only" in wide.get_json()["detail"]
    # a hidden artifact with an extra tensor is a 422, not a 500
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    files = art.dumps()
    tensors = {**st_load(files["ensemble.safetensors"]), "extra": np.zeros(2)}
    bad = client.post("/v1/ensembles", headers=auth(token_a), content_type="multipart/form-data",
                      data={"ensemble_json": (io.BytesIO(files["ensemble.json"]), "ensemble.json"),
                            "ensemble_safetensors": (io.BytesIO(st_save(tensors)),
                                                     "ensemble.safetensors")})
    _is_problem(bad, 422)


def test_calibrated_scale_is_stated_in_the_spec_and_served(client: Any, settings: Any, token_a: str) -> None:
    rng = np.random.default_rng(31)
    base = _artifact(31, k=2, c=3, d=16)
    cal = base.calibrated(_unit(rng, (64, 2, 16)))
    resp = register_ensemble(client, token_a, cal)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ensemble_id = resp.get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec = client.get(f"/v1/ensembles/{ensemble_id}", headers=auth(user)).get_json()
    assert spec["comparison_scale"] == pytest.approx(cal.effective_comparison_scale())
    assert spec["comparison_scale"] < base.worst_comparison_bound()
    private = PrivateClient(spec=spec)
    session = _open(client, user, ensemble_id, private.evaluation_keys()).get_json()
    emb = _unit(rng, (2, 16))
    reply = _predict(client, user, ensemble_id, session["id"], private.encrypt(emb))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert private.decrypt_result(reply.get_data()).labels[0] == int(np.argmax(cal.plaintext_logits(emb)[0]))
    # a malformed scale in the artifact is a 422, never a 500
    files = cal.dumps()
    for bad in ("-1", '"wide"', "true", "1e400"):
        meta = files["ensemble.json"].decode().replace(
            f'"comparison_scale": {json.loads(files["ensemble.json"])["comparison_scale"]!r}',
            f'"comparison_scale": {bad}')
        assert meta != files["ensemble.json"].decode()
        resp = client.post("/v1/ensembles", headers=auth(token_a), content_type="multipart/form-data",
                           data={"ensemble_json": (io.BytesIO(meta.encode()), "ensemble.json"),
                                 "ensemble_safetensors": (io.BytesIO(files["ensemble.safetensors"]),
                                                          "ensemble.safetensors")})
        _is_problem(resp, 422)
