"""Adversarial checks of tenant isolation, roles, token handling and the cluster-only routes."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import auth, make_token, npz_bytes, trained_linear_onnx, wait_job


@pytest.fixture(scope="module")
def onnx_and_npz(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    path, x, y = trained_linear_onnx(tmp_path_factory.mktemp("m") / "clf.onnx")
    return path.read_bytes(), npz_bytes(x=x, y=y)


def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.content_type == "application/problem+json"
    return dict(resp.get_json())


def _model(client: Any, token: str, data: bytes, name: str = "m") -> Any:
    return client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "file": (io.BytesIO(data), "clf.onnx")})


def _dataset(client: Any, token: str, data: bytes, name: str = "d") -> Any:
    return client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": name, "file": (io.BytesIO(data), "d.npz")})


def _evaluate(client: Any, token: str, model_id: str, dataset_id: str) -> Any:
    return client.post("/v1/jobs", headers=auth(token), json={
        "kind": "evaluation", "params": {"model_id": model_id, "dataset_id": dataset_id}})


def test_cross_tenant_inputs_reports_and_listings(client: Any, token_a: str, token_b: str,
                                                  onnx_and_npz: tuple[bytes, bytes]) -> None:
    model_bytes, data_bytes = onnx_and_npz
    a_model = _model(client, token_a, model_bytes, "a-model").get_json()["id"]
    a_data = _dataset(client, token_a, data_bytes, "a-data").get_json()["id"]
    # B uploads the very same bytes: same blob, distinct objects
    b_model = _model(client, token_b, model_bytes, "b-model").get_json()["id"]
    b_data = _dataset(client, token_b, data_bytes, "b-data").get_json()["id"]
    assert len({a_model, b_model}) == 2 and len({a_data, b_data}) == 2
    # mixing one's own object with another tenant's is refused as "not found"
    body = _problem(_evaluate(client, token_b, b_model, a_data), 404)
    assert a_data in body["detail"]
    _problem(_evaluate(client, token_b, a_model, b_data), 404)
    job = _evaluate(client, token_a, a_model, a_data)
    assert job.status_code == 202, job.get_json()
    final = wait_job(client, token_a, job.get_json()["id"])
    assert final["state"] == "succeeded", final
    report_id = final["report_id"]
    # the bundle with an explicit tree size is just as private
    _problem(client.get(f"/v1/reports/{report_id}?tree_size=1", headers=auth(token_b)), 404)
    _problem(client.get(f"/v1/jobs/{final['id']}/logs?after=0", headers=auth(token_b)), 404)
    # listings with paging show only one's own ids
    for listing, mine, theirs in (("/v1/models", a_model, b_model),
                                  ("/v1/datasets", a_data, b_data)):
        ids_a = [i["id"] for i in client.get(listing, headers=auth(token_a)).get_json()["items"]]
        ids_b = [i["id"] for i in client.get(listing + "?limit=1000&offset=0",
                                             headers=auth(token_b)).get_json()["items"]]
        assert ids_a == [mine] and ids_b == [theirs]
    assert client.get("/v1/reports", headers=auth(token_b)).get_json()["items"] == []
    assert client.get("/v1/jobs", headers=auth(token_b)).get_json()["items"] == []
    # and nothing of A's leaks through B's own report listing after B's own job
    job_b = _evaluate(client, token_b, b_model, b_data).get_json()
    final_b = wait_job(client, token_b, job_b["id"])
    reports_b = client.get("/v1/reports", headers=auth(token_b)).get_json()["items"]
    assert [r["id"] for r in reports_b] == [final_b["report_id"]]
    bundle_b = client.get(f"/v1/reports/{final_b['report_id']}", headers=auth(token_b)).get_json()
    assert bundle_b["report"]["tenant"] == "tenant-b"
    assert bundle_b["report"]["inputs"]["model"]["id"] == b_model


def test_internal_blob_routes_need_the_cluster_token(client: Any, token_a: str,
                                                     settings: Any, tmp_path: Path) -> None:
    digest, _ = _put_blob(settings, b"secret weights of tenant a")
    # embedded mode has no cluster token: the routes do not exist for anyone
    for headers in ({}, auth(token_a), {"X-Cluster-Token": ""},
                    {"X-Cluster-Token": "None"}):
        _problem(client.get(f"/v1/internal/blobs/{digest}", headers=headers), 404)
        _problem(client.post("/v1/internal/blobs", headers=headers, data=b"x" * 10), 404)
    assert _blob_files(settings) == {digest}

    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    cluster = Settings(home=tmp_path / "cluster", cluster_token="c" * 40, log_level="WARNING",
                       rate_limit="100000 per minute")
    other = create_app(cluster).test_client()
    digest2, _ = _put_blob(cluster, b"cluster blob")
    token = make_token(cluster, "t")
    for headers in ({}, auth(token), {"X-Cluster-Token": "c" * 39},
                    {"X-Cluster-Token": "c" * 40 + "x"}):
        _problem(other.get(f"/v1/internal/blobs/{digest2}", headers=headers), 404)
        _problem(other.post("/v1/internal/blobs", headers=headers, data=b"injected"), 404)
    assert _blob_files(cluster) == {digest2}
    ok = other.get(f"/v1/internal/blobs/{digest2}", headers={"X-Cluster-Token": "c" * 40})
    assert ok.status_code == 200 and ok.data == b"cluster blob"
    bad = other.get("/v1/internal/blobs/..%2F..%2Fappliance.db",
                    headers={"X-Cluster-Token": "c" * 40})
    assert bad.status_code == 404
    put = other.post("/v1/internal/blobs", headers={"X-Cluster-Token": "c" * 40},
                     data=b"artifact")
    assert put.status_code == 201
    assert put.get_json()["digest"] == hashlib.sha256(b"artifact").hexdigest()


def _put_blob(settings: Any, data: bytes) -> tuple[str, int]:
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        digest, size = store.blobs.put_bytes(data)
        store.record_blob(digest, size)
        return digest, size
    finally:
        store.close()


def _blob_files(settings: Any) -> set[str]:
    return {p.parent.name + p.name for p in settings.blob_dir.rglob("*") if p.is_file()}


def test_client_role_cannot_upload_start_or_cancel(app: Any, client: Any, settings: Any,
                                                   token_a: str,
                                                   onnx_and_npz: tuple[bytes, bytes]) -> None:
    model_bytes, data_bytes = onnx_and_npz
    viewer = make_token(settings, "tenant-a", role="client")
    auditor = make_token(settings, "tenant-a", role="auditor")
    _problem(_model(client, viewer, model_bytes), 403)
    _problem(_dataset(client, viewer, data_bytes), 403)
    assert _blob_files(settings) == set()  # refused before anything is stored
    model_id = _model(client, auditor, model_bytes).get_json()["id"]
    dataset_id = _dataset(client, auditor, data_bytes).get_json()["id"]
    _problem(_evaluate(client, viewer, model_id, dataset_id), 403)
    kinds = client.get("/v1/job-kinds", headers=auth(viewer)).get_json()["items"]
    by_name = {k["name"]: k for k in kinds}
    assert "client" not in by_name["evaluation"]["roles"]
    for kind in kinds:
        if "client" not in kind["roles"]:
            resp = client.post("/v1/jobs", headers=auth(viewer),
                               json={"kind": kind["name"], "params": {}})
            _problem(resp, 403)
    held: list[dict[str, Any]] = []
    app.extensions["appliance.enqueue"] = held.append  # stays queued
    job = _evaluate(client, auditor, model_id, dataset_id).get_json()
    _problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(viewer)), 403)
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(viewer)).get_json()["state"] == \
        "queued"
    # reading is what a client may do
    assert client.get("/v1/models", headers=auth(viewer)).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(viewer)).status_code == 200
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(auditor))
    assert cancelled.get_json()["state"] == "cancelled"


def test_revoked_token_is_401(client: Any, settings: Any) -> None:
    from appliance._internal.auth import create_token, revoke_token
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        issued = create_token(store, tenant="rev", role="admin")
        keep = create_token(store, tenant="rev", role="admin")
        assert client.get("/v1/whoami", headers=auth(issued.token)).status_code == 200
        assert revoke_token(store, issued.token_id) is True
        assert revoke_token(store, issued.token_id) is False  # already revoked
    finally:
        store.close()
    body = _problem(client.get("/v1/whoami", headers=auth(issued.token)), 401)
    assert issued.token not in str(body)
    _problem(client.get("/v1/models", headers=auth(issued.token)), 401)
    assert client.get("/v1/whoami", headers=auth(keep.token)).status_code == 200
    # malformed bearer values are 401 too, never 500
    for value in ("Bearer", "Bearer ", "bearer aat_", "Bearer aat_" + "x" * 5000,
                  "Bearer aat_\u00e9\u00e9", "Token aat_abc", "Bearer  aat_x y"):
        _problem(client.get("/v1/whoami", headers={"Authorization": value}), 401)


def test_cli_tokens_create_prints_once_and_logs_nothing(tmp_path: Path, caplog: Any) -> None:
    from click.testing import CliRunner

    from appliance._internal.auth import authenticate, hash_token
    from appliance._internal.config import Settings
    from appliance._internal.store import Store
    from appliance.cli import main
    from appliance.errors import Unauthorized

    home = tmp_path / "clihome"
    runner = CliRunner(env={"APPLIANCE_HOME": str(home)})
    caplog.set_level(logging.DEBUG)
    result = runner.invoke(main, ["tokens", "create", "--tenant", "acme", "--role", "auditor",
                                  "--label", "ci"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aat_")
    token = lines[0]
    assert token not in result.stderr and "shown once" in result.stderr
    token_id = result.stderr.split("token id ")[1].split(",")[0]
    assert all(token not in record.getMessage() for record in caplog.records)
    settings = Settings(home=home, log_level="WARNING")
    db_bytes = b"".join(p.read_bytes() for p in home.glob("appliance.db*"))
    assert token.encode() not in db_bytes and hash_token(token).encode() in db_bytes
    store = Store.open(settings)
    try:
        principal = authenticate(store, f"Bearer {token}")
        assert (principal.tenant_name, principal.role, principal.token_id) == \
            ("acme", "auditor", token_id)
        again = runner.invoke(main, ["tokens", "create", "--tenant", "acme", "--role", "client"])
        assert again.stdout.strip() != token  # a fresh secret every time
        revoked = runner.invoke(main, ["tokens", "revoke", token_id])
        assert revoked.exit_code == 0 and token not in revoked.output
        with pytest.raises(Unauthorized):
            authenticate(store, f"Bearer {token}")
        bad = runner.invoke(main, ["tokens", "create", "--tenant", "../evil", "--role", "admin"])
        assert bad.exit_code != 0 and "aat_" not in bad.stdout
    finally:
        store.close()


def test_same_name_tenants_share_nothing_by_id(client: Any, token_a: str, token_b: str) -> None:
    """Ids are random and unguessable; a guessed prefix or an SQL-ish id never matches."""
    x = np.zeros((3, 4), np.float32)
    ds = _dataset(client, token_a, npz_bytes(x=x)).get_json()
    assert ds["id"].startswith("dst_") and len(ds["id"]) == 24
    for probe in (ds["id"][:-1], ds["id"] + "%", f"{ds['id']}' OR '1'='1", "%", "_" * 24):
        _problem(client.get(f"/v1/datasets/{probe}", headers=auth(token_b)), 404)
        if probe != ds["id"]:
            _problem(client.get(f"/v1/datasets/{probe}", headers=auth(token_a)), 404)
