"""The security review's upload attacks through the API, as a tenant with a token would try them: each
is refused with a 4xx problem document, leaves nothing behind and shows no server path."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import tar_of, upload_dataset, upload_model

SMALL_LIMITS = {"max_extracted_bytes": 4 << 20, "max_archive_entries": 200,
                "max_dataset_bytes": 1 << 20}


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from appliance._internal.config import Settings

    return Settings(home=tmp_path / "home", rate_limit="100000 per minute",
                    job_lease_seconds=5.0, log_level="WARNING", **SMALL_LIMITS)


def _weights(seed: int) -> bytes:
    import torch
    from safetensors.torch import save

    torch.manual_seed(seed)
    return save({"w": torch.randn(4, 4)})


def refused(resp: Any, status: int, settings: Any) -> str:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:400])
    assert resp.content_type == "application/problem+json"
    detail = str(resp.get_json()["detail"])
    assert str(settings.home) not in detail and str(settings.home.resolve()) not in detail
    return detail


def nothing_left(settings: Any, keep: int = 0) -> None:
    blobs = [p for p in settings.blob_dir.rglob("*") if p.is_file()]
    assert len(blobs) == keep and list(settings.tmp_dir.rglob("*")) == []
    modeldirs = settings.home / "modeldirs"
    assert len(list(modeldirs.iterdir()) if modeldirs.exists() else []) == keep


CONFIG = json.dumps({"model_type": "bert", "architectures": ["BertModel"]}).encode()


def test_a_tenant_cannot_point_its_index_at_another_tenants_weights(
        client: Any, token_a: str, token_b: str, settings: Any) -> None:
    victim_tar = tar_of([("victim/config.json", CONFIG),
                         ("victim/model.safetensors", _weights(7))])
    assert upload_model(client, token_b, victim_tar, "victim.tar").status_code == 201
    victim_digest = hashlib.sha256(victim_tar).hexdigest()
    victim_weights = settings.home / "modeldirs" / victim_digest / "victim" / "model.safetensors"
    assert victim_weights.is_file()
    for shard in (f"../../{victim_digest}/victim/model.safetensors", str(victim_weights)):
        index = {"metadata": {}, "weight_map": {"w": shard}}
        attack = tar_of([("m/config.json", CONFIG), ("m/dummy.safetensors", _weights(1)),
                         ("m/model.safetensors.index.json", json.dumps(index).encode())])
        detail = refused(upload_model(client, token_a, attack, "m.tar"), 422, settings)
        assert "weight_map" in detail
        nothing_left(settings, keep=1)


@pytest.mark.parametrize("tokenizer_config", [
    {"vocab": "/etc/passwd", "unk_token": "root"},
    {"vocab_file": "../../../../etc/hostname"},
    {"merges_file": "vocab.txt/../../x"},
    {"tokenizer_file": "/proc/self/environ"},
])
def test_tokenizer_keys_cannot_name_host_files(client: Any, token_a: str, settings: Any,
                                               tokenizer_config: dict[str, str]) -> None:
    attack = tar_of([("m/config.json", CONFIG), ("m/model.safetensors", _weights(1)),
                     ("m/vocab.txt", b"[UNK]\n"),
                     ("m/tokenizer_config.json", json.dumps(tokenizer_config).encode())])
    detail = refused(upload_model(client, token_a, attack, "m.tar"), 422, settings)
    assert "tokenizer_config.json" in detail
    nothing_left(settings)


def test_job_failure_reasons_hide_server_paths(settings: Any) -> None:
    from appliance._internal.jobs.runner import failure_reason
    from models.errors import ModelFormatError

    folder = settings.home / "modeldirs" / ("ab" * 32) / "m"
    exc = ModelFormatError(f"Can't load tokenizer: {folder}/vocab.txt or /etc/passwd missing")
    reason = failure_reason(exc, settings)
    assert str(settings.home) not in reason and "/etc/" not in reason
    assert reason.startswith("ModelFormatError: Can't load tokenizer: <home>/")
    message, _, hint = reason.partition("\nHint: ")
    assert message.endswith("vocab.txt or <path>/passwd missing") and hint  # the fix is named too
    assert "internal error" in failure_reason(KeyError(str(folder)), settings)


def _npy_member(header: dict[str, Any], data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("x.npy", buf.getvalue() + data)
    return zipped.getvalue()


def test_dataset_bombs_answer_413_before_decompressing(client: Any, token_a: str,
                                                       settings: Any) -> None:
    shape_bomb = _npy_member({"descr": "<f8", "fortran_order": False, "shape": (10**12,)},
                             bytes(64))
    refused(upload_dataset(client, token_a, shape_bomb), 413, settings)
    zeros = io.BytesIO()
    np.savez_compressed(zeros, x=np.zeros((4096, 1024), np.uint8))  # 4 MiB in ~5 KB
    detail = refused(upload_dataset(client, token_a, zeros.getvalue()), 413, settings)
    assert "1048576" in detail
    lying = _npy_member({"descr": "<f4", "fortran_order": False, "shape": (3, 2)}, bytes(4))
    refused(upload_dataset(client, token_a, lying), 422, settings)
    nothing_left(settings)


def test_archive_bombs_answer_413(client: Any, token_a: str, settings: Any) -> None:
    info = tarfile.TarInfo("huge.dat")
    info.size = 64 << 20
    zero_mib = gzip.compress(bytes(1 << 20))
    gzip_bomb = gzip.compress(info.tobuf()) + zero_mib * 64  # gzip members concatenate
    # named as a single file, a tar is refused from its first block, never inflated
    started = time.process_time()
    detail = refused(upload_model(client, token_a, gzip_bomb, "model.onnx"), 422, settings)
    assert "tar archive" in detail and time.process_time() - started < 0.5
    refused(upload_model(client, token_a, gzip_bomb, "model.tar.gz"), 413, settings)
    folders: list[tuple[str, bytes | None]] = [(f"m/d{i}", None) for i in range(400)]
    many = tar_of([*folders, ("m/config.json", CONFIG), ("m/model.safetensors", _weights(0))])
    detail = refused(upload_model(client, token_a, many, "m.tar"), 413, settings)
    assert "more than 200 entries" in detail
    nothing_left(settings)


def _nested_safetensors(depth: int) -> bytes:
    header = b'{"w":' + b"[" * depth + b"]" * depth + b"}"
    return len(header).to_bytes(8, "little") + header


def test_deeply_nested_json_answers_422_not_500(client: Any, token_a: str,
                                                settings: Any) -> None:
    nested = b"[" * 50_000 + b"]" * 50_000
    cases = [
        (_nested_safetensors(50_000), "w.safetensors"),
        (tar_of([("m/config.json", b'{"a":' + nested + b"}"),
                 ("m/model.safetensors", _weights(0))]), "m.tar"),
        (tar_of([("m/config.json", CONFIG),
                 ("m/model.safetensors", _nested_safetensors(50_000))]), "m.tar"),
        (tar_of([("m/config.json", CONFIG), ("m/model.safetensors", _weights(0)),
                 ("m/tokenizer_config.json", nested)]), "m.tar"),
    ]
    for data, name in cases:
        detail = refused(upload_model(client, token_a, data, name), 422, settings)
        assert "deeper than 64 levels" in detail
    nothing_left(settings)
