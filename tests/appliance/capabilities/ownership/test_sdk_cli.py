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
    args = ("ownership", "audit", "--method", "dov4cl", "--suspect", model.id, "--public",
            flat.id, "--private", flat.id, "--shadow", model.id)
    out = _cli(live_url, token_a, *args)
    assert out.exit_code == 2 and "failed" in out.output and "[n, C, H, W]" in out.output
    job_id = _cli(live_url, token_a, *args, "--no-wait", "--id-only").stdout.strip()
    with pytest.raises(JobNotSucceeded, match=r"failed: .*\[n, C, H, W\]"):
        client.ownership.wait(job_id)
    evaluation = client.create_job("evaluation", {"model_id": model.id, "dataset_id": flat.id})
    with pytest.raises(JobNotSucceeded, match="not an ownership audit"):
        client.ownership.result(evaluation)
