"""The consent events' outbox: written with each change, delivered to the evidence sink after.

Each lifecycle step writes its event in the same transaction as the change (so no
change exists without its event); :meth:`EventOutbox.deliver` then hands the pending
events to the evidence sink, in order, in batches, retried until the sink takes them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from fedcredit.common.evidence import BatchEvidenceSink, EvidenceSink, Receipt
from fedcredit.common.tls import Identity
from fedcredit.consent.store import ConsentRow, ConsentStore, EventRow, StoreEvidenceSink

log = logging.getLogger(__name__)

LEDGER_KIND = "consent_event"
# Events per delivery round (one sink call and one store transaction each).
DELIVERY_BATCH = 500


def event_values(
    row: ConsentRow, event: str, actor: Identity, now: int, **extra: Any
) -> dict[str, Any]:
    """The outbox row of ``event`` on ``row`` by ``actor`` (its payload is the ledger entry's)."""
    payload = {
        "event": event,
        "consent_id": row.consent_id,
        "jti": row.jti,
        "bank": row.bank,
        "purpose": row.purpose,
        "scope": row.scope,
        "nodes": row.nodes,
        # what `fedcredit audit coverage` needs to decide, from the log alone, whether a
        # later access was within this consent: its state after the event, its window
        # and its use limit (uses are the score_access entries naming its jti)
        "state": row.state,
        "not_before": row.not_before,
        "expires_at": row.expires_at,
        "max_uses": row.max_uses,
        "actor": actor.org_id,
        "actor_role": actor.role,
        "at": now,
        **extra,
    }
    return {
        "consent_id": row.consent_id,
        "event": event,
        "actor": actor.org_id,
        "actor_role": actor.role,
        "subject": row.enterprise,
        "at": now,
        "payload": payload,
    }


class EventOutbox:
    """The events waiting in the store, and their delivery to ``sink`` (default: the
    store's own hash-chained evidence)."""

    def __init__(self, store: ConsentStore, sink: EvidenceSink | None = None) -> None:
        self.store = store
        self.sink: EvidenceSink = sink if sink is not None else StoreEvidenceSink(store)
        self._lock = threading.Lock()

    def add(
        self, conn: Connection, row: ConsentRow, event: str, actor: Identity, now: int, **extra: Any
    ) -> None:
        """Write one event in the caller's transaction."""
        self.store.add_events(conn, [event_values(row, event, actor, now, **extra)])

    def deliver(self) -> int:
        """Deliver pending events to the evidence sink, in order, in batches; return how many.

        The events are already durable in the store's outbox (written in the same
        transaction as the change). A failing sink leaves them pending, retried by
        the next call. The store's own sink moves events into its evidence chain in
        the same transaction that marks them delivered (exactly once); another sink
        may see a batch again if the process dies between its append and the mark
        (at least once, never lost).
        """
        with self._lock:
            sink = self.sink
            if isinstance(sink, StoreEvidenceSink) and sink.store is self.store:
                return self._deliver_in_store()
            delivered = 0
            while True:
                pending = self.store.pending_events(DELIVERY_BATCH)
                if not pending:
                    return delivered
                receipts, complete = self._append(sink, pending)
                self.store.mark_delivered(receipts)
                delivered += len(receipts)
                if not complete or len(pending) < DELIVERY_BATCH:
                    # No backlog (or a refusal): the rest waits for the next call.
                    return delivered

    def _deliver_in_store(self) -> int:
        delivered = 0
        try:
            # Another round only while rounds come back full (a backlog): events
            # committed meanwhile wait for the next call, so a stream of commits
            # does not keep this loop taking turns with the writers.
            n = DELIVERY_BATCH
            while n == DELIVERY_BATCH:
                n = self.store.deliver_to_evidence(LEDGER_KIND, DELIVERY_BATCH)
                delivered += n
        except Exception as exc:  # the change itself is committed; delivery retries
            log.warning("consent events not yet delivered (will retry): %s", exc)
        return delivered

    @staticmethod
    def _append(
        sink: EvidenceSink, pending: Sequence[EventRow]
    ) -> tuple[list[tuple[int, Receipt]], bool]:
        """Append ``pending`` to ``sink`` (in one call if it takes batches): the receipts of
        the events it took, and whether it took them all."""
        receipts: list[tuple[int, Receipt]] = []
        try:
            if isinstance(sink, BatchEvidenceSink):
                got = sink.append_many([(LEDGER_KIND, ev.subject, ev.payload) for ev in pending])
                if len(got) != len(pending):
                    raise RuntimeError(
                        f"the evidence sink returned {len(got)} receipts for {len(pending)} entries"
                    )
                receipts = [(ev.seq, r) for ev, r in zip(pending, got, strict=True)]
            else:
                for ev in pending:
                    receipts.append((ev.seq, sink.append(LEDGER_KIND, ev.subject, ev.payload)))
        except Exception as exc:
            log.warning("evidence sink refused consent events (will retry): %s", exc)
            return receipts, False
        return receipts, True
