"""The private-inference SDK: keys kept between runs (encrypted, 0600), sessions closed and
recovered, every failure a ClientError with a hint, and no layout the spec does not list."""

from __future__ import annotations

import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import make_token

TEMPLATES = ("a {}", "b {}")
CLASSES = ("x", "y", "z")


def _encode(texts: list[str]) -> np.ndarray:
    """A deterministic toy 8-d text encoder (bytes histogram), standing in for MiniLM."""
    out = np.zeros((len(texts), 8))
    for i, text in enumerate(texts):
        for ch in text.encode():
            out[i, ch % 8] += 1.0
    return out + 0.1


@pytest.fixture
def sdk_env(app: Any, settings: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from appliance.client import Client
    from crypto.ensemble import EnsembleArtifact

    rng = np.random.default_rng(3)
    art = EnsembleArtifact(templates=TEMPLATES, weights=rng.normal(size=(2, 3, 8)),
                           biases=np.zeros((2, 3)), classes=CLASSES, encoder="toy-8d")
    owner_token = make_token(settings, "acme", "admin")
    user_token = make_token(settings, "acme", "client")

    def sdk(token: str = user_token, **kw: Any) -> Client:
        return Client("http://appliance.test", token=token, retries=0,
                      transport=httpx.WSGITransport(app=app), **kw)

    ensemble = sdk(owner_token).create_ensemble(art, name="toy").id
    yield {"sdk": sdk, "ensemble": ensemble, "art": art, "keys": tmp_path / "keys"}


def _open_sessions(settings: Any) -> int:
    """Sessions the server holds (rows in its own database)."""
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        return int(store.conn.execute("SELECT COUNT(*) FROM inference_sessions").fetchone()[0])
    finally:
        store.close()


def test_keys_persist_encrypted_and_sessions_close(sdk_env: dict[str, Any], settings: Any) -> None:
    from appliance.client import KeyStoreError
    from crypto.private_inference.templates import embed_with_templates

    texts = ["hello there", "zzz", "a longer sentence about nothing"]
    first = sdk_env["sdk"](key_passphrase="correct horse", keys_dir=sdk_env["keys"])
    got = first.private_predict(sdk_env["ensemble"], texts, encode=_encode)
    want = sdk_env["art"].plaintext_logits(embed_with_templates(texts, TEMPLATES, _encode))
    assert got.indices == list(want.argmax(axis=1))
    assert _open_sessions(settings) == 0  # private_predict closed the session it opened
    (key_file,) = sdk_env["keys"].iterdir()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(sdk_env["keys"].stat().st_mode) == 0o700
    private = first._private_clients[sdk_env["ensemble"]]
    secret = private.secret_context()
    stored = key_file.read_bytes()
    assert secret[len(secret) // 2:len(secret) // 2 + 64] not in stored  # encrypted at rest
    first.close()

    second = sdk_env["sdk"](key_passphrase="correct horse", keys_dir=sdk_env["keys"])
    with second:  # a later run: the same keys, loaded (no key generation), a new session
        session = second.open_inference_session(sdk_env["ensemble"])
        assert session.private_client.evaluation_keys() == private.evaluation_keys()
        assert second.private_predict(sdk_env["ensemble"], texts, encode=_encode,
                                      session=session).indices == got.indices
        assert _open_sessions(settings) == 1
    assert _open_sessions(settings) == 0  # leaving the with block closed it
    assert key_file.read_bytes() == stored

    wrong = sdk_env["sdk"](key_passphrase="wrong", keys_dir=sdk_env["keys"])
    with pytest.raises(KeyStoreError) as refused:
        wrong.open_inference_session(sdk_env["ensemble"])
    assert "passphrase" in refused.value.diagnostics()
    key_file.write_bytes(stored[:-1] + bytes([stored[-1] ^ 1]))  # one flipped bit
    with pytest.raises(KeyStoreError):
        sdk_env["sdk"](key_passphrase="correct horse",
                       keys_dir=sdk_env["keys"]).open_inference_session(sdk_env["ensemble"])


def test_sessions_recover_from_404_and_410(sdk_env: dict[str, Any], settings: Any) -> None:
    import time

    from crypto.private_inference.templates import embed_with_templates

    sdk = sdk_env["sdk"]()
    emb = embed_with_templates(["one", "two"], TEMPLATES, _encode)
    session = sdk.open_inference_session(sdk_env["ensemble"], ttl_seconds=1)
    first_id = session.id
    sdk.request("DELETE", f"/v1/inference/sessions/{first_id}")  # gone behind its back: 404
    labels = list(session.predict_embeddings(emb, batch=False).labels)
    assert session.reopened == 1 and session.id != first_id
    time.sleep(1.2)  # expired: 410
    assert list(session.predict_embeddings(emb).labels) == labels
    assert session.reopened == 2
    sdk.close()
    assert session.closed and _open_sessions(settings) == 1  # only the expired row (kept for 410s)


def test_private_predict_sends_while_it_embeds(sdk_env: dict[str, Any], settings: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts embed a chunk at a time; the requests already filled are encrypted and sent while
    the next chunk embeds, with the layout chosen once for all the texts, so the labels are
    those of one embedding call. An encoder failing mid-way is a ClientError, nothing further
    is sent and the session private_predict opened is closed."""
    import appliance.client as sdk_module
    from appliance.client import ClientError
    from crypto.private_inference.templates import embed_with_templates

    monkeypatch.setattr(sdk_module, "EMBED_CHUNK", 4)
    texts = [f"text {i} " + "abc" * (i % 5) for i in range(10)]
    sdk = sdk_env["sdk"]()
    session = sdk.open_inference_session(sdk_env["ensemble"])
    posts: list[int] = []
    first_post = threading.Event()
    original = session._post

    def post(params: dict[str, str], content: bytes) -> bytes:
        posts.append(len(content))
        first_post.set()
        return original(params, content)

    monkeypatch.setattr(session, "_post", post)
    chunks: list[int] = []

    def encode(prompts: list[str]) -> np.ndarray:
        if chunks:  # the second chunk waits until the first chunk's queries were sent
            assert first_post.wait(30), "nothing was sent while the texts were embedding"
        chunks.append(len(prompts))
        return _encode(prompts)

    got = sdk.private_predict(sdk_env["ensemble"], texts, encode=encode, session=session,
                              batch=False)
    want = sdk_env["art"].plaintext_logits(embed_with_templates(texts, TEMPLATES, _encode))
    assert got.indices == list(want.argmax(axis=1))
    assert chunks == [8, 8, 4] and len(posts) == len(texts)  # 4 texts x 2 templates per call
    # one layout for all ten texts: the single layout in requests of up to 16 ciphertexts
    posts.clear()
    assert sdk.private_predict(sdk_env["ensemble"], texts, encode=_encode,
                               session=session).indices == got.indices
    assert len(posts) == 1

    calls = iter(range(100))

    def failing(prompts: list[str]) -> np.ndarray:
        return _encode(prompts) if next(calls) == 0 else np.ones((len(prompts), 5))

    posts.clear()
    opened_before = _open_sessions(settings)
    with pytest.raises(ClientError, match="5-d embeddings"):
        sdk.private_predict(sdk_env["ensemble"], texts, encode=failing, batch=False)
    assert len(posts) <= 4  # at most the first chunk's queries
    assert _open_sessions(settings) == opened_before  # the session it opened was closed
    sdk.close()


def test_refused_layouts_and_bad_inputs_are_client_errors(sdk_env: dict[str, Any],
                                                          settings: Any) -> None:
    from appliance.client import ApiError, ClientError

    sdk = sdk_env["sdk"]()
    session = sdk.open_inference_session(sdk_env["ensemble"])
    session.spec["layouts"] = ["single"]  # as a server that serves no wide layout says
    sent: list[str] = []
    original = sdk.request
    sdk.request = lambda *a, **k: sent.append(a[1]) or original(*a, **k)  # type: ignore[method-assign]
    with pytest.raises(ClientError) as refused:
        session.predict_embeddings(np.ones((3, 2, 8)), layout="wide")
    assert "layout" in str(refused.value) and refused.value.hint
    with pytest.raises(ClientError):
        session.predict_embeddings(np.ones((3, 5, 8)))  # wrong member count
    with pytest.raises(ClientError):
        sdk.private_predict(sdk_env["ensemble"], [], encode=_encode)
    assert sent == []  # nothing left this process
    with pytest.raises(ClientError):  # an encoder without the spec's dimension
        sdk.private_predict(sdk_env["ensemble"], ["t"], encode=lambda t: np.ones((len(t), 5)))
    assert _open_sessions(settings) == 1  # the session opened meanwhile was closed again
    with pytest.raises(ApiError) as missing:
        sdk.private_predict("ens_missing", ["t"], encode=_encode)
    assert missing.value.status == 404 and isinstance(missing.value, ClientError)


def test_private_predict_embeds_with_the_encoder_the_spec_names(
    app: Any, settings: Any, sdk_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ensemble of heads over the 8-bit MiniLM: the SDK embeds with that encoder by itself
    (loaded once per process) and gets the plaintext labels of its embeddings; a name it has
    no encoder for is a ClientError with a hint, before any session or ciphertext is sent."""
    from appliance.client import Client, ClientError, inference
    from appliance.client.inference import text_encoder
    from crypto.ensemble import MINILM, MINILM_INT8, EnsembleArtifact
    from crypto.private_inference.templates import embed_with_templates

    templates = ("{}", "Manual page: {}")
    texts = ["copy files and directories", "print lines that match a pattern",
             "list directory contents", "report file system disk space usage",
             "change file mode bits", "display a line of text"]
    rng = np.random.default_rng(5)
    art = EnsembleArtifact(templates=templates, weights=rng.normal(size=(2, 4, 384)) / np.sqrt(384),
                           biases=np.zeros((2, 4)), classes=("a", "b", "c", "d"), encoder=MINILM_INT8)

    def sdk(role: str) -> Client:
        return Client("http://appliance.test", token=make_token(settings, "acme", role), retries=0,
                      transport=httpx.WSGITransport(app=app))

    ensemble = sdk("admin").create_ensemble(art, name="int8").id
    loaded: list[str] = []
    load = inference.default_text_encoder
    monkeypatch.setattr(inference, "default_text_encoder",
                        lambda precision="fp32": loaded.append(precision) or load(precision))
    got = sdk("client").private_predict(ensemble, texts)
    assert loaded == ["int8"]
    encode = text_encoder(MINILM_INT8)
    assert text_encoder(MINILM_INT8) is encode  # loaded once per process
    logits = art.plaintext_logits(embed_with_templates(texts, list(templates), encode))
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # away from ties the circuit's error could flip
    assert clear.sum() >= 4
    assert np.array_equal(np.asarray(got.indices)[clear], logits.argmax(axis=1)[clear])
    # the 8-bit embeddings are close to the float ones, and not the same numbers
    q, f = encode(texts), text_encoder(MINILM)(texts)
    cosine = np.sum(q * f, axis=1) / np.linalg.norm(q, axis=1) / np.linalg.norm(f, axis=1)
    assert cosine.min() > 0.95 and float(np.abs(q - f).max()) > 1e-3
    user = sdk_env["sdk"]()
    sent: list[tuple[str, str]] = []
    original = user.request
    user.request = lambda *a, **k: sent.append(a[:2]) or original(*a, **k)  # type: ignore[method-assign]
    with pytest.raises(ClientError) as unknown:  # "toy-8d": the SDK has no such encoder
        user.private_predict(sdk_env["ensemble"], ["t"])
    assert "toy-8d" in str(unknown.value) and "encode=" in str(unknown.value.hint)
    assert [method for method, _ in sent] == ["GET"]  # the spec read; no session, no ciphertext
    # a qualified MiniLM name is not the float encoder (its heads expect other embeddings)
    for name in ("sentence-transformers/all-MiniLM-L6-v2:int4", MINILM_INT8.upper()):
        if name.lower() == MINILM_INT8:
            assert text_encoder(name) is encode
        else:
            with pytest.raises(ClientError):
                text_encoder(name)


def test_a_slow_server_is_a_request_timeout_not_an_httpx_error() -> None:
    from appliance.client import Client, ClientError, RequestTimeout

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(server.accept()[0])  # read nothing, answer nothing
        except OSError:
            return

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    try:
        with Client(f"http://127.0.0.1:{port}", token="t", timeout=0.3, retries=0) as sdk:
            with pytest.raises(RequestTimeout) as slow:
                sdk.whoami()
        assert isinstance(slow.value, ClientError) and "timeout" in slow.value.diagnostics()
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_sdk_single_layout_in_a_chunked_lane_over_http(app: Any, settings: Any) -> None:
    """One 2048-d member fills half of n8192-d3's slots, so the server lays queries out in a
    chunked lane (of the 10 pair rows); the served spec says so ("chunk", "pairs"), the SDK
    packs the same way, its session opens with the matching layout digest and the single
    layout's labels are the plaintext's."""
    from appliance.client import Client
    from crypto.ensemble import EnsembleArtifact

    rng = np.random.default_rng(5)
    art = EnsembleArtifact(templates=("{}",), weights=rng.normal(size=(1, 5, 2048)) / 40.0,
                           biases=rng.normal(size=(1, 5)) * 0.1, classes=tuple("abcde"), encoder="toy-2048d")
    owner = Client("http://appliance.test", token=make_token(settings, "acme", "admin"), retries=0,
                   transport=httpx.WSGITransport(app=app))
    ensemble = owner.create_ensemble(art, name="chunked").id
    with Client("http://appliance.test", token=make_token(settings, "acme", "client"), retries=0,
                transport=httpx.WSGITransport(app=app)) as user:
        served = user.ensemble_spec(ensemble)["layout"]
        assert (served["chunk"], served["pairs"]) == (8, True)
        session = user.open_inference_session(ensemble)
        assert (session.private_client.layout.chunk, session.private_client.layout.pairs) == (8, True)
        emb = rng.normal(size=(6, 1, 2048))
        emb /= np.linalg.norm(emb, axis=2, keepdims=True)
        got = session.predict_embeddings(emb, layout="single")
        assert list(got.labels) == art.plaintext_logits(emb).argmax(axis=1).tolist()
