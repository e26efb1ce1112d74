"""Ownership audits through the service: the keyed watermark on real classifiers trained by
the test on marked vs. clean digits, DOV4CL against a remote HTTP suspect, bad inputs."""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import auth, free_port, npz_bytes, wait_job


def _upload_dataset(client: Any, token: str, name: str, **arrays: np.ndarray) -> dict:
    resp = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "file": (io.BytesIO(npz_bytes(**arrays)), "d.npz")})
    assert resp.status_code == 201, resp.get_json()
    return dict(resp.get_json())


def _upload_torch(client: Any, token: str, module: torch.nn.Module, arch: str,
                  config: dict, tmp: Path, name: str) -> dict:
    from safetensors.torch import save_file

    path = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    resp = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "architecture": arch, "config": json.dumps(config),
                             "file": (io.BytesIO(path.read_bytes()), path.name)})
    assert resp.status_code == 201, resp.get_json()
    return dict(resp.get_json())


@pytest.fixture(scope="module")
def digits() -> Any:
    from models.vision import digits_splits

    torch.set_num_threads(1)
    return digits_splits(seed=0, size=8, fractions=(0.6, 0.2))


def test_watermark_marks_and_verifies_real_classifiers(client: Any, token_a: str, token_b: str,
                                                       digits: Any, tmp_path: Path) -> None:
    from models.vision import ConvClassifier, build_model, train_classifier

    x_pub, y_pub = digits.public
    x_val, y_val = digits.private
    source = _upload_dataset(client, token_a, "digits-public", x=x_pub, y=y_pub)
    resp = client.post(f"/v1/datasets/{source['id']}/watermark", headers=auth(token_a),
                       json={"fraction": 0.1, "target_class": 0, "strength": 0.3})
    assert resp.status_code == 201, resp.get_json()
    mark = resp.get_json()
    assert mark["n_marked"] == round(0.1 * len(x_pub)) and "key" not in json.dumps(mark).lower()
    # the owner downloads the marked copy to release it
    blob = client.get(f"/v1/datasets/{mark['marked_dataset']['id']}/download", headers=auth(token_a))
    assert blob.status_code == 200
    with np.load(io.BytesIO(blob.data), allow_pickle=False) as arrays:
        x_marked, y_marked = arrays["x"], arrays["y"]
    changed = (x_marked != x_pub).any(axis=(1, 2, 3)).sum()
    assert mark["params"]["n_decoys"] > 0 and changed == mark["n_marked"] + mark["params"]["n_decoys"]
    # another tenant sees nothing of it
    assert client.get(f"/v1/watermarks/{mark['id']}", headers=auth(token_b)).status_code == 404
    assert client.get("/v1/watermarks", headers=auth(token_b)).get_json()["items"] == []

    config = {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 16}

    def train(x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
        model = build_model(lambda **c: ConvClassifier(**c), seed=seed, **config)
        return train_classifier(model, x, y, seed=seed, epochs=25)

    suspect_marked = _upload_torch(client, token_a, train(x_marked, y_marked, 1),
                                   "conv_classifier", config, tmp_path, "marked")
    suspect_clean = _upload_torch(client, token_a, train(x_pub, y_pub, 2), "conv_classifier",
                                  config, tmp_path, "clean")
    benign = _upload_dataset(client, token_a, "held-out", x=x_val, y=y_val)
    verdicts = {}
    for name, model in (("marked", suspect_marked), ("clean", suspect_clean)):
        for mode in ("proba", "label"):
            job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": {
                "method": "watermark_dvbw", "suspect_model_id": model["id"],
                "watermark_id": mark["id"], "benign_dataset_id": benign["id"],
                "method_params": {"mode": mode, "m": 100}, "seed": 3}})
            assert job.status_code == 202, job.get_json()
            final = wait_job(client, token_a, job.get_json()["id"], timeout=180)
            assert final["state"] == "succeeded", final
            report = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token_a)).get_json()
            body = report["report"]
            assert body["statistics"]["queries"] == 200 and body["alpha"] == 0.05
            assert 0.0 <= body["p_value"] <= 1.0
            verdicts[name, mode] = body["verdict"]
    assert verdicts == {("marked", "proba"): "trained_on_dataset",
                        ("marked", "label"): "trained_on_dataset",
                        ("clean", "proba"): "not_detected",
                        ("clean", "label"): "not_detected"}


def _embedding_server(model: torch.nn.Module, delay: float = 0.0,
                      junk: bool = False) -> tuple[Any, str, list[int]]:
    from flask import Flask, request
    from werkzeug.serving import make_server

    app = Flask("suspect")
    counted: list[int] = []

    @app.post("/embed")
    def embed() -> Any:
        inputs = np.asarray(request.get_json()["inputs"], dtype=np.float32)
        counted.append(len(inputs))
        time.sleep(delay)
        if junk:
            return {"outputs": "not embeddings"}
        with torch.no_grad():
            return {"outputs": model(torch.from_numpy(inputs)).numpy().tolist()}

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}/embed", counted


def test_dov4cl_against_remote_endpoint_counts_queries(client: Any, token_a: str, digits: Any,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from models.vision import ENCODERS, build_model

    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    suspect = build_model(ENCODERS["conv_encoder"], seed=1, **config).eval()
    shadow = build_model(ENCODERS["conv_encoder"], seed=2, **config).eval()
    shadow_row = _upload_torch(client, token_a, shadow, "conv_encoder", config, tmp_path, "shadow")
    pub = _upload_dataset(client, token_a, "pub", x=digits.public[0][:64])
    pvt = _upload_dataset(client, token_a, "pvt", x=digits.private[0][:64])
    server, url, counted = _embedding_server(suspect)
    params = {"method": "dov4cl", "suspect_endpoint": {"url": url, "timeout_s": 10},
              "public_dataset_id": pub["id"], "private_dataset_id": pvt["id"],
              "shadow_model_ids": [shadow_row["id"]],
              "method_params": {"k": 8, "n_global": 2, "n_local": 2, "rounds": 3}, "seed": 5}
    try:
        # loopback is a private address: refused unless the operator allows it (SSRF)
        monkeypatch.delenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", raising=False)
        refused = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership",
                                                                      "params": params})
        assert refused.status_code == 422 and "non-public" in refused.get_json()["detail"]
        monkeypatch.setenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", "1")
        job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership",
                                                                  "params": params})
        assert job.status_code == 202, job.get_json()
        final = wait_job(client, token_a, job.get_json()["id"], timeout=180)
        assert final["state"] == "succeeded", final
        body = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token_a)).get_json()[
            "report"]
        assert body["statistics"]["queries"] == sum(counted) > 0
        assert body["inputs"]["suspect"] == {"endpoint": url}
        # the suspect is an untrained encoder that never saw the released images
        assert body["method"]["name"] == "ownership/dov4cl" and body["verdict"] == "not_detected"
        # a budget smaller than the audit needs fails the job with a reason
        small = {**params, "suspect_endpoint": {"url": url, "query_budget": 10}}
        job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership",
                                                                  "params": small})
        final = wait_job(client, token_a, job.get_json()["id"], timeout=60)
        assert final["state"] == "failed" and "budget" in final["error"].lower(), final
    finally:
        server.shutdown()

    for kwargs, needle in (({"delay": 3.0}, "time"), ({"junk": True}, "")):
        server, url, _ = _embedding_server(suspect, **kwargs)
        try:
            bad = {**params, "suspect_endpoint": {"url": url, "timeout_s": 0.5, "retries": 0}}
            job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership",
                                                                      "params": bad})
            final = wait_job(client, token_a, job.get_json()["id"], timeout=60)
            assert final["state"] == "failed", final
            assert "internal error" not in final["error"] and needle in final["error"].lower()
        finally:
            server.shutdown()


def _report(client: Any, token: str, job: Any, timeout: float = 180) -> dict:
    assert job.status_code == 202, job.get_json()
    final = wait_job(client, token, job.get_json()["id"], timeout=timeout)
    assert final["state"] == "succeeded", final
    body = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token)).get_json()["report"]
    return {**body, "_job": final}


def _trained_lines(client: Any, token: str, job_id: str) -> int:
    logs = client.get(f"/v1/jobs/{job_id}/logs", headers=auth(token)).get_json()
    return sum("training simclr shadow" in line["message"] for line in logs["items"])


def test_dov4cl_trains_its_own_shadows(client: Any, token_a: str, token_b: str, digits: Any,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.vision import ENCODERS, build_model

    monkeypatch.setenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", "1")
    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    suspect = build_model(ENCODERS["conv_encoder"], seed=1, **config).eval()
    pub = _upload_dataset(client, token_a, "pub", x=digits.public[0][:32])
    pvt = _upload_dataset(client, token_a, "pvt", x=digits.private[0][:32])
    alt = _upload_dataset(client, token_a, "alt", x=digits.alternative[0][:64])
    server, url, _ = _embedding_server(suspect)

    def submit(params: dict, token: str = token_a) -> Any:
        return client.post("/v1/jobs", headers=auth(token), json={"kind": "ownership", "params": params})

    try:
        params = {
            "method": "dov4cl", "suspect_endpoint": {"url": url},
            "public_dataset_id": pub["id"], "private_dataset_id": pvt["id"],
            "shadow_training": {"dataset_id": alt["id"], "epochs": 2, "count": 2,
                                "config": {"width": 8, "embed_dim": 16}},
            "method_params": {"k": 8, "n_global": 2, "n_local": 2, "rounds": 2}}
        from appliance._internal.jobs.runner import JobContext

        seen: list[float] = []
        record = JobContext.progress
        monkeypatch.setattr(JobContext, "progress", lambda self, f: (seen.append(f), record(self, f))[1])
        body = _report(client, token_a, submit(params))
        assert _trained_lines(client, token_a, body["_job"]["id"]) == 2
        # training is most of the bar (0 -> 0.8, epoch by epoch: 2 shadows x 2 epochs), then the audit
        training = [f for f in seen if f <= 0.8]
        assert sorted({round(f, 9) for f in training}) == [0.2, 0.4, 0.6, 0.8]
        # then the shadow distilled from the suspect (the default: one), epoch by epoch to 0.85
        distilling = sorted({round(f, 9) for f in seen if 0.8 < f <= 0.85})
        assert len(distilling) == 40 and distilling[-1] == 0.85
        assert seen == sorted(seen) and seen[-1] == 1.0
        shadows = body["inputs"]["shadows"]
        assert shadows["recipe"]["count"] == 2 and body["statistics"]["shadows"] == 3
        assert shadows["distilled"]["queries"] == 32 * 64 == body["statistics"]["distillation_queries"]
        assert shadows["distilled"]["kept"] is False  # a remote suspect is distilled afresh every time
        assert shadows["trained"] == 2 and shadows["reused"] == 0
        assert [m["status"] for m in shadows["models"]] == ["trained", "trained"]
        ids = [m["model_id"] for m in shadows["models"]]
        # each trained shadow is now a model of the tenant, tagged, with its recipe
        listed = {m["id"]: m for m in client.get("/v1/models", headers=auth(token_a)).get_json()["items"]}
        assert set(ids) <= set(listed)
        for seed, model_id, entry in zip((0, 1), ids, shadows["models"], strict=True):
            model = listed[model_id]
            assert model["kind"] == "encoder" and model["format"] == "safetensors"
            assert model["architecture"] == "scaled_encoder"
            origin = model["origin"]
            assert origin["tag"] == "dov4cl_shadow" and origin["job_id"] == body["_job"]["id"]
            recipe = origin["recipe"]
            assert (recipe["family"], recipe["objective"], recipe["epochs"], recipe["seed"]) == \
                ("conv_encoder", "simclr", 2, seed)
            assert recipe["data"]["sha256"] == alt["sha256"] and recipe["data"]["n"] == 64
            assert recipe["input_size"] is None and recipe["config"]["image_size"] == 8
            assert model["files"][0]["sha256"] == entry["weights_sha256"]
        # and nobody else's
        others = client.get("/v1/models", headers=auth(token_b)).get_json()["items"]
        assert not set(ids) & {m["id"] for m in others}
        assert client.get(f"/v1/models/{ids[0]}", headers=auth(token_b)).status_code == 404

        # the same audit again reuses the registered shadows: same models, same report figures
        seen.clear()
        body2 = _report(client, token_a, submit(params))
        assert _trained_lines(client, token_a, body2["_job"]["id"]) == 0
        # nothing trained: the reused shadows take the first tenth, the audit the rest
        assert sorted({round(f, 9) for f in seen if f <= 0.1}) == [0.05, 0.1] and seen[-1] == 1.0
        assert body2["inputs"]["shadows"]["reused"] == 2
        assert [m["status"] for m in body2["inputs"]["shadows"]["models"]] == ["reused", "reused"]
        assert [m["model_id"] for m in body2["inputs"]["shadows"]["models"]] == ids
        assert [m["weights_sha256"] for m in body2["inputs"]["shadows"]["models"]] == \
            [m["weights_sha256"] for m in shadows["models"]]
        assert body2["statistics"]["calibrated_p"] == body["statistics"]["calibrated_p"]
        # the same data uploaded again is the same data: the shadows are found by its content
        alt2 = _upload_dataset(client, token_a, "alt-again", x=digits.alternative[0][:64])
        again = _report(client, token_a, submit({
            **params, "shadow_training": {**params["shadow_training"], "dataset_id": alt2["id"]}}))
        assert [m["model_id"] for m in again["inputs"]["shadows"]["models"]] == ids
        assert again["inputs"]["shadows"]["reused"] == 2
        listed_again = client.get("/v1/models", headers=auth(token_a)).get_json()["items"]
        assert len(listed_again) == len(listed)  # nothing registered twice

        # reused by id in another audit: the report names them, same figures
        by_id = {k: v for k, v in params.items() if k != "shadow_training"}
        body3 = _report(client, token_a, submit({**by_id, "shadow_model_ids": ids}))
        assert [m["model_id"] for m in body3["inputs"]["shadows"]["models"]] == ids
        assert body3["inputs"]["shadows"]["reused"] == 2 and body3["inputs"]["shadows"]["trained"] == 0
        assert body3["inputs"]["shadows"]["models"][0]["recipe"]["seed"] == 0
        # named by id there is no distilled shadow: the same figures as training them without one
        undistilled = _report(client, token_a, submit({
            **params, "shadow_training": {**params["shadow_training"], "distilled": 0}}))
        assert "distilled" not in body3["inputs"]["shadows"] and body3["statistics"]["shadows"] == 2
        assert body3["statistics"]["calibrated_p"] == undistilled["statistics"]["calibrated_p"]

        # another seed is another shadow, registered beside the first two
        body4 = _report(client, token_a, submit({
            **params, "shadow_training": {**params["shadow_training"], "seed": 5, "count": 1}}))
        assert body4["inputs"]["shadows"]["trained"] == 1
        new_id = body4["inputs"]["shadows"]["models"][0]["model_id"]
        assert new_id not in ids
        assert client.get(f"/v1/models/{new_id}", headers=auth(token_a)).get_json()["origin"]["recipe"]["seed"] == 5

        # shadows of two dimensions serve together (relations are cosines; the fit takes each
        # shadow's scores separately): the appliance's own and, say, an uploaded one of another family
        narrow_cfg = {**config, "embed_dim": 8}
        narrow = _upload_torch(client, token_a, build_model(ENCODERS["conv_encoder"], seed=4, **narrow_cfg),
                               "conv_encoder", narrow_cfg, tmp_path, "enc8")
        mixed = _report(client, token_a, submit({**by_id, "shadow_model_ids": [ids[0], narrow["id"]]}))
        assert [m["model_id"] for m in mixed["inputs"]["shadows"]["models"]] == [ids[0], narrow["id"]]
        assert len(mixed["statistics"]["shadow_coefficients"]) == 3

        # refused at submission: another tenant's shadow, a classifier, a shadow trained on
        # images of another shape
        assert submit({**by_id, "shadow_model_ids": ids}, token_b).status_code == 404
        from models.vision import ConvClassifier
        clf_config = {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 8}
        clf = _upload_torch(client, token_a, build_model(lambda **c: ConvClassifier(**c), seed=5, **clf_config),
                            "conv_classifier", clf_config, tmp_path, "clf")
        big = _upload_dataset(client, token_a, "pub16", x=np.zeros((32, 1, 16, 16), np.float32))
        pvt16 = _upload_dataset(client, token_a, "pvt16", x=np.zeros((32, 1, 16, 16), np.float32))
        for shadow_ids, extra, needle in (
                ([clf["id"]], {}, "not an encoder"),
                (ids, {"public_dataset_id": big["id"], "private_dataset_id": pvt16["id"]}, "shape")):
            resp = submit({**by_id, **extra, "shadow_model_ids": shadow_ids})
            assert resp.status_code == 422, (shadow_ids, resp.get_json())
            assert needle in resp.get_json()["detail"]
            assert resp.headers["Content-Type"].startswith("application/problem+json")

        # a query budget that cannot pay for the distilled shadow (32 views x 64 images) fails
        # the job with the reason before anything trains
        poor = submit({**params, "suspect_endpoint": {"url": url, "query_budget": 2000},
                       "shadow_training": {**params["shadow_training"], "seed": 9}})
        final = wait_job(client, token_a, poor.get_json()["id"], timeout=60)
        assert final["state"] == "failed" and "2048 queries" in final["error"], final
        assert "distilled to 0" in final["error"] and _trained_lines(client, token_a, final["id"]) == 0
    finally:
        server.shutdown()


def _small_conv_audit(client: Any, token: str, digits: Any, tmp_path: Path) -> tuple[dict, dict, dict, dict]:
    """A small conv_encoder suspect and released (32), private (32) and shadow-training (64) sets."""
    from models.vision import ENCODERS, build_model

    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    suspect = _upload_torch(client, token, build_model(ENCODERS["conv_encoder"], seed=1, **config),
                            "conv_encoder", config, tmp_path, "suspect")
    return (suspect, _upload_dataset(client, token, "pub", x=digits.public[0][:32]),
            _upload_dataset(client, token, "pvt", x=digits.private[0][:32]),
            _upload_dataset(client, token, "alt", x=digits.alternative[0][:64]))


def test_two_audits_at_once_train_the_same_shadows(client: Any, token_a: str, digits: Any,
                                                   tmp_path: Path) -> None:
    """Two audits submitted together, each training its shadows in its own worker thread at the
    same time: the same seeds give the same weights, the reports match, each shadow is one model."""
    suspect, pub, pvt, alt = _small_conv_audit(client, token_a, digits, tmp_path)
    params = {"method": "dov4cl", "suspect_model_id": suspect["id"], "public_dataset_id": pub["id"],
              "private_dataset_id": pvt["id"], "seed": 4,
              "shadow_training": {"dataset_id": alt["id"], "epochs": 3, "count": 2, "seed": 11,
                                  "config": {"width": 8, "embed_dim": 16}},
              "method_params": {"n_global": 2, "n_local": 2}}
    jobs = [client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": params})
            for _ in range(2)]
    first, second = (_report(client, token_a, job) for job in jobs)
    for body in (first, second):
        assert body["inputs"]["shadows"]["trained"] == 2  # neither found the other's shadows
    assert [(m["model_id"], m["weights_sha256"]) for m in first["inputs"]["shadows"]["models"]] == \
        [(m["model_id"], m["weights_sha256"]) for m in second["inputs"]["shadows"]["models"]]
    # the distilled shadow too (one of them may have taken the other's kept student: then only
    # the queries differ, not the student or any figure of the test)
    assert _figures(first) == _figures(second) and first["p_value"] == second["p_value"]
    assert [(s["seed"], s["fit_centred_cosine"]) for s in first["inputs"]["shadows"]["distilled"]["students"]] == \
        [(s["seed"], s["fit_centred_cosine"]) for s in second["inputs"]["shadows"]["distilled"]["students"]]
    tagged = [m for m in client.get("/v1/models", headers=auth(token_a)).get_json()["items"]
              if (m["origin"] or {}).get("tag") == "dov4cl_shadow"]
    assert sorted(m["id"] for m in tagged) == sorted(m["model_id"] for m in first["inputs"]["shadows"]["models"])


def _figures(body: dict) -> dict:
    """A report's statistics but the queries spent (which a kept distilled shadow saves)."""
    return {k: v for k, v in body["statistics"].items() if k not in ("queries", "distillation_queries")}


def test_shadow_views_and_projector_are_part_of_the_recipe(client: Any, token_a: str, digits: Any,
                                                           tmp_path: Path) -> None:
    """Shadows trained with the suspect's views (no flips, rotations, noise) and an MLP
    projector: other weights, another model id, the options in the recipe; the appliance's
    default recipe records neither (its shadows keep their ids); bad views are a 422."""
    suspect, pub, pvt, alt = _small_conv_audit(client, token_a, digits, tmp_path)
    shadow = {"dataset_id": alt["id"], "epochs": 2, "count": 1, "seed": 21, "config": {"width": 8, "embed_dim": 16}}
    views = {"flip": False, "rotation": 20.0, "noise": 0.04, "brightness": 0.0, "scale": [0.5, 1.0]}

    def submit(training: dict) -> Any:
        return client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": {
            "method": "dov4cl", "suspect_model_id": suspect["id"], "public_dataset_id": pub["id"],
            "private_dataset_id": pvt["id"], "shadow_training": training,
            "method_params": {"n_global": 2, "n_local": 0}}})

    plain = _report(client, token_a, submit({**shadow, "views": {}, "projection_head": False}))
    plain = plain["inputs"]["shadows"]["models"][0]
    matched = _report(client, token_a, submit({**shadow, "views": views}))  # a projector by default
    entry = matched["inputs"]["shadows"]["models"][0]
    assert "views" not in plain["recipe"] and "projection_head" not in plain["recipe"]
    assert entry["recipe"]["views"] == {**views, "contrast": 0.4, "scale": [0.5, 1.0]}
    assert entry["recipe"]["projection_head"] is True and entry["status"] == "trained"
    assert entry["model_id"] != plain["model_id"] and entry["weights_sha256"] != plain["weights_sha256"]
    # the same options again: the registered shadow is reused
    again = _report(client, token_a, submit({**shadow, "views": views, "projection_head": True}))
    assert again["inputs"]["shadows"]["models"][0]["status"] == "reused"
    assert again["inputs"]["shadows"]["models"][0]["model_id"] == entry["model_id"]
    for bad in ({"scale": [0.9, 0.2]}, {"rotation": 400}, {"noise": -1}, {"flip": "sometimes"}, {"hue": 0.1}):
        resp = submit({**shadow, "views": bad})
        assert resp.status_code == 422, (bad, resp.get_json())
        assert resp.headers["Content-Type"].startswith("application/problem+json")


class _FlipSymmetric(torch.nn.Module):
    """An encoder made exactly flip-invariant: the sum of its embeddings of x and of x mirrored."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) + self.encoder(torch.flip(x, dims=[-1]))


class _LeftHalf(torch.nn.Module):
    """An encoder that sees only the left half of the image: a mirror image shows it the other half."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([x[..., : x.shape[-1] // 2], torch.zeros_like(x[..., x.shape[-1] // 2:])], -1))


def test_auto_shadow_views_follow_the_suspects_invariance(client: Any, token_a: str, digits: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``views: "auto"`` (the default): the shadows flip only for a flip-invariant suspect; the
    views are the ones the measured profile maps to; the profile is measured once, reported,
    and its queries are counted, also where the audit's own views do not need it."""
    from appliance.capabilities.ownership.job import ShadowViews, matched_views
    from models.vision import ENCODERS, build_model

    monkeypatch.setenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", "1")
    encoder = build_model(ENCODERS["conv_encoder"], seed=1, in_channels=1, image_size=8, width=8,
                          embed_dim=16).eval()
    pub = _upload_dataset(client, token_a, "pub", x=digits.public[0][:32])
    pvt = _upload_dataset(client, token_a, "pvt", x=digits.private[0][:32])
    alt = _upload_dataset(client, token_a, "alt", x=digits.alternative[0][:64])
    probe = 16
    for suspect, flips, audit_views in ((_FlipSymmetric(encoder), True, {}),
                                        (_LeftHalf(encoder), False, {}),
                                        (_LeftHalf(encoder), False, {"flip": False})):
        server, url, counted = _embedding_server(suspect)
        try:
            job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": {
                "method": "dov4cl", "suspect_endpoint": {"url": url}, "public_dataset_id": pub["id"],
                "private_dataset_id": pvt["id"], "shadow_training": {
                    "dataset_id": alt["id"], "epochs": 1, "count": 1, "config": {"width": 8, "embed_dim": 16}},
                "method_params": {"n_global": 2, "n_local": 0, "invariance_probe": probe, "views": audit_views}}})
            body = _report(client, token_a, job)
        finally:
            server.shutdown()
        shadows, stats = body["inputs"]["shadows"], body["statistics"]
        profile = shadows["views_from_invariance"]
        assert set(profile) == {"flip", "rotation", "noise", "crop"}
        assert (profile["flip"] >= 0.9) is flips, profile
        views = matched_views(profile, 0.9)
        assert views.flip is flips and shadows["recipe"]["views"] == views.model_dump(mode="json")
        recorded = shadows["models"][0]["recipe"].get("views")
        assert recorded == (None if views == ShadowViews() else views.model_dump(mode="json"))
        assert shadows["models"][0]["recipe"]["projection_head"] is True  # the default
        # measured once, before the shadows trained; the audit took it and counts its queries
        assert stats["views"]["invariance"] == profile and stats["views"]["flip"] is (flips and not audit_views)
        assert stats["queries"] == sum(counted) == stats["audit_queries"] + 6 * probe + 32 * 64
        assert stats["distillation_queries"] == 32 * 64  # one student, by default
        assert shadows["distilled"]["flips"] is (flips and not audit_views)  # as the audit's views


def test_ownership_bad_inputs(client: Any, token_a: str, digits: Any) -> None:
    flat = _upload_dataset(client, token_a, "flat", x=np.zeros((10, 64), np.float32),
                           y=np.zeros(10, np.int64))
    resp = client.post(f"/v1/datasets/{flat['id']}/watermark", headers=auth(token_a), json={})
    assert resp.status_code == 422 and "[n, C, H, W]" in resp.get_json()["detail"]
    # exactly one suspect, method-specific inputs
    for params in ({"method": "dov4cl"},
                   {"method": "dov4cl", "suspect_model_id": "m", "suspect_endpoint": {
                       "url": "http://example.com/x"}},
                   {"method": "watermark_dvbw", "suspect_model_id": "m"},
                   {"method": "nope", "suspect_model_id": "m"}):
        resp = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership",
                                                                   "params": params})
        assert resp.status_code == 422, (params, resp.get_json())
    resp = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": {
        "method": "watermark_dvbw", "suspect_model_id": "mdl_x", "watermark_id": "wm_x",
        "benign_dataset_id": flat["id"]}})
    assert resp.status_code == 404
    # an empty dataset never gets in
    resp = client.post("/v1/datasets", headers=auth(token_a), content_type="multipart/form-data",
                       data={"name": "empty", "file": (io.BytesIO(npz_bytes(
                           x=np.zeros((0, 1, 8, 8), np.float32))), "e.npz")})
    assert resp.status_code == 422


class _SeparableEncoder(torch.nn.Module):
    """An encoder of a family the appliance does not have (depthwise-separable convolutions,
    GroupNorm, SiLU, an input scale and an upsampling inside the graph), as a suspect's owner
    would build it: the appliance sees only its ONNX export."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.depthwise = nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width)
        self.pointwise = nn.Conv2d(width, 2 * width, 1)
        self.norm = nn.GroupNorm(2, 2 * width)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 36, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x / 16.0, size=(12, 12), mode="bilinear", align_corners=False)
        x = torch.nn.functional.silu(self.stem(x))
        return self.head(torch.nn.functional.silu(self.norm(self.pointwise(self.depthwise(x)))))


def _upload_onnx(client: Any, token: str, module: torch.nn.Module, name: str) -> dict:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on GroupNorm's shape arithmetic
        torch.onnx.export(module.eval(), (torch.zeros(2, 1, 8, 8),), out, input_names=["x"], output_names=["e"],
                          dynamic_axes={"x": {0: "b"}, "e": {0: "b"}}, dynamo=False)
    resp = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "kind": "encoder", "file": (io.BytesIO(out.getvalue()), f"{name}.onnx")})
    assert resp.status_code == 201, resp.get_json()
    return dict(resp.get_json())


def test_dov4cl_trains_shadows_of_the_suspects_own_graph(client: Any, token_a: str, digits: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``architecture: "suspect"`` (what ``auto`` picks for an ONNX suspect): each
    shadow is the suspect's ONNX graph with every weight redrawn, trained here, registered as
    an ONNX encoder and reused for another suspect of the same architecture (not for one of
    another). A suspect without a graph gets the appliance's encoder and a caution, or a 422
    where ``suspect`` was asked for."""
    torch.manual_seed(0)
    suspects = [_upload_onnx(client, token_a, _SeparableEncoder(), f"sep{i}") for i in range(2)]
    other = _upload_onnx(client, token_a, _SeparableEncoder(width=4), "sep-narrow")
    pub = _upload_dataset(client, token_a, "pub", x=digits.public[0][:32] * 16)
    pvt = _upload_dataset(client, token_a, "pvt", x=digits.private[0][:32] * 16)
    alt = _upload_dataset(client, token_a, "alt", x=digits.alternative[0][:64] * 16)
    params = {"method": "dov4cl", "suspect_model_id": suspects[0]["id"], "public_dataset_id": pub["id"],
              "private_dataset_id": pvt["id"],
              "shadow_training": {"dataset_id": alt["id"], "architecture": "auto", "epochs": 2, "count": 2},
              "method_params": {"n_global": 2, "n_local": 2, "rounds": 2}}

    def submit(extra: dict) -> Any:
        return client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": {**params, **extra}})

    body = _report(client, token_a, submit({}))
    shadows = body["inputs"]["shadows"]
    assert shadows["trained"] == 2 and shadows["recipe"]["architecture"] == "suspect"
    assert not any("not the suspect's architecture" in c for c in body["statistics"]["cautions"])
    listed = {m["id"]: m for m in client.get("/v1/models", headers=auth(token_a)).get_json()["items"]}
    for entry in shadows["models"]:
        recipe = entry["recipe"]
        assert recipe["family"] == "suspect" and recipe["config"]["learned"] >= 8
        model = listed[entry["model_id"]]
        assert (model["kind"], model["format"], model["architecture"]) == ("encoder", "onnx", None)
    # the second suspect (same architecture, other weights) reuses them; the narrow one does not
    again = _report(client, token_a, submit({"suspect_model_id": suspects[1]["id"]}))
    assert again["inputs"]["shadows"]["reused"] == 2
    assert [m["model_id"] for m in again["inputs"]["shadows"]["models"]] == \
        [m["model_id"] for m in shadows["models"]]
    narrow = _report(client, token_a, submit({"suspect_model_id": other["id"]}))
    assert narrow["inputs"]["shadows"]["trained"] == 2

    # refused at submission: a suspect without a graph, and settings the graph fixes
    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    from models.vision import ENCODERS, build_model
    safetensors = _upload_torch(client, token_a, build_model(ENCODERS["conv_encoder"], seed=1, **config),
                                "conv_encoder", config, tmp_path, "st")
    fallback = _report(client, token_a, submit({"suspect_model_id": safetensors["id"]}))
    assert fallback["inputs"]["shadows"]["recipe"]["architecture"] == "conv_encoder"
    assert any("not the suspect's architecture" in c for c in fallback["statistics"]["cautions"])
    # auto leaves a graph too big to train quickly to an explicit request
    monkeypatch.setattr("appliance.capabilities.ownership.job.AUTO_GRAPH_MAX_VALUES", 100)
    big = _report(client, token_a, submit({"shadow_training": {**params["shadow_training"], "count": 1}}))
    assert big["inputs"]["shadows"]["recipe"]["architecture"] == "conv_encoder"
    assert any("ask for architecture 'suspect'" in c for c in big["statistics"]["cautions"])
    suspect_graph = {**params["shadow_training"], "architecture": "suspect"}
    for extra, needle in (
            ({"suspect_model_id": safetensors["id"], "shadow_training": suspect_graph}, "register the suspect as ONNX"),
            ({"shadow_training": {**suspect_graph, "input_size": 16}}, "input_size")):
        resp = submit(extra)
        assert resp.status_code == 422, resp.get_json()
        assert needle in json.dumps(resp.get_json())


def test_shadows_distilled_from_the_suspect(client: Any, token_a: str, digits: Any, tmp_path: Path) -> None:
    """``distilled`` students of the suspect: it is queried on distill_views views of each image of
    the shadow dataset (counted, in the report), the students join the recipe's shadows, are not
    registered as models, and the same seed gives the same report; without them the statistics
    differ. Bad distillation parameters are a 422."""
    suspect, pub, pvt, alt = _small_conv_audit(client, token_a, digits, tmp_path)
    shadow = {"dataset_id": alt["id"], "epochs": 2, "count": 1, "seed": 31, "config": {"width": 8, "embed_dim": 16}}

    def submit(training: dict) -> Any:
        return client.post("/v1/jobs", headers=auth(token_a), json={"kind": "ownership", "params": {
            "method": "dov4cl", "suspect_model_id": suspect["id"], "public_dataset_id": pub["id"],
            "private_dataset_id": pvt["id"], "shadow_training": training,
            "method_params": {"n_global": 2, "n_local": 0, "permutations": 200}}})

    plain = _report(client, token_a, submit({**shadow, "distilled": 0}))
    distilled = {**shadow, "distilled": 2, "distill_views": 3, "distill_epochs": 2, "keep_distilled": False}
    first = _report(client, token_a, submit(distilled))
    again = _report(client, token_a, submit(distilled))
    entry = first["inputs"]["shadows"]["distilled"]
    assert entry["queries"] == 3 * 64 and entry["views"] == 3 and entry["epochs"] == 2
    assert [s["seed"] for s in entry["students"]] == [1031, 1032]
    assert [s["status"] for s in entry["students"]] == ["distilled"] * 2 and entry["kept"] is False
    assert all(-1.0 <= s["fit_centred_cosine"] <= 1.0 for s in entry["students"])
    assert first["statistics"]["distillation_queries"] == 3 * 64
    assert first["statistics"]["queries"] == plain["statistics"]["queries"] + 3 * 64
    assert "distilled" not in plain["inputs"]["shadows"] and "distillation_queries" not in plain["statistics"]
    assert first["statistics"]["calibrated_statistic"] != plain["statistics"]["calibrated_statistic"]
    # not kept: distilled again, to the same students and the same report
    assert first["statistics"] == again["statistics"] and first["p_value"] == again["p_value"]
    assert not list((tmp_path / "home" / "cache").glob("dov4cl-students/*/*"))
    tagged = [m for m in client.get("/v1/models", headers=auth(token_a)).get_json()["items"]
              if (m["origin"] or {}).get("tag") == "dov4cl_shadow"]
    assert len(tagged) == 1  # the recipe's shadow; students are not models
    for bad in ({"distilled": 5}, {"distilled": 1, "distill_views": 1}, {"distilled": 1, "distill_epochs": 0},
                {"keep_distilled": "sometimes"}):
        refused = submit({**shadow, **bad})
        assert refused.status_code == 422, refused.get_json()


def test_distilled_shadows_are_kept_per_registered_suspect(client: Any, token_a: str, token_b: str, digits: Any,
                                                           settings: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered suspect's students are kept (``keep_distilled``, the default): a second audit
    takes them without a query and gives the same figures; a second student is distilled alone;
    another tenant's upload of the same weights, or other weights, get their own; a kept student
    that cannot be read is distilled again; one that cannot be written is logged and the audit
    goes on."""
    from models.vision import ENCODERS, build_model

    suspect, pub, pvt, alt = _small_conv_audit(client, token_a, digits, tmp_path)
    shadow = {"dataset_id": alt["id"], "epochs": 2, "count": 1, "seed": 41, "config": {"width": 8, "embed_dim": 16},
              "distill_views": 3, "distill_epochs": 2}

    def audit(training: dict, token: str = token_a, model: dict = suspect, data: tuple = (pub, pvt)) -> dict:
        return _report(client, token, client.post("/v1/jobs", headers=auth(token), json={
            "kind": "ownership", "params": {
                "method": "dov4cl", "suspect_model_id": model["id"], "public_dataset_id": data[0]["id"],
                "private_dataset_id": data[1]["id"], "shadow_training": training,
                "method_params": {"n_global": 2, "n_local": 0, "permutations": 200}}}))

    def students(body: dict) -> list[tuple[int, str]]:
        return [(s["seed"], s["status"]) for s in body["inputs"]["shadows"]["distilled"]["students"]]

    first = audit(shadow)
    kept = sorted((settings.home / "cache" / "dov4cl-students").rglob("student-*"))
    assert [p.name for p in kept] == ["student-1041.json", "student-1041.safetensors"]
    assert students(first) == [(1041, "distilled")] and first["inputs"]["shadows"]["distilled"]["kept"] is True
    assert first["statistics"]["distillation_queries"] == 3 * 64
    again = audit(shadow)
    assert students(again) == [(1041, "reused")] and again["inputs"]["shadows"]["distilled"]["queries"] == 0
    assert "distillation_queries" not in again["statistics"]
    assert again["statistics"]["queries"] == first["statistics"]["queries"] - 3 * 64
    assert _figures(again) == _figures(first) and again["p_value"] == first["p_value"]
    assert any("kept from an earlier audit" in line for line in _log_lines(client, token_a, again["_job"]["id"]))
    two = audit({**shadow, "distilled": 2})
    assert students(two) == [(1041, "reused"), (1042, "distilled")]
    assert two["inputs"]["shadows"]["distilled"]["queries"] == 3 * 64
    # the same weights uploaded by another tenant: not the first tenant's student
    other = _small_conv_audit(client, token_b, digits, tmp_path)
    theirs = {**shadow, "dataset_id": other[3]["id"]}
    assert students(audit(theirs, token_b, other[0], other[1:3])) == [(1041, "distilled")]
    root = settings.home / "cache" / "dov4cl-students"
    assert len({p.parent.parent for p in root.rglob("student-*")}) == 2  # each tenant's own folder
    # other weights: their own student
    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    changed = _upload_torch(client, token_a, build_model(ENCODERS["conv_encoder"], seed=2, **config),
                            "conv_encoder", config, tmp_path, "suspect2")
    assert students(audit(shadow, model=changed)) == [(1041, "distilled")]
    # a kept student that cannot be read is distilled again, and kept again
    weights = next(p for p in kept if p.suffix == ".safetensors")
    weights.write_bytes(b"not a safetensors file")
    repaired = audit(shadow)
    assert students(repaired) == [(1041, "distilled")] and _figures(repaired) == _figures(first)
    assert any("cannot be read" in line for line in _log_lines(client, token_a, repaired["_job"]["id"]))
    assert students(audit(shadow)) == [(1041, "reused")]
    # a record without its fit is unreadable too
    record = next(p for p in kept if p.suffix == ".json")
    record.write_text(json.dumps({"embed_dim": 16}))
    assert students(audit(shadow)) == [(1041, "distilled")]
    # a student the cache cannot take (a full disk, simulated): logged, the audit reports as before
    import errno

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("appliance.capabilities.ownership.distillation._keep_student", full)
    fresh = _upload_torch(client, token_a, build_model(ENCODERS["conv_encoder"], seed=3, **config),
                          "conv_encoder", config, tmp_path, "suspect3")
    unkept = audit(shadow, model=fresh)
    assert students(unkept) == [(1041, "distilled")] and 0.0 <= unkept["p_value"] <= 1.0
    assert any("could not keep distilled shadow 1 for later audits (No space left on device)" in line
               for line in _log_lines(client, token_a, unkept["_job"]["id"]))
    assert students(audit(shadow, model=fresh)) == [(1041, "distilled")]  # nothing was kept


def _log_lines(client: Any, token: str, job_id: str) -> list[str]:
    return [line["message"] for line in client.get(f"/v1/jobs/{job_id}/logs", headers=auth(token)).get_json()["items"]]
