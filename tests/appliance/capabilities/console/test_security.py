"""The console's safety through the Flask test client on a real store: sessions and cookie
flags, CSRF on every form, the Content-Security-Policy, tenant isolation (404 pages), roles,
escaping, and the form generator and plain-language verdicts it relies on."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from support import auth, make_token, npz_bytes, trained_linear_onnx, wait_job

XSS = "<script>alert(1)</script>"


def _evaluation(client: Any, token: str, tmp_path: Any) -> dict[str, Any]:
    """A finished evaluation through the API: model, dataset, job and report ids."""
    model_path, x_te, y_te = trained_linear_onnx(tmp_path / "m.onnx")
    model = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                        data={"name": "digits", "file": (io.BytesIO(model_path.read_bytes()),
                                                         "m.onnx")}).get_json()
    data = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "digits-test",
                             "file": (io.BytesIO(npz_bytes(x=x_te, y=y_te)), "d.npz")}).get_json()
    job = client.post("/v1/jobs", headers=auth(token), json={"kind": "evaluation", "params": {
        "model_id": model["id"], "dataset_id": data["id"]}}).get_json()
    final = wait_job(client, token, job["id"])
    assert final["state"] == "succeeded", final
    return {"model": model["id"], "dataset": data["id"], "job": job["id"],
            "report": final["report_id"]}


def test_sign_in_cookie_csrf_and_sign_out(client: Any, token_a: str, csrf_of: Any) -> None:
    page = client.get("/console/login")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # no CSRF token, or a wrong one: 400, and no session
    assert client.post("/console/login", data={"token": token_a}).status_code == 400
    assert client.post("/console/login", data={"token": token_a,
                                               "csrf_token": "forged"}).status_code == 400
    bad = client.post("/console/login", data={"token": "aat_wrong",
                                              "csrf_token": csrf_of(page.text)})
    assert bad.status_code == 401 and "aat_wrong" not in bad.text
    page = client.get("/console/login")
    resp = client.post("/console/login", data={"token": token_a,
                                               "csrf_token": csrf_of(page.text),
                                               "next": "//evil.example/"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/"
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if "console_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    overview = client.get("/console/")
    assert overview.status_code == 200 and token_a not in overview.text
    csrf = csrf_of(overview.text)
    # every form POST needs the session's CSRF token
    for path in ("/console/logout", "/console/datasets", "/console/audits/new/evaluation"):
        assert client.post(path, data={}).status_code == 400, path
    assert client.post("/console/logout", data={"csrf_token": csrf}).status_code == 303
    assert client.get("/console/").status_code == 302  # back to sign-in


def test_secure_cookie_over_tls(client: Any, token_a: str, csrf_of: Any) -> None:
    page = client.get("/console/login", base_url="https://localhost")
    resp = client.post("/console/login", base_url="https://localhost",
                       data={"token": token_a, "csrf_token": csrf_of(page.text)})
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if "console_session=" in c)
    assert "Secure" in cookie


def test_revoking_the_token_ends_the_session(app: Any, client: Any, settings: Any,
                                            sign_in: Any) -> None:
    from appliance._internal.auth import create_token, revoke_token
    from appliance._internal.store import Store

    store = Store.open(settings)
    issued = create_token(store, tenant="tenant-r", role="admin")
    sign_in(client, issued.token)
    assert client.get("/console/").status_code == 200
    revoke_token(store, issued.token_id)
    store.close()
    assert client.get("/console/").status_code == 302


def test_tenants_see_404_pages_and_clients_cannot_start_audits(
        app: Any, client: Any, settings: Any, token_a: str, token_b: str, tmp_path: Any,
        sign_in: Any) -> None:
    ids = _evaluation(client, token_a, tmp_path)
    sign_in(client, token_a)
    for path in (f"/console/models/{ids['model']}", f"/console/datasets/{ids['dataset']}",
                 f"/console/jobs/{ids['job']}", f"/console/reports/{ids['report']}",
                 f"/console/reports/{ids['report']}/bundle.json"):
        assert client.get(path).status_code == 200, path
    other = app.test_client()
    csrf = sign_in(other, token_b)
    for path in (f"/console/models/{ids['model']}", f"/console/datasets/{ids['dataset']}",
                 f"/console/jobs/{ids['job']}", f"/console/reports/{ids['report']}"):
        resp = other.get(path, headers={"Accept": "text/html"})
        assert resp.status_code == 404 and "<h1>404" in resp.text, path
        assert other.get(path).content_type == "application/problem+json"
    assert other.get(f"/console/jobs/{ids['job']}/status.json").status_code == 404
    assert other.get(f"/console/reports/{ids['report']}/bundle.json").status_code == 404
    assert other.post(f"/console/jobs/{ids['job']}/cancel",
                      data={"csrf_token": csrf}).status_code == 404
    assert ids["model"] not in other.get("/console/").text

    viewer = app.test_client()
    csrf = sign_in(viewer, make_token(settings, "tenant-a", "client"))
    form = viewer.get("/console/audits/new/evaluation")
    assert "cannot start" in form.text and 'class="params"' not in form.text
    refused = viewer.post("/console/audits/new/evaluation", data={
        "csrf_token": csrf, "model_id": ids["model"], "dataset_id": ids["dataset"]})
    assert refused.status_code == 403
    upload = viewer.post("/console/datasets", content_type="multipart/form-data", data={
        "csrf_token": csrf, "name": "x", "file": (io.BytesIO(npz_bytes(x=[[1.0]])), "d.npz")})
    assert upload.status_code == 403


def test_names_and_params_render_inert(app: Any, console: tuple[Any, str], settings: Any,
                                       token_a: str) -> None:
    client, csrf = console
    from appliance._internal.store import Store

    # a name stored before today's name rules, straight into the store
    store = Store.open(settings)
    tenant = store.conn.execute("SELECT id FROM tenants WHERE name='tenant-a'").fetchone()[0]
    store.record_blob("ab" * 32, 1)
    store.conn.execute(
        "INSERT INTO datasets (id, tenant_id, name, digest, size, n, shape, has_labels, "
        "num_classes, meta, created_at) VALUES ('dst_x', ?, ?, ?, 1, 1, '[1]', 0, NULL, "
        "'{}', '2026-01-01T00:00:00Z')", (tenant, XSS, "ab" * 32))
    store.close()
    for path in ("/console/datasets", "/console/datasets/dst_x"):
        page = client.get(path).text
        assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # a refused audit form echoes what was typed, escaped
    resp = client.post("/console/audits/new/ownership", data={
        "csrf_token": csrf, "method": "dov4cl", "suspect_model_id": XSS,
        "method_params": '{"x": "' + XSS.replace('"', '\\"') + '"}'})
    assert resp.status_code in (404, 422) and XSS not in resp.text


def test_form_generated_from_the_schema_round_trips() -> None:
    from werkzeug.datastructures import MultiDict

    from appliance.capabilities.console.service import form_fields, params_from_form
    from appliance.capabilities.ownership.job import OwnershipParams

    fields = {f.name: f for f in form_fields(OwnershipParams.model_json_schema())}
    assert fields["method"].widget == "select" and fields["method"].options == [
        "dov4cl", "watermark_dvbw"]
    assert fields["suspect_model_id"].widget == "model"
    assert fields["shadow_model_ids"].widget == "models"
    assert fields["public_dataset_id"].widget == "dataset"
    assert fields["seed"].widget == "number" and fields["seed"].value == "0"
    assert fields["seed"].minimum == 0 and fields["seed"].step == "1"
    assert fields["method_params"].widget == "json"
    assert fields["device"].options == ["auto", "cpu", "cuda"]
    form = MultiDict([("method", "dov4cl"), ("suspect_model_id", "mdl_1"),
                      ("public_dataset_id", "dst_1"), ("private_dataset_id", "dst_2"),
                      ("shadow_model_ids", "mdl_2"), ("shadow_model_ids", "mdl_3"),
                      ("method_params", '{"k": 8}'), ("seed", "5"), ("device", "cpu"),
                      ("watermark_id", "")])
    params = params_from_form(list(fields.values()), form)
    parsed = OwnershipParams.model_validate(params)
    assert parsed.shadow_model_ids == ["mdl_2", "mdl_3"] and parsed.seed == 5
    assert parsed.method_params == {"k": 8} and parsed.watermark_id is None


@pytest.mark.parametrize(("p", "alpha", "verdict", "needle"), [
    (0.0004, 0.01, "trained_on_dataset", "less than 1 in 2,000 times"),
    (0.001, 0.01, "trained_on_dataset", "less than 1 in 1,000 times"),
    (0.3, 0.05, "not_detected", "p = 0.300 is above the threshold alpha = 0.05"),
])
def test_verdict_sentences(p: float, alpha: float, verdict: str, needle: str) -> None:
    from appliance.capabilities.console.service import verdict_of

    reading = verdict_of({"method": {"name": "ownership/dov4cl"}, "p_value": p,
                          "alpha": alpha, "verdict": verdict})
    assert needle in reading.sentence
    assert reading.tone == ("positive" if verdict == "trained_on_dataset" else "negative")


def test_docs_page_and_assets(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "unsafe-inline" not in page.headers[
        "Content-Security-Policy"]
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert len(scripts) == 2 and all(client.get(s).status_code == 200 for s in scripts)
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/").headers["Location"] == "/console/"
