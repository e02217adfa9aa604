"""The coordinator's one door to the ledger: no ledger entry, no answer.

Every coordinator writer (a score's ``score_access`` entries, a guarantee's
decision and outcome, a model's publication and activation) appends through a
gate, and every way the ledger can fail to take an entry — a refusal, a
deadline, a broken connection, a short acknowledgement — becomes the one
coordinator error, :class:`~fedcredit.coordinator.errors.LedgerUnavailable`,
worded by :func:`refusal`.

:class:`LedgerGate` is the grpc.aio services' gate (one entry, or many in as few
ledger calls as allowed); :class:`BlockingLedgerGate` the model registry's,
which runs in worker threads and inside the trainer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from fedcredit.common.errors import DeadlineExceeded, FedcreditError, Unavailable
from fedcredit.common.evidence import AsyncBatchEvidenceSink, EvidenceSink, NewEntry
from fedcredit.coordinator.deadline import bounded
from fedcredit.coordinator.errors import UNTYPED_FAILURES, LedgerUnavailable

log = logging.getLogger(__name__)

# Entries per ledger Append call (the LedgerService accepts up to 1,000 by default).
LEDGER_APPEND_BATCH = 500

NO_ENTRY_NO_ANSWER = "; nothing is answered without a ledger entry"

# One entry of a known kind: (subject, payload).
SubjectPayload: TypeAlias = tuple[str | None, Mapping[str, Any]]


def refusal(
    kind: str, exc: BaseException, *, count: int = 1, deadline_s: float | None = None
) -> LedgerUnavailable:
    """The coordinator's error for a ledger that did not take ``count`` ``kind`` entries
    because of ``exc`` (a LedgerUnavailable is already that error and is kept)."""
    if isinstance(exc, LedgerUnavailable):
        return exc
    what = f"the {kind} entry" if count == 1 else f"{count} {kind} entries"
    if isinstance(exc, TimeoutError) and deadline_s is not None:
        why = f"the ledger did not take {what} within {deadline_s} s"
    elif type(exc) in UNTYPED_FAILURES or isinstance(exc, Unavailable | DeadlineExceeded):
        # Unreachable, not answering or failing without a typed refusal: say so; the
        # transport's text names an address, a crashed handler's its Python exception.
        log.warning("ledger unavailable: %s", exc)
        why = f"the central ledger is unavailable (not reachable or not answering); {what} was not written"
    elif isinstance(exc, FedcreditError):
        why = f"the ledger refused {what} ({exc.reason}: {exc.message})"
    else:
        log.warning("ledger call failed: %r", exc)
        why = f"the ledger did not take {what} ({type(exc).__name__})"
    return LedgerUnavailable(why + NO_ENTRY_NO_ANSWER)


def _check_receipts(kind: str, asked: int, got: int) -> None:
    if got != asked:
        raise LedgerUnavailable(
            f"the ledger acknowledged {got} of {asked} {kind} entries" + NO_ENTRY_NO_ANSWER
        )


class LedgerGate:
    """Appends for the grpc.aio services, each ledger call within ``deadline_s``."""

    def __init__(
        self,
        sink: AsyncBatchEvidenceSink,
        *,
        deadline_s: float = 5.0,
        batch_size: int = LEDGER_APPEND_BATCH,
    ) -> None:
        self.sink = sink
        self.deadline_s = deadline_s
        self.batch_size = batch_size

    async def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> int:
        """Append one entry and return its ledger index; raise LedgerUnavailable if it is not in."""
        try:
            receipt = await asyncio.wait_for(
                self.sink.append(kind, subject, payload), timeout=bounded(self.deadline_s)
            )
        except LedgerUnavailable:
            raise
        except Exception as exc:
            raise refusal(kind, exc, deadline_s=self.deadline_s) from exc
        return receipt.index

    async def append_many(
        self, kind: str, items: Sequence[SubjectPayload]
    ) -> list[int | LedgerUnavailable]:
        """Several entries in ledger calls of at most ``batch_size``; per item its index or the
        failure (a call is all or nothing, so a failed call fails exactly its own items)."""
        if len(items) == 1:
            ((subject, payload),) = items
            try:
                return [await self.append(kind, subject, payload)]
            except LedgerUnavailable as exc:
                return [exc]
        step = self.batch_size
        parts = [[(kind, s, p) for s, p in items[i : i + step]] for i in range(0, len(items), step)]
        results = await asyncio.gather(*(self._append_part(kind, p) for p in parts))
        return [r for part in results for r in part]

    async def _append_part(
        self, kind: str, part: Sequence[NewEntry]
    ) -> list[int | LedgerUnavailable]:
        try:
            receipts = await asyncio.wait_for(
                self.sink.append_many(part), timeout=bounded(self.deadline_s)
            )
            _check_receipts(kind, len(part), len(receipts))
        except Exception as exc:
            err = refusal(kind, exc, count=len(part), deadline_s=self.deadline_s)
            return [err] * len(part)
        return [r.index for r in receipts]


class BlockingLedgerGate:
    """Appends for blocking code (the model registry); the sink's own deadline applies."""

    def __init__(self, sink: EvidenceSink) -> None:
        self.sink = sink

    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> int:
        """Append one entry and return its ledger index; raise LedgerUnavailable if it is not in."""
        try:
            return self.sink.append(kind, subject, payload).index
        except LedgerUnavailable:
            raise
        except Exception as exc:
            raise refusal(kind, exc) from exc
