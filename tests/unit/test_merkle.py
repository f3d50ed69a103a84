"""RFC 6962 Merkle trees: roots, and inclusion proofs checkable from the root alone."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.ledger.merkle import (
    EMPTY_ROOT,
    compute_inclusion_proof,
    compute_leaf_hash,
    compute_root,
    compute_root_and_proofs,
    compute_root_from_proof,
    verify_inclusion,
)

MAX_SIZE = 64


def _leaves(n: int) -> list[bytes]:
    """Distinct leaves, like transaction hashes."""
    return [hashlib.sha256(f"tx-{i}".encode()).digest() for i in range(n)]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[list[bytes], int]:
    size = draw(st.integers(1, MAX_SIZE))
    return _leaves(size), draw(st.integers(0, size - 1))


# ----------------------------------------------------------------------------- roots


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert compute_root([]) == EMPTY_ROOT == _h(b"")


def test_single_leaf_root_is_its_leaf_hash() -> None:
    assert compute_root([b"d0"]) == compute_leaf_hash(b"d0") == _h(b"\x00d0")


def test_three_leaf_root_matches_rfc6962_by_hand() -> None:
    d0, d1, d2 = b"alpha", b"beta", b"gamma"
    l0, l1, l2 = _h(b"\x00" + d0), _h(b"\x00" + d1), _h(b"\x00" + d2)
    left = _h(b"\x01" + l0 + l1)  # split at 2, the largest power of two below 3
    assert compute_root([d0, d1, d2]) == _h(b"\x01" + left + l2)
    assert compute_inclusion_proof([d0, d1, d2], 0) == [l1, l2]
    assert compute_inclusion_proof([d0, d1, d2], 1) == [l0, l2]
    assert compute_inclusion_proof([d0, d1, d2], 2) == [left]


def test_five_leaf_root_splits_at_four() -> None:
    leaves = _leaves(5)
    lh = [_h(b"\x00" + x) for x in leaves]
    four = _h(b"\x01" + _h(b"\x01" + lh[0] + lh[1]) + _h(b"\x01" + lh[2] + lh[3]))
    assert compute_root(leaves) == _h(b"\x01" + four + lh[4])


def test_leaf_cannot_pass_as_inner_node() -> None:
    l0, l1 = compute_leaf_hash(b"a"), compute_leaf_hash(b"b")
    two_leaf_root = compute_root([b"a", b"b"])
    # the concatenation of two leaf hashes, as a single leaf, has a different root
    assert compute_root([l0 + l1]) != two_leaf_root


@given(st.integers(1, MAX_SIZE), st.integers(0, MAX_SIZE - 1))
def test_root_changes_when_any_leaf_changes(size: int, index: int) -> None:
    leaves = _leaves(size)
    tampered = list(leaves)
    tampered[index % size] = b"tampered"
    assert compute_root(tampered) != compute_root(leaves)


def test_root_depends_on_leaf_order_and_count() -> None:
    leaves = _leaves(4)
    assert compute_root(leaves) != compute_root(leaves[::-1])
    assert compute_root(leaves) != compute_root(leaves[:3])
    assert compute_root(leaves) != compute_root([*leaves, leaves[-1]])


# ---------------------------------------------------------------------------- proofs


@pytest.mark.parametrize("size", range(1, MAX_SIZE + 1))
def test_every_leaf_of_every_size_has_a_verifying_proof(size: int) -> None:
    leaves = _leaves(size)
    root = compute_root(leaves)
    for index, leaf in enumerate(leaves):
        proof = compute_inclusion_proof(leaves, index)
        assert verify_inclusion(leaf, index, size, proof, root)


@pytest.mark.parametrize("size", range(1, MAX_SIZE + 1))
def test_all_proofs_at_once_match_one_by_one(size: int) -> None:
    leaves = _leaves(size)
    root, proofs = compute_root_and_proofs(leaves)
    assert root == compute_root(leaves)
    assert proofs == [compute_inclusion_proof(leaves, i) for i in range(size)]
    for index, leaf in enumerate(leaves):
        assert compute_root_from_proof(leaf, index, size, proofs[index]) == root
    assert compute_root_from_proof(leaves[0], size, size, proofs[0]) is None


@given(tree_and_index())
def test_proof_fails_for_a_different_leaf(case: tuple[list[bytes], int]) -> None:
    leaves, index = case
    proof = compute_inclusion_proof(leaves, index)
    root = compute_root(leaves)
    assert not verify_inclusion(b"forged", index, len(leaves), proof, root)
    other = leaves[(index + 1) % len(leaves)]
    if len(leaves) > 1:
        assert not verify_inclusion(other, index, len(leaves), proof, root)


@given(tree_and_index(), st.integers(0, MAX_SIZE))
def test_proof_fails_for_a_different_index(case: tuple[list[bytes], int], other: int) -> None:
    leaves, index = case
    if other == index:
        return
    proof = compute_inclusion_proof(leaves, index)
    assert not verify_inclusion(leaves[index], other, len(leaves), proof, compute_root(leaves))


@given(tree_and_index(), st.integers(0, 2 * MAX_SIZE))
def test_proof_fails_for_a_size_with_a_different_path(
    case: tuple[list[bytes], int], other_size: int
) -> None:
    leaves, index = case
    proof = compute_inclusion_proof(leaves, index)
    root = compute_root(leaves)
    if other_size > index and len(compute_inclusion_proof(_leaves(other_size), index)) == len(
        proof
    ):
        return  # same path shape: the root, not the size, is what the proof binds
    assert not verify_inclusion(leaves[index], index, other_size, proof, root)


def test_proof_fails_for_a_wrong_size_example() -> None:
    leaves = _leaves(5)
    proof = compute_inclusion_proof(leaves, 4)
    root = compute_root(leaves)
    assert verify_inclusion(leaves[4], 4, 5, proof, root)
    assert not verify_inclusion(leaves[4], 4, 6, proof, root)
    assert not verify_inclusion(leaves[4], 4, 4, proof, root)
    assert not verify_inclusion(leaves[4], 4, 9, proof, root)


@given(tree_and_index(), st.integers(0, 31))
def test_proof_fails_for_a_different_root(case: tuple[list[bytes], int], byte: int) -> None:
    leaves, index = case
    proof = compute_inclusion_proof(leaves, index)
    root = bytearray(compute_root(leaves))
    root[byte] ^= 0x01
    assert not verify_inclusion(leaves[index], index, len(leaves), proof, bytes(root))
    assert not verify_inclusion(leaves[index], index, len(leaves), proof, compute_root(leaves[1:]))


@given(tree_and_index())
def test_proof_fails_when_truncated_or_extended(case: tuple[list[bytes], int]) -> None:
    leaves, index = case
    proof = compute_inclusion_proof(leaves, index)
    root = compute_root(leaves)
    size = len(leaves)
    for cut in range(len(proof)):
        assert not verify_inclusion(leaves[index], index, size, proof[:cut], root)
        assert not verify_inclusion(leaves[index], index, size, proof[cut + 1 :], root)
    assert not verify_inclusion(leaves[index], index, size, [*proof, root], root)
    assert not verify_inclusion(leaves[index], index, size, [root, *proof], root)


@given(tree_and_index(), st.data())
def test_proof_fails_when_a_sibling_is_altered(
    case: tuple[list[bytes], int], data: st.DataObject
) -> None:
    leaves, index = case
    proof = compute_inclusion_proof(leaves, index)
    if not proof:
        return
    at = data.draw(st.integers(0, len(proof) - 1))
    altered = list(proof)
    altered[at] = bytes(b ^ 0xFF for b in altered[at])
    assert not verify_inclusion(leaves[index], index, len(leaves), altered, compute_root(leaves))


def test_single_leaf_tree_has_empty_proof() -> None:
    assert compute_inclusion_proof([b"only"], 0) == []
    root = compute_root([b"only"])
    assert verify_inclusion(b"only", 0, 1, [], root)
    assert not verify_inclusion(b"only", 0, 1, [root], root)


def test_invalid_proof_index_out_of_range() -> None:
    with pytest.raises(IndexError):
        compute_inclusion_proof(_leaves(3), 3)
    with pytest.raises(IndexError):
        compute_inclusion_proof(_leaves(3), -1)
    with pytest.raises(IndexError):
        compute_inclusion_proof([], 0)


@pytest.mark.parametrize(("index", "size"), [(-1, 3), (3, 3), (0, 0), (5, 2)])
def test_invalid_verify_index_outside_the_tree(index: int, size: int) -> None:
    leaves = _leaves(3)
    proof = compute_inclusion_proof(leaves, 0)
    assert not verify_inclusion(leaves[0], index, size, proof, compute_root(leaves))
