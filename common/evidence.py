"""The interface services use to put evidence into a ledger.

The central ledger client and the embedded ledger library (a department
node's disclosure log) both implement :class:`EvidenceSink`. A service is
handed one and never cares which: "no ledger entry, no answer" is enforced by
calling :meth:`EvidenceSink.append` before answering and letting its error
propagate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

# One entry to append: (kind, subject, payload).
NewEntry: TypeAlias = tuple[str, str | None, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where an appended entry landed: its index in the log and its RFC 6962 leaf hash."""

    index: int
    leaf_hash: bytes


@runtime_checkable
class EvidenceSink(Protocol):
    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        """Durably append one entry and return its receipt; raise if it is not durable."""
        ...


@runtime_checkable
class AsyncEvidenceSink(Protocol):
    async def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        """Async variant of :meth:`EvidenceSink.append` (for grpc.aio services)."""
        ...


@runtime_checkable
class BatchEvidenceSink(EvidenceSink, Protocol):
    """A sink that also appends many entries in one durable step (all or none)."""

    def append_many(self, items: Sequence[NewEntry]) -> list[Receipt]:
        """Durably append every entry, in order, and return their receipts; raise if any
        is not durable (then none is)."""
        ...


@runtime_checkable
class AsyncBatchEvidenceSink(AsyncEvidenceSink, Protocol):
    """Async variant of :class:`BatchEvidenceSink` (the central ledger's grpc.aio client)."""

    async def append_many(self, items: Sequence[NewEntry]) -> list[Receipt]:
        """Async variant of :meth:`BatchEvidenceSink.append_many`."""
        ...
