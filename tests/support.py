"""Test helpers: real data (scikit-learn digits), a real trained ONNX classifier, HTTP helpers."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_token(settings: Any, tenant: str, role: str = "admin") -> str:
    from appliance._internal.auth import create_token
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        return create_token(store, tenant=tenant, role=role).token
    finally:
        store.close()


def identity_artifact(classes: int, *, output: str, **kwargs: Any) -> Any:
    """A private ensemble of one member whose logits are its (clipped) embedding, so a test
    chooses the logits it encrypts."""
    from crypto.ensemble import EnsembleArtifact

    return EnsembleArtifact(templates=["{}"], weights=np.eye(classes)[None], biases=np.zeros((1, classes)),
                            classes=[f"c{i}" for i in range(classes)], norm_bound=float(np.sqrt(classes)),
                            output=output, **kwargs)


def mutate(blob: bytes, data: Any, rounds: int, position: Any) -> bytes:
    """``blob`` after ``rounds`` bit flips, cuts (1-64 bytes) and insertions (1-16 bytes) drawn
    with Hypothesis's ``data``; ``position(blob)`` draws where each one lands."""
    from hypothesis import strategies as st

    out = bytearray(blob)
    for _ in range(rounds):
        if not out:
            break
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = position(out)
        if op == "flip":
            out[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del out[pos:pos + data.draw(st.integers(1, 64))]
        else:
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from appliance.cli.demo import digits_split as split

    return split(seed)


def trained_linear_onnx(path: Path, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """Train a logistic regression on digits and write it as a real ONNX graph (logits out).
    Returns the path and the held-out (x, y)."""
    from appliance.cli.demo import train_digits_classifier

    model, x_te, y_te = train_digits_classifier(seed)
    path.write_bytes(model)
    return path, x_te, y_te


def assert_argmax_agrees(predicted: np.ndarray, logits: np.ndarray) -> None:
    """The issue's criterion for encrypted argmax: >= 99.5% agreement with the plaintext
    argmax overall, 100% where the top-2 gap is at least 0.01 (and enough such inputs)."""
    truth = logits.argmax(axis=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] >= 0.01
    assert clear.sum() > 150
    assert np.mean(predicted == truth) >= 0.995
    assert np.all(predicted[clear] == truth[clear])


def assert_scaled_win_counts(counts: np.ndarray, reference: np.ndarray, *, tol: float) -> np.ndarray:
    """Decrypted win counts equal the reference up to the server's secret per-query factor in
    [OUTPUT_SCALE_MIN, 1] on the comparison sums, plus at most ``tol`` (the result-slot
    flooding and CKKS error); returns the factors."""
    from crypto.private_inference.circuits import OUTPUT_SCALE_MIN

    c = counts.shape[1]
    raw, ref = 2.0 * counts - (c - 1), 2.0 * reference - (c - 1)
    factors = np.sum(raw * ref, axis=1) / np.maximum(np.sum(ref * ref, axis=1), 1e-300)
    assert np.all(factors >= OUTPUT_SCALE_MIN - 1e-3) and np.all(factors <= 1.0 + 1e-3), factors
    assert np.max(np.abs(raw - factors[:, None] * ref)) < tol
    return factors


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def appliance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance", *args]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"APPLIANCE_HOME": str(home), "APPLIANCE_LOG_LEVEL": "WARNING",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_job(client: Any, token: str, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=auth(token)).get_json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return dict(body)
        time.sleep(0.05)
    raise TimeoutError(job_id)


def cli_token(env: dict[str, str], tenant: str, role: str = "admin") -> str:
    """Create a token with the real CLI (`appliance tokens create --json`); it is printed on
    stdout only."""
    out = subprocess.run(appliance_cmd("tokens", "create", "--tenant", tenant, "--role", role,
                                       "--json"), env=env, capture_output=True, text=True,
                         check=True)
    token = str(json.loads(out.stdout)["token"])
    assert token not in out.stderr
    return token


@contextmanager
def serving(httpd: ThreadingHTTPServer) -> Iterator[int]:
    """Serve ``httpd`` (bound on loopback) from a daemon thread until the block ends; yields its port."""
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def serve_appliance(env: dict[str, str], *args: str, port: int | None = None,
                    log_path: Path | None = None) -> Iterator[str]:
    """Run `appliance serve` on loopback until the block ends; yields its base URL. Output
    goes to ``log_path`` when given (to check what the server logs)."""
    port = port or free_port()
    cmd = appliance_cmd("serve", "--port", str(port), *args)
    if log_path is not None:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    else:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", proc=proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def tar_of(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of files (bytes) and folders (None), in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def upload_model(client: Any, token: str, data: bytes, filename: str) -> Any:
    """POST /v1/models with the Flask test client; the model is named 'm'."""
    return client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "m", "file": (io.BytesIO(data), filename)})


def register_ensemble(client: Any, token: str, art: Any) -> Any:
    """POST /v1/ensembles with the Flask test client: an EnsembleArtifact's two files."""
    files = art.dumps()
    return client.post("/v1/ensembles", headers=auth(token), content_type="multipart/form-data",
                       data={"ensemble_json": (io.BytesIO(files["ensemble.json"]), "ensemble.json"),
                             "ensemble_safetensors": (io.BytesIO(files["ensemble.safetensors"]),
                                                      "ensemble.safetensors")})


def upload_dataset(client: Any, token: str, data: bytes) -> Any:
    """POST /v1/datasets with the Flask test client; the dataset is named 'd'."""
    return client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "d", "file": (io.BytesIO(data), "d.npz")})


def shuffled_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1797 x 64) shuffled with ``seed``, features scaled to [0, 1]: the
    data of the confidential-refinement tests and benchmark, which slice it per party."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order] / 16.0, y[order]


def attest_enclave(client: Any, platform: Path) -> Any:
    """Verify a fresh quote of an ``EnclaveClient`` against the simulated platform in
    ``platform`` and the client's own build measurement; returns the ``VerifiedQuote``."""
    from crypto.provisioning import verify_quote
    from enclave.platform import create_platform

    nonce = os.urandom(32)
    return verify_quote(client.get_quote(nonce),
                        platform_key=create_platform(platform).attestation_public_key,
                        allowed_measurements={client.expected_mrenclave}, nonce=nonce,
                        allow_simulated=True)
