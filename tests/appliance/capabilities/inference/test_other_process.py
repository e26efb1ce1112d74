"""The whole private path from a separate client process holding only a ``client`` token that
its tenant's admin minted over the API: open a session, predict, close; meanwhile neither
another tenant nor another token of the same tenant can use that session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from support import ROOT, cli_token, env_for, serve_appliance

CLIENT_SCRIPT = r'''
import json, sys
import numpy as np
from appliance.client import Client

def encode(texts):
    out = np.zeros((len(texts), 8))
    for i, text in enumerate(texts):
        for ch in text.encode():
            out[i, ch % 8] += 1.0
    return out + 0.1

url, token, ensemble = sys.argv[1:4]
texts = json.loads(sys.stdin.readline())
with Client(url, token=token, retries=0) as sdk:
    session = sdk.open_inference_session(ensemble)
    result = sdk.private_predict(ensemble, texts, encode=encode, session=session)
    print(json.dumps({"session": session.id, "indices": result.indices}), flush=True)
    sys.stdin.readline()  # the parent probes the open session meanwhile
    session.close()
    print(json.dumps({"closed": session.closed}), flush=True)
'''


def _encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 8))
    for i, text in enumerate(texts):
        for ch in text.encode():
            out[i, ch % 8] += 1.0
    return out + 0.1


def test_client_process_with_a_minted_token_and_tenant_isolation(tmp_path: Path) -> None:
    from appliance.client import ApiError, Client
    from crypto.ensemble import EnsembleArtifact
    from crypto.private_inference.templates import embed_with_templates

    env = env_for(tmp_path / "home")
    acme_admin, globex_admin = cli_token(env, "acme", "admin"), cli_token(env, "globex", "admin")
    rng = np.random.default_rng(5)
    templates = ("a {}", "b {}")
    art = EnsembleArtifact(templates=templates, weights=rng.normal(size=(2, 4, 8)),
                           biases=np.zeros((2, 4)), classes=("w", "x", "y", "z"), encoder="toy-8d")
    texts = ["first text", "another one", "zebra", "a fourth, longer text"]
    with serve_appliance(env, "--workers", "1", "--threads", "2", "--no-consumer") as url:
        owner = Client(url, token=acme_admin)
        ensemble = owner.create_ensemble(art, name="toy").id
        customer = owner.create_token("client", label="customer", expires_in="1h")
        other_tenant = Client(url, token=globex_admin).create_token("client").token
        same_tenant_other = owner.create_token("client").token

        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, url, customer.token, ensemble],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(texts) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            first = json.loads(line)
            want = art.plaintext_logits(embed_with_templates(texts, templates, _encode))
            assert first["indices"] == list(want.argmax(axis=1))

            octet = {"Content-Type": "application/octet-stream"}
            for intruder in (other_tenant, same_tenant_other):
                headers = {"Authorization": f"Bearer {intruder}", **octet}
                resp = httpx.post(f"{url}/v1/ensembles/{ensemble}/predict",
                                  params={"session": first["session"]}, content=b"x" * 64,
                                  headers=headers)
                assert resp.status_code == 404, resp.text
                resp = httpx.delete(f"{url}/v1/inference/sessions/{first['session']}",
                                    headers=headers)
                assert resp.status_code == 404
            with Client(url, token=other_tenant, retries=0) as stranger:
                try:
                    stranger.ensemble_spec(ensemble)
                    raise AssertionError("another tenant read the ensemble")
                except ApiError as exc:
                    assert exc.status == 404

            proc.stdin.write("\n")
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline()) == {"closed": True}
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        # the customer's session is gone: closing it again answers 404
        resp = httpx.delete(f"{url}/v1/inference/sessions/{first['session']}",
                            headers={"Authorization": f"Bearer {customer.token}"})
        assert resp.status_code == 404
        owner.revoke_token(customer.id)
        assert httpx.get(f"{url}/v1/whoami", headers={
            "Authorization": f"Bearer {customer.token}"}).status_code == 401
