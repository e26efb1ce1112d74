"""The console's tokens page: a tenant admin mints (shown once), lists and revokes its own
tenant's client and auditor tokens; other roles and tenants cannot."""

from __future__ import annotations

import re
from typing import Any

from support import auth, make_token


def test_admin_mints_and_revokes_tokens_on_the_console(console: tuple[Any, str], client: Any,
                                                       settings: Any) -> None:
    browser, csrf = console
    assert "Tokens" in browser.get("/console/").text
    page = browser.post("/console/tokens", data={"csrf_token": csrf, "role": "client",
                                                 "label": "<b>shop</b>", "expires_in": "7d"})
    assert page.status_code == 200
    token = re.search(r"aat_[A-Za-z0-9_-]{20,}", page.text)
    assert token and "&lt;b&gt;shop&lt;/b&gt;" in page.text and "<b>shop</b>" not in page.text
    who = client.get("/v1/whoami", headers=auth(token.group(0))).get_json()
    assert who["role"] == "client" and who["tenant"] == "tenant-a"
    listing = browser.get("/console/tokens").text
    assert token.group(0) not in listing  # shown once, never again
    assert browser.post("/console/tokens", data={"csrf_token": csrf, "role": "admin"}
                        ).status_code == 403
    assert browser.post("/console/tokens", data={"csrf_token": "forged", "role": "client"}
                        ).status_code == 400
    minted_id = client.get("/v1/whoami", headers=auth(token.group(0))).get_json()["token_id"]
    assert browser.post(f"/console/tokens/{minted_id}/revoke",
                        data={"csrf_token": csrf}).status_code == 303
    assert client.get("/v1/whoami", headers=auth(token.group(0))).status_code == 401


def test_clients_and_other_tenants_cannot_use_the_tokens_page(app: Any, client: Any,
                                                              settings: Any, token_a: str,
                                                              sign_in: Any) -> None:
    viewer = app.test_client()
    csrf = sign_in(viewer, make_token(settings, "tenant-a", "client"))
    assert "Tokens" not in viewer.get("/console/").text
    assert viewer.get("/console/tokens").status_code == 403
    other = app.test_client()
    csrf_b = sign_in(other, make_token(settings, "tenant-b", "admin"))
    mine = client.get("/v1/whoami", headers=auth(token_a)).get_json()["token_id"]
    assert other.post(f"/console/tokens/{mine}/revoke", data={"csrf_token": csrf_b}
                      ).status_code == 404
    assert client.get("/v1/whoami", headers=auth(token_a)).status_code == 200
    assert csrf
