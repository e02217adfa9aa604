"""The coordinator's gRPC servicers (grpc.aio): ScoringService, GuaranteeService, ModelRegistry.

Callers are identified by their mTLS certificate only (``common.tls.peer_identity``):
banks score, apply and report outcomes for themselves; operators (and the
coordinator's own trainer) publish and activate models. Every domain error
becomes a gRPC status with its reason (``common.rpc.handle_errors``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedcredit.common import metrics as obs
from fedcredit.common.canonical import canonical_json
from fedcredit.common.errors import BatchTooLarge, FedcreditError, InvalidArgument, RoleNotAllowed
from fedcredit.common.evidence import AsyncBatchEvidenceSink, EvidenceSink
from fedcredit.common.rpc import handle_errors
from fedcredit.common.tls import Identity, peer_identity
from fedcredit.common.wire import item_error
from fedcredit.consent.delegation import Delegation, DelegationVerifier, acting_delegation, step_up
from fedcredit.consent.verify import TokenVerifier
from fedcredit.coordinator.batches import ResumableBatch, check_batch_id
from fedcredit.coordinator.client import privacy_pb
from fedcredit.coordinator.deadline import set_from_remaining
from fedcredit.coordinator.errors import InvalidBatchId, ModelVersionNotFound, NoActiveModel
from fedcredit.coordinator.fanout import Catalog, NodeFeatures
from fedcredit.coordinator.fund import FundStatus, GuaranteeDesk
from fedcredit.coordinator.gate import LedgerGate
from fedcredit.coordinator.model import ScoringModel
from fedcredit.coordinator.reasons import Reason
from fedcredit.coordinator.registry import Registry
from fedcredit.coordinator.scoring import ModelSource, Scored, ScoreItem, Scorer, ScoringStats
from fedcredit.coordinator.settings import CoordinatorSettings
from fedcredit.coordinator.store import CoordinatorStore, GuaranteeRecord, ModelRecord
from fedcredit.coordinator.uses import AsyncUses
from fedcredit.v1 import coordinator_pb2 as pb
from fedcredit.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    "fedcredit.v1.ScoringService",
    "fedcredit.v1.GuaranteeService",
    "fedcredit.v1.ModelRegistry",
)

BANK_ROLES = frozenset({"bank"})
PUBLISH_ROLES = frozenset({"operator", "coordinator"})
ACTIVATE_ROLES = frozenset({"operator"})
READ_ROLES = frozenset({"bank", "operator", "auditor", "coordinator", "department"})
FUND_READ_ROLES = frozenset({"bank", "operator", "auditor", "coordinator", "market"})
MODEL_TEXT_ROLES = frozenset({"operator", "auditor", "coordinator"})


def require_role(context: Any, roles: Collection[str], what: str) -> Identity:
    ident = peer_identity(context)
    if ident.role not in roles:
        raise RoleNotAllowed(
            f"{what} is for role(s) {', '.join(sorted(roles))}; the caller {ident.org_id} has role {ident.role}",
            role=ident.role,
        )
    return ident


async def acting_bank(app: Coordinator, context: Any, what: str) -> Identity:
    """The bank a call acts for: the caller's certificate, or for the portal's certificate
    the bank its delegation ticket names (verified off the event loop: the passkey check
    may ask the consent service). The portal's certificate alone is no bank."""
    return await acting_as(app, context, BANK_ROLES, what)


async def acting_as(app: Coordinator, context: Any, roles: Collection[str], what: str) -> Identity:  # fmt: skip
    """Who a call acts as, of ``roles``: the caller's certificate, or for the portal's
    certificate the organisation its delegation ticket names (an operator activating a
    model from its portal page, say); the portal's certificate alone is none of them."""
    return (await acting_with_ticket(app, context, roles, what))[0]


async def acting_with_ticket(
    app: Coordinator, context: Any, roles: Collection[str], what: str
) -> tuple[Identity, Delegation | None]:
    """:func:`acting_as` with the verified delegation ticket (None: the caller's own
    certificate), for an act that needs a step-up ticket's signed act."""
    ident = peer_identity(context)
    if ident.role != "portal":
        return require_role(context, roles, what), None
    md = tuple(context.invocation_metadata() or ())
    return await asyncio.to_thread(acting_delegation, ident, md, app.delegation, roles, what)


# ---------------------------------------------------------------- the active model


class ActiveModel(ModelSource):
    """The active model, cached; another process's activation is picked up within ``refresh_s``."""

    def __init__(self, store: CoordinatorStore, refresh_s: float = 2.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._model: ScoringModel | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def set(self, rec: ModelRecord) -> None:
        assert rec.model_text is not None
        self._model = ScoringModel.from_text(rec.version, rec.model_text, rec.thresholds)
        self._checked = time.monotonic()

    async def current(self) -> ScoringModel:
        model = self._model
        if model is not None and time.monotonic() - self._checked < self.refresh_s:
            return model
        async with self._lock:
            if self._model is not None and time.monotonic() - self._checked < self.refresh_s:
                return self._model
            version = await asyncio.to_thread(self.store.active_version)
            if version is None:
                raise NoActiveModel(
                    "no credit model is active yet; an operator must publish and activate one"
                )
            if self._model is None or self._model.version != version:
                rec = await asyncio.to_thread(self.store.require_model, version, with_text=True)
                self.set(rec)
            self._checked = time.monotonic()
            assert self._model is not None
            return self._model


# ---------------------------------------------------------------- conversions


def reasons_pb(reasons: Sequence[Reason]) -> list[pb.Reason]:
    return [
        pb.Reason(
            feature=r.feature,
            description=r.description,
            contribution=r.contribution,
            missing=r.missing,
        )
        for r in reasons
    ]


def score_pb(s: Scored) -> pb.ScoreResult:
    a = s.assessment
    return pb.ScoreResult(
        enterprise=a.item.enterprise,
        rating=a.rating,
        probability_of_default=a.pd,
        model_version=a.model_version,
        reasons=reasons_pb(a.reasons),
        missing_categories=a.missing_categories,
        ledger_index=s.ledger_index,
        consent_jti=a.jti,
        feature_hash=a.feature_hash,
        request_id=a.item.request_id,
    )


def guarantee_pb(rec: GuaranteeRecord, replayed: bool) -> pb.GuaranteeDecision:
    d = rec.decision
    return pb.GuaranteeDecision(
        application_id=rec.application_id,
        approved=d.approved,
        reason=d.reason,
        explanation=d.explanation,
        rating=d.grade,
        probability_of_default=rec.pd,
        model_version=rec.model_version,
        fund_share_bp=d.fund_share_bp,
        bank_share_bp=d.bank_share_bp,
        fund_amount_yuan=d.fund_amount,
        collateral_required_yuan=d.collateral_required,
        ledger_index=rec.ledger_index or 0,
        reasons=[
            pb.Reason(
                feature=r["feature"],
                description=r["description"],
                contribution=float(r["contribution"]),
                missing=bool(r["missing"]),
            )
            for r in rec.details.get("reasons", [])
        ],
        missing_categories=rec.details.get("missing_categories", []),
        status=rec.status,
        replayed=replayed,
        enterprise=rec.enterprise,
        amount_yuan=rec.amount,
        term_months=rec.term_months,
        bank=rec.bank,
        decided_at=rec.decided_at,
    )


def model_pb(rec: ModelRecord, include_text: bool = False) -> pb.ModelVersion:
    return pb.ModelVersion(
        version=rec.version,
        sha256=rec.sha256,
        features=list(rec.features),
        metrics_json=json.dumps(rec.metrics, sort_keys=True),
        trainer=rec.trainer,
        created_at=rec.created_at,
        thresholds=pb.RatingThresholds(a=rec.thresholds.a, b=rec.thresholds.b, c=rec.thresholds.c),
        active=rec.active,
        activated_at=rec.activated_at or 0,
        publish_ledger_index=rec.publish_ledger_index,
        activate_ledger_index=rec.activate_ledger_index or 0,
        model_text=(rec.model_text or "") if include_text else "",
        settings_json=json.dumps(rec.settings, sort_keys=True),
        calibration_size=len(rec.calibration),
        grade_counts={k: int(v) for k, v in rec.grade_counts.items()},
        privacy=privacy_pb(rec.privacy),
    )


def privacy_from_pb(request: pb.PublishModelRequest) -> dict[str, Any] | None:
    """A publication's privacy as the registry takes it (checked there), or None."""
    if not request.HasField("privacy"):
        return None
    p = request.privacy
    details = parse_json_field(p.details_json, "privacy.details_json")
    return details | {"epsilon": p.epsilon, "delta": p.delta}


def fund_pb(st: FundStatus) -> pb.FundStatusReply:
    d = st.to_dict()
    return pb.FundStatusReply(
        fund_size_yuan=d["fund_size"],
        balance_yuan=d["balance"],
        exposure_yuan=d["exposure"],
        capacity_yuan=d["capacity"],
        max_leverage=d["max_leverage"],
        paid_out_yuan=d["paid_out"],
        active=d["active"],
        approved=d["approved"],
        refused=d["refused"],
        released=d["released"],
        defaulted=d["defaulted"],
        policy_json=canonical_json(st.policy.to_dict()).decode(),
    )


def parse_json_field(text: str, field: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"{field} must be a JSON object: {exc.msg} at position {exc.pos}"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- batch streaming

T = TypeVar("T")
R = TypeVar("R")


def batch_item(it: ScoreItem, res: Scored | FedcreditError) -> pb.ScoreBatchItem:
    """One enterprise's answer in a ScoreBatch stream: its result or its item error."""
    if isinstance(res, FedcreditError):
        return pb.ScoreBatchItem(
            request_id=it.request_id, enterprise=it.enterprise, error=item_error(res)
        )
    return pb.ScoreBatchItem(
        request_id=it.request_id, enterprise=it.enterprise, result=score_pb(res)
    )


def batch_answer(
    it: ScoreItem, ans: pb.ScoreResult | FedcreditError, replayed: bool
) -> pb.ScoreBatchItem:
    """One item of a resumable batch: its (possibly replayed) result or its item error."""
    if isinstance(ans, FedcreditError):
        return pb.ScoreBatchItem(
            request_id=it.request_id, enterprise=it.enterprise, error=item_error(ans)
        )
    return pb.ScoreBatchItem(
        request_id=it.request_id, enterprise=it.enterprise, result=ans, replayed=replayed
    )


async def read_into(requests: AsyncIterator[T], queue: asyncio.Queue[T | None]) -> None:
    """Every request of the stream into ``queue``, then None (also when the stream fails)."""
    try:
        async for req in requests:
            await queue.put(req)
    finally:
        await queue.put(None)


async def chunks_of(
    queue: asyncio.Queue[T | None], size: int, linger_s: float = 0.02
) -> AsyncIterator[list[T]]:
    """What the queue holds, in chunks of at most ``size``, until its None.

    A chunk takes what is already there (up to ``size``, waiting at most ``linger_s``
    for more); it does not wait to be full, so an interactive client is answered promptly.
    """
    loop = asyncio.get_running_loop()
    done = False
    while not done:
        first = await queue.get()
        if first is None:
            return
        chunk = [first]
        deadline = loop.time() + linger_s
        while len(chunk) < size:
            try:
                nxt = (
                    queue.get_nowait()
                    if queue.qsize()
                    else await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                )
            except TimeoutError:
                break
            if nxt is None:
                done = True
                break
            chunk.append(nxt)
        yield chunk


async def in_order(
    chunks: AsyncIterator[list[T]],
    run: Callable[[list[T]], Coroutine[Any, Any, list[R]]],
    inflight: int,
) -> AsyncGenerator[R, None]:
    """``run`` on every chunk, at most ``inflight`` being run at a time; each chunk's results
    are yielded as soon as it (and every chunk before it) is done, while reading on: a client
    may wait for answers before it sends more.

    A chunk that is done but waits for an earlier one to be answered does not hold a place
    (up to ``inflight`` such chunks wait; their answers are kept), and chunks read while a
    chunk's answers are being written start at once: a slow chunk -- a node's fsync, a
    consent round trip queued -- used to hold every later one back, leaving the cores idle
    until it finished."""
    it = chunks.__aiter__()
    next_chunk: asyncio.Future[list[T]] = asyncio.ensure_future(it.__anext__())
    pending: deque[asyncio.Task[list[R]]] = deque()
    input_done = False

    def room() -> bool:
        running = sum(1 for t in pending if not t.done())
        return running < inflight and len(pending) < 2 * inflight

    def start_ready() -> None:
        nonlocal next_chunk, input_done
        while not input_done and next_chunk.done() and room():
            try:
                chunk = next_chunk.result()
            except StopAsyncIteration:
                input_done = True
                return
            pending.append(asyncio.create_task(run(chunk)))
            next_chunk = asyncio.ensure_future(it.__anext__())

    try:
        while True:
            start_ready()
            while pending and pending[0].done():
                for item in pending.popleft().result():
                    yield item
                    start_ready()
                start_ready()
            if input_done and not pending:
                return
            waits: set[asyncio.Future[Any]] = {t for t in pending if not t.done()}
            if not input_done and room():
                waits.add(next_chunk)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        next_chunk.cancel()
        for t in pending:
            t.cancel()


# ---------------------------------------------------------------- the application


@dataclass
class Coordinator:
    """Everything the servicers share."""

    settings: CoordinatorSettings
    store: CoordinatorStore
    scorer: Scorer
    desk: GuaranteeDesk
    registry: Registry
    models: ActiveModel
    # Checks the portal's delegation tickets (consent/delegation.py); None: the portal's
    # certificate acts for no bank here.
    delegation: DelegationVerifier | None = None

    @classmethod
    def build(
        cls,
        *,
        settings: CoordinatorSettings,
        store: CoordinatorStore,
        verifier: TokenVerifier,
        nodes: dict[str, NodeFeatures],
        catalog: Catalog,
        ledger: AsyncBatchEvidenceSink,
        ledger_sync: EvidenceSink,
        delegation: DelegationVerifier | None = None,
        uses: AsyncUses | None = None,
    ) -> Coordinator:
        """``uses``: the consent service's use counter, awaited on the event loop (default:
        the verifier's blocking one, in the scorer's threads)."""
        models = ActiveModel(store, settings.model_refresh_s)
        gate = LedgerGate(ledger, deadline_s=settings.scoring.ledger_deadline_s)
        scorer = Scorer(
            verifier=verifier,
            nodes=nodes,
            catalog=catalog,
            gate=gate,
            models=models,
            settings=settings.scoring,
            uses=uses,
        )
        desk = GuaranteeDesk(scorer=scorer, gate=gate, store=store, policy=settings.fund)
        registry = Registry(store, ledger_sync, shares=settings.shares, on_activate=models.set)
        return cls(settings, store, scorer, desk, registry, models, delegation)

    async def close(self) -> None:
        self.scorer.close()
        await self.scorer.close_uses()
        await asyncio.to_thread(self.scorer.verifier.close)
        for node in self.scorer.nodes.values():
            await node.close()


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    def __init__(self, app: Coordinator) -> None:
        self.app = app
        self.batch_stats = ScoringStats()  # cumulative, read by the benchmark

    @handle_errors
    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResult:
        bank = await acting_bank(self.app, context, "Score")
        set_from_remaining(context.time_remaining())  # each dependency within the bank's deadline
        item = ScoreItem(request.enterprise, request.consent_token, request.request_id)
        return score_pb(await self.app.scorer.score(bank, item, "credit_assessment"))

    @handle_errors
    async def ScoreBatch(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: Any
    ) -> AsyncIterator[pb.ScoreBatchItem]:
        bank = await acting_bank(self.app, context, "ScoreBatch")
        s = self.app.settings
        queue: asyncio.Queue[pb.ScoreRequest | None] = asyncio.Queue(
            maxsize=s.batch_chunk * s.batch_inflight * 2
        )

        resumable: list[ResumableBatch | None] = []  # set by the first chunk

        async def run(chunk: list[pb.ScoreRequest]) -> list[pb.ScoreBatchItem]:
            items = [ScoreItem(r.enterprise, r.consent_token, r.request_id) for r in chunk]
            if not resumable:  # chunks run in arrival order: this is the stream's first
                bid = chunk[0].batch_id
                resumable.append(
                    ResumableBatch(
                        self.app.store, self.app.scorer, bank, check_batch_id(bid), score_pb
                    )
                    if bid
                    else None
                )
            book = resumable[0]
            expected = book.batch_id if book is not None else ""
            if any(r.batch_id != expected for r in chunk):
                raise InvalidBatchId(
                    f"every request of a ScoreBatch stream carries the batch id of the first "
                    f"({expected!r})"
                )
            if book is not None:
                answers = await book.run(items, self.batch_stats)
                return [batch_answer(it, a, replayed) for it, (a, replayed) in zip(items, answers, strict=True)]  # fmt: skip
            results = await self.app.scorer.score_many(
                bank, items, "credit_assessment", self.batch_stats
            )
            return [batch_item(it, res) for it, res in zip(items, results, strict=True)]

        read_task = asyncio.create_task(read_into(request_iterator, queue))
        try:
            async with aclosing(
                in_order(chunks_of(queue, s.batch_chunk), run, s.batch_inflight)
            ) as answers:
                async for item in answers:
                    yield item
            await read_task
        finally:
            read_task.cancel()

    @handle_errors
    async def WatchRatings(
        self, request: pb.WatchRequest, context: Any
    ) -> AsyncIterator[pb.RatingEvent]:
        bank = await acting_bank(self.app, context, "WatchRatings")
        s = self.app.settings
        if not request.subscriptions:
            raise InvalidArgument(
                "WatchRatings needs at least one subscription (enterprise + consent token)"
            )
        if len(request.subscriptions) > s.watch_max_subscriptions:
            raise BatchTooLarge(
                f"at most {s.watch_max_subscriptions} enterprises may be watched in one call, "
                f"got {len(request.subscriptions)}"
            )
        interval = float(request.interval_seconds) or s.watch_interval_s
        if interval < s.watch_min_interval_s:
            raise InvalidArgument(
                f"interval must be at least {s.watch_min_interval_s} s, got {request.interval_seconds} s"
            )
        items = [
            ScoreItem(r.enterprise, r.consent_token, r.request_id) for r in request.subscriptions
        ]
        grades: dict[str, str] = {}
        rnd = 0
        while items:
            rnd += 1
            if rnd > 1 and bank.via:
                # a stream opened through the portal lives no longer than the delegation
                # ticket it was opened with (nor the passkey): checked again each round
                bank = await acting_bank(self.app, context, "WatchRatings")
            results = await self.app.scorer.score_many(bank, items, "post_loan_monitoring")
            still: list[ScoreItem] = []
            for it, res in zip(items, results, strict=True):
                if isinstance(res, FedcreditError):
                    yield pb.RatingEvent(
                        kind=pb.RatingEvent.ERROR,
                        enterprise=it.enterprise,
                        error=item_error(res),
                        round=rnd,
                    )
                    continue
                still.append(it)
                prev = grades.get(it.enterprise)
                grade = res.assessment.rating
                grades[it.enterprise] = grade
                if prev is None:
                    kind = pb.RatingEvent.CURRENT
                elif grade > prev:  # "A" < "B" < "C" < "D": a larger letter is worse
                    kind = pb.RatingEvent.DOWNGRADE
                elif grade < prev:
                    kind = pb.RatingEvent.UPGRADE
                else:
                    continue
                yield pb.RatingEvent(
                    kind=kind,
                    enterprise=it.enterprise,
                    previous_rating=prev or "",
                    result=score_pb(res),
                    round=rnd,
                )
            items = still
            if request.max_rounds and rnd >= request.max_rounds:
                return
            await asyncio.sleep(interval)


class GuaranteeServicer(pb_grpc.GuaranteeServiceServicer):
    def __init__(self, app: Coordinator) -> None:
        self.app = app

    @handle_errors
    async def Apply(self, request: pb.GuaranteeApplication, context: Any) -> pb.GuaranteeDecision:
        bank = await acting_bank(self.app, context, "Apply")
        set_from_remaining(context.time_remaining())
        rec, replayed = await self.app.desk.apply(
            bank,
            application_id=request.application_id,
            enterprise=request.enterprise,
            token=request.consent_token,
            amount=request.amount_yuan,
            term_months=request.term_months,
            collateral=request.collateral_yuan,
        )
        return guarantee_pb(rec, replayed)

    @handle_errors
    async def ReportOutcome(self, request: pb.OutcomeReport, context: Any) -> pb.OutcomeResult:
        bank = require_role(context, BANK_ROLES, "ReportOutcome")
        if request.outcome not in (pb.OutcomeReport.REPAID, pb.OutcomeReport.DEFAULTED):
            raise InvalidArgument("outcome must be REPAID or DEFAULTED")
        if request.loss_yuan < 0:
            raise InvalidArgument(f"loss must be >= 0 yuan, got {request.loss_yuan}")
        ans = await self.app.desk.report_outcome(
            bank,
            application_id=request.application_id,
            defaulted=request.outcome == pb.OutcomeReport.DEFAULTED,
            loss=request.loss_yuan,
        )
        r = ans.record
        return pb.OutcomeResult(
            application_id=r.application_id,
            status=r.status,
            payout_yuan=r.payout,
            ledger_index=r.outcome_ledger_index or 0,
            replayed=ans.replayed,
        )

    @handle_errors
    async def FundStatus(self, request: pb.FundStatusRequest, context: Any) -> pb.FundStatusReply:
        require_role(context, FUND_READ_ROLES, "FundStatus")
        return fund_pb(await self.app.desk.status())

    @handle_errors
    async def ListGuarantees(
        self, request: pb.ListGuaranteesRequest, context: Any
    ) -> pb.ListGuaranteesReply:
        ident = require_role(context, FUND_READ_ROLES, "ListGuarantees")
        bank = ident.org_id if ident.role == "bank" else None
        limit = min(request.limit or 100, 1000)
        recs = await asyncio.to_thread(
            lambda: self.app.store.list_guarantees(
                bank=bank, enterprise=request.enterprise or None, limit=limit
            )
        )
        return pb.ListGuaranteesReply(guarantees=[guarantee_pb(r, False) for r in recs])


class RegistryServicer(pb_grpc.ModelRegistryServicer):
    def __init__(self, app: Coordinator) -> None:
        self.app = app

    @handle_errors
    async def Publish(self, request: pb.PublishModelRequest, context: Any) -> pb.ModelVersion:
        ident = require_role(context, PUBLISH_ROLES, "Publish")
        if request.activate and ident.role not in ACTIVATE_ROLES:
            raise RoleNotAllowed(
                f"activating a model is for operators; {ident.org_id} has role {ident.role}"
            )
        metrics = parse_json_field(request.metrics_json, "metrics_json")
        settings = parse_json_field(request.settings_json, "settings_json")
        privacy = privacy_from_pb(request)
        rec = await asyncio.to_thread(
            lambda: self.app.registry.publish(
                request.model_text,
                trainer=ident.org_id,
                version=request.version or None,
                sha256=request.sha256 or None,
                metrics=metrics,
                settings=settings,
                calibration_pds=list(request.calibration_pds),
                activate=request.activate,
                privacy=privacy,
            )
        )
        obs.published(metrics, settings)
        return model_pb(rec)

    @handle_errors
    async def Activate(self, request: pb.ActivateModelRequest, context: Any) -> pb.ModelVersion:
        ident, ticket = await acting_with_ticket(self.app, context, ACTIVATE_ROLES, "Activate")
        if not request.version:
            raise InvalidArgument("Activate needs a model version")
        replaces, evidence = None, None
        if ticket is not None:  # through the portal: only with the operator's signed act
            act = step_up(ticket, "activate_model", version=request.version)
            if self.app.delegation is not None:  # always: the ticket was verified with it
                self.app.delegation.spend(ticket)
            replaces = str(act["terms"].get("replaces", ""))
            evidence = {
                "passkey_credential": str(act["passkey"]),
                "passkey_assertion_sha256": str(act["assertion_sha256"]),
                "statement_sha256": str(act["statement_sha256"]),
            }
        rec = await asyncio.to_thread(
            lambda: self.app.registry.activate(
                request.version,
                actor=ident.org_id,
                via=ident.via,
                replaces=replaces,
                evidence=evidence,
            )
        )
        return model_pb(rec)

    @handle_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsReply:
        await acting_as(self.app, context, READ_ROLES, "ListModels")
        recs = await asyncio.to_thread(self.app.registry.list)
        return pb.ListModelsReply(models=[model_pb(r) for r in recs])

    @handle_errors
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelVersion:
        ident = await acting_as(self.app, context, READ_ROLES, "GetModel")
        with_text = request.include_model_text
        if with_text and ident.role not in MODEL_TEXT_ROLES:
            raise RoleNotAllowed(
                f"the model file is for operators and auditors; {ident.org_id} has role {ident.role}"
            )
        rec = await asyncio.to_thread(
            lambda: self.app.registry.get(request.version or None, with_text=with_text)
        )
        if rec is None:
            if request.version:
                raise ModelVersionNotFound(f"no model version {request.version!r} in the registry")
            raise NoActiveModel("no credit model is active yet")
        return model_pb(rec, with_text)


def register(server: grpc.aio.Server, app: Coordinator) -> ScoringServicer:
    scoring = ScoringServicer(app)
    pb_grpc.add_ScoringServiceServicer_to_server(scoring, server)
    pb_grpc.add_GuaranteeServiceServicer_to_server(GuaranteeServicer(app), server)
    pb_grpc.add_ModelRegistryServicer_to_server(RegistryServicer(app), server)
    return scoring
