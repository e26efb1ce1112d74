"""Format sniffing, pickle refusal, ONNX/safetensors validation and safe tar extraction."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.architectures import create_architecture
from models.errors import ModelFormatError
from models.formats import extract_transformers_tar, sniff_and_validate, tar_folder


def _onnx_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    module = create_architecture("mlp", {"in_features": 4, "hidden": [8], "num_classes": 3})
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        module.eval(),
        (torch.zeros(2, 4),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def _safetensors_file(tmp_path: Path, name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    save_file({"w": torch.ones(3, 2), "b": torch.zeros(2, dtype=torch.float16)}, str(path))
    return path


def test_onnx_detected_and_declared_mismatch(tmp_path: Path) -> None:
    path = _onnx_file(tmp_path)
    assert sniff_and_validate(path) == "onnx"
    assert sniff_and_validate(path, declared="onnx") == "onnx"
    with pytest.raises(ModelFormatError, match="declared"):
        sniff_and_validate(path, declared="safetensors")
    with pytest.raises(ModelFormatError, match="over the limit"):
        sniff_and_validate(path, max_bytes=10)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_onnx_refused(tmp_path: Path, keep: float) -> None:
    data = _onnx_file(tmp_path).read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFormatError):
        sniff_and_validate(bad)


def test_random_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFormatError):
        sniff_and_validate(path)


def test_torch_save_refused(tmp_path: Path) -> None:
    module = create_architecture("mlp", {"in_features": 4, "hidden": [8], "num_classes": 3})
    for name in ("model.pt", "renamed.onnx", "renamed.safetensors"):
        path = tmp_path / name
        torch.save(module.state_dict(), path)
        with pytest.raises(ModelFormatError, match="pickle"):
            sniff_and_validate(path)


def test_raw_pickle_refused_whatever_the_name(tmp_path: Path) -> None:
    for protocol in (2, 4, 5):
        path = tmp_path / f"weights{protocol}.safetensors"
        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))
        with pytest.raises(ModelFormatError, match="pickle"):
            sniff_and_validate(path, declared="safetensors")


@pytest.mark.parametrize("name", ["m.pkl", "m.pickle", "m.joblib", "m.ckpt", "m.pth", "m.bin"])
def test_pickle_names_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(_safetensors_file(tmp_path).read_bytes())
    with pytest.raises(ModelFormatError, match="pickle"):
        sniff_and_validate(path)


def test_npz_and_npy_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "b.onnx").write_bytes((tmp_path / "a.npy").read_bytes())
    with pytest.raises(ModelFormatError, match="npz"):
        sniff_and_validate(tmp_path / "a.npz")
    with pytest.raises(ModelFormatError, match="numpy"):
        sniff_and_validate(tmp_path / "b.onnx")


def test_safetensors_valid(tmp_path: Path) -> None:
    assert sniff_and_validate(_safetensors_file(tmp_path)) == "safetensors"


def _rewrite_header(path: Path, mutate) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    mutate(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def test_safetensors_inconsistent_header_refused(tmp_path: Path) -> None:
    path = _safetensors_file(tmp_path)
    _rewrite_header(path, lambda h: h["w"].update(shape=[4, 2]))
    with pytest.raises(ModelFormatError, match="needs"):
        sniff_and_validate(path)

    path = _safetensors_file(tmp_path, "dtype.safetensors")
    _rewrite_header(path, lambda h: h["w"].update(dtype="F128"))
    with pytest.raises(ModelFormatError, match="dtype"):
        sniff_and_validate(path)

    path = _safetensors_file(tmp_path, "short.safetensors")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ModelFormatError, match="truncated"):
        sniff_and_validate(path)

    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelFormatError):
        sniff_and_validate(path, declared="safetensors")


def _tar(path: Path, entries: dict[str, bytes], *, prefix: str = "", gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _model_entries(tmp_path: Path) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"model_type": "bert"}).encode(),
        "model.safetensors": _safetensors_file(tmp_path).read_bytes(),
        "vocab.txt": b"[PAD]\n[UNK]\n",
    }


def test_tar_folder_round_trips_regular_files_in_path_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    entries = _model_entries(tmp_path)
    for name, data in entries.items():
        (src / name).write_bytes(data)
    (src / "sub" / "extra.json").write_bytes(b"{}")
    (src / "link.json").symlink_to(src / "config.json")  # left out: extraction refuses links
    blob = tar_folder(src)
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        names = archive.getnames()
    assert names == ["config.json", "model.safetensors", "sub/extra.json", "vocab.txt"]
    assert tar_folder(src) == blob  # deterministic
    tar_path = tmp_path / "m.tar"
    tar_path.write_bytes(blob)
    model_dir = extract_transformers_tar(tar_path, tmp_path / "out", max_total_bytes=1 << 20)
    for name, data in entries.items():
        assert (model_dir / name).read_bytes() == data


@pytest.mark.parametrize("prefix, gz", [("", False), ("my-model/", True)])
def test_tar_extracts_model_dir(tmp_path: Path, prefix: str, gz: bool) -> None:
    tar_path = _tar(tmp_path / "m.tar", _model_entries(tmp_path), prefix=prefix, gz=gz)
    assert sniff_and_validate(tar_path) == "transformers"
    model_dir = extract_transformers_tar(tar_path, tmp_path / "out", max_total_bytes=1 << 20)
    assert (model_dir / "config.json").is_file()
    assert model_dir.name == (prefix.strip("/") or "out")
    assert sniff_and_validate(model_dir) == "transformers"


def test_tar_with_pickle_bin_refused(tmp_path: Path) -> None:
    entries = _model_entries(tmp_path)
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    entries["pytorch_model.bin"] = buffer.getvalue()
    tar_path = _tar(tmp_path / "m.tar", entries)
    with pytest.raises(ModelFormatError, match="pickle"):
        sniff_and_validate(tar_path)
    dest = tmp_path / "out"
    with pytest.raises(ModelFormatError, match="pickle"):
        extract_transformers_tar(tar_path, dest, max_total_bytes=1 << 20)
    assert not dest.exists()


def test_tar_with_pickle_content_under_innocent_name_refused(tmp_path: Path) -> None:
    entries = _model_entries(tmp_path)
    entries["tokenizer.json"] = pickle.dumps({"a": 1}, protocol=4)
    tar_path = _tar(tmp_path / "m.tar", entries)
    with pytest.raises(ModelFormatError, match="pickle"):
        extract_transformers_tar(tar_path, tmp_path / "out", max_total_bytes=1 << 20)


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_tar_traversal_refused(tmp_path: Path, name: str) -> None:
    entries = _model_entries(tmp_path)
    entries[name] = b"owned"
    tar_path = _tar(tmp_path / "m.tar", entries)
    with pytest.raises(ModelFormatError):
        extract_transformers_tar(tar_path, tmp_path / "deep" / "out", max_total_bytes=1 << 20)
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_refused(tmp_path: Path, link_type: bytes) -> None:
    tar_path = tmp_path / "m.tar"
    _tar(tar_path, _model_entries(tmp_path))
    with tarfile.open(tar_path, "a") as archive:
        info = tarfile.TarInfo("tokenizer.json")
        info.type = link_type
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(ModelFormatError, match="link|device"):
        extract_transformers_tar(tar_path, tmp_path / "out", max_total_bytes=1 << 20)


def test_tar_limits_and_required_files(tmp_path: Path) -> None:
    entries = _model_entries(tmp_path)
    tar_path = _tar(tmp_path / "m.tar", entries)
    with pytest.raises(ModelFormatError, match="bytes"):
        extract_transformers_tar(tar_path, tmp_path / "a", max_total_bytes=100)
    with pytest.raises(ModelFormatError, match="files"):
        extract_transformers_tar(tar_path, tmp_path / "b", max_total_bytes=1 << 20, max_files=2)
    no_config = {k: v for k, v in entries.items() if k != "config.json"}
    with pytest.raises(ModelFormatError, match="config.json"):
        extract_transformers_tar(
            _tar(tmp_path / "n.tar", no_config), tmp_path / "c", max_total_bytes=1 << 20
        )
    no_weights = {k: v for k, v in entries.items() if k != "model.safetensors"}
    with pytest.raises(ModelFormatError, match="safetensors"):
        extract_transformers_tar(
            _tar(tmp_path / "w.tar", no_weights), tmp_path / "d", max_total_bytes=1 << 20
        )


@pytest.mark.parametrize("compress", [0, 3, ("bz2", 3), ("xz", 3)])
def test_joblib_dumps_refused(tmp_path: Path, compress) -> None:  # noqa: ANN001
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "model.onnx"
    joblib.dump({"coef": np.ones(3)}, path, compress=compress)
    with pytest.raises(ModelFormatError, match="pickle"):
        sniff_and_validate(path)
