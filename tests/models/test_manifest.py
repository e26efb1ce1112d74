"""Model manifests shaped like OpenSSF model-signing v1.0 statements."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import pytest

from models.errors import ManifestError, ModelError
from models.manifest import build_manifest, hash_file, verify_manifest


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "model.safetensors").write_bytes(os.urandom(3 * (1 << 20) + 17))
    (root / "sub" / "vocab.txt").write_text("hello\n")
    return root


def test_statement_shape_and_digests(model_dir: Path) -> None:
    statement = build_manifest(model_dir, model_name="tiny")
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    serialization = statement["predicate"]["serialization"]
    assert serialization == {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": [],
    }
    resources = statement["predicate"]["resources"]
    assert [r["name"] for r in resources] == ["config.json", "model.safetensors", "sub/vocab.txt"]
    weights = (model_dir / "model.safetensors").read_bytes()
    assert resources[1]["digest"] == hashlib.sha256(weights).hexdigest()
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert statement["subject"] == [{"name": "tiny", "digest": {"sha256": root}}]
    verify_manifest(model_dir, statement)


def test_single_file(model_dir: Path) -> None:
    path = model_dir / "config.json"
    statement = build_manifest(path, model_name="cfg")
    assert statement["predicate"]["resources"][0]["name"] == "config.json"
    assert statement["predicate"]["resources"][0]["digest"] == hash_file(path)
    verify_manifest(path, statement)
    path.write_text('{"a": 2}')
    with pytest.raises(ManifestError, match="changed"):
        verify_manifest(path, statement)


def test_changed_byte_missing_and_extra_files(model_dir: Path) -> None:
    statement = build_manifest(model_dir, model_name="tiny")
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[(1 << 20) + 5] ^= 0x01  # one bit in the second chunk
    weights.write_bytes(bytes(data))
    (model_dir / "sub" / "vocab.txt").unlink()
    (model_dir / "added.bin").write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        verify_manifest(model_dir, statement)
    message = str(info.value)
    assert "changed files ['model.safetensors']" in message
    assert "missing files ['sub/vocab.txt']" in message
    assert "extra files ['added.bin']" in message


def test_tampered_statement_refused(model_dir: Path) -> None:
    statement = build_manifest(model_dir, model_name="tiny")
    forged = copy.deepcopy(statement)
    forged["predicate"]["resources"][0]["digest"] = "00" * 32
    with pytest.raises(ManifestError, match="subject digest"):
        verify_manifest(model_dir, forged)
    bad_type = {**statement, "predicateType": "https://example.com/other"}
    with pytest.raises(ManifestError, match="predicateType"):
        verify_manifest(model_dir, bad_type)


def test_symlinks_refused(model_dir: Path) -> None:
    (model_dir / "link").symlink_to(model_dir / "config.json")
    with pytest.raises(ManifestError, match="symlink"):
        build_manifest(model_dir, model_name="tiny")
