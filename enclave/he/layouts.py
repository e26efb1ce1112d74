"""Packings of a batch into CKKS plaintexts: ``RowLayout`` (slots) and ``CoeffLayout``
(polynomial coefficients); see :mod:`enclave.he` for the layouts' arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CoeffLayout", "RowLayout"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, kw_only=True)
class CoeffLayout:
    """Coefficient packing of an (n × m) batch for products with (m × K) and (n × K) operands.

    ``rows × cols`` is one block of the batch; ``row_blocks`` (S) × ``col_blocks`` (F) blocks
    cover ``batch × dim``. Valid when ``rows*cols*outputs + cols - 1 <= degree`` (no product
    term wraps onto an output coefficient).
    """

    batch: int
    dim: int
    outputs: int
    degree: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("batch", "dim", "outputs", "degree", "rows", "cols"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"coefficient layout: {name} must be >= 1")
        if self.rows * self.cols * self.outputs + self.cols - 1 > self.degree:
            raise ValueError("coefficient layout: rows*cols*outputs + cols - 1 exceeds the degree")
        if self.rows > self.batch or self.cols > self.dim:
            raise ValueError("coefficient layout: a block is larger than the batch")

    @classmethod
    def plan(cls, *, batch: int, dim: int, outputs: int, degree: int) -> CoeffLayout:
        """The blocking with the fewest ciphertexts per step (S + F), then fewest products."""
        best: tuple[tuple[int, int], CoeffLayout] | None = None
        for f in range(1, dim + 1):
            cols = _ceil_div(dim, f)
            if _ceil_div(dim, cols) != f:
                continue
            rows_max = (degree - cols + 1) // (cols * outputs)
            if rows_max < 1:
                continue
            s = _ceil_div(batch, rows_max)
            rows = _ceil_div(batch, s)
            key = (s + f, s * f)
            if best is None or key < best[0]:
                best = (key, cls(batch=batch, dim=dim, outputs=outputs, degree=degree, rows=rows, cols=cols))
        if best is None:
            raise ValueError(f"{outputs} outputs do not fit a degree-{degree} coefficient layout")
        return best[1]

    @property
    def row_blocks(self) -> int:
        """S: sample blocks per batch (error ciphertexts, forward outputs)."""
        return _ceil_div(self.batch, self.rows)

    @property
    def col_blocks(self) -> int:
        """F: feature blocks per batch (weight ciphertexts, gradient outputs)."""
        return _ceil_div(self.dim, self.cols)

    def pack_x(self, rows: np.ndarray) -> list[np.ndarray]:
        """A batch (count <= batch, dim) → S*F coefficient vectors, block (s, f) at s*F + f."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim or not 0 < x.shape[0] <= self.batch:
            raise ValueError(f"rows must be (<= {self.batch}, {self.dim}), got {x.shape}")
        full = np.zeros((self.row_blocks * self.rows, self.col_blocks * self.cols))
        full[: x.shape[0], : self.dim] = x
        stride = self.cols * self.outputs
        out = []
        for s in range(self.row_blocks):
            for f in range(self.col_blocks):
                block = full[s * self.rows : (s + 1) * self.rows, f * self.cols : (f + 1) * self.cols]
                vec = np.zeros(self.degree)
                vec[: self.rows * stride].reshape(self.rows, stride)[:, : self.cols] = block
                out.append(vec)
        return out

    def pack_w(self, weights: np.ndarray) -> list[np.ndarray]:
        """Weights (dim, k <= outputs) → F vectors; W[j, c] at c*cols + cols-1-j of block f."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != self.dim or not 0 < w.shape[1] <= self.outputs:
            raise ValueError(f"weights must be ({self.dim}, <= {self.outputs}), got {w.shape}")
        full = np.zeros((self.col_blocks * self.cols, w.shape[1]))
        full[: self.dim] = w
        out = []
        for f in range(self.col_blocks):
            block = full[f * self.cols : (f + 1) * self.cols]  # (cols, k)
            vec = np.zeros(self.degree)
            vec[: w.shape[1] * self.cols] = block[::-1].T.reshape(-1)
            out.append(vec)
        return out

    def unpack_z(self, vectors: list[np.ndarray], count: int, k: int) -> np.ndarray:
        """S decrypted forward products → pre-activations (count, k)."""
        if len(vectors) != self.row_blocks or not 0 < count <= self.batch or not 0 < k <= self.outputs:
            raise ValueError("forward products do not match the layout")
        stride = self.cols * self.outputs
        blocks = [
            np.asarray(v)[: self.rows * stride].reshape(self.rows, self.outputs, self.cols)[:, :k, self.cols - 1]
            for v in vectors
        ]
        z: np.ndarray = np.concatenate(blocks, axis=0)[:count]
        return z

    def pack_e(self, errors: np.ndarray) -> list[np.ndarray]:
        """Errors (count, k) → S vectors; E[i, c] at -i*cols*K + c*cols (negacyclic)."""
        e = np.asarray(errors, dtype=np.float64)
        if e.ndim != 2 or not 0 < e.shape[0] <= self.batch or not 0 < e.shape[1] <= self.outputs:
            raise ValueError("errors do not match the layout")
        full = np.zeros((self.row_blocks * self.rows, e.shape[1]))
        full[: e.shape[0]] = e
        stride = self.cols * self.outputs
        cols_at = np.arange(e.shape[1]) * self.cols
        out = []
        for s in range(self.row_blocks):
            vec = np.zeros(self.degree)
            vec[cols_at] = full[s * self.rows]
            for i in range(1, self.rows):
                vec[self.degree - i * stride + cols_at] = -full[s * self.rows + i]
            out.append(vec)
        return out

    def unpack_g(self, vectors: list[np.ndarray], k: int) -> np.ndarray:
        """F decrypted gradient products → X^T·E (dim, k)."""
        if len(vectors) != self.col_blocks or not 0 < k <= self.outputs:
            raise ValueError("gradient products do not match the layout")
        blocks = [np.asarray(v)[: k * self.cols].reshape(k, self.cols).T for v in vectors]
        g: np.ndarray = np.concatenate(blocks, axis=0)[: self.dim]
        return g


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True, kw_only=True)
class RowLayout:
    """Row-major packing of up to ``capacity`` samples of ``dim`` features per ciphertext."""

    dim: int
    dim_pad: int
    slots: int

    @classmethod
    def for_dim(cls, dim: int, *, slots: int) -> RowLayout:
        """Layout for ``dim`` features in a ciphertext of ``slots`` slots (powers of two)."""
        if dim < 1 or _next_pow2(dim) > slots:
            raise ValueError(f"dimension {dim} does not fit in {slots} slots")
        return cls(dim=dim, dim_pad=_next_pow2(dim), slots=slots)

    @property
    def capacity(self) -> int:
        """Samples per ciphertext."""
        return self.slots // self.dim_pad

    def pack_rows(self, rows: np.ndarray) -> np.ndarray:
        """rows (B, dim) → slot vector with row i at [i*dim_pad, i*dim_pad+dim)."""
        b = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.dim or b > self.capacity:
            raise ValueError(f"rows must be (<= {self.capacity}, {self.dim}), got {rows.shape}")
        out = np.zeros((self.capacity, self.dim_pad))
        out[:b, : self.dim] = rows
        return out.reshape(-1)

    def tile_column(self, column: np.ndarray) -> np.ndarray:
        """A weight column (dim,) repeated for every sample position."""
        out = np.zeros((self.capacity, self.dim_pad))
        out[:, : self.dim] = column[None, :]
        return out.reshape(-1)

    def expand_per_sample(self, values: np.ndarray) -> np.ndarray:
        """Per-sample scalars (B,) spread over each sample's feature slots."""
        out = np.zeros((self.capacity, self.dim_pad))
        out[: values.shape[0], : self.dim] = values[:, None]
        return out.reshape(-1)

    def row_sums(self, vector: np.ndarray, count: int) -> np.ndarray:
        """Sum of each sample's slots, for i < count (the reduction done in plaintext)."""
        blocks = np.asarray(vector[: self.slots]).reshape(self.capacity, self.dim_pad)
        sums: np.ndarray = blocks[:count].sum(axis=1)
        return sums

    def sample_sums(self, vector: np.ndarray) -> np.ndarray:
        """Sum over the samples of each feature slot j < dim (the reduction in plaintext)."""
        blocks = np.asarray(vector[: self.slots]).reshape(self.capacity, self.dim_pad)
        sums: np.ndarray = blocks.sum(axis=0)[: self.dim]
        return sums

    def block_heads(self, vector: np.ndarray, count: int) -> np.ndarray:
        """Slot i*dim_pad for i < count (where a block sum lands)."""
        return np.asarray(vector[: self.slots]).reshape(self.capacity, self.dim_pad)[:count, 0]

    def column_sums(self, vector: np.ndarray) -> np.ndarray:
        """Slots [0, dim) (where a stride sum over samples lands)."""
        return np.asarray(vector[: self.dim])
