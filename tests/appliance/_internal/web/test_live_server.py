"""End to end on a live server on loopback: `appliance serve` (gunicorn + embedded Huey worker),
the SDK, the CLI, offline verification of the signed report and of a model manifest."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import appliance_cmd, cli_token, env_for, npz_bytes, serve_appliance, trained_linear_onnx

TEXTS = [
    "Return the absolute value of the argument.",
    "Open file and return a corresponding file object.",
    "Create a new dictionary from an iterable of key/value pairs.",
    "Return the number of items in a container.",
    "Round a number to a given precision in decimal digits.",
    "Return a sorted list of the items of an iterable.",
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("live") / "home"
    env = env_for(home)
    token = cli_token(env, "acme")
    log_path = home.parent / "server.log"
    with serve_appliance(env, "--workers", "2", log_path=log_path) as url:
        yield {"url": url, "token": token, "env": env, "home": home, "log": log_path}
    # secrets never reach the logs
    assert token not in log_path.read_text(errors="replace")


def _cli(live: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**live["env"], "APPLIANCE_URL": live["url"], "APPLIANCE_TOKEN": live["token"]}
    return subprocess.run(appliance_cmd(*args), env=env, capture_output=True, text=True,
                          check=check, timeout=300)


def test_end_to_end_minilm_and_onnx(live: dict, tmp_path: Path) -> None:
    from appliance.client import Client
    from models.hub import minilm_dir

    client = Client(live["url"], token=live["token"])
    assert client.whoami().tenant == "acme"

    # the real all-MiniLM-L6-v2 encoder, uploaded as a transformers folder
    encoder = client.upload_model(minilm_dir(), name="all-MiniLM-L6-v2")
    assert encoder.format == "transformers" and encoder.kind == "encoder"
    assert any(f.name.endswith("model.safetensors") for f in encoder.files)
    texts = client.upload_dataset({"x": np.array(TEXTS)}, name="docstrings")
    job = client.wait(client.create_job("evaluation", {"model_id": encoder.id,
                                                       "dataset_id": texts.id}))
    assert job.state == "succeeded", client.job_logs(job)
    report = client.get_report(job.report_id or "")
    assert report["report"]["statistics"]["dim"] == 384
    assert abs(report["report"]["statistics"]["mean_norm"] - 1.0) < 1e-3

    # a real trained ONNX classifier on held-out digits
    onnx_path, x_te, y_te = trained_linear_onnx(tmp_path / "digits.onnx")
    model = client.upload_model(onnx_path, name="digits-linear")
    data_path = tmp_path / "digits.npz"
    data_path.write_bytes(npz_bytes(x=x_te, y=y_te))
    out = _cli(live, "datasets", "upload", str(data_path), "--name", "digits-test")
    dataset_id = json.loads(out.stdout)["id"]
    out = _cli(live, "jobs", "submit", "evaluation", "-p", f"model_id={model.id}",
               "-p", f"dataset_id={dataset_id}", "--wait")
    job_out = json.loads(out.stdout[out.stdout.index("{"):])
    assert job_out["state"] == "succeeded"
    bundle_path = tmp_path / "report.json"
    _cli(live, "reports", "get", job_out["report_id"], "--out", str(bundle_path))
    bundle = json.loads(bundle_path.read_text())
    assert bundle["report"]["statistics"]["accuracy"] > 0.9

    key_path = tmp_path / "appliance.pem"
    key_path.write_text(client.public_key())
    ok = _cli(live, "verify", str(bundle_path), "--key", str(key_path))
    assert ok.stdout.startswith("OK"), ok.stdout + ok.stderr

    # a later checkpoint the verifier saved: prove inclusion at exactly that size
    checkpoint_path = tmp_path / "checkpoint.json"
    _cli(live, "log", "checkpoint", "--out", str(checkpoint_path))
    size = json.loads(base64.b64decode(json.loads(checkpoint_path.read_text())["payload"]))[
        "tree_size"]
    at_size = client.get_report(job_out["report_id"], tree_size=size)
    at_size_path = tmp_path / "at_size.json"
    at_size_path.write_text(json.dumps(at_size))
    assert _cli(live, "verify", str(at_size_path), "--key", str(key_path), "--checkpoint",
                str(checkpoint_path)).returncode == 0

    # one flipped byte anywhere makes it fail
    raw = bundle_path.read_text()
    tampered = json.loads(raw)
    payload = bytearray(base64.b64decode(tampered["envelope"]["payload"]))
    payload[len(payload) // 2] ^= 0x01
    tampered["envelope"]["payload"] = base64.b64encode(bytes(payload)).decode()
    bad = tmp_path / "bad-report.json"
    bad.write_text(json.dumps(tampered))
    res = _cli(live, "verify", str(bad), "--key", str(key_path), check=False)
    assert res.returncode != 0 and "FAILED" in res.stderr
    if bundle["log"]["inclusion_proof"]:
        tampered = json.loads(raw)
        proof = tampered["log"]["inclusion_proof"]
        proof[0] = ("0" if proof[0][0] != "0" else "1") + proof[0][1:]
        bad.write_text(json.dumps(tampered))
        res = _cli(live, "verify", str(bad), "--key", str(key_path), check=False)
        assert res.returncode != 0
    tampered = json.loads(raw)
    tampered["log"]["index"] = tampered["log"]["index"] ^ 1
    bad.write_text(json.dumps(tampered))
    assert _cli(live, "verify", str(bad), "--key", str(key_path), check=False).returncode != 0
    tampered = json.loads(raw)
    tampered["report"]["statistics"]["accuracy"] = 1.0
    bad.write_text(json.dumps(tampered))
    assert _cli(live, "verify", str(bad), "--key", str(key_path), check=False).returncode != 0

    # the signed model manifest checks the file offline, and catches a changed byte
    manifest_path = tmp_path / "manifest.json"
    _cli(live, "models", "manifest", model.id, "--out", str(manifest_path))
    assert _cli(live, "models", "verify", str(onnx_path), "--manifest",
                str(manifest_path)).returncode == 0
    data = bytearray(onnx_path.read_bytes())
    data[-5] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    res = _cli(live, "models", "verify", str(onnx_path), "--manifest", str(manifest_path),
               check=False)
    assert res.returncode != 0

    html = client.report_html(job_out["report_id"])
    assert "Reliability diagram" in html
