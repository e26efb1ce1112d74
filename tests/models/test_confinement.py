"""Every file a loader opens stays inside the model's own folder, every decompression is
bounded before the work is done, and crafted JSON or .npy headers are refused cleanly
(security review, findings 1, 2, 5 and 6)."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support import tar_of

from models.bounded_json import MAX_JSON_DEPTH, load_bounded_json
from models.datasets import load_npz_dataset
from models.errors import DatasetError, LimitExceeded, ModelFormatError
from models.formats import (
    extract_transformers_tar,
    sniff_and_validate,
    tokenizer_file_arguments,
    validate_safetensors_header,
    validate_transformers_dir,
)


def _weights(seed: int) -> bytes:
    from safetensors.torch import save

    torch.manual_seed(seed)
    return save({"w": torch.randn(4, 4)})


def _folder(path: Path, files: dict[str, bytes | dict[str, object]]) -> Path:
    path.mkdir(parents=True)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def _model_files(**extra: bytes | dict[str, object]) -> dict[str, bytes | dict[str, object]]:
    return {"config.json": {"model_type": "bert"}, "dummy.safetensors": _weights(1), **extra}

# -- finding 1: a weight index that names another tenant's weights --------------------------


@pytest.mark.parametrize("shard", [
    "../victim/model.safetensors",
    "sub/../../victim/model.safetensors",
    "/VICTIM/model.safetensors",
])
def test_index_naming_weights_outside_the_folder_is_refused(tmp_path: Path, shard: str) -> None:
    victim = _folder(tmp_path / "victim", _model_files(**{"model.safetensors": _weights(7)}))
    shard = shard.replace("/VICTIM", str(victim))
    index = {"metadata": {}, "weight_map": {"w": shard}}
    attacker = _folder(tmp_path / "attacker",
                       _model_files(**{"model.safetensors.index.json": index}))
    with pytest.raises(ModelFormatError, match="weight_map entry 'w'") as info:
        validate_transformers_dir(attacker)
    assert "outside" in str(info.value) or "absolute" in str(info.value) \
        or "climbs" in str(info.value)


def test_index_naming_its_own_shards_is_accepted(tmp_path: Path) -> None:
    index = {"metadata": {}, "weight_map": {"w": "shards/part-1.safetensors"}}
    folder = _folder(tmp_path / "m", _model_files(**{
        "model.safetensors.index.json": index, "shards/part-1.safetensors": _weights(2)}))
    validate_transformers_dir(folder)
    os.symlink(tmp_path / "m" / "dummy.safetensors", folder / "shards" / "part-2.safetensors")
    index["weight_map"] = {"w": "shards/part-2.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="symlink"):
        validate_transformers_dir(folder)


# -- finding 2: tokenizer keys that name host files -----------------------------------------


@pytest.mark.parametrize(("key", "value", "why"), [
    ("vocab", "/etc/passwd", "absolute"),
    ("vocab_file", "../../../etc/passwd", "climbs"),
    ("merges_file", "~/.ssh/id_rsa", "absolute"),
    ("tokenizer_file", "missing.json", "not a regular file"),
    ("spm_file", "C:\\secrets.model", "forbidden character"),
    ("special_tokens_map_file", "/home/user/.cache/special_tokens_map.json", "absolute"),
    ("name_or_path", "/srv/appliance/modeldirs/other", "absolute"),
])
def test_tokenizer_path_keys_must_stay_inside(tmp_path: Path, key: str, value: str,
                                               why: str) -> None:
    folder = _folder(tmp_path / "m", _model_files(
        **{"tokenizer_config.json": {"unk_token": "root", key: value}}))
    with pytest.raises(ModelFormatError, match=why):
        validate_transformers_dir(folder)
    with pytest.raises(ModelFormatError, match=why):
        tokenizer_file_arguments(folder) if key != "name_or_path" else validate_transformers_dir(
            folder)


def test_relative_tokenizer_files_are_passed_as_paths_inside_the_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m", _model_files(**{
        "vocab.txt": b"[PAD]\n[UNK]\n",
        "tokenizer_config.json": {"vocab_file": "vocab.txt", "name_or_path": "org/model",
                                  "tokenizer_file": None}}))
    validate_transformers_dir(folder)
    # a tokenizer opens a relative value against the worker's cwd: hand it the checked file
    assert tokenizer_file_arguments(folder) == {"vocab_file": str(folder.resolve() / "vocab.txt")}


def test_load_time_check_refuses_a_planted_folder_without_showing_its_path(
        tmp_path: Path) -> None:
    """A folder extracted before the upload checks existed is checked again by the loader,
    before transformers opens any file."""
    from models.engine import TransformersModel

    folder = _folder(tmp_path / "planted", _model_files(**{
        "model.safetensors.index.json": {"weight_map": {"w": str(tmp_path / "v.safetensors")}}}))
    with pytest.raises(ModelFormatError, match="absolute") as info:
        TransformersModel(folder, device="cpu")
    (folder / "model.safetensors.index.json").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"vocab": "/etc/passwd"}))
    with pytest.raises(ModelFormatError, match="absolute"):
        TransformersModel(folder, device="cpu")
    assert str(folder) not in str(info.value)  # the server path of the folder stays hidden


# -- finding 5: bombs ------------------------------------------------------------------------


def _gzip_tar_bomb(path: Path, megabytes: int) -> Path:
    """A gzip'd tar of one member of ``megabytes`` zeros, built from repeated gzip members
    (gzip readers concatenate them), so the test itself never compresses the zeros."""
    info = tarfile.TarInfo("huge.dat")
    info.size = megabytes << 20
    zero_mib = gzip.compress(bytes(1 << 20), compresslevel=9)
    path.write_bytes(gzip.compress(info.tobuf()) + zero_mib * megabytes)
    return path


def test_gzip_tar_bomb_on_the_sniffing_path_stops_at_the_bound(tmp_path: Path) -> None:
    bomb = _gzip_tar_bomb(tmp_path / "model.onnx", 1024)
    assert bomb.stat().st_size < 2 << 20  # 1 GiB of zeros
    started = time.process_time()
    with pytest.raises(LimitExceeded, match="expands to more than 4194304 bytes"):
        sniff_and_validate(bomb, max_expanded_bytes=4 << 20)
    assert time.process_time() - started < 1.0  # inflating the whole GiB takes seconds
    with pytest.raises(ModelFormatError, match="is a tar archive"):
        sniff_and_validate(bomb, single_file=True)
    with pytest.raises(ModelFormatError, match="is a tar archive"):
        sniff_and_validate(bomb, declared="onnx")
    assert time.process_time() - started < 1.0


def test_tar_with_many_folders_is_refused_before_any_is_created(tmp_path: Path) -> None:
    members: list[tuple[str, bytes | None]] = [(f"d{i}", None) for i in range(3000)]
    members += [("config.json", b"{}"), ("model.safetensors", _weights(0))]
    path = tmp_path / "dirs.tar"
    path.write_bytes(tar_of(members))
    dest = tmp_path / "out"
    dest.mkdir()
    created: list[str] = []
    real_mkdir = Path.mkdir

    def spy(self: Path, *args: object, **kwargs: object) -> None:
        created.append(self.name)
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", spy)
        with pytest.raises(LimitExceeded, match="more than 1000 entries"):
            extract_transformers_tar(path, dest, max_total_bytes=1 << 20, max_entries=1000)
    assert [name for name in created if name != "out"] == [] and list(dest.iterdir()) == []
    with pytest.raises(LimitExceeded, match="more than 1000 entries"):
        sniff_and_validate(path, max_entries=1000)
    # 30 files each under its own 10 folders: 30 entries that would create 300 folders
    implied = tmp_path / "implied.tar"
    implied.write_bytes(tar_of([("/".join([f"f{i}"] * 10) + "/x.json", b"{}")
                                    for i in range(30)]))
    with pytest.raises(LimitExceeded, match="more than 100 entries"):
        extract_transformers_tar(implied, tmp_path / "imp", max_total_bytes=1 << 20,
                                 max_entries=100)
    small = tmp_path / "ok.tar"
    small.write_bytes(tar_of(members[2990:]))
    assert extract_transformers_tar(small, tmp_path / "ok", max_total_bytes=1 << 20,
                                    max_entries=1000).is_dir()


def test_sparse_and_overlong_members_are_refused(tmp_path: Path) -> None:
    deep = "/".join(["a"] * 40) + "/config.json"
    path = tmp_path / "deep.tar"
    path.write_bytes(tar_of([(deep, b"{}")]))
    with pytest.raises(ModelFormatError, match="nests deeper"):
        extract_transformers_tar(path, tmp_path / "o1", max_total_bytes=1 << 20)
    sparse = tarfile.TarInfo("model.safetensors")
    sparse.type = tarfile.GNUTYPE_SPARSE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(sparse)
    (tmp_path / "sparse.tar").write_bytes(buf.getvalue())
    with pytest.raises(ModelFormatError, match="sparse"):
        extract_transformers_tar(tmp_path / "sparse.tar", tmp_path / "o2", max_total_bytes=1 << 20)


def _npz_with_header(tmp_path: Path, header: dict[str, object], data: bytes,
                     name: str = "x.npy") -> Path:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path = tmp_path / "crafted.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, buf.getvalue() + data)
    return path


def test_npy_headers_are_checked_before_reading(tmp_path: Path) -> None:
    huge = _npz_with_header(tmp_path, {"descr": "<f4", "fortran_order": False,
                                       "shape": (10**12,)}, bytes(16))
    with pytest.raises(LimitExceeded, match=r"\(1000000000000,\)"):
        load_npz_dataset(huge)
    short = _npz_with_header(tmp_path, {"descr": "<f4", "fortran_order": False,
                                        "shape": (1000,)}, bytes(16))
    with pytest.raises(DatasetError, match="holds 16 bytes of data"):
        load_npz_dataset(short)
    objects = _npz_with_header(tmp_path, {"descr": "|O", "fortran_order": False,
                                          "shape": (2,)}, bytes(16))
    with pytest.raises(DatasetError, match="object array"):
        load_npz_dataset(objects)
    for raw in (b"(", b'{"descr": """', b"\x00"):  # found by the fuzzing below: TokenError
        bad = tmp_path / "bad.npz"
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw)
        with pytest.raises(DatasetError, match="corrupt .npy header"):
            load_npz_dataset(bad)


def test_npz_bombs_are_bounded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.zeros(16 << 20, np.uint8))
    assert bomb.stat().st_size < 50_000
    with pytest.raises(LimitExceeded, match="expands to 16777216 bytes"):
        load_npz_dataset(bomb, max_array_bytes=1 << 20)
    many = tmp_path / "many.npz"
    arrays = {f"a{i}": np.zeros(1) for i in range(60)}
    np.savez(many, x=np.zeros((2, 2)), **arrays)
    with pytest.raises(LimitExceeded, match="more than 50 entries"):
        load_npz_dataset(many, max_entries=50)
    assert load_npz_dataset(many, max_entries=61).n == 2
    # the bound is read from the end record, before zipfile builds one object per entry
    crowded = tmp_path / "crowded.onnx"
    with zipfile.ZipFile(crowded, "w") as archive:
        for i in range(3000):
            archive.writestr(f"e{i}", b"")
    with pytest.raises(LimitExceeded, match="more than 1000 entries"):
        sniff_and_validate(crowded)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile.ZipFile, "infolist", lambda self: pytest.fail("opened the zip"))
        with pytest.raises(LimitExceeded, match="more than 1000 entries"):
            load_npz_dataset(crowded)


# -- finding 6: nested JSON -------------------------------------------------------------------


def _nested_safetensors(depth: int) -> bytes:
    header = ("[" * depth + "]" * depth).encode()
    header = b'{"a":' + header + b"}"
    return len(header).to_bytes(8, "little") + header


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=f"deeper than {MAX_JSON_DEPTH}"):
        load_bounded_json("[" * 200_000 + "]" * 200_000, what="x")
    assert load_bounded_json('{"a": "[[[[[[", "b": [[1]]}', what="x", max_depth=3) == {
        "a": "[[[[[[", "b": [[1]]}
    path = tmp_path / "w.safetensors"
    path.write_bytes(_nested_safetensors(100_000))
    with pytest.raises(ModelFormatError, match="deeper"):
        validate_safetensors_header(path)
    with pytest.raises(ModelFormatError, match="deeper"):
        sniff_and_validate(path)
    nested_config = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for members in ([("config.json", nested_config), ("model.safetensors", _weights(0))],
                    [("config.json", b"{}"), ("model.safetensors", _nested_safetensors(100_000))]):
        tar = tmp_path / "t.tar"
        tar.write_bytes(tar_of(members))  # type: ignore[arg-type]
        with pytest.raises(ModelFormatError, match="deeper"):
            extract_transformers_tar(tar, tmp_path / "out", max_total_bytes=1 << 20)


def test_json_files_of_a_model_folder_are_size_bounded(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import models.formats

    folder = _folder(tmp_path / "m", _model_files(**{"tokenizer.json": {"model": {"vocab": {"a": 1, "b": 2}}}}))
    validate_transformers_dir(folder)
    monkeypatch.setattr(models.formats, "MAX_MODEL_JSON_BYTES", 24)  # config.json has 22
    with pytest.raises(LimitExceeded, match="tokenizer.json is larger than 24 bytes"):
        validate_transformers_dir(folder)
