"""``appliance refinements ...`` for both parties against the appliance on a loopback HTTP
server (a real enclave process, real CKKS on digits): create, provision, wait with the
progress bar, result; refused enclaves and wrong keys are clear messages."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from support import make_token

from appliance.capabilities.refinement.enclave import enclave_service, shutdown_enclaves
from appliance.cli import main
from appliance.confidential import plaintext_refinement
from enclave.host import default_config
from enclave.measurement import measure_enclave, package_dir


@pytest.fixture
def pins(settings: Any, app: Any) -> Iterator[dict[str, str]]:
    """What an operator publishes out of band: the platform key and the build's MRENCLAVE."""
    service = enclave_service(settings)
    yield {"platform_key": service.ensure_platform().hex(),
           "mrenclave": measure_enclave(package_dir(), default_config(service.platform_dir))}
    shutdown_enclaves(settings.home)


def _cli(url: str, token: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["refinements", *args],
                              env={"APPLIANCE_URL": url, "APPLIANCE_TOKEN": token},
                              catch_exceptions=False)


def _json_out(result: Result) -> Any:
    return json.loads(result.output[result.output.index("{"):])


def test_refinement_through_the_cli(live_url: str, settings: Any, pins: dict[str, str],
                                    digits_scaled: tuple[np.ndarray, np.ndarray],
                                    tmp_path: Path) -> None:
    owner, data = make_token(settings, "model-owner", "client"), make_token(settings, "lab", "client")
    X, y = digits_scaled
    model = {"W": np.zeros((64, 10)), "b": np.zeros(10)}
    np.savez(tmp_path / "model.npz", **model)
    np.savez(tmp_path / "train.npz", x=X[:64], y=y[:64])
    np.savez(tmp_path / "val.npz", x=X[300:332], y=y[300:332])
    platform = tmp_path / "platform.hex"
    platform.write_text(pins["platform_key"])
    trust = ("--measurement", pins["mrenclave"], "--platform-key", str(platform),
             "--allow-simulated")

    out = _cli(live_url, owner, "attestation")
    assert out.exit_code == 0, out.output
    assert _json_out(out)["measurement"]["mrenclave"] == pins["mrenclave"]

    # another build's measurement: refused before anything is sent, no key file left behind
    key_path = tmp_path / "result.key"
    out = _cli(live_url, owner, "create", str(tmp_path / "model.npz"), "--kind", "softmax",
               "--result-key-out", str(key_path), "--measurement", "00" * 32,
               "--platform-key", str(platform), "--allow-simulated")
    assert out.exit_code == 1 and "ENCLAVE NOT TRUSTED" in out.output
    assert "MeasurementNotAllowedError" in out.output and not key_path.exists()
    assert _cli(live_url, owner, "list").output == ""

    out = _cli(live_url, owner, "create", str(tmp_path / "model.npz"), "--kind", "softmax",
               "--epochs", "1", "--seed", "2", "--result-key-out", str(key_path), *trust)
    assert out.exit_code == 0, out.output
    created = _json_out(out)
    assert created["state"] == "awaiting_data" and created["invitation"].startswith("inv_")
    assert key_path.stat().st_mode & 0o777 == 0o600 and len(key_path.read_text()) == 64
    rid = created["id"]
    # the data owner reads the terms with the invitation, then provisions
    out = _cli(live_url, data, "status", rid, "--invitation", created["invitation"], "--field",
               "terms")
    assert json.loads(out.output)["input_dim"] == 64
    out = _cli(live_url, data, "provision", rid, "--invitation", created["invitation"],
               "--train", str(tmp_path / "train.npz"), "--validation", str(tmp_path / "val.npz"),
               *trust)
    assert out.exit_code == 0, out.output
    assert _json_out(out)["data"]["num_train"] == 64

    out = _cli(live_url, data, "wait", rid, "--timeout", "180")
    assert out.exit_code == 0, out.output
    done = _json_out(out)
    plain = plaintext_refinement(model=model, X=X[:64], y=y[:64], X_val=X[300:332],
                                 y_val=y[300:332], batch_size=64, epochs=1, lr=0.5, seed=2)
    assert done["state"] == "succeeded"
    assert abs(done["final_accuracy"] - plain.accuracy_history[-1]) <= 1 / 32
    assert _cli(live_url, owner, "status", rid, "--field", "state").output.strip() == "succeeded"
    assert rid in _cli(live_url, owner, "list").output

    out = _cli(live_url, owner, "result", rid, "--result-key", str(key_path),
               "--out", str(tmp_path / "refined.npz"))
    assert out.exit_code == 0, out.output
    with np.load(tmp_path / "refined.npz") as refined:
        assert np.abs(refined["W"] - plain.W).max() < 1e-3
    # the data owner never gets the result; a wrong key opens nothing; a finished one is final
    wrong = tmp_path / "wrong.key"
    wrong.write_text(os.urandom(32).hex())
    out = _cli(live_url, owner, "result", rid, "--result-key", str(wrong), "--out",
               str(tmp_path / "x.npz"))
    assert out.exit_code == 1 and "Hint:" in out.output and not (tmp_path / "x.npz").exists()
    out = _cli(live_url, data, "result", rid, "--result-key", str(key_path), "--out",
               str(tmp_path / "x.npz"))
    assert out.exit_code == 1 and "HTTP 4" in out.output
    out = _cli(live_url, owner, "retry", rid)
    assert out.exit_code == 1 and "HTTP 409" in out.output
