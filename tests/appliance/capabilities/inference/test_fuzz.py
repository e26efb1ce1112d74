"""Schemathesis over the private-inference routes, with a real ensemble and an open session so
random bodies reach the key and ciphertext parsers: never a 5xx, errors are problems."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from support import auth, make_token, mutate


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app
    from crypto.ensemble import EnsembleArtifact
    from crypto.private_inference.client import PrivateClient

    settings = Settings(home=tmp_path_factory.mktemp("fuzz-inference") / "home",
                        rate_limit="100000 per minute", log_level="ERROR")
    app = create_app(settings)
    token = make_token(settings, "fuzzer")
    rng = np.random.default_rng(0)
    art = EnsembleArtifact(templates=("{}", "x {}"), weights=rng.normal(size=(2, 3, 8)),
                           biases=np.zeros((2, 3)), classes=("a", "b", "c"))
    files = art.dumps()
    web = app.test_client()
    ens = web.post("/v1/ensembles", headers=auth(token), content_type="multipart/form-data",
                   data={"ensemble_json": (io.BytesIO(files["ensemble.json"]), "e.json"),
                         "ensemble_safetensors": (io.BytesIO(files["ensemble.safetensors"]),
                                                  "e.st")}).get_json()["id"]
    keys = PrivateClient(spec=art.public_spec()).evaluation_keys()
    ses = web.post(f"/v1/inference/sessions?ensemble_id={ens}",
                   headers={**auth(token), "Content-Type": "application/octet-stream"},
                   data=keys).get_json()["id"]
    app.extensions["test.ids"] = {"token": token, "ensemble_id": ens, "session_id": ses}
    app.extensions["test.private"] = PrivateClient(spec=art.public_spec())
    return app


@pytest.fixture
def api_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema").include(tag="inference")


def _check(case: Any, response: Any) -> None:
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        ctype = {k.lower(): v for k, v in response.headers.items()}["content-type"]
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/problem+json"), (response.status_code, ctype)


@schema.parametrize()
@hyp_settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
def test_inference_routes_never_fail_with_5xx(case: Any, fuzz_app: Any) -> None:
    ids = fuzz_app.extensions["test.ids"]
    headers = auth(ids["token"])
    _check(case, case.call(headers=headers))
    # the same random body against the real ensemble and session (deep parsers)
    if case.path_parameters and "ensemble_id" in case.path_parameters:
        case.path_parameters["ensemble_id"] = ids["ensemble_id"]
    if isinstance(case.query, dict):
        if "session" in case.query:
            case.query["session"] = ids["session_id"]
        if "ensemble_id" in case.query:
            case.query["ensemble_id"] = ids["ensemble_id"]
    if case.method.upper() != "DELETE":
        _check(case, case.call(headers=headers))


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
@given(data=st.data())
def test_mutated_ciphertexts_and_keys_get_4xx_or_a_reply(fuzz_app: Any, data: Any) -> None:
    """Bit flips, cuts and splices of real ciphertexts / keys: 200 or a 4xx problem only."""
    ids = fuzz_app.extensions["test.ids"]
    private = fuzz_app.extensions["test.private"]
    web = fuzz_app.test_client()
    headers = {**auth(ids["token"]), "Content-Type": "application/octet-stream"}
    cache = fuzz_app.extensions["test.blobs"] = fuzz_app.extensions.get("test.blobs") or {
        "ct": private.encrypt(np.full((2, 8), 0.1)), "keys": private.evaluation_keys()}
    target = data.draw(st.sampled_from(["ct", "batch", "keys"]))
    blob = mutate(cache["keys" if target == "keys" else "ct"], data, data.draw(st.integers(1, 4)),
                  lambda b: data.draw(st.integers(0, len(b) - 1)))
    if target == "keys":
        resp = web.post(f"/v1/inference/sessions?ensemble_id={ids['ensemble_id']}",
                        headers=headers, data=bytes(blob))
        ok = {201}
    else:
        body = bytes(blob)
        if target == "batch":
            from crypto.private_inference.wire import encode_blobs

            body = encode_blobs([body])
        flag = "&batch=true" if target == "batch" else ""
        resp = web.post(f"/v1/ensembles/{ids['ensemble_id']}/predict?session="
                        f"{ids['session_id']}{flag}", headers=headers, data=body)
        ok = {200}
    assert resp.status_code in ok or 400 <= resp.status_code < 500, resp.status_code
    if resp.status_code >= 400:
        assert resp.mimetype == "application/problem+json"
