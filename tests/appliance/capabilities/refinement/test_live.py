"""Confidential refinement on a live `appliance serve` (gunicorn workers answer attestation,
the separate job worker process runs the enclave steps: they share the platform and the sealed
enclave key of the home). Canaries never reach the server's log or any file under its home."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from support import cli_token, env_for, serve_appliance, shuffled_digits

from appliance.client import Client
from appliance.confidential import plaintext_refinement

CANARY = 0.3183098861


def test_live_server_refinement_across_processes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = env_for(home, APPLIANCE_LOG_LEVEL="DEBUG")
    owner_token, data_token = cli_token(env, "owner", "client"), cli_token(env, "lab", "client")
    log_path = tmp_path / "server.log"
    X, y = shuffled_digits(1)
    Xt, yt, Xv, yv = X[:128].copy(), y[:128], X[300:364], y[300:364]
    Xt[7, 20] = CANARY
    model = {"W": np.zeros((64, 10)), "b": np.zeros(10)}
    with serve_appliance(env, "--workers", "2", log_path=log_path) as url:
        owner, data = Client(url, token=owner_token), Client(url, token=data_token)
        # pins published out of band: the platform key file of the home and the build's MRENCLAVE
        from enclave.host import default_config
        from enclave.measurement import measure_enclave, package_dir
        from enclave.platform import platform_public_key

        answer = Client(url).enclave_attestation(os.urandom(16))  # anonymous: starts it
        pins = {"expected_measurements": [measure_enclave(package_dir(),
                                                          default_config(home / "platform"))],
                "platform_key": platform_public_key(home / "platform"), "allow_simulated": True}
        assert answer["measurement"]["mrenclave"] == pins["expected_measurements"][0]
        created = owner.create_refinement(model, kind="softmax", epochs=1, lr=0.5, seed=2,
                                          **pins)
        data.provision_refinement(created.id, created.invitation, X=Xt, y=yt, X_val=Xv,
                                  y_val=yv, **pins)
        done = data.wait_refinement(created.id, timeout=180)
        assert done.state == "succeeded", done.job
        refined = owner.refinement_result(created.id, created.result_key)
        plain = plaintext_refinement(model=model, X=Xt, y=yt, X_val=Xv, y_val=yv, batch_size=64,
                                     epochs=1, lr=0.5, seed=2)
        assert np.abs(refined.arrays["W"] - plain.W).max() < 1e-3
        stats = done.report["report"]["statistics"]
        assert abs(stats["final_accuracy"] - plain.accuracy_history[-1]) <= 0.01
    # a lone float32 (4 bytes) matches random ciphertext bytes by chance about once per 4 GB
    # scanned; the canary's row neighbourhood as float32 cannot
    needles = [struct.pack("<d", CANARY), Xt[7, 18:23].astype("<f4").tobytes(),
               repr(CANARY).encode(),
               yt[:24].astype("<i8").tobytes(), yt[:24].astype("<i4").tobytes(),
               " ".join(map(str, yt[:24])).encode(), ", ".join(map(str, yt[:24])).encode(),
               refined.arrays["W"][:, 2].astype("<f8").tobytes()[:32]]
    server_log = log_path.read_bytes()
    assert b"refinement" in server_log  # the log is really written (DEBUG level)
    files = [p for p in home.rglob("*") if p.is_file()]
    for needle in needles:
        assert needle not in server_log
        for path in files:
            assert needle not in path.read_bytes(), path
    for token in (owner_token, data_token, created.invitation):
        assert token.encode() not in server_log

