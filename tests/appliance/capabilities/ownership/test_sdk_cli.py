"""Dataset ownership through the SDK (``client.ownership``) and the CLI (``appliance ownership``)
against the appliance on a loopback HTTP server: watermark a real image dataset, train a
classifier on the marked copy, audit it with both, and the clear errors of bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from support import trained_linear_onnx

from appliance.capabilities.ownership.schemas import OwnershipResult, WatermarkOut
from appliance.cli import main
from appliance.client import ApiError, Client, JobNotSucceeded, verify_report

CONFIG = {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 16}


def _cli(url: str, token: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"APPLIANCE_URL": url, "APPLIANCE_TOKEN": token},
                              catch_exceptions=False)


def _json_out(result: Result) -> Any:
    """The JSON document a command printed after its progress bar."""
    return json.loads(result.output[result.output.index("{"):])


def _upload_classifier(client: Client, x: np.ndarray, y: np.ndarray, path: Path) -> str:
    from safetensors.torch import save_file

    from models.vision import ConvClassifier, build_model, train_classifier

    torch.set_num_threads(1)
    model = build_model(lambda **c: ConvClassifier(**c), seed=1, **CONFIG)
    model = train_classifier(model, x, y, seed=1, epochs=25)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return client.upload_model(path, name=path.stem, architecture="conv_classifier",
                               config=CONFIG).id


def test_watermark_and_audit_through_sdk_and_cli(live_url: str, token_a: str,
                                                 tmp_path: Path) -> None:
    from models.vision import digits_splits

    digits = digits_splits(seed=0, size=8, fractions=(0.6, 0.2))
    client = Client(live_url, token=token_a)
    source = client.upload_dataset({"x": digits.public[0], "y": digits.public[1]}, name="public")
    benign = client.upload_dataset({"x": digits.private[0], "y": digits.private[1]}, name="held-out")

    marked_path = tmp_path / "release.npz"
    out = _cli(live_url, token_a, "ownership", "watermark", source.id, "--fraction", "0.1",
               "--strength", "0.3", "--out", str(marked_path), "--id-only")
    assert out.exit_code == 0, out.output
    mark = client.ownership.get_watermark(out.stdout.strip())
    assert isinstance(mark, WatermarkOut) and mark.source_dataset_id == source.id
    assert mark.n_marked == round(0.1 * len(digits.public[0]))
    assert [m.id for m in client.ownership.watermarks()] == [mark.id]
    with np.load(marked_path, allow_pickle=False) as arrays:
        x_marked, y_marked = arrays["x"], arrays["y"]
    changed = int((x_marked != digits.public[0]).any(axis=(1, 2, 3)).sum())
    assert changed == mark.n_marked + mark.params["n_decoys"]

    suspect = _upload_classifier(client, x_marked, y_marked, tmp_path / "suspect.safetensors")
    # the SDK: a typed job, then a typed result read from the signed report
    job = client.ownership.audit("watermark_dvbw", suspect_model_id=suspect,
                                 watermark_id=mark.id, benign_dataset_id=benign.id,
                                 method_params={"mode": "proba", "m": 100}, seed=3)
    assert job.kind == "ownership" and job.params["method"] == "watermark_dvbw"
    result = client.ownership.wait(job)
    assert isinstance(result, OwnershipResult)
    assert (result.verdict, result.method, result.queries) == (
        "trained_on_dataset", "ownership/watermark_dvbw", 200)
    assert result.p_value < result.alpha == 0.05
    assert verify_report(result.bundle, trusted_key_pem=client.public_key()).report["id"] == \
        result.report_id

    # the CLI: the same audit, label-only, with the progress bar of `jobs wait`
    out = _cli(live_url, token_a, "ownership", "audit", "--method", "watermark_dvbw",
               "--suspect", suspect, "--watermark", mark.id, "--benign", benign.id,
               "-p", "mode=label", "-p", "m=100", "--seed", "3")
    assert out.exit_code == 0, out.output
    printed = _json_out(out)
    assert printed["verdict"] == "trained_on_dataset" and printed["queries"] == 200
    assert client.ownership.result(printed["job"]).report.parameters["method_params"]["mode"] == "label"


def test_ownership_bad_input_is_a_clear_error(live_url: str, token_a: str, tmp_path: Path) -> None:
    client = Client(live_url, token=token_a)
    flat = client.upload_dataset({"x": np.zeros((10, 64), np.float32),
                                  "y": np.zeros(10, np.int64)}, name="flat")
    with pytest.raises(ApiError) as info:
        client.ownership.watermark(flat.id)
    assert info.value.status == 422 and "[n, C, H, W]" in info.value.diagnostics()
    with pytest.raises(ApiError) as info:  # watermark_dvbw without its watermark
        client.ownership.audit("watermark_dvbw", suspect_model_id="mdl_x")
    assert info.value.status == 422 and "watermark_id" in str(info.value.problem)
    out = _cli(live_url, token_a, "ownership", "audit", "--method", "dov4cl")
    assert out.exit_code == 1 and "exactly one of --suspect and --suspect-endpoint" in out.output
    out = _cli(live_url, token_a, "ownership", "audit", "--method", "dov4cl", "--suspect", "m",
               "-p", "novalue")
    assert out.exit_code == 1 and "KEY=VALUE" in out.output
    out = _cli(live_url, token_a, "ownership", "audit", "--method", "watermark_dvbw",
               "--suspect", "mdl_x", "--watermark", "wm_x", "--benign", flat.id)
    assert out.exit_code == 1 and "HTTP 404" in out.output
    # a job that fails when it runs (flat vectors are no images): the reason, exit 2
    onnx, _, _ = trained_linear_onnx(tmp_path / "linear.onnx")
    model = client.upload_model(onnx, name="linear")
    # a classifier is refused as a shadow at submission
    out = _cli(live_url, token_a, "ownership", "audit", "--method", "dov4cl", "--suspect", model.id,
               "--public", flat.id, "--private", flat.id, "--shadow", model.id)
    assert out.exit_code == 1 and "not an encoder" in out.output
    encoder = client.upload_model(onnx, name="linear-encoder", kind="encoder")
    args = ("ownership", "audit", "--method", "dov4cl", "--suspect", model.id, "--public",
            flat.id, "--private", flat.id, "--shadow", encoder.id)
    out = _cli(live_url, token_a, *args)
    assert out.exit_code == 2 and "failed" in out.output and "[n, C, H, W]" in out.output
    job_id = _cli(live_url, token_a, *args, "--no-wait", "--id-only").stdout.strip()
    with pytest.raises(JobNotSucceeded, match=r"failed: .*\[n, C, H, W\]"):
        client.ownership.wait(job_id)
    evaluation = client.create_job("evaluation", {"model_id": model.id, "dataset_id": flat.id})
    with pytest.raises(JobNotSucceeded, match="not an ownership audit"):
        client.ownership.result(evaluation)


def test_dov4cl_shadows_are_listed_and_reused_through_cli(live_url: str, token_a: str,
                                                          tmp_path: Path) -> None:
    """The shadows an audit trains show in ``appliance models list --tag dov4cl_shadow``, and a
    later audit takes them by id (``--shadow``); the printed result names them."""
    from safetensors.torch import save_file

    from models.vision import ENCODERS, build_model, digits_splits

    torch.set_num_threads(1)
    digits = digits_splits(seed=0, size=8, fractions=(0.6, 0.2))
    client = Client(live_url, token=token_a)
    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    path = tmp_path / "suspect.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(ENCODERS["conv_encoder"], seed=1, **config)
               .state_dict().items()}, str(path))
    suspect = client.upload_model(path, name="suspect", kind="encoder", architecture="conv_encoder",
                                  config=config).id
    pub = client.upload_dataset({"x": digits.public[0][:32]}, name="pub").id
    pvt = client.upload_dataset({"x": digits.private[0][:32]}, name="pvt").id
    alt = client.upload_dataset({"x": digits.alternative[0][:64]}, name="alt").id
    common = ["ownership", "audit", "--method", "dov4cl", "--suspect", suspect, "--public", pub,
              "--private", pvt, "-p", "k=8", "-p", "n_global=2", "-p", "n_local=2"]
    # no distilled shadow: the registered shadows named by id below are then the whole set
    out = _cli(live_url, token_a, *common, "--shadow-training", json.dumps(
        {"dataset_id": alt, "epochs": 2, "count": 2, "config": {"width": 8, "embed_dim": 16}, "distilled": 0}))
    assert out.exit_code == 0, out.output
    first = _json_out(out)
    assert [s["status"] for s in first["shadows"]] == ["trained", "trained"]
    ids = [s["model_id"] for s in first["shadows"]]

    listed = _cli(live_url, token_a, "models", "list", "--tag", "dov4cl_shadow")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(ids)
    assert all("dov4cl_shadow" in line and "simclr conv_encoder, 2 epochs" in line for line in lines)
    assert suspect not in listed.output  # the uploaded model has no tag
    everything = _cli(live_url, token_a, "models", "list", "--json")
    assert {m["id"] for m in json.loads(everything.output)} >= {*ids, suspect}

    out = _cli(live_url, token_a, *common, "--shadow", ids[0], "--shadow", ids[1])
    assert out.exit_code == 0, out.output
    second = _json_out(out)
    assert second["shadows"] == [{"model_id": i, "status": "reused"} for i in ids]
    assert second["p_value"] == first["p_value"]
    # a classifier is no shadow: refused before anything runs
    out = _cli(live_url, token_a, *common, "--shadow", suspect, "--shadow", ids[0], "--shadow",
               _upload_classifier(client, digits.public[0][:64], digits.public[1][:64],
                                  tmp_path / "clf.safetensors"))
    assert out.exit_code != 0 and "not an encoder" in out.output
