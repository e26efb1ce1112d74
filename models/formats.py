"""Recognise, validate and safely unpack uploaded model files.

Accepted formats are ONNX, safetensors, and a transformers directory with safetensors
weights (uploaded as a tar). Every pickle-based format is refused: the raw pickle stream,
torch ``.pt``/``.bin`` zip archives (``data.pkl`` inside), pickled numpy arrays, joblib
dumps, and any file named like one of them::

    fmt = sniff_and_validate(Path("model.onnx"), max_bytes=512 << 20)   # -> "onnx"

Validation never executes code from the file: ONNX is parsed as protobuf and checked with
``onnx.checker``; safetensors headers are parsed as JSON and checked against the file size.
Untrusted input is bounded before work is done: JSON nesting (:mod:`models.bounded_json`),
the bytes a tar decompresses to and its entries (folders, and folders a path implies), the
entries of a zip (from its end record). In a transformers folder, every file a loader can
open is a regular file inside the folder (:func:`validate_transformers_dir`).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol, get_args

from models.bounded_json import MAX_JSON_DEPTH, load_bounded_json
from models.errors import LimitExceeded, ModelError, ModelFormatError

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
#: Default bound on the bytes a tar may decompress to (the appliance passes its settings).
DEFAULT_MAX_EXPANDED_BYTES = 2 << 30
#: Default bound on the entries of a tar, folders included.
DEFAULT_MAX_ENTRIES = 1000
#: Bounds on one tar member's name: characters, and folders deep.
MAX_MEMBER_NAME = 512
MAX_MEMBER_DEPTH = 16
#: Bound on one JSON file of a transformers folder (large tokenizer.json files are ~30 MB).
MAX_MODEL_JSON_BYTES = 64 * 1024 * 1024
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
    path: Path,
    *,
    declared: str | None = None,
    max_bytes: int | None = None,
    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    single_file: bool = False,
) -> ModelFormat:
    """Detect the format of ``path`` from its bytes, validate it and return the format.

    ``path`` may be an ONNX file, a safetensors file, a tar (optionally gzip'd) of a
    transformers directory, or an already extracted transformers directory. Raises
    :class:`ModelFormatError` for pickle in any guise, a size over ``max_bytes``, a
    truncated or corrupt file, or a detected format that differs from ``declared``; and
    :class:`LimitExceeded` for a tar that decompresses past ``max_expanded_bytes`` or holds
    more than ``max_entries`` entries (checked while streaming, before more work is done).
    With ``single_file`` a tar is refused as soon as it is recognised, before any scan.
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
        raise ModelFormatError(f"model file {path.name!r} does not exist or is not a regular file")
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
        raise _describe_zip(path, max_entries)
    if head.startswith(b"\x93NUMPY"):
        raise ModelFormatError(
            "file is a numpy .npy array, not a model; .npy may hold pickled objects"
        )
    if _is_tar(path, head):
        if single_file or declared not in (None, "transformers"):
            raise ModelFormatError(
                "file is a tar archive; transformers models are uploaded as a tar archive "
                "(a .tar, .tar.gz or .tgz file name, or format 'transformers')"
            )
        _scan_tar_members(path, max_expanded_bytes=max_expanded_bytes, max_entries=max_entries)
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


def _describe_zip(path: Path, max_entries: int) -> ModelFormatError:
    from models.datasets import check_zip_directory

    try:
        check_zip_directory(path, max_entries)
    except LimitExceeded as exc:
        return exc
    except ModelError:
        return ModelFormatError("file is a corrupt zip archive")
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
        # only the first block is decompressed here; the member walk is bounded later
        try:
            with gzip.open(path, "rb") as stream:
                block = stream.read(512)
        except (OSError, EOFError, zlib.error) as exc:
            raise ModelFormatError(f"gzip file is corrupt: {exc}") from None
        if len(block) >= 262 and block[257:262] == b"ustar":
            return True
        raise ModelFormatError("gzip file is not a tar archive (a compressed pickle?)")
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
    header = load_bounded_json(raw, what="safetensors header")
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
    if len(name) > MAX_MEMBER_NAME:
        raise ModelFormatError(f"tar member name is longer than {MAX_MEMBER_NAME} characters")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("/"):
        raise ModelFormatError(f"tar member {name!r} has an absolute path")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ModelFormatError(f"tar member {name!r} escapes the destination ('..')")
    if parts and len(parts[0]) == 2 and parts[0][1] == ":":
        raise ModelFormatError(f"tar member {name!r} has a drive letter")
    if len(parts) > MAX_MEMBER_DEPTH or any(len(p.encode()) > 255 for p in parts):
        raise ModelFormatError(
            f"tar member {name!r} nests deeper than {MAX_MEMBER_DEPTH} folders or has a "
            "component over 255 bytes"
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _BoundedStream:
    """A read-only byte stream that refuses to yield more than ``limit`` bytes in all."""

    def __init__(self, source: _Readable, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._count = 0

    def read(self, size: int | None = -1) -> bytes:
        allowed = self._limit - self._count + 1
        want = allowed if size is None or size < 0 else min(size, allowed)
        chunk = self._source.read(want)
        self._count += len(chunk)
        if self._count > self._limit:
            raise LimitExceeded(f"tar archive expands to more than {self._limit} bytes")
        return chunk


def _decompressing(raw: IO[bytes]) -> _Readable:
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


@dataclass
class _TarBudget:
    """What a tar walk may still spend: entries (files and every folder, named or implied
    by a member's path), files, and file bytes."""

    max_entries: int
    max_files: int | None = None
    max_file_bytes: int | None = None
    entries: int = 0
    files: int = 0
    file_bytes: int = 0
    folders: set[PurePosixPath] = field(default_factory=set)

    def admit(self, member: tarfile.TarInfo) -> PurePosixPath:
        """Check one member header before any of its data is read; return its safe path."""
        self.entries += 1
        rel = _safe_member_name(member.name)
        # "a/b/c/file" creates three folders: count them, or one entry makes thousands
        self.folders.update(p for p in rel.parents if p != PurePosixPath("."))
        if member.isdir():
            self.folders.add(rel)
        if max(self.entries, len(self.folders) + self.files) > self.max_entries:
            raise LimitExceeded(
                f"tar archive holds more than {self.max_entries} entries (folders included)"
            )
        if member.issym() or member.islnk():
            raise ModelFormatError(f"tar member {member.name!r} is a link; links are refused")
        if member.issparse():
            raise ModelFormatError(f"tar member {member.name!r} is a sparse file; refused")
        if not (member.isreg() or member.isdir()):
            raise ModelFormatError(
                f"tar member {member.name!r} is a device, fifo or other special file"
            )
        if member.isreg():
            if _is_pickle_name(rel.name):
                raise _refuse_pickle(f"tar member {member.name!r}")
            self.files += 1
            self.file_bytes += member.size
            if self.max_files is not None and self.files > self.max_files:
                raise LimitExceeded(f"tar archive holds more than {self.max_files} files")
            if self.max_file_bytes is not None and self.file_bytes > self.max_file_bytes:
                raise LimitExceeded(
                    f"tar archive expands to more than {self.max_file_bytes} bytes"
                )
        return rel


TarVisitor = Callable[[tarfile.TarFile, tarfile.TarInfo, PurePosixPath], None]


def _walk_tar(path: Path, *, max_expanded_bytes: int, budget: _TarBudget,
              visit: TarVisitor) -> None:
    """Stream through a tar (plain, gzip, bzip2 or xz) once, checking each member header
    against ``budget`` before ``visit`` touches its data. Decompression stops at
    ``max_expanded_bytes``, so a small bomb costs no more than that many bytes of CPU."""
    try:
        with path.open("rb") as raw:
            stream = _BoundedStream(_decompressing(raw), max_expanded_bytes)
            with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    visit(archive, member, budget.admit(member))
    except ModelError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ModelFormatError(f"corrupt tar archive: {exc}") from None
    except OSError as exc:  # bad gzip data, or a write refused; the message may hold a path
        raise ModelFormatError(
            f"tar archive cannot be read or extracted: {exc.strerror or type(exc).__name__}"
        ) from None


def _scan_tar_members(path: Path, *, max_expanded_bytes: int, max_entries: int) -> None:
    names: list[PurePosixPath] = []

    def note(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath) -> None:
        if member.isreg():
            names.append(rel)

    _walk_tar(path, max_expanded_bytes=max_expanded_bytes,
              budget=_TarBudget(max_entries=max_entries), visit=note)
    if not any(n.name == "config.json" for n in names):
        raise ModelFormatError("transformers tar has no config.json")
    if not any(n.suffix == ".safetensors" for n in names):
        raise ModelFormatError("transformers tar has no *.safetensors weights")


def extract_transformers_tar(
    tar_path: Path,
    dest: Path,
    *,
    max_total_bytes: int,
    max_files: int = 200,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Path:
    """Safely extract a tar of a transformers directory into ``dest``; return the model dir.

    Refuses absolute paths, ``..``, links, sparse files, devices, more than ``max_entries``
    entries (folders count), more than ``max_files`` files, a stream that decompresses past
    ``max_total_bytes``, and every pickle file (by name and by content). Each header is
    checked before its data is read or anything is created. The model directory must pass
    :func:`validate_transformers_dir`; a single top-level folder in the archive is stepped
    into. On failure ``dest`` is removed again.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelFormatError("extraction destination must be a new or empty folder")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _extract(tar_path, dest, max_total_bytes=max_total_bytes, max_files=max_files,
                 max_entries=max_entries)
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


def tar_folder(folder: Path) -> bytes:
    """An uncompressed tar of ``folder``'s regular files (links left out), in path order and
    named relative to ``folder``: the upload form of a transformers directory, which
    :func:`extract_transformers_tar` unpacks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()


def _extract(tar_path: Path, dest: Path, *, max_total_bytes: int, max_files: int,
             max_entries: int) -> None:
    root = dest.resolve()
    written = 0

    def write(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath) -> None:
        nonlocal written
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise ModelFormatError(f"tar member {member.name!r} escapes the destination")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        source = archive.extractfile(member)
        if source is None:
            raise ModelFormatError(f"tar member {member.name!r} cannot be read")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
        except FileExistsError:
            raise ModelFormatError(f"tar member {member.name!r} appears twice") from None
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
                    raise LimitExceeded(
                        f"tar archive expands to more than {max_total_bytes} bytes"
                    )
                out.write(chunk)

    def budget() -> _TarBudget:
        return _TarBudget(max_entries=max_entries, max_files=max_files,
                          max_file_bytes=max_total_bytes)

    # The tar stream (headers and padding included) is a little larger than its files.
    stream_bound = max_total_bytes + 1536 * (max_entries + 2)
    # A first pass reads only headers, so an archive over a bound is refused before any
    # folder or file is created; the second pass checks the same bounds while it writes.
    _walk_tar(tar_path, max_expanded_bytes=stream_bound, budget=budget(),
              visit=lambda archive, member, rel: None)
    _walk_tar(tar_path, max_expanded_bytes=stream_bound, budget=budget(), visit=write)


def _model_root(dest: Path) -> Path:
    entries = [p for p in dest.iterdir() if not p.name.startswith("._")]
    if len(entries) == 1 and entries[0].is_dir() and not (dest / "config.json").exists():
        return entries[0]
    return dest


# -- files a transformers loader opens by name ---------------------------------------------

#: JSON keys whose string value a tokenizer or model loader opens as a file.
PATH_KEYS = frozenset({
    "vocab", "merges", "vocab_file", "merges_file", "tokenizer_file", "spm_file", "sp_model",
    "sp_model_file", "model_file", "bpe_file", "emoji_file", "entity_vocab_file",
    "monolingual_vocab_file", "word_file", "chat_template_file",
})
#: Key endings that name files or folders (``special_tokens_map_file``, ``cache_dir``, ...).
PATH_KEY_SUFFIXES = ("_file", "_files", "_path", "_paths", "_dir", "_directory", "_filename")
#: Files whose presence makes a loader fetch another model by name (PEFT adapters).
_REFUSED_MODEL_FILES = frozenset({"adapter_config.json"})


def _path_problem(value: str) -> str | None:
    if "\x00" in value or "\\" in value:
        return "has a forbidden character"
    if value.startswith(("/", "~")) or (len(value) >= 2 and value[1] == ":"):
        return "is an absolute path"
    if ".." in PurePosixPath(value).parts:
        return "climbs out of the model folder ('..')"
    return None


def _inside_file(root: Path, value: str, where: str) -> Path:
    """The regular file ``value`` names inside ``root``; ModelFormatError otherwise."""
    problem = _path_problem(value)
    if problem is None and not value.strip():
        problem = "is empty"
    if problem is None:
        target = root / value
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            problem = "points outside the model folder"
        elif target.is_symlink() or not target.is_file():
            problem = "is not a regular file inside the model folder"
    if problem is not None:
        # an absolute value is not echoed: it may be a server path the error would confirm
        shown = "an absolute path" if problem == "is an absolute path" else repr(value)
        raise ModelFormatError(
            f"{where} names the file {shown}, which {problem}",
            hint="files a model names must be regular files inside the uploaded folder, "
            "given relative to it; remove the key to let transformers find files by name",
        )
    return target


def _is_path_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in PATH_KEYS or lowered.endswith(PATH_KEY_SUFFIXES)


def _check_named_paths(node: Any, root: Path, source: str) -> None:
    """Refuse every path-valued entry of a parsed JSON file that could leave ``root``."""
    if isinstance(node, list):
        for item in node:
            _check_named_paths(item, root, source)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = f"{source} key {key!r}"
        if isinstance(value, str) and key.lower().endswith("name_or_path"):
            # a hub name, overwritten by the loader; refuse only what reads as a host path
            problem = _path_problem(value)
            if problem is not None:
                raise ModelFormatError(f"{where} holds a name that {problem}")
        elif isinstance(value, str) and _is_path_key(key):
            _inside_file(root, value, where)
        elif isinstance(value, list) and _is_path_key(key):
            for item in value:
                if isinstance(item, str):
                    _inside_file(root, item, where)
        _check_named_paths(value, root, source)


def _check_weight_map(index: Any, root: Path, source: str) -> None:
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{source} has no 'weight_map' object")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors"):
            raise ModelFormatError(
                f"{source} maps {tensor!r} to {shard!r}, which is not a .safetensors file"
            )
        _inside_file(root, shard, f"{source} weight_map entry {tensor!r}")


def tokenizer_file_arguments(model_dir: Path) -> dict[str, str]:
    """The path-valued keys of ``tokenizer_config.json`` as absolute paths inside the folder.

    A tokenizer opens such a value relative to the process's working directory, not the
    model folder; passing these as keyword arguments makes it open the checked file.
    """
    root = Path(model_dir).resolve()
    config_path = root / "tokenizer_config.json"
    if not config_path.is_file():
        return {}
    config = load_bounded_json(config_path.read_bytes(), what="tokenizer_config.json")
    if not isinstance(config, dict):
        raise ModelFormatError("tokenizer_config.json must hold a JSON object")
    return {
        key: str(_inside_file(root, value, f"tokenizer_config.json key {key!r}"))
        for key, value in config.items()
        if isinstance(value, str) and _is_path_key(key)
        and not key.lower().endswith("name_or_path")
    }


def validate_transformers_dir(model_dir: Path) -> None:
    """Check a transformers folder so that every file a loader can open is a checked regular
    file inside it.

    Refuses symlinks and special files anywhere, pickle files, PEFT adapter configs, JSON
    nested past :data:`MAX_JSON_DEPTH`, and every path a JSON file names (an index's
    ``weight_map``, tokenizer ``vocab``/``vocab_file``/``merges_file``/``tokenizer_file``,
    any ``*_file``/``*_path`` key) that is absolute, climbs out with ``..``, or is not a
    regular file inside the folder. Requires ``config.json`` (an object) and
    ``*.safetensors`` weights, each header checked against its file size.
    """
    model_dir = Path(model_dir)
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise ModelFormatError("transformers model is not a directory")
    root = model_dir.resolve()
    files: list[Path] = []
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(mode):
            raise ModelFormatError(f"transformers directory contains a symlink: {name}")
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise ModelFormatError(f"transformers directory holds a special file: {name}")
        if _is_pickle_name(path.name):
            raise _refuse_pickle(f"transformers directory file {name!r}")
        if path.name in _REFUSED_MODEL_FILES:
            raise ModelFormatError(
                f"{name}: adapter folders load a base model named elsewhere; upload the "
                "merged model instead"
            )
        files.append(path)
    documents: dict[str, Any] = {}
    for path in files:
        if path.suffix == ".json":
            name = path.relative_to(root).as_posix()
            if path.stat().st_size > MAX_MODEL_JSON_BYTES:
                raise LimitExceeded(f"{name} is larger than {MAX_MODEL_JSON_BYTES} bytes")
            documents[name] = load_bounded_json(path.read_bytes(), what=name)
            _check_named_paths(documents[name], root, name)
    if "config.json" not in documents:
        raise ModelFormatError("transformers directory has no config.json")
    if not isinstance(documents["config.json"], dict):
        raise ModelFormatError("config.json must hold a JSON object")
    for name, document in documents.items():
        if name.endswith(".safetensors.index.json"):
            _check_weight_map(document, root, name)
    if not any(p.suffix == ".safetensors" and p.parent == root for p in files):
        raise ModelFormatError("transformers directory has no *.safetensors weights")
    for path in files:
        if path.suffix == ".safetensors":
            validate_safetensors_header(path)


__all__ = [
    "MAX_JSON_DEPTH",
    "MODEL_FORMATS",
    "ModelFormat",
    "extract_transformers_tar",
    "sniff_and_validate",
    "tar_folder",
    "tokenizer_file_arguments",
    "validate_onnx",
    "validate_transformers_dir",
    "validate_safetensors_header",
]
