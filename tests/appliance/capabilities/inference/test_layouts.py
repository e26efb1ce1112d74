"""Sessions keep the single layout their client packs in: this server's pair rows, the packing
older SDKs compute, and none that it cannot tell (410, never wrong labels)."""

from __future__ import annotations

from typing import Any

import numpy as np
from support import auth, make_token, register_ensemble

from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient

OCTET = {"Content-Type": "application/octet-stream"}


def _open(client: Any, token: str, ensemble: str, private: PrivateClient, *, digest: bool = True) -> Any:
    suffix = f"&layout={private.layout_digest}" if digest else ""
    return client.post(f"/v1/inference/sessions?ensemble_id={ensemble}{suffix}",
                       headers={**auth(token), **OCTET}, data=private.evaluation_keys())


def test_older_sdks_keep_their_packing_and_unrecorded_sessions_are_gone(app: Any, client: Any, settings: Any,
                                                                        token_a: str) -> None:
    """Two 2048-d members fill n8192-d3's slots, so this server computes each of the 10 pairs of
    5 classes once. An SDK from before the pair rows reads the served layout without knowing
    ``pairs`` (so it packs 8-slot class blocks), one from before the layout digest packs compact
    rows and sends no digest: both sessions open and get the plaintext's labels, each in its
    own layout. A session whose layout the server did not record (opened by an earlier
    version) is 410 once its evaluator must be rebuilt, never answered in another layout."""
    from appliance._internal.store import Store

    rng = np.random.default_rng(8)
    art = EnsembleArtifact(templates=("a {}", "b {}"), weights=rng.normal(size=(2, 5, 2048)) / 30.0,
                           biases=rng.normal(size=(2, 5)) * 0.1, classes=tuple("vwxyz"))
    resp = register_ensemble(client, token_a, art)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    ens = resp.get_json()["id"]
    user = make_token(settings, "tenant-a", role="client")
    spec = client.get(f"/v1/ensembles/{ens}", headers=auth(user)).get_json()
    assert (spec["layout"]["pairs"], spec["layout"]["rows"], spec["layout"]["class_stride"]) == (True, 16, 16)
    before_pairs = {**spec, "layout": {k: v for k, v in spec["layout"].items() if k != "pairs"}}
    before_digest = {**spec, "layout": {"class_stride": 5}}  # compact rows, no chunked lane
    clients = {
        "now": (PrivateClient(spec=spec), True),
        "before pair rows": (PrivateClient(spec=before_pairs), True),
        "before the digest": (PrivateClient(spec=before_digest), False),
    }
    layouts = {name: (c.layout.pairs, c.layout.rows, c.layout.stride) for name, (c, _) in clients.items()}
    assert layouts == {"now": (True, 16, 16), "before pair rows": (False, 64, 8), "before the digest": (False, 32, 5)}
    emb = rng.normal(size=(3, 2, 2048))
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    truth = art.plaintext_logits(emb).argmax(axis=1).tolist()
    sessions = {}
    for name, (private, digest) in clients.items():
        resp = _open(client, user, ens, private, digest=digest)
        assert resp.status_code == 201, (name, resp.get_data(as_text=True))
        sessions[name] = resp.get_json()["id"]
        labels = []
        for query in emb:
            reply = client.post(f"/v1/ensembles/{ens}/predict?session={sessions[name]}",
                                headers={**auth(user), **OCTET}, data=private.encrypt(query))
            assert reply.status_code == 200, (name, reply.get_data(as_text=True))
            labels += list(private.decrypt_result(reply.get_data()).labels)
        assert labels == truth, name
    store = Store.open(settings)
    try:
        stored = dict(store.conn.execute("SELECT id, layout FROM inference_sessions").fetchall())
        assert stored == {sessions["now"]: clients["now"][0].layout_digest,
                          sessions["before pair rows"]: clients["before pair rows"][0].layout_digest,
                          sessions["before the digest"]: "legacy"}
        store.conn.execute("UPDATE inference_sessions SET layout = NULL WHERE id = ?", (sessions["now"],))
        store.conn.commit()
    finally:
        store.close()
    app.extensions["appliance.inference_cache"].clear()  # the evaluators are rebuilt from the keys
    private = clients["now"][0]
    reply = client.post(f"/v1/ensembles/{ens}/predict?session={sessions['now']}",
                        headers={**auth(user), **OCTET}, data=private.encrypt(emb[0]))
    assert reply.status_code == 410 and "earlier version" in reply.get_json()["detail"]
    reply = client.post(f"/v1/ensembles/{ens}/predict?session={sessions['before pair rows']}",
                        headers={**auth(user), **OCTET}, data=clients["before pair rows"][0].encrypt(emb[0]))
    assert reply.status_code == 200
    assert list(clients["before pair rows"][0].decrypt_result(reply.get_data()).labels) == truth[:1]
