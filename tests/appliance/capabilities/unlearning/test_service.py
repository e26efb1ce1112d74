"""The unlearning capability end to end through the Flask test client: JSONL datasets, an
audit job on real subjects with a signed report, tenant isolation, and every bad input refused
with a clear 422 or a failed job that says why."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from support import auth

from models.formats import tar_folder

SUBSET = ["extraction", "membership_inference", "relearning"]


@pytest.fixture(scope="module")
def subjects(unlearning_subjects: Any) -> Any:
    return unlearning_subjects  # the session's shared set, trained once (tests/conftest.py)


def _upload_model(client: Any, token: str, folder: Path, name: str) -> dict[str, Any]:
    resp = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "format": "transformers",
                             "file": (io.BytesIO(tar_folder(folder)), f"{name}.tar")})
    assert resp.status_code == 201, resp.get_json()
    return dict(resp.get_json())


def _upload_dataset(client: Any, token: str, data: bytes, name: str) -> Any:
    return client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "file": (io.BytesIO(data), f"{name}.jsonl")})


def _job(client: Any, token: str, params: dict[str, Any], kind: str = "unlearning-audit") -> Any:
    return client.post("/v1/jobs", headers=auth(token), json={"kind": kind, "params": params})


def _finish(client: Any, token: str, job_id: str, timeout: float = 110.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(token)).get_json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.2)


@pytest.fixture
def uploaded(client: Any, token_a: str, subjects: Any) -> dict[str, Any]:
    ids = {role: _upload_model(client, token_a, subjects.model_dir(role), role)["id"]
           for role in ("full", "reference")}
    for split in ("forget", "holdout", "retain"):
        resp = _upload_dataset(client, token_a, subjects.dataset_path(split).read_bytes(), split)
        assert resp.status_code == 201, resp.get_json()
        body = resp.get_json()
        assert body["format"] == "jsonl" and body["n"] == len(getattr(subjects.corpus, split))
        ids[split] = body["id"]
    return ids


def test_an_audit_runs_end_to_end_and_its_report_is_signed(client: Any, token_a: str,
                                                           token_b: str,
                                                           uploaded: dict[str, Any]) -> None:
    params = {"model_id": uploaded["full"], "forget_dataset_id": uploaded["forget"],
              "holdout_dataset_id": uploaded["holdout"], "retain_dataset_id": uploaded["retain"],
              "reference_model_id": uploaded["reference"], "audits": SUBSET,
              "audit_params": {"relearning": {"steps": 4}}, "seed": 3}
    assert _job(client, token_b, params).status_code == 404  # another tenant's objects
    resp = _job(client, token_a, params)
    assert resp.status_code == 202, resp.get_json()
    job = _finish(client, token_a, resp.get_json()["id"])
    assert job["state"] == "succeeded", job["error"]
    bundle = client.get(f"/v1/reports/{job['report_id']}", headers=auth(token_a)).get_json()
    report = bundle["report"]
    assert report["method"]["name"] == "unlearning/audit"
    assert report["verdict"] == "knowledge_detected" and report["p_value"] < 0.05
    assert report["seed"] == 3 and report["alpha"] == 0.05
    stats = report["statistics"]
    assert list(stats["audits"]) == SUBSET and "Holm" in stats["correction"]
    for name in SUBSET:
        audit = stats["audits"][name]
        assert {"p_value", "verdict", "parameters"} <= set(audit)
        assert "null_hypothesis" in audit["statistics"]
    for name in SUBSET:  # the full model knows its forget set, by every one of these audits
        assert stats["audits"][name]["verdict"] == "knowledge_detected", name
    mia = stats["audits"]["membership_inference"]["statistics"]
    assert mia["auc_loss"] >= 0.95 and mia["privleak_loss"] > 0.5
    assert report["inputs"]["model"]["files"] and report["inputs"]["forget_dataset"]["sha256"]
    from appliance.client import verify_report

    assert verify_report(bundle).report["id"] == report["id"]
    page = client.get(f"/v1/reports/{job['report_id']}.html", headers=auth(token_a))
    assert page.status_code == 200 and b"Item scores, forget vs holdout" in page.data
    listing = client.get("/v1/unlearning/audits", headers=auth(token_a)).get_json()
    assert {i["name"] for i in listing["items"]} >= set(SUBSET)


def test_bad_jsonl_is_refused_naming_the_line(client: Any, token_a: str) -> None:
    good = json.dumps({"question": "Where?", "answer": "Here"})
    for data, where in ((f"{good}\n{{broken\n".encode(), "line 2"),
                        (f'{good}\n{good}\n{{"question": 1, "answer": "a"}}\n'.encode(), "line 3"),
                        (b'{"question": "q", "answer": "a"}\n\xff\n', "line 2")):
        resp = _upload_dataset(client, token_a, data, "bad")
        assert resp.status_code == 422, resp.get_json()
        assert resp.content_type.startswith("application/problem+json")
        assert where in resp.get_json()["detail"]


def test_bad_models_and_sets_are_refused_before_queueing(client: Any, token_a: str,
                                                         uploaded: dict[str, Any],
                                                         subjects: Any, tmp_path: Path) -> None:
    base = {"forget_dataset_id": uploaded["forget"], "holdout_dataset_id": uploaded["holdout"]}
    # overlapping forget and holdout sets
    mixed = subjects.dataset_path("holdout").read_bytes() + \
        subjects.dataset_path("forget").read_bytes().split(b"\n", 1)[0] + b"\n"
    overlap = _upload_dataset(client, token_a, mixed, "mixed").get_json()["id"]
    resp = _job(client, token_a, {**base, "model_id": uploaded["full"],
                                  "holdout_dataset_id": overlap})
    assert resp.status_code == 422 and "overlap in 1 item" in resp.get_json()["detail"]
    # an .npz dataset where JSONL is needed
    import numpy as np
    from support import npz_bytes

    npz = client.post("/v1/datasets", headers=auth(token_a), content_type="multipart/form-data",
                      data={"name": "arrays", "file": (io.BytesIO(npz_bytes(x=np.zeros((3, 2),
                                                                  np.float32))), "a.npz")})
    resp = _job(client, token_a, {**base, "model_id": uploaded["full"],
                                  "forget_dataset_id": npz.get_json()["id"]})
    assert resp.status_code == 422 and "not a JSONL" in resp.get_json()["detail"]
    # a model folder without its tokenizer, one asking for remote code, one not a causal LM
    def variant(name: str, change: Any) -> str:
        folder = tmp_path / name
        shutil.copytree(subjects.model_dir("full"), folder)
        change(folder)
        return str(_upload_model(client, token_a, folder, name)["id"])

    def remote(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"x": "y.Z"}}))

    def not_causal(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config,
                                                        "architectures": ["GPT2Model"]}))

    for name, change, message in (
            ("no-tokenizer", lambda f: (f / "tokenizer.json").unlink(), "no tokenizer.json"),
            ("remote-code", remote, "remote code"),
            ("encoder", not_causal, "not a causal language model")):
        resp = _job(client, token_a, {**base, "model_id": variant(name, change)})
        assert resp.status_code == 422, name
        assert message in resp.get_json()["detail"], resp.get_json()
    # parameters out of range
    resp = _job(client, token_a, {**base, "model_id": uploaded["full"], "audits": ["astrology"]})
    assert resp.status_code == 422
    resp = _job(client, token_a, {**base, "model_id": uploaded["full"], "template": "no slot"})
    assert resp.status_code == 422


def test_items_past_the_context_fail_the_job_with_the_reason(client: Any, token_a: str,
                                                             uploaded: dict[str, Any]) -> None:
    params = {"model_id": uploaded["full"], "forget_dataset_id": uploaded["forget"],
              "holdout_dataset_id": uploaded["holdout"], "audits": ["extraction"],
              "template": "Question: {question} " + "and so on " * 30 + "\nAnswer:"}
    resp = _job(client, token_a, params)
    assert resp.status_code == 202
    job = _finish(client, token_a, resp.get_json()["id"])
    assert job["state"] == "failed" and "past the model's context" in job["error"]


def test_unlearn_produces_a_registered_model_and_a_signed_report(
        client: Any, token_a: str, token_b: str, uploaded: dict[str, Any]) -> None:
    params = {"model_id": uploaded["full"], "forget_dataset_id": uploaded["forget"],
              "retain_dataset_id": uploaded["retain"], "algorithm": "grad_diff", "steps": 6,
              "lr": 1e-3, "options": {"lr_factors": [1.0], "eval_every": 3}, "name": "forgetful"}
    resp = _job(client, token_a, params, kind="unlearn")
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    early = client.post(f"/v1/unlearning/jobs/{job_id}/model", headers=auth(token_a))
    assert early.status_code in (201, 409)  # 409 while the job runs
    job = _finish(client, token_a, job_id)
    assert job["state"] == "succeeded", job["error"]
    report = client.get(f"/v1/reports/{job['report_id']}", headers=auth(token_a)).get_json()
    body = report["report"]
    assert body["method"]["name"] == "unlearning/unlearn"
    assert body["statistics"]["algorithm"] == "grad_diff"
    assert body["inputs"]["forget_dataset"]["sha256"] and body["extra"]["artifacts"]["model.tar"]
    assert body["statistics"]["before"]["forget_accuracy"] >= 0.95
    # the job's template reaches unlearn(): one that pushes the items past the context is refused
    long_template = {**params, "template": "Question: {question} " + "and so on " * 30 + "\nAnswer:"}
    resp = _job(client, token_a, long_template, kind="unlearn")
    assert resp.status_code == 202, resp.get_json()
    refused = _finish(client, token_a, resp.get_json()["id"])
    assert refused["state"] == "failed" and "exceeds the model's context" in refused["error"]
    assert client.post(f"/v1/unlearning/jobs/{job_id}/model",
                       headers=auth(token_b)).status_code == 404
    first = client.post(f"/v1/unlearning/jobs/{job_id}/model", headers=auth(token_a))
    again = client.post(f"/v1/unlearning/jobs/{job_id}/model", headers=auth(token_a))
    assert first.status_code == 201 and again.get_json()["id"] == first.get_json()["id"]
    model = first.get_json()
    assert model["name"] == "forgetful" and model["kind"] == "causal_lm"
    # the new model is a causal LM the audit accepts
    resp = _job(client, token_a, {"model_id": model["id"], "forget_dataset_id": uploaded["forget"],
                                  "holdout_dataset_id": uploaded["holdout"],
                                  "audits": ["extraction"]})
    assert resp.status_code == 202
    assert _finish(client, token_a, resp.get_json()["id"])["state"] == "succeeded"
    bad = _job(client, token_a, {**params, "algorithm": "amnesia"}, kind="unlearn")
    assert bad.status_code == 422
    audit_job = _job(client, token_a, {"model_id": uploaded["full"],
                                       "forget_dataset_id": uploaded["forget"],
                                       "holdout_dataset_id": uploaded["holdout"],
                                       "audits": ["extraction"]}).get_json()["id"]
    _finish(client, token_a, audit_job)
    assert client.post(f"/v1/unlearning/jobs/{audit_job}/model",
                       headers=auth(token_a)).status_code == 409
