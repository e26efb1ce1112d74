"""The HTTP API through the Flask test client over a real SQLite home and real job code."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import auth, npz_bytes, trained_linear_onnx, wait_job


def _upload_model(client: Any, token: str, data: bytes, filename: str, **form: str) -> Any:
    fields: dict[str, Any] = {"name": form.pop("name", "m"), **form,
                              "file": (io.BytesIO(data), filename)}
    return client.post("/v1/models", headers=auth(token), data=fields,
                       content_type="multipart/form-data")


def _upload_dataset(client: Any, token: str, data: bytes, name: str = "d") -> Any:
    return client.post("/v1/datasets", headers=auth(token),
                       data={"name": name, "file": (io.BytesIO(data), "d.npz")},
                       content_type="multipart/form-data")


@pytest.fixture
def onnx_and_data(tmp_path: Path) -> tuple[bytes, bytes, np.ndarray]:
    path, x, y = trained_linear_onnx(tmp_path / "clf.onnx")
    return path.read_bytes(), npz_bytes(x=x, y=y), y


def _is_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    return dict(body)


def test_token_required_and_whoami(client: Any, token_a: str) -> None:
    _is_problem(client.get("/v1/models"), 401)
    _is_problem(client.get("/v1/models", headers=auth("aat_not-a-real-token")), 401)
    _is_problem(client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)
    body = client.get("/v1/whoami", headers=auth(token_a)).get_json()
    assert body["tenant"] == "tenant-a" and body["role"] == "admin"


def test_token_is_stored_only_as_hash(settings: Any, token_a: str) -> None:
    db = settings.db_path.read_bytes()
    wal = settings.db_path.with_name(settings.db_path.name + "-wal")
    blob = db + (wal.read_bytes() if wal.exists() else b"")
    assert token_a.encode() not in blob
    from appliance._internal.auth import hash_token

    assert hash_token(token_a).encode() in blob


def test_evaluation_job_end_to_end(client: Any, token_a: str, onnx_and_data: Any) -> None:
    model_bytes, data_bytes, y = onnx_and_data
    model = _upload_model(client, token_a, model_bytes, "clf.onnx", name="digits-linear")
    assert model.status_code == 201, model.get_json()
    assert model.get_json()["format"] == "onnx"
    dataset = _upload_dataset(client, token_a, data_bytes)
    assert dataset.status_code == 201, dataset.get_json()
    assert dataset.get_json()["n"] == len(y) and dataset.get_json()["num_classes"] == 10
    job = client.post("/v1/jobs", headers=auth(token_a), json={
        "kind": "evaluation",
        "params": {"model_id": model.get_json()["id"], "dataset_id": dataset.get_json()["id"]}})
    assert job.status_code == 202, job.get_json()
    final = wait_job(client, token_a, job.get_json()["id"])
    assert final["state"] == "succeeded", final
    assert final["progress"] == 1.0
    bundle = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token_a)).get_json()
    stats = bundle["report"]["statistics"]
    assert 0.9 < stats["accuracy"] <= 1.0  # logistic regression on digits
    assert np.asarray(stats["confusion_matrix"]).sum() == len(y)
    assert 0 <= stats["ece"] < 0.2
    assert bundle["report"]["inputs"]["dataset"]["sha256"] == dataset.get_json()["sha256"]
    # the engine's own choice for an ONNX model: CUDA only where onnxruntime offers it
    from models.device import choose_device, onnx_providers

    expected = "cuda" if "CUDAExecutionProvider" in onnx_providers(choose_device("auto")) else "cpu"
    assert bundle["report"]["device"] == expected
    from appliance.client import verify_report

    verified = verify_report(bundle)
    assert verified.report["id"] == final["report_id"]
    page = client.get(f"/v1/reports/{final['report_id']}.html", headers=auth(token_a))
    assert page.status_code == 200 and b"<img" in page.data and b"Confusion matrix" in page.data
    logs = client.get(f"/v1/jobs/{final['id']}/logs", headers=auth(token_a)).get_json()["items"]
    assert any("succeeded" in line["message"] for line in logs)


def test_tenant_isolation(client: Any, token_a: str, token_b: str, onnx_and_data: Any) -> None:
    model_bytes, data_bytes, _ = onnx_and_data
    model_id = _upload_model(client, token_a, model_bytes, "clf.onnx").get_json()["id"]
    dataset_id = _upload_dataset(client, token_a, data_bytes).get_json()["id"]
    job = client.post("/v1/jobs", headers=auth(token_a), json={
        "kind": "evaluation", "params": {"model_id": model_id, "dataset_id": dataset_id}})
    final = wait_job(client, token_a, job.get_json()["id"])
    report_id = final["report_id"]
    for path in (f"/v1/models/{model_id}", f"/v1/models/{model_id}/manifest",
                 f"/v1/datasets/{dataset_id}", f"/v1/jobs/{final['id']}",
                 f"/v1/jobs/{final['id']}/logs", f"/v1/reports/{report_id}",
                 f"/v1/reports/{report_id}.html"):
        _is_problem(client.get(path, headers=auth(token_b)), 404)
        assert client.get(path, headers=auth(token_a)).status_code == 200
    _is_problem(client.post(f"/v1/jobs/{final['id']}/cancel", headers=auth(token_b)), 404)
    for listing in ("/v1/models", "/v1/datasets", "/v1/jobs", "/v1/reports"):
        assert client.get(listing, headers=auth(token_b)).get_json()["items"] == []
        assert client.get(listing, headers=auth(token_a)).get_json()["items"]
    # B cannot use A's objects as job inputs either
    resp = client.post("/v1/jobs", headers=auth(token_b), json={
        "kind": "evaluation", "params": {"model_id": model_id, "dataset_id": dataset_id}})
    _is_problem(resp, 404)


class _Evil:
    def __reduce__(self) -> Any:
        return (print, ("pwned",))


def test_bad_inputs_are_problems(client: Any, token_a: str, tmp_path: Path,
                                 onnx_and_data: Any) -> None:
    model_bytes, _, _ = onnx_and_data
    # pickle in several guises
    body = _is_problem(_upload_model(client, token_a, pickle.dumps(_Evil()), "model.pkl"), 422)
    assert "pickle" in body["detail"].lower()
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    _is_problem(_upload_model(client, token_a, buf.getvalue(), "model.pt"), 422)
    _is_problem(_upload_model(client, token_a, buf.getvalue(), "model.onnx"), 422)
    # truncated ONNX
    _is_problem(_upload_model(client, token_a, model_bytes[: len(model_bytes) // 2], "c.onnx"), 422)
    # safetensors without architecture
    _is_problem(_upload_model(client, token_a, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
                              "m.safetensors"), 422)
    # malformed JSON body, wrong content type, bad params
    _is_problem(client.post("/v1/jobs", headers={**auth(token_a),
                "Content-Type": "application/json"}, data=b"{not json"), 400)
    _is_problem(client.post("/v1/jobs", headers={**auth(token_a), "Content-Type": "text/plain"},
                            data=b"hello"), 415)
    _is_problem(client.post("/v1/jobs", headers=auth(token_a),
                            json={"kind": "evaluation", "params": {"model_id": 3}}), 422)
    _is_problem(client.post("/v1/jobs", headers=auth(token_a), json={"kind": "nope"}), 422)
    _is_problem(client.post("/v1/models", headers=auth(token_a), json={"name": "x"}), 415)
    _is_problem(client.post("/v1/datasets", headers=auth(token_a), data={"name": "d"},
                            content_type="multipart/form-data"), 422)
    # a dataset that is not an npz, or that holds pickled objects
    _is_problem(_upload_dataset(client, token_a, b"garbage"), 422)
    obj = npz_bytes(x=np.array([{"a": 1}], dtype=object))
    _is_problem(_upload_dataset(client, token_a, obj), 422)
    # unknown route and method
    _is_problem(client.get("/v1/nothing-here", headers=auth(token_a)), 404)
    _is_problem(client.put("/v1/models", headers=auth(token_a)), 405)
    _is_problem(client.get("/v1/jobs?limit=0", headers=auth(token_a)), 422)


def test_oversized_upload_is_413(tmp_path: Path) -> None:
    from support import make_token

    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "small", max_upload_bytes=4096, log_level="WARNING")
    client = create_app(settings).test_client()
    token = make_token(settings, "t")
    resp = _upload_model(client, token, b"\0" * 200_000, "big.onnx")
    _is_problem(resp, 413)
    resp = client.post("/v1/jobs", headers={**auth(token), "Content-Type": "application/json"},
                       data=json.dumps({"kind": "evaluation", "params": {"x": "y" * 2_000_000}}))
    _is_problem(resp, 413)
    assert not any(settings.blob_dir.rglob("*")) or all(p.is_dir() for p in
                                                        settings.blob_dir.rglob("*"))


def test_cancel_and_failed_job_reason(client: Any, token_a: str, onnx_and_data: Any) -> None:
    model_bytes, _, _ = onnx_and_data
    model_id = _upload_model(client, token_a, model_bytes, "clf.onnx").get_json()["id"]
    # a dataset without labels: a classifier evaluation must fail with a reason
    unlabeled = _upload_dataset(client, token_a, npz_bytes(x=np.zeros((5, 64), np.float32)))
    job = client.post("/v1/jobs", headers=auth(token_a), json={
        "kind": "evaluation",
        "params": {"model_id": model_id, "dataset_id": unlabeled.get_json()["id"]}})
    final = wait_job(client, token_a, job.get_json()["id"])
    assert final["state"] == "failed" and "labels" in final["error"]
    _is_problem(client.post(f"/v1/jobs/{final['id']}/cancel", headers=auth(token_a)), 409)
    # wrong input shape: fails with the model's shape error, not an internal error
    wrong = _upload_dataset(client, token_a, npz_bytes(x=np.zeros((5, 7), np.float32),
                                                        y=np.zeros(5, np.int64)))
    job = client.post("/v1/jobs", headers=auth(token_a), json={
        "kind": "evaluation",
        "params": {"model_id": model_id, "dataset_id": wrong.get_json()["id"]}})
    final = wait_job(client, token_a, job.get_json()["id"])
    assert final["state"] == "failed" and "internal error" not in final["error"], final


def test_cancel_queued_job(app: Any, client: Any, token_a: str, onnx_and_data: Any) -> None:
    model_bytes, data_bytes, _ = onnx_and_data
    held: list[dict[str, Any]] = []
    app.extensions["appliance.enqueue"] = held.append  # nothing consumes: stays queued
    model_id = _upload_model(client, token_a, model_bytes, "clf.onnx").get_json()["id"]
    dataset_id = _upload_dataset(client, token_a, data_bytes).get_json()["id"]
    job = client.post("/v1/jobs", headers=auth(token_a), json={
        "kind": "evaluation", "params": {"model_id": model_id, "dataset_id": dataset_id}})
    cancelled = client.post(f"/v1/jobs/{job.get_json()['id']}/cancel", headers=auth(token_a))
    assert cancelled.get_json()["state"] == "cancelled"
    # the worker later receives the message and must not run it
    from appliance._internal.jobs.events import LocalSink
    from appliance._internal.jobs.runner import execute_job
    from appliance._internal.jobs.worker import LocalBlobs

    sink = LocalSink(app.config["APPLIANCE_SETTINGS"])
    assert execute_job(app.config["APPLIANCE_SETTINGS"], held[0], sink=sink,
                       blobs=LocalBlobs(sink.store)) == "cancelled"


def test_openapi_document(client: Any) -> None:
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    assert "/v1/jobs" in doc["paths"] and "post" in doc["paths"]["/v1/jobs"]
    assert "JobOut" in doc["components"]["schemas"]
    assert "/v1/internal/blobs" not in doc["paths"]


def test_metrics_and_request_id(client: Any, token_a: str) -> None:
    resp = client.get("/v1/whoami", headers={**auth(token_a), "X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    metrics = client.get("/metrics", headers=auth(token_a)).get_data(as_text=True)
    assert "appliance_http_requests_total" in metrics
