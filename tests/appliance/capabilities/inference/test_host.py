"""Sessions' evaluators live in a child process that exits when the last session closes (its
SEAL memory goes back to the system), recovers from the child's death, and speaks only to a
peer that knows its key."""

from __future__ import annotations

import io
import os
import signal
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import auth, make_token

from appliance.capabilities.inference.host import HostedEvaluators
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from appliance._internal.config import Settings

    return Settings(home=tmp_path / "home", rate_limit="100000 per minute", log_level="WARNING",
                    inference_evaluators="process", inference_idle_seconds=0)


@pytest.fixture(scope="module")
def art() -> EnsembleArtifact:
    rng = np.random.default_rng(3)
    return EnsembleArtifact(templates=("a {}", "b {}"), weights=rng.normal(size=(2, 3, 16)),
                            biases=np.zeros((2, 3)), classes=("x", "y", "z"), norm_bound=1.0)


@pytest.fixture(scope="module")
def private(art: EnsembleArtifact) -> PrivateClient:
    return PrivateClient(spec=art.public_spec())


@pytest.fixture
def stored(tmp_path: Path, art: EnsembleArtifact) -> tuple[Any, dict[str, Any]]:
    """A blob store holding the ensemble's artifact, and the ensemble's row fields the child reads."""
    from appliance._internal.store import BlobStore

    blobs = BlobStore(root=tmp_path / "blobs", tmp_dir=tmp_path / "tmp")
    files = art.dumps()
    return blobs, {"id": "ens_1", "json_digest": blobs.put_bytes(files["ensemble.json"])[0],
                   "tensors_digest": blobs.put_bytes(files["ensemble.safetensors"])[0]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _session(client: Any, settings: Any, token: str, art: EnsembleArtifact,
             private: PrivateClient) -> tuple[str, str, str]:
    files = art.dumps()
    resp = client.post("/v1/ensembles", headers=auth(token), content_type="multipart/form-data",
                       data={name: (io.BytesIO(data), name) for name, data in
                             (("ensemble_json", files["ensemble.json"]),
                              ("ensemble_safetensors", files["ensemble.safetensors"]))})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    user = make_token(settings, "tenant-a", role="client")
    ensemble = resp.get_json()["id"]
    opened = client.post(f"/v1/inference/sessions?ensemble_id={ensemble}", headers={**auth(user), **OCTET},
                         data=private.evaluation_keys())
    assert opened.status_code == 201, opened.get_data(as_text=True)
    return ensemble, opened.get_json()["id"], user


def _label(client: Any, user: str, ensemble: str, session: str, private: PrivateClient,
           emb: np.ndarray) -> Any:
    resp = client.post(f"/v1/ensembles/{ensemble}/predict?session={session}", headers={**auth(user), **OCTET},
                       data=private.encrypt(emb))
    if resp.status_code != 200:
        return resp
    return private.decrypt_result(resp.get_data()).labels[0]


def test_the_evaluator_process_exits_when_the_last_session_closes(
        client: Any, app: Any, settings: Any, token_a: str, art: EnsembleArtifact,
        private: PrivateClient) -> None:
    host = app.extensions["appliance.inference_cache"]
    assert isinstance(host, HostedEvaluators) and host.pid is None
    ensemble, session, user = _session(client, settings, token_a, art, private)
    pid = host.pid
    assert pid is not None and pid != os.getpid() and _alive(pid) and len(host) == 1
    emb = np.random.default_rng(0).normal(size=(art.members, art.dim))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    assert _label(client, user, ensemble, session, private, emb) == int(np.argmax(art.plaintext_logits(emb[None])[0]))
    # the API process itself never built an evaluator: the keys live in the child only
    assert host.builds == 1
    closed = client.delete(f"/v1/inference/sessions/{session}", headers=auth(user))
    assert closed.status_code == 204
    assert host.pid is None and not _alive(pid) and len(host) == 0
    # no socket folder is left behind
    assert not list(Path(settings.tmp_dir).glob("he-host-*"))


def test_a_killed_evaluator_process_is_replaced_and_the_session_rebuilt(
        client: Any, app: Any, settings: Any, token_a: str, art: EnsembleArtifact,
        private: PrivateClient) -> None:
    host = app.extensions["appliance.inference_cache"]
    ensemble, session, user = _session(client, settings, token_a, art, private)
    first = host.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    for _ in range(100):
        if not _alive(first) or host.pid is None:
            break
        time.sleep(0.05)
    emb = np.ones((art.members, art.dim)) / np.sqrt(art.dim)
    # the next query starts a new child, which rebuilds the evaluator from the stored keys
    assert _label(client, user, ensemble, session, private, emb) == int(np.argmax(art.plaintext_logits(emb[None])[0]))
    assert host.starts == 2 and host.pid not in (None, first) and host.builds == 2
    # refusals still come back as problems, not as the child's failure
    bad = client.post(f"/v1/ensembles/{ensemble}/predict?session={session}", headers={**auth(user), **OCTET},
                      data=b"\x00" * 64)
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"


def test_the_process_stays_for_the_grace_period_then_goes(
        stored: tuple[Any, dict[str, Any]], art: EnsembleArtifact, private: PrivateClient) -> None:
    blobs, ensemble = stored
    host = HostedEvaluators(blobs=blobs.root, tmp_dir=blobs.tmp_dir, idle_seconds=0.5)
    try:
        host.open(blobs, ensemble, "ses_1", private.evaluation_keys(), private.layout_digest)
        pid = host.pid
        assert pid is not None
        host.drop("ens_1", "ses_1")
        assert host.pid == pid and len(host) == 0  # still there: a next session starts at once
        host.open(blobs, ensemble, "ses_2", private.evaluation_keys(), private.layout_digest)
        assert host.pid == pid and host.starts == 1
        host.drop("ens_1", "ses_2")
        for _ in range(60):
            if host.pid is None:
                break
            time.sleep(0.05)
        assert host.pid is None and not _alive(pid)
    finally:
        host.clear()


def test_the_evaluator_process_speaks_only_to_a_peer_with_its_key(
        stored: tuple[Any, dict[str, Any]], art: EnsembleArtifact, private: PrivateClient) -> None:
    blobs, ensemble = stored
    host = HostedEvaluators(blobs=blobs.root, tmp_dir=blobs.tmp_dir, idle_seconds=0)
    try:
        host.open(blobs, ensemble, "ses_1", private.evaluation_keys(), private.layout_digest)
        folder = Path(host._address).parent
        assert folder.stat().st_mode & 0o777 == 0o700
        with pytest.raises(AuthenticationError):
            Client(host._address, family="AF_UNIX", authkey=b"not the key").close()
        # the child still serves its parent afterwards
        emb = np.ones((art.members, art.dim)) / np.sqrt(art.dim)
        session = {"id": "ses_1", "keys_digest": None, "layout": private.layout_digest}
        reply = host.evaluate(blobs, ensemble, session, [private.encrypt(emb)])
        assert private.decrypt_result(reply[0]).labels[0] == int(np.argmax(art.plaintext_logits(emb[None])[0]))
    finally:
        host.clear()


class _Refusing:
    """Stands in for the child's evaluator cache: every evaluation raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error, self.builds = error, 0

    def __len__(self) -> int:
        return 1

    def evaluate(self, *args: Any) -> list[bytes]:
        raise self.error


@pytest.mark.parametrize(("error", "expected"), [
    ("ciphertext", "UnprocessableInput"),  # a library's refusal (crypto.errors.Error): 422 as in process
    ("gone", "Gone"),
    ("bug", "internal"),
])
def test_the_child_reports_refusals_as_the_api_process_would(error: str, expected: str) -> None:
    from multiprocessing import Pipe

    from appliance.capabilities.inference.host import _receive, _send, _serve
    from appliance.errors import Gone
    from crypto.ckks import CiphertextError

    raised = {"ciphertext": CiphertextError("not a ciphertext of this session"),
              "gone": Gone("inference session 'ses_1' has expired or was closed"),
              "bug": KeyError("secret detail")}[error]
    parent, child = Pipe()
    _send(parent, {"op": "evaluate", "ensemble": {}, "session": {}}, [b"\x00"])
    _serve(child, _Refusing(raised), None)  # type: ignore[arg-type]
    header, frames = _receive(parent)
    assert header["error"]["type"] == expected and frames == [] and header["live"] == 1
    # an unexpected failure says nothing of its contents
    assert "secret" not in str(header)


def _in_forked_copy(host: HostedEvaluators) -> None:
    host.clear()  # a forked copy (a gunicorn worker forked after first use) forgets, never stops
    del host


def test_a_forked_copy_never_stops_the_parents_evaluator_process(
        stored: tuple[Any, dict[str, Any]], art: EnsembleArtifact, private: PrivateClient) -> None:
    import multiprocessing

    blobs, ensemble = stored
    host = HostedEvaluators(blobs=blobs.root, tmp_dir=blobs.tmp_dir, idle_seconds=0)
    try:
        host.open(blobs, ensemble, "ses_1", private.evaluation_keys(), private.layout_digest)
        pid = host.pid
        child = multiprocessing.get_context("fork").Process(target=_in_forked_copy, args=(host,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert host.pid == pid and pid is not None and _alive(pid)
        emb = np.ones((art.members, art.dim)) / np.sqrt(art.dim)
        session = {"id": "ses_1", "keys_digest": None, "layout": private.layout_digest}
        reply = host.evaluate(blobs, ensemble, session, [private.encrypt(emb)])
        assert private.decrypt_result(reply[0]).labels[0] == int(np.argmax(art.plaintext_logits(emb[None])[0]))
    finally:
        host.clear()
