"""Recognise, validate and safely unpack uploaded model files.

Accepted formats are ONNX, safetensors, and a transformers directory with safetensors
weights (uploaded as a tar). Every pickle-based format is refused: the raw pickle stream,
torch ``.pt``/``.bin`` zip archives (``data.pkl`` inside), pickled numpy arrays, joblib
dumps, and any file named like one of them::

    fmt = sniff_and_validate(Path("model.onnx"), max_bytes=512 << 20)   # -> "onnx"

Validation never executes code from the file: ONNX is parsed as protobuf and checked with
``onnx.checker``; safetensors headers are parsed as JSON and checked against the file size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

from models.errors import ModelFormatError

ModelFormat = Literal["onnx", "safetensors", "transformers"]
MODEL_FORMATS: tuple[str, ...] = get_args(ModelFormat)

#: File name suffixes of pickle-based serialisations; refused wherever they appear.
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy"})
#: Upper bound on a safetensors JSON header (the reference implementation uses 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000
#: Bytes per element of every safetensors dtype.
SAFETENSORS_DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
_CHUNK = 1 << 20
# zlib, bzip2, xz, lz4 frame and joblib's legacy "ZF" headers: joblib's compressed dumps.
_COMPRESSED_MAGIC = (
    b"\x78\x01",
    b"\x78\x5e",
    b"\x78\x9c",
    b"\x78\xda",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x04\x22\x4d\x18",
    b"ZF",
)
_PICKLE_MSG = "pickle-based model files are refused because loading them can execute arbitrary code"


def _refuse_pickle(what: str) -> ModelFormatError:
    return ModelFormatError(
        f"{what}: {_PICKLE_MSG}",
        hint="convert the model to safetensors (safetensors.torch.save_file) or export it to ONNX",
    )


def _looks_like_pickle(head: bytes) -> bool:
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number; joblib's raw
    # dumps and numpy's pickled object arrays are plain pickles too.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_pickle_name(name: str) -> bool:
    lowered = name.lower()
    return any(lowered.endswith(suffix) for suffix in PICKLE_SUFFIXES)


def sniff_and_validate(
    path: Path, *, declared: str | None = None, max_bytes: int | None = None
) -> ModelFormat:
    """Detect the format of ``path`` from its bytes, validate it and return the format.

    ``path`` may be an ONNX file, a safetensors file, a tar (optionally gzip'd) of a
    transformers directory, or an already extracted transformers directory. Raises
    :class:`ModelFormatError` for pickle in any guise, a size over ``max_bytes``, a
    truncated or corrupt file, or a detected format that differs from ``declared``.
    """
    path = Path(path)
    if declared is not None and declared not in MODEL_FORMATS:
        raise ModelFormatError(
            f"unsupported model format {declared!r}; supported formats: {list(MODEL_FORMATS)}"
        )
    if path.is_dir():
        validate_transformers_dir(path)
        return _match_declared("transformers", declared)
    if not path.is_file():
        raise ModelFormatError(f"model file {path} does not exist or is not a regular file")
    if _is_pickle_name(path.name):
        raise _refuse_pickle(f"file name {path.name!r}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ModelFormatError(f"model file is {size} bytes, over the limit of {max_bytes}")
    if size == 0:
        raise ModelFormatError("model file is empty")
    with path.open("rb") as handle:
        head = handle.read(512)

    if _looks_like_pickle(head):
        raise _refuse_pickle("file is a pickle stream")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        raise _describe_zip(path)
    if head.startswith(b"\x93NUMPY"):
        raise ModelFormatError(
            "file is a numpy .npy array, not a model; .npy may hold pickled objects"
        )
    if _is_tar(path, head):
        _scan_tar_members(path)
        return _match_declared("transformers", declared)
    if _looks_like_safetensors(head, size):
        validate_safetensors_header(path)
        return _match_declared("safetensors", declared)
    if declared not in (None, "onnx"):
        raise ModelFormatError(
            f"file was declared as {declared} but is not a valid {declared} file "
            f"(no {declared} header was recognised)"
        )
    try:
        validate_onnx(path)
    except ModelFormatError:
        if head.startswith(_COMPRESSED_MAGIC):
            raise ModelFormatError(
                "file is a compressed stream (a joblib dump or compressed pickle?); " + _PICKLE_MSG
            ) from None
        raise
    return _match_declared("onnx", declared)


def _match_declared(detected: ModelFormat, declared: str | None) -> ModelFormat:
    if declared is not None and declared != detected:
        raise ModelFormatError(f"file was declared as {declared} but its content is {detected}")
    return detected


def _describe_zip(path: Path) -> ModelFormatError:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return ModelFormatError(f"file is a corrupt zip archive: {exc}")
    if any(name.endswith(".pkl") or "/data.pkl" in name or name == "data.pkl" for name in names):
        return _refuse_pickle("file is a torch.save zip archive (contains data.pkl)")
    if any(name.endswith(".npy") for name in names):
        return ModelFormatError("file is a numpy .npz archive, not a model")
    return ModelFormatError(
        "zip archives are not a supported model format; upload a tar of a transformers directory"
    )


def _is_tar(path: Path, head: bytes) -> bool:
    if len(head) >= 262 and head[257:262] == b"ustar":
        return True
    if head.startswith(b"\x1f\x8b"):
        try:
            with tarfile.open(path, "r:gz") as archive:
                archive.next()
            return True
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ModelFormatError(f"gzip file is not a valid tar archive: {exc}") from exc
    return False


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size and head[8:9] == b"{"


def validate_safetensors_header(path: Path) -> dict[str, Any]:
    """Check a safetensors header against the file size; return the parsed header.

    Checks: header length bound, JSON object, known dtypes, non-negative integer shapes,
    ``data_offsets`` matching ``prod(shape) * itemsize``, and tensors tiling the data
    section exactly (no gaps, overlaps or trailing bytes).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFormatError("safetensors file is shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_SAFETENSORS_HEADER:
            raise ModelFormatError(f"safetensors header of {header_len} bytes is too large")
        if 8 + header_len > size:
            raise ModelFormatError("safetensors file is truncated inside its header")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFormatError("safetensors header must be a JSON object")
    data_size = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                raise ModelFormatError("safetensors __metadata__ must map strings to strings")
            continue
        spans.append(_check_tensor_entry(name, info))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise ModelFormatError(
                f"safetensors tensor {name!r} starts at {begin}, expected {cursor} "
                "(gap or overlap between tensors)"
            )
        cursor = end
    if cursor != data_size:
        raise ModelFormatError(
            f"safetensors data section is {data_size} bytes but tensors cover {cursor} "
            "(file truncated or has trailing bytes)"
        )
    return header


def _check_tensor_entry(name: str, info: Any) -> tuple[int, int, str]:
    if not isinstance(info, dict):
        raise ModelFormatError(f"safetensors entry {name!r} must be an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        raise ModelFormatError(f"safetensors tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ModelFormatError(f"safetensors tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ModelFormatError(f"safetensors tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
    if expected != offsets[1] - offsets[0]:
        raise ModelFormatError(
            f"safetensors tensor {name!r}: shape {shape} of {dtype} needs {expected:g} bytes, "
            f"offsets give {offsets[1] - offsets[0]}"
        )
    return offsets[0], offsets[1], name


def validate_onnx(path: Path) -> None:
    """Parse ``path`` as an ONNX model and run ``onnx.checker``; refuse external data."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFormatError(
            f"file is not a valid ONNX model (corrupt or truncated protobuf): {exc}"
        ) from exc
    except Exception as exc:  # protobuf raises several undocumented types on garbage
        raise ModelFormatError(f"file is not a valid ONNX model: {exc}") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError("ONNX file has no graph (not an ONNX model, or truncated)")
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelFormatError(
                "ONNX models with external data are refused; save the weights inside the file"
            )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelFormatError(f"ONNX model fails onnx.checker: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    if not [i for i in model.graph.input if i.name not in initializers]:
        raise ModelFormatError("ONNX graph declares no input")
    if not model.graph.output:
        raise ModelFormatError("ONNX graph declares no output")


def _safe_member_name(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name:
        raise ModelFormatError(f"tar member {name!r} has a forbidden character")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("/"):
        raise ModelFormatError(f"tar member {name!r} has an absolute path")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ModelFormatError(f"tar member {name!r} escapes the destination ('..')")
    if parts and len(parts[0]) == 2 and parts[0][1] == ":":
        raise ModelFormatError(f"tar member {name!r} has a drive letter")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_members(
    members: Iterable[tarfile.TarInfo], *, max_total_bytes: int | None, max_files: int | None
) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    checked: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    total = 0
    files = 0
    for member in members:
        rel = _safe_member_name(member.name)
        if member.issym() or member.islnk():
            raise ModelFormatError(f"tar member {member.name!r} is a link; links are refused")
        if not (member.isreg() or member.isdir()):
            raise ModelFormatError(
                f"tar member {member.name!r} is a device, fifo or other special file"
            )
        if member.isreg():
            if _is_pickle_name(rel.name):
                raise _refuse_pickle(f"tar member {member.name!r}")
            files += 1
            total += member.size
            if max_files is not None and files > max_files:
                raise ModelFormatError(f"tar archive holds more than {max_files} files")
            if max_total_bytes is not None and total > max_total_bytes:
                raise ModelFormatError(f"tar archive expands to more than {max_total_bytes} bytes")
        checked.append((member, rel))
    return checked


def _scan_tar_members(path: Path) -> None:
    try:
        with tarfile.open(path, "r:*") as archive:
            checked = _check_members(archive, max_total_bytes=None, max_files=None)
    except tarfile.TarError as exc:
        raise ModelFormatError(f"corrupt tar archive: {exc}") from exc
    names = [rel for member, rel in checked if member.isreg()]
    if not any(n.name == "config.json" for n in names):
        raise ModelFormatError("transformers tar has no config.json")
    if not any(n.suffix == ".safetensors" for n in names):
        raise ModelFormatError("transformers tar has no *.safetensors weights")


def extract_transformers_tar(
    tar_path: Path, dest: Path, *, max_total_bytes: int, max_files: int = 200
) -> Path:
    """Safely extract a tar of a transformers directory into ``dest``; return the model dir.

    Refuses absolute paths, ``..``, links, devices, more than ``max_files`` files or
    ``max_total_bytes`` bytes, and every pickle file (by name and by content). The
    model directory must hold ``config.json`` and at least one ``*.safetensors`` file;
    a single top-level folder in the archive is stepped into. On failure ``dest`` is
    removed again.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelFormatError(f"extraction destination {dest} must be a new or empty folder")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _extract(tar_path, dest, max_total_bytes=max_total_bytes, max_files=max_files)
        model_dir = _model_root(dest)
        validate_transformers_dir(model_dir)
        return model_dir
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _extract(tar_path: Path, dest: Path, *, max_total_bytes: int, max_files: int) -> None:
    try:
        archive = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ModelFormatError(f"file is not a readable tar archive: {exc}") from exc
    with archive:
        try:
            checked = _check_members(archive, max_total_bytes=max_total_bytes, max_files=max_files)
        except tarfile.TarError as exc:
            raise ModelFormatError(f"corrupt tar archive: {exc}") from exc
        written = 0
        root = dest.resolve()
        for member, rel in checked:
            target = (root / rel).resolve()
            if target != root and root not in target.parents:
                raise ModelFormatError(f"tar member {member.name!r} escapes the destination")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise ModelFormatError(f"tar member {member.name!r} cannot be read")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(target, flags, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
            except FileExistsError as exc:
                raise ModelFormatError(f"tar member {member.name!r} appears twice") from exc
            first = True
            with os.fdopen(fd, "wb") as out, source:
                while chunk := source.read(_CHUNK):
                    if first and _looks_like_pickle(chunk):
                        raise _refuse_pickle(f"tar member {member.name!r} is a pickle stream")
                    if first and chunk.startswith(b"PK\x03\x04"):
                        raise ModelFormatError(
                            f"tar member {member.name!r} is a zip archive (torch.save format?)"
                        )
                    first = False
                    written += len(chunk)
                    if written > max_total_bytes:
                        raise ModelFormatError(
                            f"tar archive expands to more than {max_total_bytes} bytes"
                        )
                    out.write(chunk)


def _model_root(dest: Path) -> Path:
    entries = [p for p in dest.iterdir() if not p.name.startswith("._")]
    if len(entries) == 1 and entries[0].is_dir() and not (dest / "config.json").exists():
        return entries[0]
    return dest


def validate_transformers_dir(model_dir: Path) -> None:
    """Check an extracted transformers folder: no pickle or symlinks, config.json, safetensors."""
    for path in model_dir.rglob("*"):
        if path.is_symlink():
            raise ModelFormatError(f"transformers directory contains a symlink: {path.name}")
        if path.is_file() and _is_pickle_name(path.name):
            raise _refuse_pickle(f"transformers directory file {path.name!r}")
    config = model_dir / "config.json"
    if not config.is_file():
        raise ModelFormatError("transformers directory has no config.json")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"config.json is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ModelFormatError("config.json must hold a JSON object")
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise ModelFormatError("transformers directory has no *.safetensors weights")
    for weight in weights:
        validate_safetensors_header(weight)


__all__ = [
    "MODEL_FORMATS",
    "ModelFormat",
    "extract_transformers_tar",
    "sniff_and_validate",
    "validate_onnx",
    "validate_transformers_dir",
    "validate_safetensors_header",
]
