"""Model signatures through the API, with the real model_signing on the other side: it signs
and the appliance verifies at upload (signer recorded, carried by reports); the appliance
signs and it verifies; refused uploads leave nothing behind."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from signing_support import (
    ms_sign_certificate,
    ms_sign_key,
    ms_verify_key,
    write_ca_chain,
    write_ec_key,
)
from support import auth, make_token, npz_bytes, wait_job


def _linear_onnx(path: Path, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A seeded random linear classifier as real ONNX, and inputs for it: signatures bind
    bytes, so the model need not be trained (training on this shared machine is slow)."""
    from appliance.cli.demo import linear_onnx_bytes

    rng = np.random.default_rng(seed)
    path.write_bytes(linear_onnx_bytes(rng.normal(size=(64, 10)).astype(np.float32),
                                       rng.normal(size=10).astype(np.float32)))
    return path, rng.normal(size=(40, 64)).astype(np.float32), rng.integers(0, 10, 40)


def _upload(client: Any, token: str, model: Path, signature: bytes | None = None,
            filename: str | None = None) -> Any:
    data: dict[str, Any] = {"name": "signed", "file": (io.BytesIO(model.read_bytes()),
                                                        filename or model.name)}
    if signature is not None:
        data["signature"] = (io.BytesIO(signature), "model.sig")
    return client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data=data)


def _add_signer(client: Any, token: str, public: Path, name: str = "release") -> Any:
    return client.post("/v1/signers", headers=auth(token),
                       json={"name": name, "public_key": public.read_text()})


def _stored(settings: Any) -> tuple[int, list[str]]:
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        models = store.conn.execute("SELECT COUNT(*) FROM models").fetchone()[0]
    finally:
        store.close()
    blobs = sorted(p.name for p in settings.blob_dir.rglob("*") if p.is_file())
    return models, blobs


def test_model_signing_signature_is_verified_recorded_and_reported(
        client: Any, token_a: str, tmp_path: Path) -> None:
    model, x, y = _linear_onnx(tmp_path / "clf.onnx")
    private, public = write_ec_key(tmp_path, "release")
    signature = ms_sign_key(model, private, tmp_path / "model.sig").read_bytes()

    signer = _add_signer(client, token_a, public)
    assert signer.status_code == 201, signer.get_json()
    signer_id = signer.get_json()["id"]
    created = _upload(client, token_a, model, signature)
    assert created.status_code == 201, created.get_json()
    recorded = created.get_json()["signer"]
    assert recorded["kind"] == "key"
    assert recorded["signer_key_id"] == signer_id and recorded["signer_name"] == "release"
    assert recorded["fingerprint"] == signer.get_json()["fingerprint"]
    model_id = created.get_json()["id"]
    assert client.get(f"/v1/models/{model_id}", headers=auth(token_a)).get_json()["signer"] == \
        recorded

    # a report that uses the model carries the verified signer in its signed inputs
    dataset = client.post("/v1/datasets", headers=auth(token_a),
                          content_type="multipart/form-data",
                          data={"name": "d", "file": (io.BytesIO(npz_bytes(x=x, y=y)), "d.npz")})
    job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "evaluation", "params": {
        "model_id": model_id, "dataset_id": dataset.get_json()["id"]}})
    final = wait_job(client, token_a, job.get_json()["id"])
    assert final["state"] == "succeeded", final
    report = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token_a)).get_json()
    assert report["report"]["inputs"]["model"]["signer"] == recorded

    # out: the appliance's model.sig passes the real verifier with its public key
    downloaded = client.get(f"/v1/models/{model_id}/signature", headers=auth(token_a))
    assert downloaded.status_code == 200
    assert "model.sig" in downloaded.headers["Content-Disposition"]
    (tmp_path / "appliance.sig").write_bytes(downloaded.data)
    key = client.get("/v1/signing/public-key").get_json()
    (tmp_path / "appliance.pub").write_text(key["public_key"])
    ms_verify_key(model, tmp_path / "appliance.pub", tmp_path / "appliance.sig")
    # ...which is not the uploader's key: the uploader's key does not verify it
    try:
        ms_verify_key(model, public, tmp_path / "appliance.sig")
    except ValueError as exc:
        assert "Key mismatch" in str(exc)
    else:
        raise AssertionError("the appliance's bundle verified under the uploader's key")
    # another tenant sees neither the model's signature nor the signer
    token_b = make_token(client.application.config["APPLIANCE_SETTINGS"], "tenant-b")
    assert client.get(f"/v1/models/{model_id}/signature",
                      headers=auth(token_b)).status_code == 404


def test_refused_signatures_are_422_with_the_reason_and_store_nothing(
        client: Any, token_a: str, token_b: str, settings: Any, tmp_path: Path) -> None:
    model, _, _ = _linear_onnx(tmp_path / "clf.onnx", seed=0)
    other_model, _, _ = _linear_onnx(tmp_path / "other.onnx", seed=1)
    private, public = write_ec_key(tmp_path, "release")
    stranger_private, _ = write_ec_key(tmp_path, "stranger")
    signature = ms_sign_key(model, private, tmp_path / "model.sig").read_bytes()
    stranger_sig = ms_sign_key(model, stranger_private, tmp_path / "stranger.sig").read_bytes()
    chain = write_ca_chain(tmp_path)
    cert_sig = ms_sign_certificate(model, chain, tmp_path / "cert.sig").read_bytes()
    assert _add_signer(client, token_a, public).status_code == 201
    manifest_model = _upload(client, token_a, model)  # unsigned uploads still work
    assert manifest_model.status_code == 201 and manifest_model.get_json()["signer"] is None
    manifest = client.get(f"/v1/models/{manifest_model.get_json()['id']}/manifest",
                          headers=auth(token_a)).data
    before = _stored(settings)

    cases = [
        (token_a, other_model, signature, "clf.onnx", r"changed files \['clf.onnx'\]"),
        (token_a, model, stranger_sig, None, "unknown signer"),
        (token_b, model, signature, None, "unknown signer"),  # A's signer is A's only
        (token_a, model, manifest, None, "appliance manifest envelope"),
        (token_a, model, b"{not json", None, "not JSON"),
        (token_a, model, cert_sig, None, "no CA bundle is configured"),
    ]
    for token, upload, sig, filename, reason in cases:
        response = _upload(client, token, upload, sig, filename)
        assert response.status_code == 422, (reason, response.get_json())
        assert response.mimetype == "application/problem+json"
        assert reason.replace("\\", "") in response.get_json()["detail"], response.get_json()
    assert _stored(settings) == before


def test_signer_keys_are_validated_and_tenant_scoped(client: Any, token_a: str, token_b: str,
                                                      tmp_path: Path) -> None:
    _, public = write_ec_key(tmp_path, "release")
    created = _add_signer(client, token_a, public)
    assert created.status_code == 201
    signer_id = created.get_json()["id"]
    assert _add_signer(client, token_a, public, "again").status_code == 409
    # the same key is the other tenant's to register independently
    assert _add_signer(client, token_b, public).status_code == 201

    from crypto.keys import load_or_create_ed25519, public_key_pem

    ed = public_key_pem(load_or_create_ed25519(tmp_path / "ed.pem").public_key())
    for pem, reason in ((ed, "not ECDSA"), ("-----BEGIN PUBLIC KEY-----\nAAAA\n", "not a PEM")):
        bad = client.post("/v1/signers", headers=auth(token_a),
                          json={"name": "x", "public_key": pem})
        assert bad.status_code == 422 and reason in bad.get_json()["detail"], bad.get_json()
    assert client.post("/v1/signers", headers=auth(token_a),
                       json={"name": "x", "public_key": public.read_text(),
                             "extra": 1}).status_code == 422

    assert client.get(f"/v1/signers/{signer_id}", headers=auth(token_b)).status_code == 404
    assert client.delete(f"/v1/signers/{signer_id}", headers=auth(token_b)).status_code == 404
    assert [s["id"] for s in client.get("/v1/signers", headers=auth(token_a))
            .get_json()["items"]] == [signer_id]
    assert client.delete(f"/v1/signers/{signer_id}", headers=auth(token_a)).status_code == 204
    assert client.get(f"/v1/signers/{signer_id}", headers=auth(token_a)).status_code == 404


def test_certificate_signatures_verify_against_the_operator_ca_bundle(tmp_path: Path) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    model, _, _ = _linear_onnx(tmp_path / "clf.onnx")
    chain = write_ca_chain(tmp_path)
    stranger = write_ca_chain(tmp_path, prefix="other-")
    settings = Settings(home=tmp_path / "home", rate_limit="100000 per minute",
                        log_level="WARNING", signing_ca_bundle=chain["root"])
    client = create_app(settings, {"TESTING": True}).test_client()
    token = make_token(settings, "tenant-a")

    accepted = _upload(client, token, model,
                       ms_sign_certificate(model, chain, tmp_path / "m.sig").read_bytes())
    assert accepted.status_code == 201, accepted.get_json()
    signer = accepted.get_json()["signer"]
    assert signer["kind"] == "certificate"
    assert signer["subject"] == "CN=model-release@example.org"
    assert signer["issuer"] == "CN=Test Intermediate"

    refused = _upload(client, token, model,
                      ms_sign_certificate(model, stranger, tmp_path / "s.sig").read_bytes())
    assert refused.status_code == 422
    assert "does not chain to a trusted root" in refused.get_json()["detail"]
    assert json.loads(client.get("/v1/models", headers=auth(token)).data)["items"][0]["id"] == \
        accepted.get_json()["id"]

    # a CA bundle the operator mistyped stops the appliance at start, not at the first upload
    from crypto.errors import KeyFormatError

    for broken in (tmp_path / "missing.pem", chain["leaf_key"]):
        try:
            create_app(settings.model_copy(update={"signing_ca_bundle": broken}))
        except KeyFormatError as exc:
            assert "CA bundle" in str(exc)
        else:
            raise AssertionError(f"started with the CA bundle {broken}")


def test_signed_folder_upload_binds_every_file(client: Any, token_a: str, settings: Any,
                                               tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from models.formats import tar_folder

    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    save_file({"w": np.arange(8, dtype=np.float32)}, str(folder / "model.safetensors"))
    private, public = write_ec_key(tmp_path, "release")
    signature = ms_sign_key(folder, private, tmp_path / "model.sig").read_bytes()
    assert _add_signer(client, token_a, public).status_code == 201

    def upload(name: str) -> Any:
        return client.post("/v1/models", headers=auth(token_a),
                           content_type="multipart/form-data",
                           data={"name": name, "file": (io.BytesIO(tar_folder(folder)),
                                                        "encoder.tar"),
                                 "signature": (io.BytesIO(signature), "model.sig")})

    accepted = upload("encoder")
    assert accepted.status_code == 201, accepted.get_json()
    assert accepted.get_json()["signer"]["signer_name"] == "release"
    before = _stored(settings)
    (folder / "tokenizer.json").write_text("{}")  # a file the publisher never signed
    refused = upload("encoder-plus")
    assert refused.status_code == 422
    assert "extra files ['tokenizer.json']" in refused.get_json()["detail"]
    assert _stored(settings) == before
    assert not any((settings.home / "modeldirs").glob("*/tokenizer.json"))
