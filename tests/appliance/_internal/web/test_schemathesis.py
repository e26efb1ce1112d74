"""Property-based API fuzzing from our own /openapi.json: no input yields a 5xx, and every
error is a problem document."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings
from schemathesis.checks import not_a_server_error
from support import auth, make_token


@pytest.fixture
def fuzz_app(tmp_path: Any) -> Any:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "fuzz", rate_limit="100000 per minute",
                        max_upload_bytes=256 * 1024, log_level="ERROR")
    app = create_app(settings)
    app.extensions["appliance.enqueue"] = lambda message: None
    app.extensions["test.token"] = make_token(settings, "fuzzer")
    return app


@pytest.fixture
def api_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hyp_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
def test_no_server_errors(case: Any, fuzz_app: Any) -> None:
    token = fuzz_app.extensions["test.token"]
    response = case.call(headers=auth(token))
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        headers = {k.lower(): v for k, v in response.headers.items()}
        content_type = headers["content-type"]
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/problem+json"), (response.status_code,
                                                                     content_type)
