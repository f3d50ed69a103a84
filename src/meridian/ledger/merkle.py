"""Merkle trees over transaction hashes, as in RFC 6962 (Certificate Transparency).

Leaves and inner nodes are hashed with distinct prefixes (0x00, 0x01) so that a leaf
can never be passed off as an inner node. The tree splits at the largest power of
two below the leaf count. An inclusion proof is the list of sibling hashes from the
leaf up; anyone holding the block header (its ``data_hash``) can check it with
:func:`verify_inclusion` and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..crypto.hashing import Digest

EMPTY_ROOT = Digest(hashlib.sha256(b"").digest())


def compute_leaf_hash(data: bytes) -> Digest:
    return Digest(hashlib.sha256(b"\x00" + data).digest())


def _node(left: bytes, right: bytes) -> Digest:
    return Digest(hashlib.sha256(b"\x01" + left + right).digest())


def _split(n: int) -> int:
    """Largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def compute_root(leaves: Sequence[bytes]) -> Digest:
    """Merkle root of ``leaves`` (each leaf is raw data, e.g. a transaction hash)."""
    if not leaves:
        return EMPTY_ROOT
    level = [compute_leaf_hash(leaf) for leaf in leaves]
    return _root_of_hashes(level)


def _root_of_hashes(hashes: Sequence[Digest]) -> Digest:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return _node(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def compute_inclusion_proof(leaves: Sequence[bytes], index: int) -> list[Digest]:
    """Sibling hashes proving ``leaves[index]`` is in the tree, leaf level first."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} not in a tree of {len(leaves)}")
    return _proof([compute_leaf_hash(leaf) for leaf in leaves], index)


def _proof(hashes: Sequence[Digest], index: int) -> list[Digest]:
    if len(hashes) <= 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*_proof(hashes[:k], index), _root_of_hashes(hashes[k:])]
    return [*_proof(hashes[k:], index - k), _root_of_hashes(hashes[:k])]


def compute_root_and_proofs(leaves: Sequence[bytes]) -> tuple[Digest, list[list[Digest]]]:
    """The root and every leaf's inclusion proof, each tree node hashed once."""
    if not leaves:
        raise ValueError("a tree needs at least one leaf")
    return _root_and_proofs([compute_leaf_hash(leaf) for leaf in leaves])


def _root_and_proofs(hashes: Sequence[Digest]) -> tuple[Digest, list[list[Digest]]]:
    if len(hashes) == 1:
        return hashes[0], [[]]
    k = _split(len(hashes))
    left, left_proofs = _root_and_proofs(hashes[:k])
    right, right_proofs = _root_and_proofs(hashes[k:])
    proofs = [[*p, right] for p in left_proofs] + [[*p, left] for p in right_proofs]
    return _node(left, right), proofs


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``proof`` shows ``leaf`` at ``index`` of a ``size``-leaf tree with ``root``."""
    return compute_root_from_proof(leaf, index, size, proof) == root


def compute_root_from_proof(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes]
) -> Digest | None:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` of a ``size``-leaf
    tree, or None if the proof cannot belong to such a position."""
    if not 0 <= index < size:
        return None
    try:
        return _climb(compute_leaf_hash(leaf), index, size, list(proof))
    except ValueError:
        return None


def _climb(node: Digest, index: int, size: int, proof: list[bytes]) -> Digest:
    """Recompute the root from the leaf up, mirroring :func:`_proof`'s recursion."""
    if size == 1:
        if proof:
            raise ValueError("proof too long")
        return node
    if not proof:
        raise ValueError("proof too short")
    k = _split(size)
    sibling = proof.pop()
    if index < k:
        return _node(_climb(node, index, k, proof), sibling)
    return _node(sibling, _climb(node, index - k, size - k, proof))
