"""Merkle tree hashing, inclusion and consistency proofs as in RFC 9162 section 2.1.

    hashes = [leaf_hash(entry) for entry in entries]
    root = root_from_leaf_hashes(hashes)
    verify_inclusion(hashes[3], 3, len(hashes), inclusion_proof(3, hashes), root)

Leaves hash as ``SHA-256(0x00 || data)``, interior nodes as ``SHA-256(0x01 || left ||
right)``, and the empty tree as ``SHA-256("")``. Proof generation is written once against
a *subtree oracle* (a function returning the hash of the complete, aligned subtree
``[index * 2**level, (index + 1) * 2**level)``), so the in-memory functions here and the
SQLite-backed :class:`crypto.translog.TransparencyLog` share the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from crypto.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SubtreeOracle",
    "consistency_proof",
    "consistency_proof_from_oracle",
    "inclusion_proof",
    "inclusion_proof_from_oracle",
    "leaf_hash",
    "node_hash",
    "range_hash_from_oracle",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``oracle(level, index)`` returns the hash of leaves ``[index << level, (index + 1) << level)``.
SubtreeOracle = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || data)``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"leaf data must be bytes, got {type(data).__name__}")
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for position, value in enumerate(hashes):
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise ProofError(f"{what}[{position}] is not a {HASH_SIZE}-byte hash")


def range_hash_from_oracle(oracle: SubtreeOracle, start: int, end: int) -> bytes:
    """Return MTH of leaves ``[start, end)`` as RFC 9162 splits it, from aligned subtrees.

    ``start`` must be a multiple of the largest power of two not above ``end - start``
    (true of every range the RFC's recursion visits). Uses O(log n) oracle calls.
    """
    size = end - start
    if size <= 0:
        raise ValueError("range must be non-empty")
    if size & (size - 1) == 0 and start % size == 0:
        level = size.bit_length() - 1
        return oracle(level, start >> level)
    split = _largest_power_of_two_below(size)
    return node_hash(
        range_hash_from_oracle(oracle, start, start + split),
        range_hash_from_oracle(oracle, start + split, end),
    )


def inclusion_proof_from_oracle(oracle: SubtreeOracle, index: int, tree_size: int) -> list[bytes]:
    """Return the RFC 9162 inclusion path of leaf ``index`` in the tree of ``tree_size``."""
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    path: list[bytes] = []
    start, end, offset = 0, tree_size, index
    # Walk down from the root; the path lists siblings from the leaf upwards.
    while end - start > 1:
        split = _largest_power_of_two_below(end - start)
        if offset < split:
            path.append(range_hash_from_oracle(oracle, start + split, end))
            end = start + split
        else:
            path.append(range_hash_from_oracle(oracle, start, start + split))
            start += split
            offset -= split
    path.reverse()
    return path


def consistency_proof_from_oracle(
    oracle: SubtreeOracle, old_size: int, new_size: int
) -> list[bytes]:
    """Return the RFC 9162 consistency proof between tree sizes ``old_size <= new_size``.

    The proof is empty when ``old_size`` is 0 or equals ``new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"cannot prove consistency from size {old_size} to size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    # Iterative SUBPROOF(m, D[start:end], complete); elements are collected top-down.
    while m != end - start:
        size = end - start
        split = _largest_power_of_two_below(size)
        if m <= split:
            proof.append(range_hash_from_oracle(oracle, start + split, end))
            end = start + split
        else:
            proof.append(range_hash_from_oracle(oracle, start, start + split))
            start += split
            m -= split
            complete = False
    if not complete:
        proof.append(range_hash_from_oracle(oracle, start, end))
    proof.reverse()
    return proof


def _list_oracle(leaf_hashes: Sequence[bytes]) -> SubtreeOracle:
    cache: dict[tuple[int, int], bytes] = {}

    def oracle(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hashes[index]
        key = (level, index)
        cached = cache.get(key)
        if cached is None:
            cached = node_hash(oracle(level - 1, 2 * index), oracle(level - 1, 2 * index + 1))
            cache[key] = cached
        return cached

    return oracle


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (root) of a list of leaf hashes."""
    _check_hashes(hashes, "leaf_hashes")
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    # Pairing left to right and promoting an odd last node unchanged gives the RFC tree.
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the inclusion path of leaf ``index`` in the tree over ``leaf_hashes``."""
    _check_hashes(leaf_hashes, "leaf_hashes")
    return inclusion_proof_from_oracle(_list_oracle(leaf_hashes), index, len(leaf_hashes))


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the proof that the first ``old_size`` leaves are a prefix of ``leaf_hashes``."""
    _check_hashes(leaf_hashes, "leaf_hashes")
    return consistency_proof_from_oracle(_list_oracle(leaf_hashes), old_size, len(leaf_hashes))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree ``(tree_size, root)``.

    Follows RFC 9162 section 2.1.3.2.

    Raises:
        ProofError: the proof is malformed or does not lead to ``root``.
    """
    if not _is_int(index) or not _is_int(tree_size):
        raise ProofError("leaf index and tree size must be integers")
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    _check_hashes([leaf_hash], "leaf_hash")
    _check_hashes([root], "root")
    _check_hashes(proof, "inclusion proof")
    fn, sn = index, tree_size - 1
    result = leaf_hash
    for sibling in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof is too long for leaf {index} in a tree of size {tree_size}"
            )
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof is too short for leaf {index} in a tree of size {tree_size}"
        )
    if result != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not lead to the root of the tree of size "
            f"{tree_size}: the entry, the proof or the root was altered"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(old_size, old_root)`` is a prefix of ``(new_size, new_root)``.

    Follows RFC 9162 section 2.1.4.2, extended to the trivial cases: equal sizes need an
    empty proof and equal roots; an empty old tree needs an empty proof and the empty root.

    Raises:
        ProofError: the proof is malformed or the trees are not consistent.
    """
    if not _is_int(old_size) or not _is_int(new_size):
        raise ProofError("tree sizes must be integers")
    if not 0 <= old_size <= new_size:
        raise ProofError(
            f"old tree size {old_size} must lie between 0 and the new tree size {new_size}"
        )
    _check_hashes([old_root], "old_root")
    _check_hashes([new_root], "new_root")
    _check_hashes(proof, "consistency proof")
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError(f"consistency proof from size {old_size} to {new_size} must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of an empty tree must be SHA-256 of the empty string")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if not proof:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for element in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from size {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(element, fr)
            sr = node_hash(element, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} is too short")
    if fr != old_root:
        raise ProofError(
            f"consistency proof does not reproduce the old root at size {old_size}: "
            "the log was rewritten or the old checkpoint is not from this log"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof does not reproduce the new root at size {new_size}: "
            "the new tree does not extend the old one"
        )
