"""Resumable, idempotent ScoreBatch: a batch with an id keeps each item's answer.

A bank names a batch (``batch_id``) and every item in it (``request_id``). Per chunk:

1. the rows of its request ids are read: an item already scored is REPLAYED from the
   stored answer (no token check, no node asked, no ledger entry, no use); an item sent
   before with another enterprise or token is refused (``BATCH_ITEM_CONFLICT``);
2. the rest is scored as any batch, except that the items are CLAIMED (a row per item)
   before their uses are reserved, and every use is named after the batch
   (:class:`~fedcredit.coordinator.scoring.BatchUses`): an item whose first run reserved
   its use and then died (coordinator killed mid-chunk) joins that use when resumed
   instead of counting a second one;
3. the answers are stored once the ``score_access`` entries are in the ledger, and only
   then sent.

What the store learns: per item the bank, batch and request id, a SHA-256 of enterprise
and token (to tell a resent item from a different one), the jti and the answer the bank
got (the same fields it got; never feature values).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.coordinator.errors import BatchItemConflict, InvalidBatchId, InvalidBatchItem
from fedcredit.coordinator.scoring import BatchUses, Scored, ScoreItem, Scorer, ScoringStats
from fedcredit.coordinator.store import CoordinatorStore
from fedcredit.v1 import coordinator_pb2 as pb

log = logging.getLogger(__name__)

_BATCH_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_REQUEST_ID = 128


def check_batch_id(batch_id: str) -> str:
    if not _BATCH_ID.fullmatch(batch_id):
        shown = batch_id[:40] + ("…" if len(batch_id) > 40 else "")
        raise InvalidBatchId(
            "a batch id is 1-128 characters of A-Z a-z 0-9 . _ : -, "
            f"got {len(batch_id)} character(s) {shown!r}"
        )
    return batch_id


def item_sha256(it: ScoreItem) -> str:
    return hashlib.sha256(f"{it.enterprise}\n{it.token}".encode()).hexdigest()


def batch_use_id(bank: str, batch_id: str) -> str:
    """The use id of every item of a bank's batch (the same on every run of the batch)."""
    return "batch-" + hashlib.sha256(f"{bank}\n{batch_id}".encode()).hexdigest()[:40]


Answer = pb.ScoreResult | FedcreditError


@dataclass
class ResumableBatch:
    """One bank's batch with an id, chunk by chunk (see the module's docstring)."""

    store: CoordinatorStore
    scorer: Scorer
    bank: Identity
    batch_id: str
    to_pb: Callable[[Scored], pb.ScoreResult]  # the answer as sent (service.score_pb)
    purpose: str = "credit_assessment"

    async def run(
        self, items: Sequence[ScoreItem], stats: ScoringStats | None = None
    ) -> list[tuple[Answer, bool]]:
        """Per item its answer and whether it was replayed, in order."""
        out: list[tuple[Answer, bool] | None] = [None] * len(items)
        hashes = [item_sha256(it) for it in items]
        first: dict[str, int] = {}
        for k, it in enumerate(items):
            rid = it.request_id
            if not rid or len(rid) > MAX_REQUEST_ID:
                out[k] = (InvalidBatchItem(
                    f"an item of a batch with an id needs a request id of 1-{MAX_REQUEST_ID} "
                    f"characters, got {len(rid)}"), False)  # fmt: skip
            elif rid in first:
                out[k] = (InvalidBatchItem(
                    f"request id {rid!r} appears twice in the batch"), False)  # fmt: skip
            else:
                first[rid] = k
        bank = self.bank.org_id
        rows = await asyncio.to_thread(self.store.batch_items, bank, self.batch_id, list(first))
        todo: list[int] = []
        for rid, k in first.items():
            row = rows.get(rid)
            if row is None or row.result is None:
                if row is not None and row.item_sha256 != hashes[k]:
                    out[k] = (self._conflict(rid), False)
                else:
                    todo.append(k)
            elif row.item_sha256 != hashes[k]:
                out[k] = (self._conflict(rid), False)
            else:
                out[k] = (pb.ScoreResult.FromString(row.result), True)
        if todo:
            for k, ans in zip(todo, await self._score([items[k] for k in todo], [hashes[k] for k in todo], stats), strict=True):  # fmt: skip
                out[k] = (ans, False)
        return [o if o is not None else (InvalidBatchItem("unanswered"), False) for o in out]

    def _conflict(self, rid: str) -> BatchItemConflict:
        return BatchItemConflict(
            f"request id {rid!r} of batch {self.batch_id!r} was sent before with another "
            "enterprise or consent token; a resumed batch must send the same items"
        )

    async def _score(
        self, items: Sequence[ScoreItem], hashes: Sequence[str], stats: ScoringStats | None
    ) -> list[Answer]:
        bank = self.bank.org_id

        async def claim(idx: Sequence[int], jtis: Sequence[str]) -> list[int]:
            want = [(items[i].request_id, hashes[i], j) for i, j in zip(idx, jtis, strict=True)]
            rows = await asyncio.to_thread(
                self.store.claim_batch_items, bank, self.batch_id, want, int(time.time())
            )
            return [rows[rid].use_index for rid, _, _ in want]

        uses = BatchUses(batch_use_id(bank, self.batch_id), claim)
        results = await self.scorer.score_many(self.bank, items, self.purpose, stats, uses)
        answers: list[Answer] = [self.to_pb(r) if isinstance(r, Scored) else r for r in results]
        done = [
            (it.request_id, a.SerializeToString())
            for it, a in zip(items, answers, strict=True)
            if isinstance(a, pb.ScoreResult)
        ]
        try:
            await asyncio.to_thread(
                self.store.store_batch_results, bank, self.batch_id, done, int(time.time())
            )
        except Exception as exc:  # the answers still go out; a rerun would score them again
            log.warning(
                "could not store %d answer(s) of batch %s: %s", len(done), self.batch_id, exc
            )
        return answers
