"""Merkle hashing and RFC 9162 proofs against a naive reference tree, plus every verifier branch."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.ledger.errors import (
    ProofIndexOutOfRange,
    ProofLengthMismatch,
    ProofMalformed,
    ProofSizesInvalid,
    RootMismatch,
)
from fedcredit.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    inclusion_proofs,
    leaf_hash,
    node_hash,
    root_of,
)
from fedcredit.ledger.proofs import verify_consistency, verify_inclusion
from tests.ledger import reference as ref

MAX_REF = 300
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(MAX_REF)]
TREE = MemoryTree(LEAVES)
REF = ref.Reference(LEAVES)
ROOTS = [REF.mth(0, n) for n in range(MAX_REF + 1)]


def test_hash_domain_separation() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == root_of([])


def test_roots_match_reference_for_every_size() -> None:
    cr = CompactRange()
    sink: list[tuple[int, int, bytes]] = []
    for n in range(MAX_REF + 1):
        assert cr.root() == ROOTS[n] == TREE.root(n), n
        if n < MAX_REF:
            cr.append(LEAVES[n], sink)


def test_inclusion_every_size_and_index() -> None:
    for n in range(1, MAX_REF + 1):
        bound = (n - 1).bit_length()
        for m in range(n):
            p = TREE.inclusion_proof(m, n)
            assert p == REF.path(m, 0, n), (m, n)
            assert len(p) <= bound
            verify_inclusion(m, n, LEAVES[m], p, ROOTS[n])


def test_consistency_every_pair() -> None:
    for n in range(1, MAX_REF + 1):
        bound = (n - 1).bit_length() + 1
        for m in range(1, n + 1):
            p = TREE.consistency_proof(m, n)
            assert p == (REF.proof(m, n) if m < n else []), (m, n)
            assert len(p) <= bound
            verify_consistency(m, n, p, ROOTS[m], ROOTS[n])
    verify_consistency(0, 10, [], EMPTY_ROOT, ROOTS[10])


BIG = MemoryTree(leaf_hash(i.to_bytes(4, "big")) for i in range(3000))
BIG_REF = ref.Reference(BIG.levels[0])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_inclusion_hypothesis(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, BIG.size))
    m = data.draw(st.integers(0, n - 1))
    p = BIG.inclusion_proof(m, n)
    root = BIG.root(n)
    assert root == BIG_REF.mth(0, n)
    assert p == BIG_REF.path(m, 0, n)
    verify_inclusion(m, n, BIG.levels[0][m], p, root)
    # any other leaf at that index fails
    with pytest.raises(RootMismatch):
        verify_inclusion(m, n, leaf_hash(b"other"), p, root)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistency_hypothesis(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, BIG.size))
    m = data.draw(st.integers(1, n))
    p = BIG.consistency_proof(m, n)
    verify_consistency(m, n, p, BIG.root(m), BIG.root(n))
    if m < n:
        assert p == BIG_REF.proof(m, n)
        with pytest.raises(RootMismatch):
            verify_consistency(m, n, p, BIG.root(m), leaf_hash(b"forged root"))


# --- every branch of the inclusion verifier -------------------------------------------


def _incl(m: int = 5, n: int = 13) -> tuple[int, int, bytes, list[bytes], bytes]:
    return m, n, LEAVES[m], TREE.inclusion_proof(m, n), ROOTS[n]


def test_inclusion_index_beyond_size() -> None:
    _m, n, leaf, p, root = _incl()
    with pytest.raises(ProofIndexOutOfRange):
        verify_inclusion(n, n, leaf, p, root)
    with pytest.raises(ProofIndexOutOfRange):
        verify_inclusion(-1, n, leaf, p, root)


def test_inclusion_wrong_size() -> None:
    # The size is authenticated together with the root by the checkpoint
    # signature; a size giving a different path shape is refused here.
    m, _n, leaf, p, root = _incl()
    for wrong in (6, 7, 32, 100):
        with pytest.raises(ProofLengthMismatch):
            verify_inclusion(m, wrong, leaf, p, root)
    # same shape, other tree: the other tree's root does not match
    with pytest.raises(RootMismatch):
        verify_inclusion(m, 14, leaf, p, ROOTS[14])


def test_inclusion_wrong_index() -> None:
    m, n, leaf, p, root = _incl()
    with pytest.raises(RootMismatch):
        verify_inclusion(m + 1, n, leaf, p, root)


def test_inclusion_short_and_long_proof() -> None:
    m, n, leaf, p, root = _incl()
    with pytest.raises(ProofLengthMismatch) as e:
        verify_inclusion(m, n, leaf, p[:-1], root)
    assert e.value.metadata == {"expected": str(len(p)), "got": str(len(p) - 1)}
    with pytest.raises(ProofLengthMismatch):
        verify_inclusion(m, n, leaf, [*p, p[0]], root)


def test_inclusion_swapped_and_flipped_hash() -> None:
    m, n, leaf, p, root = _incl()
    with pytest.raises(RootMismatch):
        verify_inclusion(m, n, leaf, [p[1], p[0], *p[2:]], root)
    bad = bytearray(p[2])
    bad[0] ^= 1
    with pytest.raises(RootMismatch):
        verify_inclusion(m, n, leaf, [*p[:2], bytes(bad), *p[3:]], root)


def test_inclusion_wrong_root_and_malformed_hash() -> None:
    m, n, leaf, p, root = _incl()
    with pytest.raises(RootMismatch):
        verify_inclusion(m, n, leaf, p, ROOTS[n - 1])
    with pytest.raises(ProofMalformed):
        verify_inclusion(m, n, leaf, [p[0][:31], *p[1:]], root)
    with pytest.raises(ProofMalformed):
        verify_inclusion(m, n, leaf[:16], p, root)


def test_single_leaf_tree() -> None:
    verify_inclusion(0, 1, LEAVES[0], [], LEAVES[0])
    with pytest.raises(RootMismatch):
        verify_inclusion(0, 1, LEAVES[1], [], LEAVES[0])


# --- every branch of the consistency verifier -----------------------------------------


def test_consistency_sizes_reversed_or_negative() -> None:
    with pytest.raises(ProofSizesInvalid):
        verify_consistency(8, 7, [], ROOTS[8], ROOTS[7])
    with pytest.raises(ProofSizesInvalid):
        verify_consistency(-1, 7, [], ROOTS[0], ROOTS[7])


def test_consistency_equal_sizes() -> None:
    verify_consistency(9, 9, [], ROOTS[9], ROOTS[9])
    with pytest.raises(RootMismatch):
        verify_consistency(9, 9, [], ROOTS[9], ROOTS[8])
    with pytest.raises(ProofLengthMismatch):
        verify_consistency(9, 9, [ROOTS[1]], ROOTS[9], ROOTS[9])


def test_consistency_from_empty_tree() -> None:
    with pytest.raises(ProofLengthMismatch):
        verify_consistency(0, 9, [ROOTS[1]], EMPTY_ROOT, ROOTS[9])


def test_consistency_empty_proof() -> None:
    with pytest.raises(ProofLengthMismatch):
        verify_consistency(6, 9, [], ROOTS[6], ROOTS[9])
    with pytest.raises(ProofLengthMismatch):
        verify_consistency(4, 9, [], ROOTS[4], ROOTS[9])  # power of two: no seed in proof


def test_consistency_short_long_swapped() -> None:
    p = TREE.consistency_proof(6, 13)
    with pytest.raises(ProofLengthMismatch):
        verify_consistency(6, 13, p[:-1], ROOTS[6], ROOTS[13])
    with pytest.raises(ProofLengthMismatch):
        verify_consistency(6, 13, [*p, p[0]], ROOTS[6], ROOTS[13])
    with pytest.raises(RootMismatch):
        verify_consistency(6, 13, [p[1], p[0], *p[2:]], ROOTS[6], ROOTS[13])


def test_consistency_wrong_old_or_new_root() -> None:
    p = TREE.consistency_proof(6, 13)
    with pytest.raises(RootMismatch) as e:
        verify_consistency(6, 13, p, ROOTS[5], ROOTS[13])
    assert e.value.metadata["which"] == "old"
    with pytest.raises(RootMismatch) as e:
        verify_consistency(6, 13, p, ROOTS[6], ROOTS[12])
    assert e.value.metadata["which"] == "new"


def test_consistency_wrong_sizes() -> None:
    p = TREE.consistency_proof(6, 13)
    with pytest.raises((RootMismatch, ProofLengthMismatch)):
        verify_consistency(7, 13, p, ROOTS[7], ROOTS[13])
    with pytest.raises((RootMismatch, ProofLengthMismatch)):
        verify_consistency(6, 14, p, ROOTS[6], ROOTS[14])


def test_consistency_malformed_hash() -> None:
    p = TREE.consistency_proof(6, 13)
    with pytest.raises(ProofMalformed):
        verify_consistency(6, 13, [p[0] + b"x", *p[1:]], ROOTS[6], ROOTS[13])


def test_compact_range_rejects_wrong_border() -> None:
    with pytest.raises(ValueError):
        CompactRange(5, [LEAVES[0]])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_inclusion_proofs_in_one_read_equal_each_alone(data: st.DataObject) -> None:
    """The batched proofs (the access page's) are exactly the single ones, for any indices
    of any tree (duplicates and unsorted included), whatever the read batch size."""
    n = data.draw(st.integers(1, MAX_REF))
    idx = data.draw(st.lists(st.integers(0, n - 1), max_size=40))
    batch = data.draw(st.integers(1, 50))
    reads: list[int] = []

    class Counting:
        def get_nodes(self, ids: Any) -> Any:
            ids = list(ids)
            reads.append(len(ids))
            return TREE.get_nodes(ids)

    got = inclusion_proofs(Counting(), idx, n, batch=batch)
    assert got == [REF.path(m, 0, n) for m in idx]
    assert all(r <= batch for r in reads)


def test_inclusion_proofs_name_a_missing_node() -> None:
    with pytest.raises(LookupError, match="missing"):
        inclusion_proofs(MemoryTree(LEAVES[:4]), [0, 5], 8)
