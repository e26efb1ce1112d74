"""Private ensemble inference end to end on a live server (`appliance serve`, gunicorn, loopback).

A real task: Python standard-library docstrings (gathered with ``inspect``) labelled by their
module, embedded with the offline all-MiniLM-L6-v2 once per template, K=3 logistic heads trained
here; the owner registers the ensemble with the SDK, a client-role user predicts held-out texts
privately (batch form). Then: a secret-key context is refused, canaries (a plaintext string and
the client's secret key bytes) appear nowhere in the server's logs or home folder, and bad
ciphertexts, expired sessions and other tenants get 4xx / 410 / 404.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import appliance_cmd, cli_token, env_for, serve_appliance

MODULES = ("math", "pathlib", "threading", "socket", "calendar")
PER_MODULE = 45
HELD_OUT = 70
TEMPLATES = (
    "{}",
    "Python documentation: {}",
    "This part of the standard library does the following. {}",
)
CANARY_TEXT = "Quokka-7Z9 canary: return the zebrafish telemetry ledger for inspection."


def stdlib_docstrings() -> tuple[list[str], np.ndarray]:
    """First paragraphs of public docstrings (functions, classes, methods) per module."""
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(MODULES):
        module = importlib.import_module(name)
        seen: set[str] = set()
        found: list[str] = []

        def add(obj: Any, seen: set[str] = seen, found: list[str] = found) -> None:
            doc = inspect.getdoc(obj)
            if not doc:
                return
            para = " ".join(doc.strip().split("\n\n")[0].split())
            if len(para) >= 25 and para not in seen:
                seen.add(para)
                found.append(para[:300])

        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_"):
                continue
            if getattr(obj, "__module__", None) != name and not inspect.isbuiltin(obj):
                continue
            if inspect.isclass(obj):
                add(obj)
                for member_name, member in sorted(vars(obj).items()):
                    if member_name.startswith("_"):
                        continue
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    if inspect.isfunction(member) or inspect.ismethoddescriptor(member) \
                            or isinstance(member, property):
                        add(member)
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(obj)
        texts += found[:PER_MODULE]
        labels += [label] * len(found[:PER_MODULE])
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("inference-live") / "home"
    env = env_for(home, APPLIANCE_LOG_LEVEL="INFO")
    tokens = {"owner": cli_token(env, "acme", "admin"), "user": cli_token(env, "acme", "client"),
              "other": cli_token(env, "globex", "admin")}
    log_path = home.parent / "server.log"
    with serve_appliance(env, "--workers", "2", "--threads", "4", "--no-consumer",
                         log_path=log_path) as url:
        yield {"url": url, "tokens": tokens, "env": env, "home": home, "log": log_path,
               "state": {}}


class CachingEncoder:
    """MiniLM with a prompt cache: every prompt is embedded exactly once in this test."""

    def __init__(self) -> None:
        from models.hub import load_minilm

        self.model = load_minilm()
        self.cache: dict[str, np.ndarray] = {}
        self.calls = 0

    def __call__(self, prompts: list[str]) -> np.ndarray:
        todo = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if todo:
            self.calls += 1
            for prompt, vec in zip(todo, self.model.embed(todo), strict=True):
                self.cache[prompt] = vec
        return np.stack([self.cache[p] for p in prompts])


def _secret_key_slices(private: Any) -> list[bytes]:
    """Three 32-byte windows of the client's serialized secret key (SEAL blob)."""
    from crypto.ckks import _parse_fields

    full = private._ctx.serialize(save_secret_key=True)
    private_part = next(v for f, _, v in _parse_fields(full) if f == 3)
    assert isinstance(private_part, bytes)
    secret = next(v for f, _, v in _parse_fields(private_part) if f == 1)
    assert isinstance(secret, bytes) and len(secret) > 4096
    return [secret[i:i + 32] for i in (len(secret) // 4, len(secret) // 2, 3 * len(secret) // 4)]


def _everything_under(home: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(home.rglob("*")) if p.is_file()]


def test_private_docstring_topics_end_to_end(live: dict[str, Any]) -> None:
    import torch
    from sklearn.linear_model import LogisticRegression

    from appliance.client import EMBED_CHUNK, ApiError, Client
    from crypto.ensemble import EnsembleArtifact
    from crypto.private_inference.templates import embed_with_templates

    torch.set_num_threads(1)
    started = time.perf_counter()
    texts, labels = stdlib_docstrings()
    assert len(texts) >= 150 and len(set(labels.tolist())) == len(MODULES)
    order = np.random.default_rng(0).permutation(len(texts))
    test_idx, train_idx = order[:HELD_OUT], order[HELD_OUT:]
    encode = CachingEncoder()
    train_emb = embed_with_templates([texts[i] for i in train_idx], TEMPLATES, encode)
    heads = [LogisticRegression(max_iter=1000, C=10.0).fit(train_emb[:, k], labels[train_idx])
             for k in range(len(TEMPLATES))]
    art = EnsembleArtifact(templates=TEMPLATES, weights=np.stack([h.coef_ for h in heads]),
                           biases=np.stack([h.intercept_ for h in heads]), classes=MODULES,
                           metadata={"name": "stdlib-topics"})

    owner = Client(live["url"], token=live["tokens"]["owner"])
    ensemble = owner.create_ensemble(art)
    assert ensemble.name == "stdlib-topics" and ensemble.members == 3
    live["state"]["ensemble_id"] = ensemble.id

    user = Client(live["url"], token=live["tokens"]["user"])
    spec = user.ensemble_spec(ensemble.id)
    assert spec["classes"] == list(MODULES) and "weights" not in spec
    session = user.open_inference_session(ensemble.id)
    assert session.keys_size < 40 << 20
    held_out = [texts[i] for i in test_idx]
    t0 = time.perf_counter()
    result = user.private_predict(ensemble.id, [*held_out, CANARY_TEXT], encode=encode,
                                  batch=True, session=session)
    private_s = time.perf_counter() - t0
    assert result.win_counts.shape == (HELD_OUT + 1, len(MODULES))
    # training texts in one call; held-out texts in one call per EMBED_CHUNK texts (all their
    # template prompts together), never text by text
    assert encode.calls == 1 + -(-(HELD_OUT + 1) // EMBED_CHUNK) == 3

    test_emb = embed_with_templates(held_out, TEMPLATES, encode)  # cached: no re-embedding
    plain_pred = art.plaintext_logits(test_emb).argmax(axis=1)
    truth = labels[test_idx]
    plain_acc = float(np.mean(plain_pred == truth))
    enc_pred = np.array(result.indices[:HELD_OUT])
    enc_acc = float(np.mean(enc_pred == truth))
    assert plain_acc >= 0.8, plain_acc
    assert abs(enc_acc - plain_acc) <= 0.005, (enc_acc, plain_acc)
    assert result.labels[:HELD_OUT] == [MODULES[i] for i in enc_pred]

    # (2) a context that carries the secret key is refused with a problem, nothing stored
    secret_ctx = session.private_client._ctx.serialize(save_secret_key=True)
    digest = session.private_client.layout_digest  # the packing matches: the keys are what is refused
    resp = httpx.post(f"{live['url']}/v1/inference/sessions",
                      params={"ensemble_id": ensemble.id, "layout": digest}, content=secret_ctx,
                      headers={"Authorization": f"Bearer {live['tokens']['user']}",
                               "Content-Type": "application/octet-stream"}, timeout=60)
    assert 400 <= resp.status_code < 500
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert "secret" in resp.text or "private" in resp.text
    with pytest.raises(ApiError) as refused:
        user.request("POST", "/v1/inference/sessions", params={"ensemble_id": ensemble.id, "layout": digest},
                     content=secret_ctx, headers={"Content-Type": "application/octet-stream"})
    assert refused.value.status == 422

    # (3) canaries: no plaintext, secret key bytes or ciphertext anywhere server-side
    query_ct = session.private_client.encrypt(test_emb[0])
    canaries = {
        "canary text": CANARY_TEXT.encode(),
        "canary word": b"Quokka-7Z9",
        "held-out docstring": held_out[0][:40].encode(),
        **{f"secret key window {i}": s
           for i, s in enumerate(_secret_key_slices(session.private_client))},
        "query ciphertext": query_ct[len(query_ct) // 2: len(query_ct) // 2 + 32],
    }
    session.close()
    time.sleep(0.3)  # let the server flush its last log lines
    log_text = live["log"].read_bytes()
    assert b'"path": "/v1/ensembles/' in log_text  # the log is real and holds requests
    files = _everything_under(live["home"])
    assert any(p.name == "appliance.db-wal" for p, _ in files) or any(
        p.name == "appliance.db" for p, _ in files)
    for what, needle in canaries.items():
        assert needle not in log_text, f"{what} found in the server log"
        for path, data in files:
            assert needle not in data, f"{what} found in {path}"
    print(f"\nprivate docstring topics: {len(texts)} texts, {HELD_OUT} held out, "
          f"plaintext acc {plain_acc:.3f}, encrypted acc {enc_acc:.3f}, "
          f"private round trip {private_s:.1f}s, test {time.perf_counter() - started:.1f}s")


def test_refusals_expiry_and_tenants_on_the_live_server(live: dict[str, Any]) -> None:
    import tenseal as ts

    from appliance.client import ApiError, Client
    from crypto.ckks import make_context
    from crypto.ensemble import EnsembleArtifact

    rng = np.random.default_rng(1)
    art = EnsembleArtifact(templates=("a {}", "b {}"), weights=rng.normal(size=(2, 3, 8)),
                           biases=np.zeros((2, 3)), classes=("x", "y", "z"),
                           encoder="toy-8d")
    owner = Client(live["url"], token=live["tokens"]["owner"])
    other = Client(live["url"], token=live["tokens"]["other"])
    ens = owner.create_ensemble(art, name="toy").id
    session = owner.open_inference_session(ens, ttl_seconds=2)
    good = session.private_client.encrypt(np.full((2, 8), 0.2))
    path = f"/v1/ensembles/{ens}/predict"
    octet = {"Content-Type": "application/octet-stream"}

    def status(client: Client, body: bytes, **params: Any) -> int:
        try:
            client.request("POST", path, params={"session": session.id, **params},
                           content=body, headers=octet)
        except ApiError as exc:
            assert exc.problem.get("status") == exc.status
            return exc.status
        return 200

    assert status(owner, good) == 200
    foreign = ts.ckks_vector(make_context("n16384-d8"), [0.1] * 64).serialize()
    for body in (b"", b"\x01" * 100, good[:1000], good[:-3], foreign):
        assert status(owner, body) == 422
    assert status(owner, good[:500], batch="true") == 422
    # another tenant: the ensemble and the session do not exist for it
    assert status(other, good) == 404
    with pytest.raises(ApiError) as exc:
        other.ensemble_spec(ens)
    assert exc.value.status == 404
    with pytest.raises(ApiError) as exc:
        other.request("DELETE", f"/v1/inference/sessions/{session.id}")
    assert exc.value.status == 404
    assert [e.id for e in other.list_ensembles()] == []
    # expiry
    time.sleep(2.2)
    assert status(owner, good) == 410


def test_cli_ensembles_and_predict(live: dict[str, Any], tmp_path: Path) -> None:
    from crypto.ensemble import EnsembleArtifact

    env = {**live["env"], "APPLIANCE_URL": live["url"], "APPLIANCE_TOKEN": live["tokens"]["owner"]}
    rng = np.random.default_rng(2)
    art = EnsembleArtifact(templates=("{}", "text: {}"), weights=rng.normal(size=(2, 2, 384)),
                           biases=np.zeros((2, 2)), classes=("left", "right"))
    art.save(tmp_path / "ens")
    out = subprocess.run(appliance_cmd("ensembles", "create", str(tmp_path / "ens"), "--name",
                                       "cli-ens", "--id-only"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ens = out.stdout.strip()
    listed = subprocess.run(appliance_cmd("ensembles", "list"), env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    assert ens in {e["id"] for e in json.loads(listed.stdout)}
    text = "Return the cosine of x, measured in radians."
    pred = subprocess.run(appliance_cmd("predict", ens, text, "--json"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr
    got = json.loads(pred.stdout)
    from models.hub import load_minilm

    emb = load_minilm().embed([t.replace("{}", text) for t in art.templates])
    expected = art.classes[int(art.plaintext_logits(emb[None]).argmax())]
    assert got[0]["label"] == expected and len(got[0]["win_counts"]) == 2
    # a client-role token cannot register ensembles
    bad = subprocess.run(appliance_cmd("ensembles", "create", str(tmp_path / "ens")),
                         env={**env, "APPLIANCE_TOKEN": live["tokens"]["user"]},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "403" in bad.stderr
