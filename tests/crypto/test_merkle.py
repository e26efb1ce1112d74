"""RFC 9162 Merkle hashing, inclusion and consistency proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.errors import ProofError
from crypto.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 128


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- an independent reference: the RFC 9162 definitions, transcribed literally -------


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0])
    k = ref_split(len(leaves))
    return sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_mth(leaves)]
    k = ref_split(n)
    if m <= k:
        return ref_subproof(m, leaves[:k], complete) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


LEAVES = [b"leaf-%d" % i for i in range(MAX_SIZE)]
LEAF_HASHES = [leaf_hash(data) for data in LEAVES]
# ref_mth over prefixes, computed once by the literal recursive definition.
REF_ROOTS = [ref_mth(LEAVES[:n]) for n in range(MAX_SIZE + 1)]


# --- known answers -----------------------------------------------------------------

# The RFC 6962 test inputs used by Certificate Transparency implementations, and the
# published tree heads for sizes 1..8.
CT_INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
CT_CONSISTENCY = {
    (1, 8): CT_INCLUSION_0_OF_8,
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == sha256(b"")
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_small_roots_by_direct_hashing() -> None:
    a, b, c, d, e = (sha256(b"\x00" + x) for x in (b"a", b"b", b"c", b"d", b"e"))

    def node(left: bytes, right: bytes) -> bytes:
        return sha256(b"\x01" + left + right)

    hashes = [leaf_hash(x) for x in (b"a", b"b", b"c", b"d", b"e")]
    assert hashes == [a, b, c, d, e]
    assert root_from_leaf_hashes(hashes[:1]) == a
    assert root_from_leaf_hashes(hashes[:2]) == node(a, b)
    assert root_from_leaf_hashes(hashes[:3]) == node(node(a, b), c)
    assert root_from_leaf_hashes(hashes[:4]) == node(node(a, b), node(c, d))
    assert root_from_leaf_hashes(hashes[:5]) == node(node(node(a, b), node(c, d)), e)
    # The second-preimage guard: a leaf never hashes like the node of two hashes.
    assert leaf_hash(a + b) != node(a, b)


def test_certificate_transparency_vectors() -> None:
    hashes = [leaf_hash(x) for x in CT_INPUTS]
    for n in range(1, 9):
        assert root_from_leaf_hashes(hashes[:n]).hex() == CT_ROOTS[n - 1]
    assert [p.hex() for p in inclusion_proof(0, hashes)] == CT_INCLUSION_0_OF_8
    for (old, new), expected in CT_CONSISTENCY.items():
        proof = consistency_proof(old, hashes[:new])
        assert [p.hex() for p in proof] == expected
        verify_consistency(
            old, new, bytes.fromhex(CT_ROOTS[old - 1]), bytes.fromhex(CT_ROOTS[new - 1]), proof
        )


# --- exhaustive: every size 1..128, every index and every old size --------------------


def test_roots_match_reference_for_all_sizes() -> None:
    for n in range(MAX_SIZE + 1):
        assert root_from_leaf_hashes(LEAF_HASHES[:n]) == REF_ROOTS[n], n


def test_inclusion_all_sizes_all_indices() -> None:
    for n in range(1, MAX_SIZE + 1):
        hashes = LEAF_HASHES[:n]
        root = REF_ROOTS[n]
        for index in range(n):
            proof = inclusion_proof(index, hashes)
            verify_inclusion(hashes[index], index, n, proof, root)
            assert proof == ref_path(index, LEAVES[:n]), (n, index)
            # Wrong position: another leaf's hash at this index must fail.
            other = hashes[(index + 1) % n]
            if n > 1:
                with pytest.raises(ProofError):
                    verify_inclusion(other, index, n, proof, root)


def test_consistency_all_sizes_all_old_sizes() -> None:
    for n in range(1, MAX_SIZE + 1):
        hashes = LEAF_HASHES[:n]
        for m in range(0, n + 1):
            proof = consistency_proof(m, hashes)
            verify_consistency(m, n, REF_ROOTS[m], REF_ROOTS[n], proof)
            if 0 < m < n:
                assert proof == ref_subproof(m, LEAVES[:n], True), (m, n)
            if 0 < m < n:
                # The old root of a different old size never verifies with this proof.
                wrong_old = REF_ROOTS[m - 1] if m > 1 else REF_ROOTS[m + 1]
                with pytest.raises(ProofError):
                    verify_consistency(m, n, wrong_old, REF_ROOTS[n], proof)


# --- properties under tampering --------------------------------------------------------


def _distinct_leaves(n: int, salt: bytes) -> list[bytes]:
    return [leaf_hash(salt + b"/%d" % i) for i in range(n)]


def _flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    return bytes(data)


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(
    n=st.integers(1, MAX_SIZE),
    data=st.data(),
    salt=st.binary(max_size=8),
)
def test_inclusion_round_trip_and_tampering(n: int, data: st.DataObject, salt: bytes) -> None:
    hashes = _distinct_leaves(n, salt)
    root = root_from_leaf_hashes(hashes)
    index = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(index, hashes)
    verify_inclusion(hashes[index], index, n, proof, root)

    mutation = data.draw(
        st.sampled_from(["leaf", "proof_bit", "drop", "extend", "index", "root", "swap"]),
        label="mutation",
    )
    leaf, idx, path, expected_root = hashes[index], index, list(proof), root
    if mutation == "leaf":
        leaf = _flip(leaf, data.draw(st.integers(0, 255)))
    elif mutation == "proof_bit":
        if not path:
            return
        position = data.draw(st.integers(0, len(path) - 1))
        path[position] = _flip(path[position], data.draw(st.integers(0, 255)))
    elif mutation == "drop":
        if not path:
            return
        del path[data.draw(st.integers(0, len(path) - 1))]
    elif mutation == "extend":
        path.insert(data.draw(st.integers(0, len(path))), hashes[0])
    elif mutation == "index":
        if n == 1:
            return
        idx = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    elif mutation == "root":
        expected_root = _flip(root, data.draw(st.integers(0, 255)))
    else:
        # A reordered log: swapping two leaves changes the root the proof must reach.
        if n == 1:
            return
        i = data.draw(st.integers(0, n - 1))
        j = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
        reordered = list(hashes)
        reordered[i], reordered[j] = reordered[j], reordered[i]
        expected_root = root_from_leaf_hashes(reordered)
        assert expected_root != root
    with pytest.raises(ProofError):
        verify_inclusion(leaf, idx, n, path, expected_root)


@PROPERTY_SETTINGS
@given(
    n=st.integers(1, MAX_SIZE),
    data=st.data(),
    salt=st.binary(max_size=8),
)
def test_consistency_round_trip_and_tampering(n: int, data: st.DataObject, salt: bytes) -> None:
    hashes = _distinct_leaves(n, salt)
    m = data.draw(st.integers(1, n), label="old_size")
    old_root, new_root = root_from_leaf_hashes(hashes[:m]), root_from_leaf_hashes(hashes)
    proof = consistency_proof(m, hashes)
    verify_consistency(m, n, old_root, new_root, proof)

    mutation = data.draw(
        st.sampled_from(["proof_bit", "drop", "extend", "old_leaf", "reorder", "new_root"]),
        label="mutation",
    )
    path, old, new = list(proof), old_root, new_root
    if mutation == "proof_bit":
        if not path:
            return
        position = data.draw(st.integers(0, len(path) - 1))
        path[position] = _flip(path[position], data.draw(st.integers(0, 255)))
    elif mutation == "drop":
        if not path:
            return
        del path[data.draw(st.integers(0, len(path) - 1))]
    elif mutation == "extend":
        path.insert(data.draw(st.integers(0, len(path))), hashes[-1])
    elif mutation == "old_leaf":
        # The new tree rewrote one leaf of the old history.
        changed = list(hashes)
        i = data.draw(st.integers(0, m - 1))
        changed[i] = _flip(changed[i], data.draw(st.integers(0, 255)))
        new = root_from_leaf_hashes(changed)
        path = consistency_proof(m, changed)
    elif mutation == "reorder":
        # The new tree reordered the log so that its first m leaves differ from the old.
        if n == 1:
            return
        i = data.draw(st.integers(0, m - 1))
        j = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
        reordered = list(hashes)
        reordered[i], reordered[j] = reordered[j], reordered[i]
        new = root_from_leaf_hashes(reordered)
        path = consistency_proof(m, reordered)
    else:
        new = _flip(new_root, data.draw(st.integers(0, 255)))
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, new, path)


def test_malformed_inputs_are_refused() -> None:
    hashes = LEAF_HASHES[:5]
    root = REF_ROOTS[5]
    proof = inclusion_proof(2, hashes)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[2], 5, 5, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[2], -1, 5, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[2][:31], 2, 5, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[2], 2, 5, [*proof[:-1], proof[-1] + b"\x00"], root)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[2], True, 5, proof, root)
    with pytest.raises(ProofError):
        verify_consistency(6, 5, root, root, [])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, REF_ROOTS[1], root, [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, root, REF_ROOTS[4], [])
    with pytest.raises(ProofError):
        verify_consistency(3, 5, REF_ROOTS[3], root, [])
    with pytest.raises(ProofError):
        inclusion_proof(5, hashes)
    with pytest.raises(ProofError):
        consistency_proof(6, hashes)
    # The empty old tree and equal sizes are trivially consistent with empty proofs.
    verify_consistency(0, 5, EMPTY_ROOT, root, [])
    verify_consistency(5, 5, root, root, [])
