"""Property-based fuzzing of the upload parsers (the security review's classes stay closed): nested JSON
wherever the appliance parses JSON from a file, crafted .npy headers, tars with many folders,
and every path an index or tokenizer can name. No input yields a 5xx; every refusal is a
problem document; an accepted model never names a file outside its own folder."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from support import tar_of, upload_dataset, upload_model

CONFIG = json.dumps({"model_type": "bert", "architectures": ["BertModel"]}).encode()
LIMITS = {"max_extracted_bytes": 2 << 20, "max_archive_entries": 120,
          "max_dataset_bytes": 1 << 20}
FUZZ = hyp_settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from appliance._internal.config import Settings

    return Settings(home=tmp_path / "home", rate_limit="100000 per minute",
                    log_level="ERROR", **LIMITS)


@pytest.fixture(scope="module")
def weights() -> bytes:
    import torch
    from safetensors.torch import save

    torch.manual_seed(0)
    return save({"w": torch.randn(2, 2)})


def outcome(resp: Any, *allowed: int) -> int:
    assert resp.status_code in allowed, (resp.status_code, resp.get_data(as_text=True)[:300])
    if resp.status_code >= 400:
        assert resp.content_type == "application/problem+json"
    return int(resp.status_code)


# -- nested JSON ---------------------------------------------------------------------------

@st.composite
def nested_json(draw: st.DrawFn) -> bytes:
    """Arrays and objects nested up to 20,000 deep, sometimes truncated or with brackets
    inside strings; shallow ones are valid JSON objects."""
    depth = draw(st.one_of(st.integers(0, 80), st.integers(80, 20_000)))
    opens = draw(st.lists(st.sampled_from(["[", '{"k":', '["[{",']), min_size=1, max_size=3))
    layers = [opens[i % len(opens)] for i in range(depth)]
    closers = {"[": "]", '{"k":': "}", '["[{",': "]"}
    body = "".join(layers) + "0" + "".join(closers[o] for o in reversed(layers))
    text = '{"a":' + body + "}"
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@FUZZ
@given(document=nested_json(), where=st.sampled_from(["header", "config", "tokenizer",
                                                      "tar-header"]))
def test_nested_json_never_breaks_an_upload(client: Any, token_a: str, weights: bytes,
                                            document: bytes, where: str) -> None:
    header = len(document).to_bytes(8, "little") + document
    if where == "header":
        outcome(upload_model(client, token_a, header, "w.safetensors"), 422)
        return
    files = {"config.json": CONFIG, "model.safetensors": weights}
    files[{"config": "config.json", "tokenizer": "tokenizer_config.json",
           "tar-header": "model.safetensors"}[where]] = header if where == "tar-header" \
        else document
    status = outcome(upload_model(client, token_a, tar_of(list(files.items())), "m.tar"),
                     201, 422)
    if document.count(b"[") + document.count(b"{") > 200:
        assert status == 422


# -- .npy headers --------------------------------------------------------------------------

npy_headers = st.fixed_dictionaries({
    "descr": st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", ">f4", "<U3", "|V4", "|O",
                              "<c8", "<M8[s]"]),
    "fortran_order": st.booleans(),
    "shape": st.lists(st.one_of(st.integers(0, 8), st.integers(0, 10**13)), max_size=4)
    .map(tuple),
})


@FUZZ
@example(header={"descr": "<f4", "fortran_order": False, "shape": ()}, data_bytes=0,
         labels=False, raw_header=b"(")  # numpy's header tokenizer raised TokenError: a 500
@given(header=npy_headers, data_bytes=st.integers(0, 4096), labels=st.booleans(),
       raw_header=st.one_of(st.none(), st.binary(max_size=64)))
def test_crafted_npy_headers_are_refused_cleanly(client: Any, token_a: str,
                                                 header: dict[str, Any], data_bytes: int,
                                                 labels: bool, raw_header: bytes | None) -> None:
    buf = io.BytesIO()
    if raw_header is None:
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        buf.write(b"\x93NUMPY\x01\x00" + len(raw_header).to_bytes(2, "little") + raw_header)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("x.npy", buf.getvalue() + bytes(data_bytes))
        if labels:
            zipped.writestr("y.npy", buf.getvalue() + bytes(data_bytes))
    declared = int(np.prod(header["shape"], dtype=object)) if raw_header is None else 0
    status = outcome(upload_dataset(client, token_a, archive.getvalue()), 201, 413, 422)
    if raw_header is None and declared * 16 > LIMITS["max_dataset_bytes"]:
        assert status in (413, 422)


# -- tars with many folders ----------------------------------------------------------------

@hyp_settings(FUZZ, max_examples=10)
@given(folders=st.integers(0, 250), depth=st.integers(1, 20), with_model=st.booleans(),
       compressed=st.booleans())
def test_tars_with_many_folders_are_bounded(client: Any, token_a: str, weights: bytes,
                                            folders: int, depth: int, with_model: bool,
                                            compressed: bool) -> None:
    import gzip

    members: list[tuple[str, bytes | None]] = [
        ("m/" + "/".join([f"d{i}"] * depth), None) for i in range(folders)]
    if with_model:
        members += [("m/config.json", CONFIG), ("m/model.safetensors", weights)]
    data = tar_of(members)
    name = "m.tar"
    if compressed:
        data, name = gzip.compress(data, compresslevel=1), "m.tar.gz"
    status = outcome(upload_model(client, token_a, data, name), 201, 413, 422)
    too_deep = depth > 15  # "m/" and 15 folders is the deepest a member may be
    implied = {"/".join(name.split("/")[:i]) for name, _ in members
               for i in range(1, name.count("/") + 1 + (_ is None))}
    entries = max(len(members), len(implied) + 2 * with_model)
    if too_deep and folders:
        assert status == 422
    elif entries > LIMITS["max_archive_entries"]:
        assert status == 413
    if status == 201:
        assert with_model and not (too_deep and folders)


# -- paths named by an index or a tokenizer --------------------------------------------------

path_values = st.one_of(
    st.sampled_from(["/etc/passwd", "../x.safetensors", "..", "a/../../b", "~/x", "C:\\w",
                     "model.safetensors", "sub/../model.safetensors", "./model.safetensors",
                     "vocab.txt", "", "sub", "/", "missing.safetensors", "..\\x"]),
    st.text(alphabet="./~\\:abm", max_size=14),
)


@FUZZ
@given(value=path_values, where=st.sampled_from(
    ["weight_map", "vocab", "vocab_file", "merges_file", "tokenizer_file", "spm_file",
     "special_tokens_map_file", "name_or_path"]))
def test_named_paths_never_leave_the_model_folder(client: Any, token_a: str, weights: bytes,
                                                  settings: Any, value: str,
                                                  where: str) -> None:
    members: list[tuple[str, bytes | None]] = [
        ("m/config.json", CONFIG), ("m/model.safetensors", weights), ("m/vocab.txt", b"[UNK]\n"),
        ("m/sub/", None)]
    if where == "weight_map":
        named = json.dumps({"weight_map": {"w": value}})
        members.append(("m/model.safetensors.index.json", named.encode()))
    else:
        members.append(("m/tokenizer_config.json", json.dumps({where: value}).encode()))
    resp = upload_model(client, token_a, tar_of(members), "m.tar")
    status = outcome(resp, 201, 422)
    escapes = value.startswith(("/", "~")) or "\\" in value or ".." in Path(value).parts \
        or (len(value) > 1 and value[1] == ":")
    if escapes:
        assert status == 422
    if status == 201 and where != "name_or_path":
        # accepted: the value names a regular file inside the extracted folder
        folder = next((settings.home / "modeldirs").glob("*/m"))
        target = (folder / value).resolve()
        assert target.is_file() and folder.resolve() in target.parents
