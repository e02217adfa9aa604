"""RFC 9162 Merkle tree hashing and proof generation.

Hashing (RFC 9162 §2.1.1): a leaf hash is SHA-256(0x00 ‖ entry), an interior
node SHA-256(0x01 ‖ left ‖ right), the empty tree hashes to SHA-256("").

Storage model: a *node* ``(level, index)`` is the hash of the perfect subtree
over leaves ``[index·2^level, (index+1)·2^level)``; level 0 nodes are the leaf
hashes. Only perfect subtrees are ever stored, so a stored node never changes
when the log grows. Every subtree an RFC 9162 proof needs is either perfect or
on the right border, and a border subtree is the right fold of at most
⌈log2 n⌉ perfect ones, so any proof needs O(log n) stored nodes — fetched in
one round trip through :class:`NodeReader`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

HASH_SIZE = 32
NodeId = tuple[int, int]  # (level, index)

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d}) = SHA-256(0x00 ‖ d)."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x01 ‖ MTH(left) ‖ MTH(right))."""
    return _sha256(_NODE + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two k with k < n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_cover(lo: int, hi: int) -> list[NodeId]:
    """The perfect subtrees that make up the leaf range [lo, hi), left to right.

    ``lo`` must be aligned so that the range is a subtree of the RFC 9162 tree
    (true for every range a proof asks for); sizes then strictly decrease.
    """
    out: list[NodeId] = []
    while lo < hi:
        size = hi - lo
        # the largest power of two that divides lo (any size if lo == 0) and fits
        level = size.bit_length() - 1
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Hash of a subtree from its perfect cover: right fold, as RFC 9162 MTH splits."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = _sha256(_NODE + h + acc).digest()
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf upwards."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PROOF(old, D[new]) (RFC 9162 §2.1.4.1), in proof order."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            m -= k
            lo = lo + k
            complete = False
    if not complete:
        out.append((lo, hi))
    out.reverse()
    return out


class NodeReader(Protocol):
    """Anything that can return stored perfect-subtree hashes by id."""

    def get_nodes(self, ids: Iterable[NodeId]) -> Mapping[NodeId, bytes]: ...


def hashes_for_ranges(reader: NodeReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Hash every range, reading all the perfect nodes needed in one call."""
    covers = [perfect_cover(lo, hi) for lo, hi in ranges]
    wanted = {nid for cover in covers for nid in cover}
    nodes = reader.get_nodes(wanted)
    missing = wanted - nodes.keys()
    if missing:
        raise LookupError(f"tree nodes missing from the store: {sorted(missing)[:5]}")
    return [fold([nodes[nid] for nid in cover]) for cover in covers]


def root_from_reader(reader: NodeReader, size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return hashes_for_ranges(reader, [(0, size)])[0]


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    return hashes_for_ranges(reader, inclusion_ranges(index, size))


def inclusion_proofs(
    reader: NodeReader, indices: Sequence[int], size: int, *, batch: int = 2000
) -> list[list[bytes]]:
    """PATH(i, D[size]) for each of ``indices``, reading every distinct node once, at most
    ``batch`` per round trip: the entries about one enterprise are proved against one tree
    and their paths share most upper nodes (and the right border's folds), so a page of
    hundreds of proofs costs a few reads instead of one per proof."""
    paths = [inclusion_ranges(i, size) for i in indices]
    covers = {r: perfect_cover(*r) for path in paths for r in path}
    wanted = sorted({nid for cover in covers.values() for nid in cover})
    nodes: dict[NodeId, bytes] = {}
    for k in range(0, len(wanted), batch):
        nodes.update(reader.get_nodes(wanted[k : k + batch]))
    missing = set(wanted) - nodes.keys()
    if missing:
        raise LookupError(f"tree nodes missing from the store: {sorted(missing)[:5]}")
    folded = {r: fold([nodes[nid] for nid in cover]) for r, cover in covers.items()}
    return [[folded[r] for r in path] for path in paths]


def consistency_proof(reader: NodeReader, old: int, new: int) -> list[bytes]:
    return hashes_for_ranges(reader, consistency_ranges(old, new))


class CompactRange:
    """The right border of a growing tree: one perfect subtree per set bit of its size.

    Appending a leaf yields the perfect nodes it completes, which the store
    persists; the root is the right fold of the border (RFC 9162 MTH).
    """

    __slots__ = ("_hashes", "_levels", "size")

    def __init__(self, size: int = 0, border: Sequence[bytes] = ()) -> None:
        levels = [lvl for lvl in range(size.bit_length() - 1, -1, -1) if size >> lvl & 1]
        if len(levels) != len(border):
            raise ValueError(
                f"a tree of size {size} has {len(levels)} border nodes, got {len(border)}"
            )
        self.size = size
        self._levels = levels
        self._hashes = list(border)

    @staticmethod
    def border_ids(size: int) -> list[NodeId]:
        """Ids of the perfect subtrees on the border of a tree of ``size`` leaves, left to right."""
        return perfect_cover(0, size)

    def append(self, leaf: bytes, out: list[tuple[int, int, bytes]]) -> None:
        """Add one leaf hash; append every newly completed node (level, index, hash) to ``out``."""
        idx = self.size
        out.append((0, idx, leaf))
        levels, hashes = self._levels, self._hashes
        h, lvl = leaf, 0
        while levels and levels[-1] == lvl:
            levels.pop()
            h = _sha256(_NODE + hashes.pop() + h).digest()
            lvl += 1
            idx >>= 1
            out.append((lvl, idx, h))
        levels.append(lvl)
        hashes.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        return fold(self._hashes)

    @property
    def border(self) -> list[bytes]:
        """The border's hashes, left to right (``CompactRange(size, border)`` restores it)."""
        return list(self._hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._hashes)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, in O(n) hashes and O(log n) memory."""
    cr = CompactRange()
    sink: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        cr.append(leaf, sink)
        sink.clear()
    return cr.root()


class MemoryTree:
    """All perfect-subtree hashes of a tree kept in memory (tests, witnesses, auditors)."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        self._cr = CompactRange()
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return self._cr.size

    def append(self, leaf: bytes) -> None:
        new: list[tuple[int, int, bytes]] = []
        self._cr.append(leaf, new)
        for lvl, _idx, h in new:
            if lvl == len(self.levels):
                self.levels.append([])
            self.levels[lvl].append(h)

    def get_nodes(self, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        out: dict[NodeId, bytes] = {}
        for lvl, idx in ids:
            if lvl < len(self.levels) and idx < len(self.levels[lvl]):
                out[(lvl, idx)] = self.levels[lvl][idx]
        return out

    def root(self, size: int | None = None) -> bytes:
        return self._cr.root() if size is None else root_from_reader(self, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self, index, self.size if size is None else size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        return consistency_proof(self, old, self.size if new is None else new)
