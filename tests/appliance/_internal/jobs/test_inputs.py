"""Every route answers bad input with a 4xx problem document, never a 500, and a refused
upload leaves nothing behind (no blob, no temporary file, no extracted folder)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import auth, npz_bytes, trained_linear_onnx


def _problem(resp: Any, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.content_type == "application/problem+json"
    body = dict(resp.get_json())
    assert body["status"] == resp.status_code
    return body


def _leftovers(settings: Any) -> list[Path]:
    found = [p for p in settings.blob_dir.rglob("*") if p.is_file()]
    found += list(settings.tmp_dir.rglob("*"))
    modeldirs = settings.home / "modeldirs"
    if modeldirs.exists():
        found += list(modeldirs.iterdir())
    return found


def _upload(client: Any, token: str, data: bytes, filename: str, **form: str) -> Any:
    fields: dict[str, Any] = {"name": form.pop("name", "m"), **form,
                              "file": (io.BytesIO(data), filename)}
    return client.post("/v1/models", headers=auth(token), data=fields,
                       content_type="multipart/form-data")


def _tar(members: list[tuple[str, bytes]], *, symlink: str | None = None,
         mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo("model.safetensors")
            info.type = tarfile.SYMTYPE
            info.linkname = symlink
            archive.addfile(info)
    return buf.getvalue()


def _safetensors(**tensors: Any) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _mlp_weights() -> bytes:
    import torch

    from models.architectures import create_architecture

    torch.manual_seed(0)
    module = create_architecture("mlp", {"in_features": 8, "hidden": 4, "num_classes": 3})
    return _safetensors(**{k: v.contiguous() for k, v in module.state_dict().items()})


def test_model_uploads_refused_cleanly(client: Any, token_a: str, settings: Any) -> None:
    weights = _mlp_weights()
    good_cfg = json.dumps({"in_features": 8, "hidden": 4, "num_classes": 3})
    cases: list[tuple[str, bytes, str, dict[str, str], tuple[int, ...]]] = [
        # safetensors with a config that does not match the weights / is wrong
        ("wrong-shapes", weights, "m.safetensors",
         {"architecture": "mlp", "config": json.dumps(
             {"in_features": 9, "hidden": 4, "num_classes": 3})}, (422,)),
        ("unknown-arch", weights, "m.safetensors",
         {"architecture": "no-such-arch", "config": good_cfg}, (422,)),
        ("bad-key", weights, "m.safetensors",
         {"architecture": "mlp", "config": json.dumps({"in_features": 8, "bogus": 1})}, (422,)),
        ("bad-type", weights, "m.safetensors",
         {"architecture": "mlp", "config": json.dumps(
             {"in_features": "8", "hidden": 4, "num_classes": 3})}, (422,)),
        # a config naming a network of 4e12 parameters: refused without allocating it
        ("huge-arch", weights, "m.safetensors",
         {"architecture": "mlp", "config": json.dumps(
             {"in_features": 10**6, "hidden": [10**6], "num_classes": 3})}, (422,)),
        ("cfg-not-object", weights, "m.safetensors",
         {"architecture": "mlp", "config": "[1, 2]"}, (400, 422)),
        ("cfg-not-json", weights, "m.safetensors",
         {"architecture": "mlp", "config": "{nope"}, (400, 422)),
        ("cfg-deeply-nested", weights, "m.safetensors",
         {"architecture": "mlp", "config": "[" * 50_000}, (400, 422)),
        ("no-arch", weights, "m.safetensors", {}, (422,)),
        ("arch-on-onnx", b"\x08\x07" * 50, "m.onnx", {"architecture": "mlp"}, (422,)),
        ("bad-format", weights, "m.safetensors", {"format": "pickle"}, (422,)),
        ("bad-kind", weights, "m.safetensors", {"kind": "oracle"}, (422,)),
        ("bad-name", weights, "m.safetensors", {"name": "../../etc"}, (422,)),
        ("empty", b"", "m.onnx", {}, (422,)),
        # transformers archives that must never be extracted or loaded
        ("tar-traversal", _tar([("config.json", b"{}"), ("../evil.safetensors", weights)]),
         "m.tar", {"format": "transformers"}, (422,)),
        ("tar-absolute", _tar([("config.json", b"{}"), ("/tmp/evil.safetensors", weights)]),
         "m.tar", {"format": "transformers"}, (422,)),
        ("tar-symlink", _tar([("config.json", b"{}")], symlink="/etc/passwd"),
         "m.tar", {"format": "transformers"}, (422,)),
        ("tar-pytorch-bin", _tar([("config.json", b'{"architectures": ["BertModel"]}'),
                                  ("pytorch_model.bin", b"\x80\x02}q\x00.")]),
         "m.tar", {"format": "transformers"}, (422,)),
        ("tar-bin-beside-st", _tar([("config.json", b'{"architectures": ["BertModel"]}'),
                                    ("model.safetensors", weights),
                                    ("pytorch_model.bin", b"\x80\x02}q\x00.")]),
         "m.tar", {"format": "transformers"}, (422,)),
        ("tar-no-weights", _tar([("config.json", b"{}")]), "m.tar",
         {"format": "transformers"}, (422,)),
        ("tar-config-not-object", _tar([("config.json", b"[1]"),
                                        ("model.safetensors", weights)]),
         "m.tar", {"format": "transformers"}, (422,)),
        ("tar-gz-garbage", b"\x1f\x8b" + b"\0" * 200, "m.tar.gz", {}, (422,)),
        ("tar-garbage", b"not a tar" * 100, "m.tar", {"format": "transformers"}, (422,)),
        # ONNX options that would only fail later, at job time
        ("onnx-bad-option", b"", "m.onnx", {"config": json.dumps({"temperature": 2})},
         (422,)),
    ]
    onnx_bytes = trained_linear_onnx(settings.home.parent / "c.onnx")[0].read_bytes()
    for label, data, filename, form, statuses in cases:
        if label == "onnx-bad-option":
            data = onnx_bytes
        body = _problem(_upload(client, token_a, data, filename, **form), *statuses)
        assert body["detail"], label
        assert _leftovers(settings) == [], (label, _leftovers(settings))
    bad_values = [{"kind": "regressor"}, {"output": "scores"}, {"kind": "encoder"}]
    for cfg in bad_values:
        body = _problem(_upload(client, token_a, onnx_bytes, "m.onnx", kind="classifier",
                                config=json.dumps(cfg)), 422)
    assert _leftovers(settings) == []
    # the same uploads done right are accepted
    ok = _upload(client, token_a, weights, "m.safetensors", architecture="mlp", config=good_cfg)
    assert ok.status_code == 201, ok.get_json()
    ok = _upload(client, token_a, onnx_bytes, "m.onnx", config=json.dumps({"output": "logits"}))
    assert ok.status_code == 201, ok.get_json()
    assert list(settings.tmp_dir.iterdir()) == []


def test_refused_transformers_upload_leaves_no_extracted_folder(
        client: Any, token_a: str, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.capabilities.catalog import service
    from models.errors import ModelFormatError

    archive = _tar([("config.json", b'{"architectures": ["BertModel"], "model_type": "bert"}'),
                    ("model.safetensors", _mlp_weights())])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ModelFormatError("refused after extraction")

    # the archive extracts fine and fails later: the extracted folder must go with the blob
    monkeypatch.setattr(service, "build_manifest", refuse)
    _problem(_upload(client, token_a, archive, "m.tar", format="transformers"), 422)
    assert _leftovers(settings) == []
    monkeypatch.undo()
    ok = _upload(client, token_a, archive, "m.tar", format="transformers")
    assert ok.status_code == 201, ok.get_json()
    assert ok.get_json()["kind"] == "encoder"


def test_json_bodies_and_forms(client: Any, token_a: str) -> None:
    headers = {**auth(token_a), "Content-Type": "application/json"}
    for raw in (b"[" * 100_000, b"{" * 3000, b'{"kind": "evaluation", "params": ' + b"[" * 5000,
                b"\xff\xfe\x00", b"", b"null", b"[]", b'"x"', b"1e999999",
                b'{"kind": "evaluation", "params": []}',
                b'{"kind": "evaluation", "params": {}, "extra": 1}',
                b'{"kind": "' + b"k" * 1000 + b'"}'):
        _problem(client.post("/v1/jobs", headers=headers, data=raw), 400, 413, 422)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/xml"):
        _problem(client.post("/v1/jobs", headers={**auth(token_a), "Content-Type": ctype},
                             data=b"kind=evaluation"), 415)
    # multipart without a file part, with an empty one, with a huge text field
    _problem(client.post("/v1/models", headers=auth(token_a), data={"name": "m"},
                         content_type="multipart/form-data"), 422)
    _problem(client.post("/v1/datasets", headers=auth(token_a), content_type="multipart/form-data",
                         data={"name": "d", "file": (io.BytesIO(b""), "")}), 422)
    _problem(client.post("/v1/datasets", headers=auth(token_a), content_type="multipart/form-data",
                         data={"name": "d" * 5_000_000, "file": (io.BytesIO(b"x"), "d.npz")}),
             413)
    _problem(client.post("/v1/models", headers={**auth(token_a),
                                                "Content-Type": "multipart/form-data"},
                         data=b"--x\r\nnot multipart"), 400, 422)
    _problem(client.post("/v1/models", headers=auth(token_a), json={"name": "m"}), 415)


def test_path_ids_and_query_params(client: Any, token_a: str) -> None:
    odd_ids = ["a" * 20_000, "%00", "a%00b", "%ED%A0%80", "%FF%FE", "..%2F..%2Fappliance.db",
               "%2e%2e", "' OR 1=1 --", "<script>alert(1)</script>", "%F0%9F%92%A3", "%20",
               "job_" + "0" * 20]
    templates = ["/v1/models/{}", "/v1/models/{}/manifest", "/v1/datasets/{}", "/v1/jobs/{}",
                 "/v1/jobs/{}/logs", "/v1/reports/{}", "/v1/reports/{}.html"]
    for template in templates:
        for ident in odd_ids:
            body = _problem(client.get(template.format(ident), headers=auth(token_a)), 404)
            assert len(json.dumps(body)) < 2000  # the id is not echoed at full length
    for ident in odd_ids:
        _problem(client.post(f"/v1/jobs/{ident}/cancel", headers=auth(token_a)), 404)
    bad_queries = ["/v1/models?limit=0", "/v1/models?limit=abc", "/v1/models?limit=-1",
                   "/v1/models?offset=-5", "/v1/models?offset=1e3",
                   "/v1/models?limit=99999999999999999999999999",
                   "/v1/models?limit=1&limit=2", "/v1/models?nope=1", "/v1/jobs?limit=%00",
                   "/v1/log/consistency", "/v1/log/consistency?first=0",
                   "/v1/log/consistency?first=abc", "/v1/log/consistency?first=1&second=0",
                   "/v1/log/consistency?first=99999999999999999999999999",
                   "/v1/log/consistency?first=1&second=99999999999999999999999999"]
    for url in bad_queries:
        _problem(client.get(url, headers=auth(token_a)), 400, 422)


def test_huge_query_values_on_existing_objects(app: Any, client: Any, token_a: str) -> None:
    """Out-of-range integers reach SQLite only after validation (was a 500: OverflowError)."""
    held: list[dict[str, Any]] = []
    app.extensions["appliance.enqueue"] = held.append
    ds = client.post("/v1/datasets", headers=auth(token_a), content_type="multipart/form-data",
                     data={"name": "d", "file": (io.BytesIO(npz_bytes(
                         x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))), "d.npz")})
    onnx_bytes = trained_linear_onnx(app.config["APPLIANCE_SETTINGS"].home.parent /
                                     "x.onnx")[0].read_bytes()
    model = _upload(client, token_a, onnx_bytes, "m.onnx")
    job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "evaluation", "params": {
        "model_id": model.get_json()["id"], "dataset_id": ds.get_json()["id"]}}).get_json()
    for query in ("after=99999999999999999999999", "after=-1", "limit=0", "limit=100000"):
        _problem(client.get(f"/v1/jobs/{job['id']}/logs?{query}", headers=auth(token_a)), 422)
    assert client.get(f"/v1/jobs/{job['id']}/logs?after=0&limit=1",
                      headers=auth(token_a)).status_code == 200


@pytest.mark.parametrize("params", [
    {"model_id": "", "dataset_id": "x"},
    {"model_id": "x" * 65, "dataset_id": "x"},
    {"model_id": "mdl_x", "dataset_id": "dst_x", "batch_size": 0},
    {"model_id": "mdl_x", "dataset_id": "dst_x", "batch_size": 10**9},
    {"model_id": "mdl_x", "dataset_id": "dst_x", "device": "tpu"},
    {"model_id": "mdl_x", "dataset_id": "dst_x", "unknown": True},
    {"model_id": ["a"], "dataset_id": {"b": 1}},
])
def test_job_params_validation(client: Any, token_a: str, params: dict[str, Any]) -> None:
    _problem(client.post("/v1/jobs", headers=auth(token_a),
                         json={"kind": "evaluation", "params": params}), 422)


def test_dataset_uploads_refused_cleanly(client: Any, token_a: str, settings: Any) -> None:
    cases = [
        b"",
        b"PK\x03\x04" + b"\0" * 100,  # a truncated zip
        npz_bytes(x=np.array([{"a": 1}], dtype=object)),  # pickled objects inside
        npz_bytes(y=np.zeros(3, np.int64)),  # no x
        npz_bytes(x=np.zeros((3, 2), np.float32), y=np.zeros(4, np.int64)),  # length mismatch
        npz_bytes(x=np.array([1.0, np.nan], np.float32)),  # not finite
    ]
    for data in cases:
        _problem(client.post("/v1/datasets", headers=auth(token_a),
                             content_type="multipart/form-data",
                             data={"name": "d", "file": (io.BytesIO(data), "d.npz")}), 422)
        assert _leftovers(settings) == []


def test_every_route_answers_junk_with_a_4xx_problem(app: Any, client: Any,
                                                     token_a: str) -> None:
    """A sweep over the URL map (routes added later included): junk ids, queries and
    bodies never produce a 5xx or an error that is not a problem document."""
    import re

    app.extensions["appliance.enqueue"] = lambda message: None
    bodies: list[dict[str, Any]] = [
        {},
        {"data": b"[" * 3000, "content_type": "application/json"},
        {"data": b'{"kind": 5, "params": [null]}', "content_type": "application/json"},
        {"data": b"\x00\xff" * 64, "content_type": "application/octet-stream"},
    ]
    failures = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for ident in ("x", "a" * 3000, "%00%FF"):
                path = re.sub(r"<(?:[^:>]+:)?[^>]+>", ident, rule.rule)
                for query in ("", "?limit=-1&after=x&tree_size=0&first=0&x=%00"):
                    for body in bodies + [{"data": {"name": "n", "config": "[[",
                                                    "file": (io.BytesIO(b"\0" * 64), "f.bin")},
                                           "content_type": "multipart/form-data"}]:
                        resp = client.open(path + query, method=method, headers=auth(token_a),
                                           **body)
                        if resp.status_code >= 500 or (
                                resp.status_code >= 400
                                and resp.content_type != "application/problem+json"):
                            failures.append((method, rule.rule, resp.status_code))
    assert not failures, sorted(set(failures))[:20]
