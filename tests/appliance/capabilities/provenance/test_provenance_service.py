"""The provenance capability end to end through the Flask test client: generators registered
as models, audits as jobs with signed reports, the shadow cache, and every bad input."""

from __future__ import annotations

import io
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support import auth, npz_bytes, serving, trained_linear_onnx, upload_dataset, wait_job

from models.generators import export_onnx, fit_linear_gaussian
from models.provenance import ShadowSpec, balanced_labels, digits_provenance_splits, train_shadow

torch.set_num_threads(1)
SMALL = {"n_shadow": 40, "n_val": 40, "batches": 10, "shadows": 3, "shadow_epochs": 12}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("prov")
    parts = digits_provenance_splits(seed=0)
    gen = fit_linear_gaussian(*parts[0])
    export_onnx(gen, folder / "gen.onnx")
    x = gen.sample(balanced_labels(10, 40), seed=99, temperature=1.0)
    trained = train_shadow(x, balanced_labels(10, 40), ShadowSpec("mlp", {"hidden": 48}, epochs=15, seed=3),
                           num_classes=10)
    random_init = train_shadow(x[:2], np.array([0, 1]), ShadowSpec("mlp", {"hidden": 48}, epochs=0, seed=4),
                               num_classes=10)
    real = train_shadow(*parts[2], ShadowSpec("mlp", {"hidden": 48}, epochs=15, seed=5), num_classes=10)
    for name, module in (("trained", trained), ("random", random_init), ("real", real)):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / f"{name}.safetensors"))
    trained_linear_onnx(folder / "flat.onnx")
    return {"gen": folder / "gen.onnx", "trained": folder / "trained.safetensors",
            "random": folder / "random.safetensors", "real": folder / "real.safetensors", "flat": folder / "flat.onnx"}


def _upload(client: Any, token: str, path: Path, **form: Any) -> Any:
    data = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in form.items()}
    return client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={**data, "file": (io.BytesIO(path.read_bytes()), path.name)})


def _suspect(client: Any, token: str, path: Path) -> str:
    resp = _upload(client, token, path, name=path.stem, architecture="mlp",
                   config={"in_features": 64, "hidden": 48, "num_classes": 10})
    assert resp.status_code == 201, resp.get_json()
    return str(resp.get_json()["id"])


def _audit(client: Any, token: str, **params: Any) -> dict[str, Any]:
    resp = client.post("/v1/provenance/audits", headers=auth(token), json={**SMALL, **params})
    assert resp.status_code == 202, resp.get_json()
    return wait_job(client, token, resp.get_json()["id"], timeout=180)


def _report(client: Any, token: str, job: dict[str, Any]) -> dict[str, Any]:
    assert job["state"] == "succeeded", job
    return dict(client.get(f"/v1/reports/{job['report_id']}", headers=auth(token)).get_json()["report"])


def test_audit_end_to_end(client: Any, token_a: str, token_b: str, assets: dict[str, Path]) -> None:
    resp = _upload(client, token_a, assets["gen"], name="pca-gen", kind="generator",
                   config={"num_classes": 10, "class_names": [str(i) for i in range(10)]})
    assert resp.status_code == 201, resp.get_json()
    gen = resp.get_json()
    assert gen["kind"] == "generator" and gen["config"]["z_dim"] == 8 and gen["config"]["sample_shape"] == [1, 8, 8]
    listed = client.get("/v1/provenance/generators", headers=auth(token_a)).get_json()["items"]
    assert [g["id"] for g in listed] == [gen["id"]]
    assert client.get("/v1/provenance/generators", headers=auth(token_b)).get_json()["items"] == []
    trained = _suspect(client, token_a, assets["trained"])
    random_init = _suspect(client, token_a, assets["random"])

    first = _report(client, token_a, _audit(client, token_a, generator_model_ids=[gen["id"]], suspect_model_id=trained,
                                            decision="calibrated"))
    stats = first["statistics"]
    assert first["verdict"] == "consistent_with_generator_data"
    assert stats["G"] < stats["G_crit"] and stats["queries"] == 400
    assert stats["decision"] == "calibrated" and stats["n"] == 31  # three shadows x 10 batches + the suspect
    assert stats["sources"][0]["paper"]["n"] == 11 and stats["sources"][0]["model_level"]["n"] == 4
    assert len(stats["sources"][0]["shadow_batch_values"]) == 3
    assert [s["data_draw"] for s in stats["shadow_provenance"][0]["shadows"]] == [0, 1, 2]
    assert stats["shadow_provenance"][0]["status"] == "trained"
    assert first["inputs"]["suspect"]["id"] == trained and first["inputs"]["generators"][0]["id"] == gen["id"]
    assert first["timings"]["shadow_training_seconds"] > 0

    second = _report(client, token_a, _audit(client, token_a, generator_model_ids=[gen["id"]],
                                             suspect_model_id=random_init))
    assert second["verdict"] == "not_trained_on_generator_data"
    assert second["statistics"]["shadow_provenance"][0]["status"] == "reused"
    assert second["timings"]["shadow_training_seconds"] == 0
    assert second["statistics"]["sources"][0]["shadow_batch_values"] == stats["sources"][0]["shadow_batch_values"]
    assert second["statistics"]["G"] != stats["G"]

    page = client.get(f"/v1/reports/{second['id']}/html", headers=auth(token_a))
    if page.status_code == 200:
        assert b"Shadow distribution" in page.data and b"data:image/png" in page.data
    # tenant b cannot name tenant a's generator
    resp = client.post("/v1/provenance/audits", headers=auth(token_b),
                       json={**SMALL, "generator_model_ids": [gen["id"]], "suspect_model_id": trained})
    assert resp.status_code == 404


def test_contrast_against_a_real_reference_dataset(client: Any, token_a: str, token_b: str,
                                                   assets: dict[str, Path]) -> None:
    gen = _upload(client, token_a, assets["gen"], name="pca-gen-ref", kind="generator",
                  config={"num_classes": 10}).get_json()
    x, y = digits_provenance_splits(seed=0)[1]
    ref = upload_dataset(client, token_a, npz_bytes(x=x.astype(np.float32), y=y.astype(np.int64)))
    assert ref.status_code == 201, ref.get_json()
    flat = upload_dataset(client, token_a, npz_bytes(x=x.reshape(len(x), -1).astype(np.float32), y=y))
    trained = _suspect(client, token_a, assets["trained"])
    random_init = _suspect(client, token_a, assets["random"])
    ref_id = ref.get_json()["id"]
    reports = {name: _report(client, token_a, _audit(client, token_a, generator_model_ids=[gen["id"]],
                                                     suspect_model_id=sid, reference_dataset_ids=[ref_id],
                                                     decision="contrast"))
               for name, sid in (("trained", trained), ("random", random_init))}
    stats = reports["trained"]["statistics"]
    assert stats["decision"] == "contrast" and stats["n"] == 4  # three shadow models + the suspect
    assert stats["sources"][0]["references"] == [f"dataset:{ref_id}"]
    assert stats["queries"] == 400 + len(y)
    assert reports["trained"]["inputs"]["reference_datasets"][0]["id"] == ref_id
    assert reports["trained"]["verdict"] == "consistent_with_generator_data", stats
    assert reports["random"]["verdict"] == "not_trained_on_generator_data"
    # a contrast without a reference, a reference of the wrong shape, another tenant's dataset
    resp = client.post("/v1/provenance/audits", headers=auth(token_a),
                       json={**SMALL, "generator_model_ids": [gen["id"]], "suspect_model_id": trained,
                             "decision": "contrast"})
    assert resp.status_code == 422 and "reference" in json.dumps(resp.get_json())
    job = _audit(client, token_a, generator_model_ids=[gen["id"]], suspect_model_id=trained,
                 reference_dataset_ids=[flat.get_json()["id"]], decision="contrast")
    assert job["state"] == "failed" and "shape" in json.dumps(job)
    resp = client.post("/v1/provenance/audits", headers=auth(token_b),
                       json={**SMALL, "generator_model_ids": [gen["id"]], "suspect_model_id": trained,
                             "reference_dataset_ids": [ref_id]})
    assert resp.status_code == 404


def test_real_data_as_a_candidate_source(client: Any, token_a: str, assets: dict[str, Path]) -> None:
    gen = _upload(client, token_a, assets["gen"], name="pca-gen-cand", kind="generator",
                  config={"num_classes": 10}).get_json()
    x, y = digits_provenance_splits(seed=0)[1]
    data = upload_dataset(client, token_a, npz_bytes(x=x.astype(np.float32), y=y.astype(np.int64))).get_json()
    reports = {}
    for name in ("trained", "real"):
        reports[name] = _report(client, token_a, _audit(
            client, token_a, generator_model_ids=[gen["id"]], candidate_dataset_ids=[data["id"]],
            suspect_model_id=_suspect(client, token_a, assets[name]), decision="contrast"))
    stats = reports["real"]["statistics"]
    by_name = {s["source"]: s for s in stats["sources"]}
    assert set(by_name) == {"pca-gen-cand", f"dataset:{data['id']}"}
    assert by_name[f"dataset:{data['id']}"]["references"] == ["pca-gen-cand"]
    assert by_name["pca-gen-cand"]["decision"] == "contrast"
    provenance = stats["shadow_provenance"][1]
    assert provenance["dataset_digest"] and provenance["n_val"] + provenance["n_shadow"] == len(y)
    assert provenance["status"] == "reused"  # trained by the first audit
    # the suspect trained on real digits ranks the real data first, the one trained on samples the generator
    # with two sources each one's contrast reference is the other: the suspect's values are opposite
    for report in reports.values():
        values = [s["contrast"]["tested"] for s in report["statistics"]["sources"]]
        assert values[0] == pytest.approx(-values[1]) and values[0] != 0
    assert reports["trained"]["statistics"]["sources"][0]["contrast"]["tested"] != values[0]
    # (which source ranks first is not asserted: this PCA generator's samples and real digits are
    # labelled alike by either suspect, the method's known limit; the benchmark measures attribution)


def test_bad_generators_are_refused_and_not_stored(client: Any, token_a: str, assets: dict[str, Path],
                                                   tmp_path: Path) -> None:
    resp = _upload(client, token_a, assets["flat"], name="not-a-gen", kind="generator", config={"num_classes": 10})
    assert resp.status_code == 422 and "two inputs" in resp.get_json()["detail"]
    resp = _upload(client, token_a, assets["gen"], name="no-classes", kind="generator")
    assert resp.status_code == 422 and "num_classes" in resp.get_json()["detail"]
    # a classifier's weights declared as a generator: not a generator architecture
    resp = _upload(client, token_a, assets["trained"], name="st-gen", kind="generator", architecture="mlp",
                   config={"in_features": 64, "hidden": 48, "num_classes": 10})
    assert resp.status_code == 422 and "architecture" in resp.get_json()["detail"], resp.get_json()
    assert client.get("/v1/models", headers=auth(token_a)).get_json()["items"] == []


def test_a_safetensors_generator_registers_and_audits(client: Any, token_a: str, assets: dict[str, Path],
                                                      tmp_path: Path) -> None:
    from models.generators import save_safetensors_generator

    parts = digits_provenance_splits(seed=0)
    architecture, config = save_safetensors_generator(fit_linear_gaussian(*parts[0]), tmp_path / "g.safetensors")
    resp = _upload(client, token_a, tmp_path / "g.safetensors", name="st-gen", kind="generator",
                   architecture=architecture, config=config)
    assert resp.status_code == 201, resp.get_json()
    generator = resp.get_json()
    assert generator["kind"] == "generator" and generator["format"] == "safetensors"
    report = _report(client, token_a, _audit(client, token_a, generator_model_ids=[generator["id"]],
                                             suspect_model_id=_suspect(client, token_a, assets["trained"])))
    assert report["inputs"]["generators"][0]["id"] == generator["id"]


def test_suspect_that_does_not_take_the_samples_fails_with_the_reason(client: Any, token_a: str,
                                                                     assets: dict[str, Path]) -> None:
    gen = _upload(client, token_a, assets["gen"], name="g", kind="generator", config={"num_classes": 10}).get_json()
    flat = _upload(client, token_a, assets["flat"], name="flat", kind="classifier").get_json()
    job = _audit(client, token_a, generator_model_ids=[gen["id"]], suspect_model_id=flat["id"])
    assert job["state"] == "failed" and "(1, 8, 8)" in job["error"], job
    resp = client.post("/v1/provenance/audits", headers=auth(token_a),
                       json={**SMALL, "generator_model_ids": [flat["id"]], "suspect_model_id": flat["id"]})
    assert resp.status_code == 422
    resp = client.post("/v1/provenance/audits", headers=auth(token_a),
                       json={**SMALL, "n_val": 41, "generator_model_ids": [gen["id"]], "suspect_model_id": flat["id"]})
    assert resp.status_code in (400, 422)
    resp = client.post("/v1/provenance/audits", headers=auth(token_a),  # model-level test: >= 3 shadows
                       json={**SMALL, "shadows": 2, "decision": "model_level", "generator_model_ids": [gen["id"]],
                             "suspect_model_id": flat["id"]})
    assert resp.status_code in (400, 422) and "shadows >= 3" in json.dumps(resp.get_json())


class _Generator(BaseHTTPRequestHandler):
    mode = "junk"
    requests: list[int] = []  # noqa: RUF012 (each test's subclass sets its own)

    def answer(self, body: dict[str, Any]) -> Any:
        if self.mode == "slow":
            time.sleep(1.0)
        n = len(body["labels"])
        return {"outputs": "junk"} if self.mode == "junk" else \
            {"outputs": [[float("nan")] * 4] * n} if self.mode == "nan" else {"outputs": [[0.5] * 4] * n}

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(len(body["labels"]))
        data = json.dumps(self.answer(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("mode", "reason"), [("junk", "'outputs' list"), ("slow", "timed out"), ("nan", "NaN")])
def test_remote_generator_failures(client: Any, token_a: str, assets: dict[str, Path], mode: str, reason: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", "1")
    suspect = _suspect(client, token_a, assets["trained"])
    handler = type("H", (_Generator,), {"mode": mode})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        url = f"http://127.0.0.1:{port}/generate"
        job = _audit(client, token_a, suspect_model_id=suspect,
                     generator_endpoint={"url": url, "num_classes": 10, "timeout_s": 0.2, "retries": 1})
        assert job["state"] == "failed" and reason in job["error"], job


def test_remote_generator_budget_is_checked_before_sampling(client: Any, token_a: str, assets: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample_budget the pool cannot be drawn within fails the job before the first request,
    with the number needed and what to change."""
    monkeypatch.setenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", "1")
    suspect = _suspect(client, token_a, assets["trained"])
    handler = type("H", (_Generator,), {"mode": "ok", "requests": []})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        url = f"http://127.0.0.1:{port}/generate"
        job = _audit(client, token_a, suspect_model_id=suspect,
                     generator_endpoint={"url": url, "num_classes": 10, "sample_budget": 1000})
        assert job["state"] == "failed", job
        # SMALL: 3 shadows x 40 + 40 validation samples per class, 10 classes
        assert "draws 1600 samples" in job["error"] and "sample_budget is 1000 (10 spent)" in job["error"], \
            job["error"]
        assert "raise sample_budget" in job["error"]
        assert handler.requests == [10]  # the fingerprint only: nothing of the pool was drawn


class _ModelGenerator(_Generator):
    """A generator endpoint serving a real generator (deterministic in the seed, as the contract asks)."""

    generator: Any = None

    def answer(self, body: dict[str, Any]) -> Any:
        x = self.generator.sample(np.asarray(body["labels"]), seed=body["seed"], temperature=body["temperature"])
        return {"outputs": np.asarray(x, dtype=np.float32).tolist()}


def test_remote_generator_audit_caches_by_fingerprint(client: Any, token_a: str, assets: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit against a generator endpoint: the suspect trained on its samples is consistent,
    the shadows are reused by the next audit of the same endpoint, and a different model served
    at the same URL gets its own shadows (the cache key pins the endpoint's fingerprint)."""
    monkeypatch.setenv("APPLIANCE_ALLOW_PRIVATE_ENDPOINTS", "1")
    parts = digits_provenance_splits(seed=0)
    handler = type("H", (_ModelGenerator,), {"generator": fit_linear_gaussian(*parts[0]), "requests": []})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        endpoint = {"url": f"http://127.0.0.1:{port}/generate", "num_classes": 10}
        trained = _suspect(client, token_a, assets["trained"])
        first = _report(client, token_a, _audit(client, token_a, suspect_model_id=trained, generator_endpoint=endpoint))
        stats = first["statistics"]
        assert first["verdict"] == "consistent_with_generator_data"
        assert stats["shadow_provenance"][0]["status"] == "trained"
        drawn = sum(handler.requests)
        assert drawn == 10 + 10 * (3 * 40 + 40)  # fingerprint, then SMALL's pool and validation set
        again = _report(client, token_a, _audit(client, token_a, suspect_model_id=trained, generator_endpoint=endpoint))
        assert again["statistics"]["shadow_provenance"][0]["status"] == "reused"
        assert sum(handler.requests) == drawn + 10  # only the fingerprint
        assert again["statistics"]["sources"] == stats["sources"]
        handler.generator = fit_linear_gaussian(*parts[1])  # another model behind the same URL
        changed = _report(client, token_a, _audit(client, token_a, suspect_model_id=trained,
                                                  generator_endpoint=endpoint))
        assert changed["statistics"]["shadow_provenance"][0]["status"] == "trained"
        prints = [r["inputs"]["generators"][0]["fingerprint"] for r in (first, again, changed)]
        assert prints[0] == prints[1] != prints[2] and len(prints[0]) == 64


def test_hot_probe_decision_draws_queries_and_caches_the_probes(client: Any, token_a: str,
                                                                 assets: dict[str, Path]) -> None:
    resp = _upload(client, token_a, assets["gen"], name="pca-gen-hot", kind="generator", config={"num_classes": 10})
    assert resp.status_code == 201, resp.get_json()
    gen = resp.get_json()["id"]
    trained, random_init = _suspect(client, token_a, assets["trained"]), _suspect(client, token_a, assets["random"])
    first = _report(client, token_a, _audit(client, token_a, generator_model_ids=[gen], suspect_model_id=trained,
                                            decision="error_location_hot", n_probe=10))
    stats = first["statistics"]
    assert stats["decision"] == "error_location_hot" and first["verdict"] == "consistent_with_generator_data"
    assert stats["queries"] == 400 + 100  # the validation set and 10 hot probes per class
    assert stats["shadow_provenance"][0]["hot_probes"] == {"status": "drawn", "n_probe_per_class": 10,
                                                           "t_probe": 2.0}
    assert stats["sources"][0]["error_location_hot"] is not None
    second = _report(client, token_a, _audit(client, token_a, generator_model_ids=[gen], suspect_model_id=random_init,
                                             decision="error_location_hot", n_probe=10))
    assert second["verdict"] == "not_trained_on_generator_data"
    assert second["statistics"]["shadow_provenance"][0]["hot_probes"]["status"] == "reused"
    assert second["statistics"]["shadow_provenance"][0]["status"] == "reused"
    plain = _report(client, token_a, _audit(client, token_a, generator_model_ids=[gen], suspect_model_id=trained,
                                            decision="error_location"))
    assert plain["statistics"]["queries"] == 400 and "hot_probes" not in plain["statistics"]["shadow_provenance"][0]
    for bad in ({"shadows": 2}, {"variant": "entropy", "suspect_output": "proba"}, {"candidate_dataset_ids": ["x"]}):
        resp = client.post("/v1/provenance/audits", headers=auth(token_a),
                           json={**SMALL, "generator_model_ids": [gen], "suspect_model_id": trained,
                                 "decision": "error_location_hot", **bad})
        assert resp.status_code == 422, (bad, resp.get_json())


def test_shadow_training_reports_progress_per_shadow(tmp_path: Path) -> None:
    from appliance.capabilities.provenance.schemas import ProvenanceParams
    from appliance.capabilities.provenance.service import build_dataset_evidence, build_evidence

    parts = digits_provenance_splits(seed=0)
    params = ProvenanceParams.model_validate({**SMALL, "generator_model_ids": ["mdl_g"], "suspect_model_id": "mdl_s"})
    calls: list[tuple[int, int]] = []

    def build() -> Any:
        return build_evidence("g", fit_linear_gaussian(*parts[0]), "digest", num_classes=10, params=params,
                              cache_root=tmp_path, log=lambda _: None, progress=lambda *a: calls.append(a))

    first = build()
    assert calls == [(1, 3), (2, 3), (3, 3)] and first.provenance["status"] == "trained"
    assert build().provenance["status"] == "reused" and len(calls) == 3  # nothing trained, nothing reported
    calls.clear()
    build_dataset_evidence("real", *parts[3], "real-digest", num_classes=10, params=params, cache_root=None,
                           log=lambda _: None, progress=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)]
