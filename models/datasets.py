"""Labelled arrays read from ``.npz`` files without unpickling anything.

::

    data = load_npz_dataset(Path("digits.npz"), require_labels=True)
    data.x.shape, data.y.shape      # (n, ...), (n,)

Keys: ``"x"`` (numeric, finite; or a 1-d string array of texts) and optional ``"y"``
(1-d non-negative integer labels of the same length). Other keys are ignored.
"""

from __future__ import annotations

import math
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import DatasetError, LimitExceeded

#: Default bound on the bytes ``x`` and ``y`` decompress to (the appliance passes its setting).
DEFAULT_MAX_ARRAY_BYTES = 512 * 1024 * 1024
#: Bound on the decompressed size relative to ``max_bytes`` (the upload limit) as well.
DECOMPRESSION_FACTOR = 16
#: Default bound on the entries of an ``.npz`` archive.
DEFAULT_MAX_ENTRIES = 1000


@dataclass(frozen=True)
class LabelledArray:
    """Inputs ``x`` (``[n, ...]``) and optional integer labels ``y`` (``[n]``)."""

    x: np.ndarray
    y: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    def __post_init__(self) -> None:
        _validate(self.x, self.y)


def _validate(x: np.ndarray, y: np.ndarray | None) -> None:
    if not isinstance(x, np.ndarray):
        raise DatasetError(f"'x' must be a numpy array, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise DatasetError(f"'x' must hold at least one example, got shape {x.shape}")
    if x.dtype.kind in "US":
        if x.ndim != 1:
            raise DatasetError(f"text 'x' must be 1-d, got shape {x.shape}")
    elif x.dtype.kind in "iuf":
        if x.size == 0:
            raise DatasetError(f"'x' has no features, shape {x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise DatasetError(f"'x' holds {bad} non-finite values (NaN or inf)")
    else:
        raise DatasetError(f"'x' must be numeric (int or float) or text, got dtype {x.dtype}")
    if y is None:
        return
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        kind = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
        raise DatasetError(f"'y' must be an integer array of class labels, got {kind}")
    if y.ndim != 1:
        raise DatasetError(f"'y' must be 1-d, got shape {y.shape}")
    if len(y) != x.shape[0]:
        raise DatasetError(f"'y' has {len(y)} labels but 'x' has {x.shape[0]} examples")
    if y.dtype.kind == "i" and (y < 0).any():
        raise DatasetError("'y' holds negative labels; labels must be 0..C-1")


#: Generous bytes per central-directory record (46 fixed, the name, extras) for the size bound.
_ZIP_RECORD_BYTES = 400
_EOCD = struct.Struct("<4s4H2LH")


def check_zip_directory(path: Path, max_entries: int) -> None:
    """Refuse a zip whose central directory lists more than ``max_entries`` entries, from
    its end record alone: ``zipfile`` holds one object per entry in memory once opened.

    The declared count and the directory's size are both bounded (the reader walks the
    directory by size, whatever count the end record claims). Raises :class:`LimitExceeded`.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - _EOCD.size - 0xFFFF))
        tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise DatasetError("dataset is not an .npz archive (no zip end of central directory record)")
    _, _, _, _, entries, directory_bytes, _, _ = _EOCD.unpack_from(tail, at)
    # 0xFFFF and 0xFFFFFFFF mean "see the zip64 record": more than any limit below them
    if entries > max_entries or directory_bytes > max_entries * _ZIP_RECORD_BYTES:
        raise LimitExceeded(f"zip archive holds more than {max_entries} entries")


def load_npz_dataset(
    path: Path,
    *,
    max_bytes: int | None = None,
    require_labels: bool = False,
    max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> LabelledArray:
    """Read and validate ``x`` and optional ``y`` from an ``.npz`` (``allow_pickle=False``).

    Before anything is decompressed, the archive's entry count is checked against
    ``max_entries`` and each ``.npy`` header against its member's size and the
    ``max_array_bytes`` budget shared by ``x`` and ``y``, itself at most
    ``DECOMPRESSION_FACTOR * max_bytes`` (:class:`LimitExceeded`). Raises
    :class:`DatasetError` for a missing/oversized/corrupt file, object arrays, a header
    that does not match its data, non-numeric or non-finite ``x``, or bad labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path.name!r} does not exist")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DatasetError(f"dataset file is {size} bytes, over the limit of {max_bytes}")
    check_zip_directory(path, max_entries)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > max_entries:
                raise LimitExceeded(f"dataset archive holds more than {max_entries} entries")
            members = {info.filename: info for info in infos}
            if "x.npy" not in members:
                raise DatasetError(f"dataset has no 'x' array; keys: {sorted(members)[:20]}")
            if require_labels and "y.npy" not in members:
                raise DatasetError("dataset has no 'y' labels but this evaluation needs them")
            budget = max_array_bytes
            if max_bytes is not None:
                budget = min(budget, DECOMPRESSION_FACTOR * max_bytes)
            arrays: dict[str, np.ndarray] = {}
            for key in ("x", "y"):
                info = members.get(f"{key}.npy")
                if info is None:
                    continue
                budget -= _check_npy_header(archive, info, key, budget)
                with archive.open(info) as handle:
                    arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
    except (DatasetError, LimitExceeded):
        raise
    except ValueError as exc:
        raise DatasetError(
            f"dataset arrays cannot be read without unpickling (object arrays?): {exc}"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"dataset is not an .npz archive or is corrupt: {exc}") from None
    return LabelledArray(x=arrays["x"], y=arrays.get("y"))


def _check_npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                      budget: int) -> int:
    """Read only the ``.npy`` header of one member; return its data size in bytes once the
    declared shape and dtype are known to match the member's size and fit ``budget``."""
    with archive.open(info) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise DatasetError(f"'{key}' has an unsupported .npy version {version}")
        except (ValueError, SyntaxError, EOFError, TypeError, RecursionError,
                tokenize.TokenError) as exc:  # numpy tokenizes the header before literal_eval
            raise DatasetError(f"'{key}' has a corrupt .npy header: {exc}") from None
        header_bytes = handle.tell()
    if dtype.hasobject:
        raise DatasetError(f"'{key}' is an object array; it could only be read by unpickling")
    data_bytes = math.prod(shape) * dtype.itemsize
    if data_bytes > budget:
        raise LimitExceeded(
            f"'{key}' declares shape {shape} of {dtype}: it expands to {data_bytes} bytes, over "
            f"the {budget} bytes left of the dataset limit"
        )
    if header_bytes + data_bytes != info.file_size:
        raise DatasetError(
            f"'{key}' declares shape {shape} of {dtype} ({data_bytes} bytes) but its member "
            f"holds {info.file_size - header_bytes} bytes of data"
        )
    return data_bytes


__all__ = ["LabelledArray", "load_npz_dataset"]
