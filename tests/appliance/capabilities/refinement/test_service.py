"""Confidential refinement through the service: both parties use the SDK against the
Flask app (httpx WSGI transport; jobs run through the real worker code), a real enclave process
and real CKKS on scikit-learn digits."""

from __future__ import annotations

import io
import logging
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import auth, make_token

from appliance.capabilities.refinement.enclave import enclave_service, shutdown_enclaves
from appliance.client import ApiError, Client
from appliance.confidential import plaintext_refinement
from crypto.provisioning import (
    MeasurementNotAllowedError,
    QuoteSignatureError,
    SimulatedQuoteError,
)
from enclave.host import default_config
from enclave.measurement import measure_enclave, package_dir

CANARY = 0.7071067811
LR = 0.5


@pytest.fixture(scope="module")
def digits(digits_scaled: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    X, y = digits_scaled
    return {"X_owner": X[:200], "y_owner": y[:200], "X": X[200:456], "y": y[200:456],
            "X_val": X[584:712], "y_val": y[584:712]}


@pytest.fixture(scope="module")
def owner_model(digits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model owner's pre-trained softmax model (its own data, disjoint)."""
    pre = plaintext_refinement(model={"W": np.zeros((64, 10)), "b": np.zeros(10)},
                               X=digits["X_owner"], y=digits["y_owner"], X_val=digits["X_val"],
                               y_val=digits["y_val"], batch_size=50, epochs=1, lr=0.3, seed=1)
    return {"W": pre.W, "b": pre.b}


class Recording(httpx.BaseTransport):
    """WSGI transport that records every request the SDK sends."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.WSGITransport(app=app)
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return self.inner.handle_request(request)


@pytest.fixture
def parties(app: Any, settings: Any) -> Iterator[dict[str, Any]]:
    out: dict[str, Any] = {}
    for name, tenant in (("owner", "model-owner"), ("data", "data-owner"),
                         ("other", "outsider")):
        transport = Recording(app)
        out[name] = Client("http://appliance.test", token=make_token(settings, tenant, "client"),
                           transport=transport, retries=0)
        out[name + "_transport"] = transport
    # what an operator publishes out of band: the platform key and the enclave build's
    # measurement, recomputed here from the enclave sources (not taken from the server)
    service = enclave_service(settings)
    out["platform_key"] = service.ensure_platform()
    out["mrenclave"] = measure_enclave(package_dir(), default_config(service.platform_dir))
    yield out
    for name in ("owner", "data", "other"):
        out[name].close()
    shutdown_enclaves(settings.home)


def _pins(parties: dict[str, Any]) -> dict[str, Any]:
    return {"expected_measurements": [parties["mrenclave"]],
            "platform_key": parties["platform_key"], "allow_simulated": True}


def test_full_refinement_via_both_sdks_matches_plaintext_and_leaks_nothing(
    parties: dict[str, Any], settings: Any, digits: dict[str, np.ndarray], ckks: Any,
    owner_model: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    owner, data, other = parties["owner"], parties["data"], parties["other"]
    X = digits["X"].copy()
    X[5, 10] = CANARY
    y = digits["y"]
    created = owner.create_refinement(owner_model, kind="softmax", epochs=2, lr=LR, seed=3,
                                      batch_size=64, name="digits", **_pins(parties))
    assert created.refinement.state == "awaiting_data" and created.invitation.startswith("inv_")

    # cross-tenant access only through the invitation code
    with pytest.raises(ApiError) as info:
        other.get_refinement(created.id)
    assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        data.get_refinement(created.id, invitation="inv_" + "x" * 32)
    assert info.value.status == 404
    terms = data.get_refinement(created.id, invitation=created.invitation)
    assert terms.role == "invitee" and terms.terms.input_dim == 64 and terms.data is None

    view = data.provision_refinement(created.id, created.invitation, X=X, y=y,
                                     X_val=digits["X_val"], y_val=digits["y_val"],
                                     ckks_context=ckks, **_pins(parties))
    assert view.role == "data_owner" and view.data is not None and view.data.num_train == 256
    done = data.wait_refinement(created.id, timeout=120)
    assert done.state == "succeeded", done.job
    # the invitation was one-time
    with pytest.raises(ApiError) as info:
        other.provision_refinement(created.id, created.invitation, X=X, y=y,
                                   X_val=digits["X_val"], y_val=digits["y_val"],
                                   ckks_context=ckks, **_pins(parties))
    assert info.value.status == 404  # the code no longer reads the terms

    # both parties see the same signed report (owned by the model owner's tenant)
    assert done.report is not None
    verified = Client.verify_report(done.report, trusted_key_pem=owner.public_key())
    stats = verified.report["statistics"]
    owner_view = owner.get_refinement(created.id)
    assert owner_view.report is not None and owner_view.report["report"] == done.report["report"]
    report = done.report["report"]
    assert report["method"]["name"] == "confidential-refinement"
    assert report["inputs"]["enclave"]["mrenclave"] == parties["mrenclave"]
    ops = stats["operations"]
    assert ops["host_he"]["ct_mul"] > 0 and 0 < ops["host_share"] < 1
    assert stats["epochs"] == 2 and stats["bytes_decrypted_per_epoch"]

    # only the model owner gets the result; it matches plaintext refinement
    with pytest.raises(ApiError) as info:
        data.refinement_result(created.id, os.urandom(32))
    assert info.value.status == 404
    refined = owner.refinement_result(created.id, created.result_key,
                                      trusted_key_pem=owner.public_key())
    plain = plaintext_refinement(model=owner_model, X=X, y=y, X_val=digits["X_val"],
                                 y_val=digits["y_val"], batch_size=64, epochs=2, lr=LR, seed=3)
    assert abs(stats["final_accuracy"] - plain.accuracy_history[-1]) <= 0.01
    assert stats["final_accuracy"] > stats["initial_accuracy"]
    assert np.abs(refined.arrays["W"] - plain.W).max() < 1e-3
    assert refined.meta["kind"] == "softmax"

    # canaries: feature value, label pattern and model weights appear nowhere on the host
    needles = [
        # a lone float32 (4 bytes) matches sealed or encrypted bytes by chance about once per
        # 4 GB scanned (it did once in CI); the canary's row neighbourhood as float32 cannot
        struct.pack("<d", CANARY), X[5, 8:13].astype("<f4").tobytes(), repr(CANARY).encode(),
        y[:24].astype("<i8").tobytes(), y[:24].astype("<i4").tobytes(),
        " ".join(map(str, y[:24])).encode(), ", ".join(map(str, y[:24])).encode(),
        owner_model["W"][:, 3].astype("<f8").tobytes()[:32],
        refined.arrays["W"][:, 3].astype("<f8").tobytes()[:32],
    ]
    files = [p for p in Path(settings.home).rglob("*") if p.is_file()]
    assert len(files) > 10
    logs = caplog.text.encode()
    for needle in needles:
        assert needle not in logs
        for path in files:
            assert needle not in path.read_bytes(), path


def test_sdk_refuses_unapproved_enclaves_and_sends_nothing(
    parties: dict[str, Any], app: Any, owner_model: dict[str, np.ndarray],
    digits: dict[str, np.ndarray],
) -> None:
    owner, data = parties["owner"], parties["data"]
    changed_build = "ab" * 32  # the allow-list names another enclave build
    with pytest.raises(MeasurementNotAllowedError, match="not in the allow-list"):
        owner.create_refinement(owner_model, kind="softmax", expected_measurements=[changed_build],
                                platform_key=parties["platform_key"], allow_simulated=True)
    assert parties["owner_transport"].seen == [("GET", "/v1/enclave/attestation")]
    with pytest.raises(SimulatedQuoteError, match="simulated"):
        owner.verify_enclave([parties["mrenclave"]], parties["platform_key"])
    with pytest.raises(QuoteSignatureError):
        owner.verify_enclave([parties["mrenclave"]], os.urandom(32).hex(), allow_simulated=True)
    assert all(method == "GET" for method, _ in parties["owner_transport"].seen)
    assert owner.list_refinements() == []

    created = owner.create_refinement(owner_model, kind="softmax", **_pins(parties))
    seen = parties["data_transport"].seen
    with pytest.raises(MeasurementNotAllowedError):
        data.provision_refinement(created.id, created.invitation, X=digits["X"][:64],
                                  y=digits["y"][:64], X_val=digits["X_val"][:64],
                                  y_val=digits["y_val"][:64], expected_measurements=[changed_build],
                                  platform_key=parties["platform_key"], allow_simulated=True)
    assert all(method == "GET" for method, _ in seen)  # no data part left the data owner
    assert owner.get_refinement(created.id).state == "awaiting_data"

    # bad input is a 4xx problem document, never a 5xx
    http = app.test_client()
    token = make_token(app.config["APPLIANCE_SETTINGS"], "model-owner", "client")
    assert http.get("/v1/enclave/attestation?nonce=abcd").status_code == 422
    resp = http.post("/v1/refinements", headers=auth(token), json={"kind": "softmax"})
    assert resp.status_code == 415 and resp.mimetype == "application/problem+json"
    resp = http.post("/v1/refinements", headers=auth(token), data={
        "kind": "softmax", "input_dim": "64", "num_classes": "10",
        "model": (io.BytesIO(b"plain model bytes"), "m.bin")})
    assert resp.status_code == 422 and "wrapped" in resp.get_json()["detail"]
    resp = http.post("/v1/refinements", headers=auth(token), data={
        "kind": "softmax", "input_dim": "64", "num_classes": "10", "epochs": "-1",
        "model": (io.BytesIO(b"x"), "m.bin")})
    assert resp.status_code == 422
    resp = http.post(f"/v1/refinements/{created.id}/data", headers=auth(token), data={
        "invitation": "inv_wrongwrongwrong", **{k: (io.BytesIO(b"x"), k) for k in (
            "train", "validation", "public_context", "ckks_secret")}})
    assert resp.status_code == 404
    resp = http.get(f"/v1/refinements/{created.id}/result", headers=auth(token))
    assert resp.status_code == 409


def test_killed_enclave_fails_the_job_with_a_reason_and_retry_resumes(
    parties: dict[str, Any], settings: Any, digits: dict[str, np.ndarray], ckks: Any,
    owner_model: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import appliance.confidential as confidential

    original = confidential.run_refinement
    killed: list[int] = []

    def run_and_kill(**kwargs: Any) -> Any:
        progress, enclave = kwargs["progress"], kwargs["enclave"]

        def hook(event: Any) -> None:
            progress(event)
            if event.epoch == 1 and event.step == 1 and not killed:
                killed.append(enclave.pid)
                os.kill(enclave.pid, signal.SIGKILL)

        return original(**{**kwargs, "progress": hook})

    monkeypatch.setattr(confidential, "run_refinement", run_and_kill)
    owner, data = parties["owner"], parties["data"]
    X, y = digits["X"][:192], digits["y"][:192]
    Xv, yv = digits["X_val"][:64], digits["y_val"][:64]
    created = owner.create_refinement(owner_model, kind="softmax", epochs=2, lr=LR, seed=9,
                                      **_pins(parties))
    data.provision_refinement(created.id, created.invitation, X=X, y=y, X_val=Xv, y_val=yv,
                              ckks_context=ckks, **_pins(parties))
    failed = owner.wait_refinement(created.id, timeout=120)
    assert killed and failed.state == "failed" and failed.job is not None
    assert "SIGKILL" in (failed.job.error or "") and "retry" in (failed.job.error or "")
    assert failed.checkpoint is not None and failed.checkpoint.epoch == 1
    assert failed.report is None
    with pytest.raises(ApiError) as info:
        owner.refinement_result(created.id, created.result_key)
    assert info.value.status == 409
    with pytest.raises(ApiError) as info:
        data.retry_refinement(created.id)  # the data owner cannot start jobs of the owner
    assert info.value.status == 404

    job = owner.retry_refinement(created.id)
    assert job.kind == "refinement"
    done = data.wait_refinement(created.id, timeout=120)
    assert done.state == "succeeded", done.job
    assert enclave_service(settings).client().pid != killed[0]  # a new enclave process
    stats = done.report["report"]["statistics"]
    assert stats["resumed_from"] == [1, 0]
    plain = plaintext_refinement(model=owner_model, X=X, y=y, X_val=Xv, y_val=yv,
                                 batch_size=64, epochs=2, lr=LR, seed=9)
    assert abs(stats["final_accuracy"] - plain.accuracy_history[-1]) <= 0.01
    refined = owner.refinement_result(created.id, created.result_key)
    assert np.abs(refined.arrays["W"] - plain.W).max() < 1e-3  # nothing silently corrupted


def test_mlp_last_layer_through_the_service_matches_plaintext(
    parties: dict[str, Any], digits: dict[str, np.ndarray], ckks: Any,
) -> None:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(digits["X_owner"], digits["y_owner"])
    model = {"W1": mlp.coefs_[0], "b1": mlp.intercepts_[0], "W": mlp.coefs_[1],
             "b": mlp.intercepts_[1]}
    X, y = digits["X"][:128], digits["y"][:128]
    Xv, yv = digits["X_val"][:64], digits["y_val"][:64]
    owner, data = parties["owner"], parties["data"]
    created = owner.create_refinement(model, kind="mlp_last_layer", epochs=1, lr=LR, seed=5,
                                      reduction="enclave", **_pins(parties))
    data.provision_refinement(created.id, created.invitation, X=X, y=y, X_val=Xv, y_val=yv,
                              ckks_context=ckks, **_pins(parties))
    done = owner.wait_refinement(created.id, timeout=120)
    assert done.state == "succeeded", done.job
    plain = plaintext_refinement(model=model, X=X, y=y, X_val=Xv, y_val=yv, batch_size=64,
                                 epochs=1, lr=LR, seed=5)
    stats = done.report["report"]["statistics"]
    assert stats["model_kind"] == "mlp"
    assert abs(stats["final_accuracy"] - plain.accuracy_history[-1]) <= 0.01
    refined = owner.refinement_result(created.id, created.result_key)
    assert np.abs(refined.arrays["W"] - plain.W).max() < 1e-3
    assert np.array_equal(refined.arrays["W1"], model["W1"])  # the frozen layer did not move


_ATTEST = """
import json, sys
from appliance._internal.config import Settings
from appliance.capabilities.refinement.enclave import enclave_service
service = enclave_service(Settings(home=sys.argv[1]))
att = service.attestation(bytes(range(32)))
print(json.dumps({"key": att.identity["enclave_public_key"], "mrenclave": att.identity["mrenclave"],
                  "platform": att.platform_public_key.hex()}))
service.close()
"""


def test_processes_of_one_home_share_platform_and_sealed_enclave_key(tmp_path: Path) -> None:
    """Two processes starting at once on a fresh home (a gunicorn worker answering attestation
    and a job worker) create one platform and one sealed enclave key; a dead enclave is
    relaunched with the same key."""
    import json
    import subprocess
    import sys

    from support import env_for

    from appliance._internal.config import Settings

    home = tmp_path / "home"
    env = env_for(home)
    procs = [subprocess.Popen([sys.executable, "-c", _ATTEST, str(home)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        answers.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert answers[0] == answers[1]
    assert len(list((home / "enclave-state").glob("enclave-key-*.sealed"))) == 1

    service = enclave_service(Settings(home=home))
    try:
        first = service.client()
        assert first.identity["enclave_public_key"] == answers[0]["key"]
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        again = service.attestation(os.urandom(16))  # relaunched on demand
        assert service.client().pid != first.pid
        assert again.identity["enclave_public_key"] == answers[0]["key"]
    finally:
        shutdown_enclaves(home)
