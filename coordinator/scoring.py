"""Consent-gated scoring: verify, fan out to the nodes in parallel, predict, rate, explain, log.

The order of one score (``Scorer.score_many``):

1. the credit code is validated and the consent token verified for the
   calling bank (its certificate must be the one the token is bound to,
   RFC 8705), purpose checked; then one use is RESERVED at the consent service
   under a use id minted for this call (one Score = one use id), before any node is
   asked: an item refused here (no uses left, revoked) is asked of no node;
2. every node whose category the model needs and the consent covers is
   asked in parallel (grpc.aio, one deadline per call), the token forwarded
   so each node verifies it again itself;
3. the feature vector is assembled in the model's order (missing = NaN),
   the active model predicts the probability of default, the stored
   thresholds give the grade, LightGBM's contributions give the reasons;
4. a ``score_access`` entry goes to the central ledger (bank, enterprise,
   consent jti, purpose, model version, rating, a hash of the feature
   vector — never the values), then the use is committed (one call per batch), and
   only then is the answer released; a commit that fails refuses the answer
   (nothing is disclosed uncounted). The use is released (it no longer counts)
   when the score was refused (a node down, the ledger down, the call cancelled).

A node that fails (down, late) refuses the score naming the node, or — when
the policy says ``score_missing`` — the category is scored as missing and the
answer says so. Per-enterprise failures in a batch are item errors; the
others in the batch still get their answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from fedcredit.common.canonical import canonical_json, number
from fedcredit.common.errors import DeadlineExceeded, FedcreditError, Internal, Unavailable
from fedcredit.common.tls import Identity
from fedcredit.common.uscc import validate as validate_uscc
from fedcredit.common.wire import via_field
from fedcredit.consent.verify import FetchNeeded, TokenVerifier, UseRef, VerifiedConsent
from fedcredit.coordinator.deadline import bounded
from fedcredit.coordinator.errors import (
    UNTYPED_FAILURES,
    ConsentServiceUnavailable,
    LedgerUnavailable,
    NodeUnavailable,
)
from fedcredit.coordinator.fanout import (
    Catalog,
    FeatureCall,
    FeatureRow,
    FetchBatch,
    FetchItem,
    NodeAnswer,
    NodeFeatures,
)
from fedcredit.coordinator.gate import LedgerGate
from fedcredit.coordinator.model import ScoringModel
from fedcredit.coordinator.reasons import Reason, top_reasons
from fedcredit.coordinator.uses import AsyncUses, ThreadedUses

log = logging.getLogger(__name__)

NodePolicy = Literal["refuse", "score_missing"]


@dataclass(frozen=True, slots=True)
class ScoreItem:
    enterprise: str
    token: str
    request_id: str = ""


@dataclass(frozen=True)
class Assessment:
    item: ScoreItem
    jti: str
    purpose: str
    pd: float
    rating: str
    model_version: str
    reasons: list[Reason]
    missing_categories: list[str]
    feature_hash: str


@dataclass(frozen=True)
class Scored:
    assessment: Assessment
    ledger_index: int


@dataclass
class ScoringSettings:
    node_deadline_s: float = 2.0
    # A batch call to a node gets this much more time per enterprise in it (each token is
    # verified and each answer logged at the node).
    node_deadline_per_item_s: float = 0.02
    ledger_deadline_s: float = 5.0
    # Reserving uses at the consent service: a call past this (plus per item) refuses the
    # items as CONSENT_SERVICE_UNAVAILABLE instead of holding the Score. The per-item part
    # is generous (a batch's chunks queue at the consent service's one writer on a loaded
    # machine; 2 ms/item refused whole chunks there); a frozen service is found by the
    # channel's keepalive (~6 s) first.
    consent_deadline_s: float = 2.0
    consent_deadline_per_item_s: float = 0.02
    on_node_failure: NodePolicy = "refuse"
    verify_threads: int = 4


@dataclass
class ScoringStats:
    """Where the time of a batch went (seconds), for the benchmark."""

    verify_s: float = 0.0
    fanout_s: float = 0.0
    predict_s: float = 0.0
    ledger_s: float = 0.0
    items: int = 0

    def add(self, other: ScoringStats) -> None:
        self.verify_s += other.verify_s
        self.fanout_s += other.fanout_s
        self.predict_s += other.predict_s
        self.ledger_s += other.ledger_s
        self.items += other.items


@dataclass(frozen=True)
class BatchUses:
    """The uses of a resumable batch (one with a batch id).

    Every item of the batch is reserved under the batch's ``use_id`` (the r-th item with
    the same token under ``<use_id>.<r>``), so a batch resumed after a crash JOINS the uses
    its first run reserved instead of counting them again. ``claim`` records the verified
    items (indexes, their jtis) before their uses are reserved and gives each its rank.
    """

    use_id: str
    claim: Callable[[Sequence[int], Sequence[str]], Awaitable[Sequence[int]]]


class ModelSource(Protocol):
    """The active model, as a callable the scorer awaits (see coordinator.service.ActiveModel)."""

    async def current(self) -> ScoringModel: ...


# Strings that RFC 8785 writes as they are (no escapes, ASCII): credit codes, jtis and
# model versions always are; anything else takes the library's path.
_PLAIN = re.compile(r"[A-Za-z0-9_.:+\-]*")


def feature_hash(model_version: str, enterprise: str, jti: str, row: np.ndarray) -> str:
    """SHA-256 over the canonical JSON (RFC 8785) of the vector: proves which values, reveals none.

    The document is ``{"enterprise", "features", "jti", "model_version"}`` (RFC 8785's key
    order) with missing values as null. Written here directly rather than through
    ``canonical_json``: the same bytes (a property test compares them), about ten times
    faster, and the coordinator hashes every scored enterprise's whole vector.
    """
    present = row[~np.isnan(row)]
    if all(_PLAIN.fullmatch(x) for x in (model_version, enterprise, jti)) and bool(
        np.isfinite(present).all()
    ):
        feats = ",".join([number(v) if v == v else "null" for v in row.tolist()])  # NaN: null
        text = (
            f'{{"enterprise":"{enterprise}","features":[{feats}],'
            f'"jti":"{jti}","model_version":"{model_version}"}}'
        )
        return hashlib.sha256(text.encode("ascii")).hexdigest()
    values = [None if v != v else v for v in row.tolist()]
    doc = {"model_version": model_version, "enterprise": enterprise, "jti": jti, "features": values}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def unique_chunks(items: Sequence[FetchItem], size: int) -> list[list[int]]:
    """Indexes of ``items`` in chunks of at most ``size``, no enterprise twice in a chunk
    (a node refuses a batch naming an enterprise twice)."""
    chunks: list[list[int]] = []
    seen: list[set[str]] = []
    open_from = 0  # chunks before this index are full
    for i, it in enumerate(items):
        k = open_from
        while k < len(chunks) and (len(chunks[k]) >= size or it.enterprise in seen[k]):
            k += 1
        if k == len(chunks):
            chunks.append([])
            seen.append(set())
        chunks[k].append(i)
        seen[k].add(it.enterprise)
        while open_from < len(chunks) and len(chunks[open_from]) >= size:
            open_from += 1
    return chunks


def as_domain(exc: BaseException, what: str) -> FedcreditError:
    if isinstance(exc, FedcreditError):
        return exc
    log.exception("unexpected error while %s", what, exc_info=exc)
    return Internal(f"internal error while {what}; the coordinator logged the details")


def consent_failure(exc: BaseException, what: str) -> FedcreditError:
    """``exc`` met while ``what``: the consent service not answering is named as such (the
    transport's own text names only an address); anything else as :func:`as_domain`."""
    # The generic classes are what a status without ErrorInfo becomes (transport failures,
    # a crashed handler's UNKNOWN with Python's text, a reset stream's INTERNAL): the
    # service failing, not refusing; their text is for the operator's log only.
    if type(exc) in UNTYPED_FAILURES:
        log.warning("consent service unavailable while %s: %s", what, exc)
        return ConsentServiceUnavailable(
            f"the consent service is unavailable (not reachable or not answering) while {what}; "
            "nothing was scored and no use is counted"
        )
    return as_domain(exc, what)


def _commit_failure(exc: BaseException) -> FedcreditError:
    """Why the uses of answered scores could not be committed, as the answer to send."""
    if isinstance(exc, FedcreditError) and exc.reason == "CONSENT_USES_EXHAUSTED":
        return exc  # the lease ran out and the use went to another Score
    log.warning("could not commit uses before answering: %r", exc)
    return ConsentServiceUnavailable(
        "the consent service did not confirm the use of this score "
        f"({type(exc).__name__}); nothing was disclosed, retry later"
    )


@dataclass(frozen=True, slots=True)
class _Ask:
    """One node's part of a fan-out: the items (indexes) it is asked about."""

    category: str
    node: NodeFeatures
    asked: list[int]


@dataclass
class _Batch:
    """One assessment between its steps, per item: its consent, why it is refused (the
    first reason wins), its feature row (NaN = missing) and the categories scored missing."""

    items: Sequence[ScoreItem]
    consents: list[VerifiedConsent | None]
    errors: list[FedcreditError | None]
    ok: list[int]  # the items whose token verified
    matrix: np.ndarray
    missing: list[set[str]]
    use_id: str = ""
    # A resumable batch's items: their rank among the batch's items with the same token.
    ranks: dict[int, int] | None = None
    # Uses this call opened: item -> (use id, the token's use).
    opened: dict[int, tuple[str, UseRef]] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        items: Sequence[ScoreItem],
        verified: Sequence[VerifiedConsent | FedcreditError],
        width: int,
    ) -> _Batch:
        errors = [v if isinstance(v, FedcreditError) else None for v in verified]
        return cls(
            items=items,
            consents=[None if isinstance(v, FedcreditError) else v for v in verified],
            errors=errors,
            ok=[i for i, e in enumerate(errors) if e is None],
            matrix=np.full((len(items), width), np.nan, dtype=np.float64),
            missing=[set() for _ in items],
        )

    def consent(self, i: int) -> VerifiedConsent:
        c = self.consents[i]
        assert c is not None, "only items whose token verified have a consent"
        return c

    def refuse(self, i: int, err: FedcreditError) -> None:
        if self.errors[i] is None:
            self.errors[i] = err


@dataclass(frozen=True, slots=True)
class _Layout:
    """A model's features per node category, and their column indexes in its rows."""

    by_cat: dict[str, tuple[str, ...]]
    cols: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Started:
    """One request of a fan-out in flight: its ask (index in the plan), the positions of
    its items among the ask's, and the call."""

    k: int
    chunk: list[int]
    call: FeatureCall


def _node_failure(exc: BaseException, node: NodeFeatures) -> FedcreditError:
    """What a node's failed call refuses its items with."""
    if isinstance(exc, Unavailable | DeadlineExceeded):
        return exc  # NodeUnavailable / NodeDeadlineExceeded, naming the node
    return as_domain(exc, f"asking node {node.org_id}")


def _complete(answers: list[NodeAnswer | None]) -> list[NodeAnswer]:
    out = [a for a in answers if a is not None]
    if len(out) != len(answers):
        raise Internal("a node's answers were not all placed")  # _collect fills every slot
    return out


async def _listed(
    coro: Awaitable[list[FedcreditError | bool]],
) -> list[list[FedcreditError | bool]]:
    return [await coro]


async def _collect(
    plan: Sequence[_Ask],
    started: Sequence[_Started],
    deadlines: Sequence[float],
    results: list[list[NodeAnswer | None] | FedcreditError],
) -> None:
    """Await the started calls in turn (they run in parallel); each node's answers, or
    the failure of any of its calls, into ``results``. gRPC ends each call at its node's
    deadline; should a call outlive that by 0.5 s all the same, it is cancelled and its
    node refused as not answering."""
    if not started:
        return
    late = [False]

    def expire() -> None:
        late[0] = True
        for st in started:
            st.call.cancel()

    timer = asyncio.get_running_loop().call_later(max(deadlines) + 0.5, expire)
    try:
        for st in started:
            res = results[st.k]
            if isinstance(res, FedcreditError):
                continue  # another chunk of this node failed: the node is refused already
            node = plan[st.k].node
            try:
                part = await st.call.answers()
                for i, a in zip(st.chunk, part, strict=True):
                    res[i] = a
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not late[0] or (task is not None and task.cancelling()):
                    raise  # the caller's cancellation, not the safety net's
                results[st.k] = NodeUnavailable(
                    f"node {node.org_id} ({node.category}) did not answer within "
                    f"{deadlines[st.k]:.1f} s",
                    node=node.org_id,
                    category=node.category,
                )
            except Exception as exc:
                results[st.k] = _node_failure(exc, node)
    finally:
        timer.cancel()


class Scorer:
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        nodes: Mapping[str, NodeFeatures],
        catalog: Catalog,
        gate: LedgerGate,
        models: ModelSource,
        settings: ScoringSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
        uses: AsyncUses | None = None,
    ) -> None:
        """``uses``: where uses are reserved and settled (default: the verifier's own
        counter, called in the scorer's thread pool; none: the verifier counts them)."""
        self.verifier = verifier
        self.nodes = dict(nodes)  # category -> node
        self.catalog = catalog
        self.gate = gate
        self.models = models
        self.settings = settings or ScoringSettings()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.verify_threads, thread_name_prefix="verify"
        )
        self._clock = clock
        self.descriptions = catalog.descriptions()
        counter = verifier.counter
        self._uses: AsyncUses | None = uses
        if uses is None and counter is not None:
            self._uses = ThreadedUses(counter, self._pool)
        self._layout_of: tuple[ScoringModel, _Layout] | None = None
        # Releases that nobody awaits (see _settle): held until done, or the loop drops them.
        self._background: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def close_uses(self) -> None:
        """Let the releases still running finish (briefly), then close the use counter's
        channel if it has one of its own."""
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        close = getattr(self._uses, "close", None)
        if close is not None:
            await close()

    # ------------------------------------------------------------ step 1: tokens
    def _verify_chunk(
        self,
        bank: Identity,
        items: Sequence[ScoreItem],
        purposes: Collection[str],
        fetch: bool = True,
    ) -> list[VerifiedConsent | FedcreditError]:
        """``fetch=False``: raise FetchNeeded (nothing decided) where a token's check would
        first fetch keys or the status list."""
        out: list[VerifiedConsent | FedcreditError] = []
        for it in items:
            try:
                validate_uscc(it.enterprise)
                out.append(
                    self.verifier.verify(
                        it.token,
                        bank_org=bank.org_id,
                        bank_cert_sha256=bank.cert_sha256,
                        enterprise=it.enterprise,
                        purposes=purposes,
                        # Uses are counted separately, concurrently with the node fan-out
                        # (see _count_uses), when the verifier exposes its counter.
                        count_use=self._uses is None,
                        fetch=fetch,
                    )
                )
            except FetchNeeded:
                raise
            except Exception as exc:
                out.append(consent_failure(exc, "verifying a consent token"))
        return out

    async def _verify(
        self, bank: Identity, items: Sequence[ScoreItem], purposes: Collection[str]
    ) -> list[VerifiedConsent | FedcreditError]:
        loop = asyncio.get_running_loop()
        # Token checks are CPU work (Ed25519) and may call the consent service
        # (use counts, key refresh): keep them off the event loop, in parallel slices.
        n = max(1, min(self.settings.verify_threads, len(items) // 64 or 1))
        if len(items) == 1:
            # A Score: checked right here when nothing has to be fetched (a signature check,
            # ~0.1 ms), which spares the thread hop; a fetch (keys, status list) never
            # blocks the loop -- then the pool does it.
            try:
                return self._verify_chunk(bank, items, purposes, fetch=False)
            except FetchNeeded:
                pass
        if n == 1:  # a small chunk: one hop, nothing to gather
            return await loop.run_in_executor(self._pool, self._verify_chunk, bank, items, purposes)
        size = -(-len(items) // n)
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, self._verify_chunk, bank, p, purposes)
                for p in parts
            )
        )
        return [r for part in results for r in part]

    @staticmethod
    async def _reserve_chunk(
        uses: AsyncUses, use_id: str, consents: Sequence[VerifiedConsent]
    ) -> list[FedcreditError | bool]:
        # One round trip (one transaction at the consent service) for the chunk; per item
        # its refusal or whether this call opened the use. Failing closed: no answer from
        # the consent service refuses every item.
        try:
            got = await uses.reserve(use_id, [UseRef.of(c) for c in consents])
        except Exception as exc:
            err = consent_failure(exc, "reserving consent uses")
            return [err] * len(consents)
        return [r if isinstance(r, FedcreditError) else r.opened for r in got]

    async def _reserve_parts(
        self, uses: AsyncUses, use_id: str, consents: Sequence[VerifiedConsent]
    ) -> list[FedcreditError | bool]:
        """:meth:`_reserve_chunk` over slices at once, within the consent deadline. Past
        it every item is refused (CONSENT_SERVICE_UNAVAILABLE) and whatever the calls still
        open when they return is released: a late reservation is never left counted."""
        s = self.settings
        n = max(1, min(s.verify_threads, len(consents) // 256 or 1))
        size = -(-len(consents) // n)
        parts = [consents[k : k + size] for k in range(0, len(consents), size)]
        calls: asyncio.Future[list[list[FedcreditError | bool]]]
        if len(parts) == 1:  # a Score: one call, no gathering
            calls = asyncio.ensure_future(_listed(self._reserve_chunk(uses, use_id, parts[0])))
        else:
            calls = asyncio.gather(*(self._reserve_chunk(uses, use_id, p) for p in parts))
        deadline = bounded(s.consent_deadline_s + s.consent_deadline_per_item_s * len(consents))
        try:
            # asyncio.wait leaves the calls running past the deadline (they are not cancelled:
            # a reservation they make must be seen to be released).
            done, _ = await asyncio.wait((calls,), timeout=deadline)
        except BaseException:
            calls.add_done_callback(lambda f: self._release_late(uses, use_id, parts, f))
            raise
        if not done:
            calls.add_done_callback(lambda f: self._release_late(uses, use_id, parts, f))
            err = ConsentServiceUnavailable(
                f"the consent service did not answer within {deadline:.1f} s; "
                "nothing was scored and no use is counted"
            )
            return [err] * len(consents)
        return [x for part in calls.result() for x in part]

    def _release_late(
        self,
        uses: AsyncUses,
        use_id: str,
        parts: Sequence[Sequence[VerifiedConsent]],
        done: asyncio.Future[list[list[FedcreditError | bool]]],
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        refs = [UseRef.of(c) for p, res in zip(parts, done.result(), strict=True)
                for c, r in zip(p, res, strict=True) if r is True]  # fmt: skip
        if refs:
            self._in_background(self._settle_quietly(uses, use_id, refs, False))

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _settle_quietly(
        uses: AsyncUses, use_id: str, refs: list[UseRef], commit: bool
    ) -> None:
        try:
            await uses.settle(use_id, refs, commit=commit)
        except Exception as exc:
            log.warning("could not %s %d use(s) of %s: %s",
                        "commit" if commit else "release", len(refs), use_id, exc)  # fmt: skip

    async def _reserve(self, batch: _Batch) -> None:
        """Reserve one use per verified item BEFORE the fan-out; an item refused here (no
        uses left, revoked, the service down) is asked of no node. Each item is a Score of
        its own: the r-th repeat of one token in a batch is reserved under use id
        ``<use_id>.<r>`` (a distinct use); the nodes join ``<use_id>``, which the
        coordinator opened for every token it asks about. A verifier without a separate
        counter counted in :meth:`_verify` already."""
        uses = self._uses
        if uses is None or not batch.ok:
            return
        rounds: dict[int, list[int]] = {}
        seen: dict[str, int] = {}
        for i in batch.ok:
            if batch.ranks is not None:  # a resumable batch: the rank its claim recorded
                r = batch.ranks[i]
            else:
                jti = batch.consent(i).jti
                r = seen.get(jti, 0)
                seen[jti] = r + 1
            rounds.setdefault(r, []).append(i)
        refused: set[int] = set()
        for r, members in sorted(rounds.items()):
            use_id = batch.use_id if r == 0 else f"{batch.use_id}.{r}"
            consents = [batch.consent(i) for i in members]
            results = await self._reserve_parts(uses, use_id, consents)
            for i, res in zip(members, results, strict=True):
                if isinstance(res, FedcreditError):
                    batch.refuse(i, res)
                    refused.add(i)
                elif res:
                    batch.opened[i] = (use_id, UseRef.of(batch.consent(i)))
        batch.ok = [i for i in batch.ok if i not in refused]

    def _settle(self, batch: _Batch, done: Collection[int]) -> None:
        """Commit the uses of the items answered (``done``), release the others; in the
        background (the answer does not wait). A failure is logged: an unreleased use
        stays counted, a use is never given back twice."""
        uses = self._uses
        if uses is None or not batch.opened:
            return
        for (use_id, commit), refs in self._take_groups(batch, done).items():
            self._in_background(self._settle_quietly(uses, use_id, refs, commit))

    async def _settle_now(self, batch: _Batch, done: Collection[int]) -> None:
        """:meth:`_settle`, awaited: a refused item's use is given back BEFORE the refusal
        is answered. Left to the background, the release raced a bank retrying at once
        (after NODE_UNAVAILABLE, say), which met CONSENT_USES_EXHAUSTED for a use nothing
        had consumed. Only refusals pay this round trip: answered uses were committed."""
        uses = self._uses
        if uses is None or not batch.opened:
            return
        groups = self._take_groups(batch, done)
        await asyncio.gather(*(
            self._settle_quietly(uses, use_id, refs, commit)
            for (use_id, commit), refs in groups.items()
        ))  # fmt: skip

    @staticmethod
    def _take_groups(batch: _Batch, done: Collection[int]) -> dict[tuple[str, bool], list[UseRef]]:
        """The uses still open, by (use id, commit?); the batch keeps none (never twice)."""
        groups: dict[tuple[str, bool], list[UseRef]] = {}
        for i, (use_id, ref) in batch.opened.items():
            groups.setdefault((use_id, i in done), []).append(ref)
        batch.opened = {}
        return groups

    async def _commit(self, batch: _Batch, out: list[Any]) -> None:
        """Commit the uses of the scores about to be answered, BEFORE any leaves the
        process: one call per use id for the whole batch (a ScoreBatch chunk pays one
        round trip, not one per item). A commit left to after the answer could fail or
        come after the lease reaper gave the use back, and the bank would hold a score
        that was never counted. A group whose commit fails is answered with the error
        instead (CONSENT_SERVICE_UNAVAILABLE, or CONSENT_USES_EXHAUSTED when the lease ran
        out and the use went elsewhere); :meth:`_settle` then releases it."""
        uses = self._uses
        if uses is None:
            return
        groups: dict[str, list[int]] = {}
        for i, (use_id, _) in batch.opened.items():
            if not isinstance(out[i], FedcreditError):  # a Scored or an Assessment
                groups.setdefault(use_id, []).append(i)
        for use_id, members in groups.items():
            refs = [batch.opened[i][1] for i in members]
            try:
                await uses.settle(use_id, refs, commit=True)
            except Exception as exc:
                err = _commit_failure(exc)
                for i in members:
                    out[i] = err
                continue
            for i in members:
                del batch.opened[i]  # committed: nothing left to settle

    # ------------------------------------------------------------ step 2: fan-out
    def _layout(self, model: ScoringModel) -> _Layout:
        """The model's features per catalog category and their columns, worked out once
        per model (the catalog and a loaded model never change; every Score needs them)."""
        cached = self._layout_of
        if cached is not None and cached[0] is model:
            return cached[1]
        by_cat: dict[str, list[str]] = {}
        for f in model.features:
            cat = self.catalog.category_of(f)
            if cat is not None:  # a feature no node publishes: asked of none
                by_cat.setdefault(cat, []).append(f)
        col = {f: j for j, f in enumerate(model.features)}
        layout = _Layout(
            by_cat={c: tuple(fs) for c, fs in by_cat.items()},
            cols={c: np.array([col[f] for f in fs], dtype=np.intp) for c, fs in by_cat.items()},
        )
        self._layout_of = (model, layout)
        return layout

    def _plan(self, batch: _Batch, categories: Collection[str]) -> list[_Ask]:
        """Which items each node is asked about: the consent must cover the category and the
        node; every other (item, category) is scored as missing."""
        plan: list[_Ask] = []
        for cat in sorted(categories):
            node = self.nodes.get(cat)
            asked: list[int] = []
            for i in batch.ok:
                if node is not None and batch.consent(i).covers(cat, node.org_id):
                    asked.append(i)
                else:
                    batch.missing[i].add(cat)
            if node is not None and asked:
                plan.append(_Ask(cat, node, asked))
        return plan

    def _start_ask(
        self,
        k: int,
        ask: _Ask,
        items: Sequence[FetchItem],
        features: Sequence[str],
        purpose: str,
        bank: Identity,
        use_id: str,
        started: list[_Started],
    ) -> float:
        """Send node ``ask``'s requests now (one per chunk) into ``started``; its deadline."""
        s = self.settings
        chunks = unique_chunks(items, ask.node.max_batch)
        deadline = bounded(
            s.node_deadline_s + s.node_deadline_per_item_s * max(len(c) for c in chunks)
        )
        whole = len(chunks) == 1  # unique_chunks keeps the order: the chunk is ``items``
        for c in chunks:
            call = ask.node.start_features(
                items if whole else [items[i] for i in c],
                features,
                purpose=purpose,
                bank_org=bank.org_id,
                bank_cert_sha256=bank.cert_sha256,
                timeout=deadline,
                use_id=use_id,
                via=bank.via,
            )
            started.append(_Started(k, c, call))
        return deadline

    async def _fan_out(
        self,
        bank: Identity,
        purpose: str,
        batch: _Batch,
        plan: Sequence[_Ask],
        by_cat: Mapping[str, Sequence[str]],
    ) -> list[list[NodeAnswer] | FedcreditError]:
        """Ask every planned node in parallel (the uses are reserved already; each node
        joins the same use id): every request is sent first, then the answers are awaited
        in turn, with no task per node (see NodeFeatures.start_features)."""
        # Nodes asked about the same enterprises share one FetchBatch (one encoding).
        batches: dict[tuple[int, ...], FetchBatch] = {}
        results: list[list[NodeAnswer | None] | FedcreditError] = []
        deadlines: list[float] = []
        started: list[_Started] = []
        try:
            for k, ask in enumerate(plan):
                key = tuple(ask.asked)
                items = batches.get(key)
                if items is None:
                    its = batch.items
                    items = batches[key] = FetchBatch(
                        FetchItem(its[i].enterprise, its[i].token) for i in key
                    )
                results.append([None] * len(key))
                try:
                    deadlines.append(self._start_ask(
                        k, ask, items, by_cat[ask.category], purpose, bank, batch.use_id, started
                    ))  # fmt: skip
                except Exception as exc:
                    deadlines.append(0.0)
                    results[k] = _node_failure(exc, ask.node)
            await _collect(plan, started, deadlines, results)
        except BaseException:
            for st in started:  # cancelled (or failed): no answer is wanted any more
                st.call.cancel()
            raise
        return [r if isinstance(r, FedcreditError) else _complete(r) for r in results]

    # ------------------------------------------------------------ step 3: the feature matrix
    def _merge(
        self,
        batch: _Batch,
        ask: _Ask,
        answer: list[NodeAnswer] | FedcreditError,
        feats: tuple[str, ...],
        cols: np.ndarray,
    ) -> None:
        """One node's answer into the batch: its columns of the matrix, its item errors, or
        (the node failed) the policy's consequence for every item asked."""
        node = ask.node
        if isinstance(answer, FedcreditError):
            if self.settings.on_node_failure == "score_missing":
                for i in ask.asked:
                    batch.missing[i].add(ask.category)
                return
            err = NodeUnavailable(
                f"node {node.org_id} ({ask.category}) failed: {answer.reason}: {answer.message}; "
                "the score is refused "
                "(the coordinator's policy does not score with a category missing)",
                node=node.org_id,
                category=ask.category,
            )
            for i in ask.asked:
                batch.refuse(i, err)
            return
        # The node's columns of the matrix, filled in one assignment (not per value).
        filled: list[int] = []
        block: list[list[float]] = []
        for i, a in zip(ask.asked, answer, strict=True):
            if a.error is not None:
                if batch.errors[i] is None:
                    a.error.metadata.setdefault("node", node.org_id)
                    batch.errors[i] = a.error
                continue
            vals = a.values or {}
            filled.append(i)
            if type(vals) is FeatureRow and vals.names == feats:
                block.append(vals.floats())  # already in the model's column order
            else:
                block.append([math.nan if (x := vals.get(f)) is None else float(x) for f in feats])
        if len(filled) == 1:  # a Score
            batch.matrix[filled[0], cols] = block[0]
        elif filled:
            batch.matrix[np.array(filled, dtype=np.intp)[:, None], cols] = block

    def _predict(
        self, model: ScoringModel, purpose: str, batch: _Batch
    ) -> list[Assessment | FedcreditError]:
        """Probability of default, grade, reasons and feature hash of every unrefused item."""
        rows = [i for i, e in enumerate(batch.errors) if e is None]
        unset = Internal("unset")  # every such slot is filled below; one placeholder for all
        out: list[Assessment | FedcreditError] = [
            e if e is not None else unset for e in batch.errors
        ]
        if not rows:
            return out
        sub = batch.matrix[rows]
        pds = model.predict(sub)
        contrib = model.contributions(sub)
        missing_mask = np.isnan(sub)
        features = model.features
        for k, i in enumerate(rows):
            consent = batch.consent(i)
            item = batch.items[i]
            pd = float(pds[k])
            out[i] = Assessment(
                item=item,
                jti=consent.jti,
                purpose=purpose,
                pd=pd,
                rating=model.rate(pd),
                model_version=model.version,
                reasons=top_reasons(contrib[k], features, self.descriptions, missing_mask[k]),
                missing_categories=sorted(batch.missing[i]),
                feature_hash=feature_hash(model.version, item.enterprise, consent.jti, sub[k]),
            )
        return out

    # ------------------------------------------------------------ steps 1-3
    async def assess_many(
        self,
        bank: Identity,
        items: Sequence[ScoreItem],
        purpose: str,
        stats: ScoringStats | None = None,
    ) -> list[Assessment | FedcreditError]:
        """Steps 1-3; the uses of the items assessed are committed before they are
        returned (the caller's answer -- a guarantee decision -- is this assessment; an
        item whose commit fails comes back as its error), the others released."""
        batch: _Batch | None = None
        out: list[Assessment | FedcreditError] = []
        try:
            out, batch = await self._assess(bank, items, purpose, stats)
            await self._commit(batch, out)
        finally:
            if batch is not None:
                await self._settle_now(
                    batch, {k for k, a in enumerate(out) if isinstance(a, Assessment)}
                )
        return out

    async def _assess(
        self,
        bank: Identity,
        items: Sequence[ScoreItem],
        purpose: str,
        stats: ScoringStats | None,
        uses: BatchUses | None = None,
    ) -> tuple[list[Assessment | FedcreditError], _Batch]:
        st = stats if stats is not None else ScoringStats()
        model = await self.models.current()
        t0 = self._clock()
        verified = await self._verify(bank, items, (purpose,))
        features = model.features
        batch = _Batch.start(items, verified, len(features))
        if uses is None:
            # One use id per call (one Score; a batch's items are distinct uses of distinct tokens).
            batch.use_id = f"score-{uuid.uuid4().hex}"
        else:
            batch.use_id = uses.use_id
            ranks = await uses.claim(batch.ok, [batch.consent(i).jti for i in batch.ok])
            batch.ranks = dict(zip(batch.ok, ranks, strict=True))
        try:
            await self._reserve(batch)
            t1 = self._clock()
            st.verify_s += t1 - t0
            st.items += len(items)
            layout = self._layout(model)
            by_cat = layout.by_cat
            plan = self._plan(batch, by_cat)
            answers = await self._fan_out(bank, purpose, batch, plan, by_cat)
            t2 = self._clock()
            st.fanout_s += t2 - t1
            for ask, answer in zip(plan, answers, strict=True):
                self._merge(batch, ask, answer, by_cat[ask.category], layout.cols[ask.category])
            out = self._predict(model, purpose, batch)
            st.predict_s += self._clock() - t2
        except BaseException:
            self._settle(batch, ())  # cancelled or failed: every use reserved goes back
            raise
        return out, batch

    # ------------------------------------------------------------ step 4: ledger, then answer
    @staticmethod
    def _access_payload(bank: Identity, a: Assessment) -> dict[str, Any]:
        return {
            "bank": bank.org_id,
            "enterprise": a.item.enterprise,
            "jti": a.jti,
            "purpose": a.purpose,
            "model_version": a.model_version,
            "rating": a.rating,
            "feature_hash": a.feature_hash,
            "missing_categories": a.missing_categories,
            **via_field(bank.via),  # "portal": a person's delegated session
        }

    async def score_many(
        self,
        bank: Identity,
        items: Sequence[ScoreItem],
        purpose: str,
        stats: ScoringStats | None = None,
        uses: BatchUses | None = None,
    ) -> list[Scored | FedcreditError]:
        st = stats if stats is not None else ScoringStats()
        assessed, batch = await self._assess(bank, items, purpose, st, uses)
        t0 = self._clock()
        ok = [(k, a) for k, a in enumerate(assessed) if isinstance(a, Assessment)]
        out: list[Scored | FedcreditError] = [
            a if isinstance(a, FedcreditError) else Internal("unset") for a in assessed
        ]
        try:
            if ok:
                entries = [(a.item.enterprise, self._access_payload(bank, a)) for _, a in ok]
                indexes = await self.gate.append_many("score_access", entries)
                for (k, a), index in zip(ok, indexes, strict=True):
                    out[k] = index if isinstance(index, LedgerUnavailable) else Scored(a, index)
                await self._commit(batch, out)
        finally:
            # Committed: the scores answered; released: everything refused (ledger down,
            # a node down, cancelled before the answer).
            await self._settle_now(batch, {k for k, r in enumerate(out) if isinstance(r, Scored)})
        st.ledger_s += self._clock() - t0
        return out

    async def score(self, bank: Identity, item: ScoreItem, purpose: str) -> Scored:
        (res,) = await self.score_many(bank, [item], purpose)
        if isinstance(res, FedcreditError):
            raise res
        return res


@dataclass
class WatchState:
    """Last known grade per watched enterprise (post-loan monitoring)."""

    grades: dict[str, str] = field(default_factory=dict)
