"""A token's use as the consent service matches it, and a reservation of one: the types
the verifiers (:mod:`consent.verify`) and the SDK (:mod:`consent.client`) share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


class _Verified(Protocol):
    """What :meth:`UseRef.of` reads of a :class:`consent.verify.VerifiedConsent`."""

    @property
    def jti(self) -> str: ...
    @property
    def enterprise(self) -> str: ...
    @property
    def bank(self) -> str: ...
    @property
    def max_uses(self) -> int: ...


class UseRef(NamedTuple):
    """A verified token's use, as the consent service matches it: the row must have this
    ``jti`` AND this enterprise (``sub``) AND this bank (``aud``), so a forged token
    carrying another consent's jti matches nothing."""

    jti: str
    enterprise: str
    bank: str
    # The token's claim: only a counter without a store (MemoryUseCounter) goes by it;
    # the consent service holds every token to the max_uses it STORED at issue.
    max_uses: int = 1

    @classmethod
    def of(cls, vc: _Verified) -> UseRef:
        return cls(vc.jti, vc.enterprise, vc.bank, vc.max_uses)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A use held for a token: the consent's count of distinct uses after it, and whether
    this call opened the use (False: another node or the coordinator opened the same use
    id first, and it counts once)."""

    uses: int
    opened: bool
