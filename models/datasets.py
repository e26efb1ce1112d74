"""Labelled arrays read from ``.npz`` files without unpickling anything.

::

    data = load_npz_dataset(Path("digits.npz"), require_labels=True)
    data.x.shape, data.y.shape      # (n, ...), (n,)

Keys: ``"x"`` (numeric, finite; or a 1-d string array of texts) and optional ``"y"``
(1-d non-negative integer labels of the same length). Other keys are ignored.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import DatasetError

#: Default bound on the decompressed size relative to ``max_bytes`` (zip bombs).
DECOMPRESSION_FACTOR = 16


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


def load_npz_dataset(
    path: Path,
    *,
    max_bytes: int | None = None,
    require_labels: bool = False,
    max_uncompressed_bytes: int | None = None,
) -> LabelledArray:
    """Read and validate ``x`` and optional ``y`` from an ``.npz`` (``allow_pickle=False``).

    Raises :class:`DatasetError` for a missing/oversized/corrupt file, object arrays,
    non-numeric or non-finite ``x``, or bad labels. ``max_uncompressed_bytes`` defaults
    to ``16 * max_bytes``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DatasetError(f"dataset file is {size} bytes, over the limit of {max_bytes}")
    if max_uncompressed_bytes is None and max_bytes is not None:
        max_uncompressed_bytes = DECOMPRESSION_FACTOR * max_bytes
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info.file_size for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"dataset is not an .npz archive: {exc}") from exc
    wanted = [k for k in ("x.npy", "y.npy") if k in members]
    if max_uncompressed_bytes is not None:
        total = sum(members[k] for k in wanted)
        if total > max_uncompressed_bytes:
            raise DatasetError(
                f"dataset expands to {total} bytes, over the limit of {max_uncompressed_bytes}"
            )
    if "x.npy" not in members:
        raise DatasetError(f"dataset has no 'x' array; keys: {sorted(members)}")
    if require_labels and "y.npy" not in members:
        raise DatasetError("dataset has no 'y' labels but this evaluation needs them")
    try:
        with np.load(path, allow_pickle=False) as archive:
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except ValueError as exc:
        raise DatasetError(
            f"dataset arrays cannot be read without unpickling (object arrays?): {exc}"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"dataset archive is corrupt: {exc}") from exc
    return LabelledArray(x=x, y=y)


__all__ = ["LabelledArray", "load_npz_dataset"]
