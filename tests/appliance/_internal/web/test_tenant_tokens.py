"""Tenant admins mint, list and revoke client and auditor tokens for their own tenant only."""

from __future__ import annotations

import time
from typing import Any

from support import auth, make_token


def test_tenant_admin_mints_lists_and_revokes_its_own_tokens(client: Any, settings: Any,
                                                              token_a: str, token_b: str) -> None:
    made = client.post("/v1/tokens", json={"role": "client", "label": "customer 1"},
                       headers=auth(token_a))
    assert made.status_code == 201, made.get_json()
    issued = made.get_json()
    assert issued["token"].startswith("aat_") and issued["role"] == "client"
    who = client.get("/v1/whoami", headers=auth(issued["token"])).get_json()
    assert who["tenant"] == "tenant-a" and who["role"] == "client"
    assert who["expires_at"] == issued["expires_at"] is not None  # every minted token expires
    auditor = client.post("/v1/tokens", json={"role": "auditor", "expires_in": "2h"},
                          headers=auth(token_a)).get_json()
    assert auditor["expires_at"] < issued["expires_at"]

    for body, status in [({"role": "admin"}, 422), ({"role": "client", "expires_in": "400d"}, 422),
                         ({"role": "client", "extra": 1}, 422), ({"role": "client",
                                                                 "expires_in": "soon"}, 422)]:
        resp = client.post("/v1/tokens", json=body, headers=auth(token_a))
        assert resp.status_code == status, (body, resp.get_json())
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert client.post("/v1/tokens", json={"role": "client"},
                       headers=auth(issued["token"])).status_code == 403  # clients mint nothing

    listed = client.get("/v1/tokens", headers=auth(token_a)).get_json()["items"]
    ids = {t["id"] for t in listed}
    assert {issued["id"], auditor["id"]} <= ids
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert issued["token"] not in str(listed)
    other = client.get("/v1/tokens", headers=auth(token_b)).get_json()["items"]
    assert not ids & {t["id"] for t in other}  # another tenant sees none of them

    assert client.delete(f"/v1/tokens/{issued['id']}", headers=auth(token_b)).status_code == 404
    assert client.get("/v1/whoami", headers=auth(issued["token"])).status_code == 200
    assert client.delete(f"/v1/tokens/{issued['id']}", headers=auth(token_a)).status_code == 204
    assert client.get("/v1/whoami", headers=auth(issued["token"])).status_code == 401
    revoked = {t["id"]: t for t in client.get("/v1/tokens", headers=auth(token_a)).get_json()["items"]}
    assert revoked[issued["id"]]["revoked_at"] is not None


def test_a_minted_token_never_outlives_its_minter(client: Any, settings: Any) -> None:
    from appliance._internal.auth import create_token
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        short = create_token(store, tenant="tenant-c", role="admin", expires_in=3600).token
    finally:
        store.close()
    minted = client.post("/v1/tokens", json={"role": "client", "expires_in": "30d"},
                         headers=auth(short)).get_json()
    end = time.mktime(time.strptime(minted["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert end <= time.time() + 3601
    assert make_token(settings, "tenant-c", "client")  # the host may still mint any role
