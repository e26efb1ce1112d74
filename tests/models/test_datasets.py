"""Loading labelled .npz datasets without unpickling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import load_npz_dataset
from models.errors import DatasetError, LimitExceeded


def test_valid_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.ones((4, 3), np.float32), y=np.array([0, 1, 1, 0]), extra=1)
    data = load_npz_dataset(path, require_labels=True, max_bytes=1 << 20)
    assert data.n == 4 and data.x.shape == (4, 3) and data.y is not None
    np.savez(path, x=np.array(["one text", "two"]))
    assert load_npz_dataset(path).y is None


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x": np.array([[1.0, np.nan]])}, "non-finite"),
        ({"x": np.zeros((0, 3))}, "at least one"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, "2 labels"),
        ({"x": np.zeros((2, 2)), "y": np.array([0.0, 1.0])}, "integer"),
        ({"x": np.zeros((2, 2)), "y": np.array([[0], [1]])}, "1-d"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, "negative"),
        ({"x": np.zeros((2, 2), dtype=complex)}, "numeric"),
        ({"z": np.zeros(3)}, "no 'x'"),
    ],
)
def test_invalid_datasets(tmp_path: Path, arrays: dict, fragment: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=fragment):
        load_npz_dataset(path)


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DatasetError, match="unpickling"):
        load_npz_dataset(path)


def test_limits_and_corrupt_files(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((1000, 100)))
    with pytest.raises(DatasetError, match="over the limit"):
        load_npz_dataset(path, max_bytes=100)
    with pytest.raises(LimitExceeded, match="expands"):
        load_npz_dataset(path, max_bytes=path.stat().st_size)  # zeros compress > 16x
    with pytest.raises(DatasetError, match="needs them"):
        load_npz_dataset(path, require_labels=True)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not an .npz"):
        load_npz_dataset(tmp_path / "bad.npz")
    with pytest.raises(DatasetError, match="does not exist"):
        load_npz_dataset(tmp_path / "missing.npz")
