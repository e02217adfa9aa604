"""A naive recursive RFC 9162 tree, written straight from the RFC's definitions.

Subtrees are named by leaf ranges [lo, hi) of one leaf list so MTH can be
memoised; the recursion itself is exactly RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Reference:
    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.mth = lru_cache(maxsize=None)(self._mth)

    def _mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) over leaf *hashes*."""
        n = hi - lo
        if n == 0:
            return h(b"")
        if n == 1:
            return self.leaves[lo]
        k = 1 << ((n - 1).bit_length() - 1)
        return h(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi])."""
        n = hi - lo
        if n == 1:
            return []
        k = 1 << ((n - 1).bit_length() - 1)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        """SUBPROOF(m, D[lo:hi], b)."""
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[n]) for 0 < m <= n."""
        return self.subproof(m, 0, n, True)
