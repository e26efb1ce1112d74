"""Console fixtures: a signed-in Flask test client, and for the browser tests a live
`appliance serve` on loopback with the demo material written to disk."""

from __future__ import annotations

import re
from typing import Any

import pytest

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a console page put in its forms."""
    match = CSRF_FIELD.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def sign_in(client: Any, token: str) -> str:
    """Sign a Flask test client in through the real form; returns the session's CSRF token."""
    page = client.get("/console/login")
    resp = client.post("/console/login", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert resp.status_code == 303, resp.text
    return csrf_of(client.get("/console/").text)


@pytest.fixture(name="csrf_of")
def csrf_of_fixture() -> Any:
    return csrf_of


@pytest.fixture(name="sign_in")
def sign_in_fixture() -> Any:
    return sign_in


@pytest.fixture
def console(client: Any, token_a: str) -> tuple[Any, str]:
    """A test client signed in as tenant-a's admin, and its CSRF token."""
    return client, sign_in(client, token_a)
