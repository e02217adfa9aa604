"""Consent-gated scoring: verify, fan out to the nodes in parallel, predict, rate, explain, log.

The order of one score (``Scorer.score_many``):

1. the credit code is validated and the consent token verified for the
   calling bank (its certificate must be the one the token is bound to,
   RFC 8705), purpose checked, one use counted;
2. every node whose category the model needs and the consent covers is
   asked in parallel (grpc.aio, one deadline per call), the token forwarded
   so each node verifies it again itself;
3. the feature vector is assembled in the model's order (missing = NaN),
   the active model predicts the probability of default, the stored
   thresholds give the grade, LightGBM's contributions give the reasons;
4. a ``score_access`` entry goes to the central ledger (bank, enterprise,
   consent jti, purpose, model version, rating, a hash of the feature
   vector — never the values) and only then is the answer released.

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
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from fedcredit.common.canonical import canonical_json, number
from fedcredit.common.errors import DeadlineExceeded, FedcreditError, Internal, Unavailable
from fedcredit.common.evidence import AsyncEvidenceSink
from fedcredit.common.tls import Identity
from fedcredit.common.uscc import validate as validate_uscc
from fedcredit.consent.verify import BatchUseCounter
from fedcredit.coordinator.errors import LedgerUnavailable, NodeUnavailable
from fedcredit.coordinator.fanout import (
    Catalog,
    FeatureRow,
    FetchBatch,
    FetchItem,
    NodeAnswer,
    NodeFeatures,
)
from fedcredit.coordinator.model import ScoringModel
from fedcredit.coordinator.reasons import Reason, top_reasons

log = logging.getLogger(__name__)

# Entries per ledger Append call (the LedgerService accepts up to 1,000 by default).
LEDGER_APPEND_BATCH = 500

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


class Scorer:
    def __init__(
        self,
        *,
        verifier: Any,
        nodes: Mapping[str, NodeFeatures],
        catalog: Catalog,
        ledger: AsyncEvidenceSink,
        models: ModelSource,
        settings: ScoringSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.verifier = verifier
        self.nodes = dict(nodes)  # category -> node
        self.catalog = catalog
        self.ledger = ledger
        self.models = models
        self.settings = settings or ScoringSettings()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.verify_threads, thread_name_prefix="verify"
        )
        self._clock = clock
        self.descriptions = catalog.descriptions()
        self._separate_count = hasattr(verifier, "counter")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ step 1: tokens
    def _verify_chunk(
        self, bank: Identity, items: Sequence[ScoreItem], purposes: Collection[str]
    ) -> list[Any]:
        out: list[Any] = []
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
                        count_use=not self._separate_count,
                    )
                )
            except Exception as exc:
                out.append(as_domain(exc, "verifying a consent token"))
        return out

    async def _verify(
        self, bank: Identity, items: Sequence[ScoreItem], purposes: Collection[str]
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        # Token checks are CPU work (Ed25519) and may call the consent service
        # (use counts, key refresh): keep them off the event loop, in parallel slices.
        n = max(1, min(self.settings.verify_threads, len(items) // 64 or 1))
        size = -(-len(items) // n)
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, self._verify_chunk, bank, p, purposes)
                for p in parts
            )
        )
        return [r for part in results for r in part]

    def _count_chunk(self, consents: Sequence[Any]) -> list[FedcreditError | None]:
        counter = self.verifier.counter
        if isinstance(counter, BatchUseCounter):
            # One round trip (one transaction at the consent service) for the chunk.
            try:
                counted = counter.use_many([(c.jti, c.max_uses, c.expires_at) for c in consents])
            except Exception as exc:
                err = as_domain(exc, "counting consent uses")
                return [err] * len(consents)
            return [r if isinstance(r, FedcreditError) else None for r in counted]
        out: list[FedcreditError | None] = []
        for c in consents:
            try:
                counter.use(c.jti, c.max_uses, c.expires_at)
                out.append(None)
            except Exception as exc:
                out.append(as_domain(exc, "counting a consent use"))
        return out

    async def _count_uses(self, consents: Sequence[Any]) -> list[FedcreditError | None]:
        """Count one use per consent at the consent service (atomic there with revocation)."""
        if not consents:
            return []
        loop = asyncio.get_running_loop()
        n = max(1, min(self.settings.verify_threads, len(consents) // 16 or 1))
        size = -(-len(consents) // n)
        parts = [consents[i : i + size] for i in range(0, len(consents), size)]
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool, self._count_chunk, p) for p in parts)
        )
        return [r for part in results for r in part]

    # ------------------------------------------------------------ step 2: fan-out
    async def _ask_node(
        self,
        node: NodeFeatures,
        items: Sequence[FetchItem],
        features: Sequence[str],
        purpose: str,
        bank: Identity,
    ) -> list[NodeAnswer] | FedcreditError:
        s = self.settings
        chunks = unique_chunks(items, node.max_batch)
        deadline = s.node_deadline_s + s.node_deadline_per_item_s * max(len(c) for c in chunks)
        whole = len(chunks) == 1  # unique_chunks keeps the order: the chunk is ``items``
        try:
            parts = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        node.get_features(
                            items if whole else [items[i] for i in c],
                            features,
                            purpose=purpose,
                            bank_org=bank.org_id,
                            bank_cert_sha256=bank.cert_sha256,
                            timeout=deadline,
                        )
                        for c in chunks
                    )
                ),
                timeout=deadline + 0.5,
            )
            answers: list[NodeAnswer | None] = [None] * len(items)
            for c, part in zip(chunks, parts, strict=True):
                for i, a in zip(c, part, strict=True):
                    answers[i] = a
            return [a for a in answers if a is not None]
        except (Unavailable, DeadlineExceeded) as exc:
            return exc
        except TimeoutError:
            return NodeUnavailable(
                f"node {node.org_id} ({node.category}) did not answer within {deadline:.1f} s",
                node=node.org_id,
                category=node.category,
            )
        except Exception as exc:
            return as_domain(exc, f"asking node {node.org_id}")

    # ------------------------------------------------------------ steps 1-3
    async def assess_many(
        self,
        bank: Identity,
        items: Sequence[ScoreItem],
        purpose: str,
        stats: ScoringStats | None = None,
    ) -> list[Assessment | FedcreditError]:
        st = stats if stats is not None else ScoringStats()
        model = await self.models.current()
        t0 = self._clock()
        verified = await self._verify(bank, items, (purpose,))
        t1 = self._clock()
        st.verify_s += t1 - t0
        st.items += len(items)

        features = model.features
        col = {f: j for j, f in enumerate(features)}
        by_cat: dict[str, list[str]] = {}
        for f in features:
            cat = self.catalog.category_of(f)
            if cat is not None:
                by_cat.setdefault(cat, []).append(f)

        errors: list[FedcreditError | None] = [
            v if isinstance(v, FedcreditError) else None for v in verified
        ]
        ok = [i for i, e in enumerate(errors) if e is None]
        matrix = np.full((len(items), len(features)), np.nan, dtype=np.float64)
        missing_cats: list[set[str]] = [set() for _ in items]

        # Which items each node is asked about: the consent must cover the category and the node.
        plan: list[tuple[str, NodeFeatures, list[int]]] = []
        for cat, _feats in sorted(by_cat.items()):
            node = self.nodes.get(cat)
            asked: list[int] = []
            for i in ok:
                consent = verified[i]
                covered = (consent.score_only or cat in consent.categories) and (
                    node is not None and node.org_id in consent.nodes
                )
                if covered:
                    asked.append(i)
                else:
                    missing_cats[i].add(cat)
            if node is None:
                for i in asked:
                    missing_cats[i].add(cat)
            elif asked:
                plan.append((cat, node, asked))

        counting = asyncio.ensure_future(
            self._count_uses([verified[i] for i in ok] if self._separate_count else [])
        )
        # Nodes asked about the same enterprises share one FetchBatch (one encoding).
        batches: dict[tuple[int, ...], FetchBatch] = {}
        for _cat, _node, asked in plan:
            key = tuple(asked)
            if key not in batches:
                batches[key] = FetchBatch(
                    FetchItem(items[i].enterprise, items[i].token) for i in asked
                )
        answers = await asyncio.gather(
            *(
                self._ask_node(node, batches[tuple(asked)], by_cat[cat], purpose, bank)
                for cat, node, asked in plan
            )
        )
        counted = await counting
        for i, err in zip(ok if self._separate_count else [], counted, strict=True):
            if err is not None:
                errors[i] = err  # e.g. revoked meanwhile, or no uses left: no answer
        t2 = self._clock()
        st.fanout_s += t2 - t1
        for (cat, node, asked), ans in zip(plan, answers, strict=True):
            if isinstance(ans, FedcreditError):
                if self.settings.on_node_failure == "score_missing":
                    for i in asked:
                        missing_cats[i].add(cat)
                    continue
                err = NodeUnavailable(
                    f"node {node.org_id} ({cat}) failed: {ans.reason}: {ans.message}; the score is refused "
                    "(the coordinator's policy does not score with a category missing)",
                    node=node.org_id,
                    category=cat,
                )
                for i in asked:
                    errors[i] = errors[i] or err
                continue
            # The node's columns of the matrix, filled in one assignment (not per value).
            feats = by_cat[cat]
            feats_t = tuple(feats)
            js = [col[f] for f in feats]
            filled: list[int] = []
            block: list[list[float]] = []
            for i, a in zip(asked, ans, strict=True):
                if a.error is not None:
                    if errors[i] is None:
                        a.error.metadata.setdefault("node", node.org_id)
                        errors[i] = a.error
                    continue
                vals = a.values or {}
                filled.append(i)
                if type(vals) is FeatureRow and vals.names == feats_t:
                    block.append(vals.floats())  # already in the model's column order
                else:
                    block.append(
                        [math.nan if (x := vals.get(f)) is None else float(x) for f in feats]
                    )
            if filled:
                matrix[np.ix_(filled, js)] = block

        rows = [i for i, e in enumerate(errors) if e is None]
        unset = Internal("unset")  # every such slot is filled below; one placeholder for all
        out: list[Assessment | FedcreditError] = [e if e is not None else unset for e in errors]
        if rows:
            sub = matrix[rows]
            pds = model.predict(sub)
            contrib = model.contributions(sub)
            missing_mask = np.isnan(sub)
            for k, i in enumerate(rows):
                consent = verified[i]
                pd = float(pds[k])
                out[i] = Assessment(
                    item=items[i],
                    jti=consent.jti,
                    purpose=purpose,
                    pd=pd,
                    rating=model.rate(pd),
                    model_version=model.version,
                    reasons=top_reasons(contrib[k], features, self.descriptions, missing_mask[k]),
                    missing_categories=sorted(missing_cats[i]),
                    feature_hash=feature_hash(
                        model.version, items[i].enterprise, consent.jti, sub[k]
                    ),
                )
        st.predict_s += self._clock() - t2
        return out

    # ------------------------------------------------------------ step 4: ledger, then answer
    async def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> int:
        try:
            receipt = await asyncio.wait_for(
                self.ledger.append(kind, subject, payload), timeout=self.settings.ledger_deadline_s
            )
        except TimeoutError as exc:
            raise LedgerUnavailable(
                f"the ledger did not take the {kind} entry within {self.settings.ledger_deadline_s} s; "
                "nothing is answered without a ledger entry"
            ) from exc
        except LedgerUnavailable:
            raise
        except FedcreditError as exc:
            raise LedgerUnavailable(
                f"the ledger refused the {kind} entry ({exc.reason}: {exc.message}); "
                "nothing is answered without a ledger entry"
            ) from exc
        except Exception as exc:
            raise LedgerUnavailable(
                f"the ledger did not take the {kind} entry ({type(exc).__name__}: {exc}); "
                "nothing is answered without a ledger entry"
            ) from exc
        return receipt.index

    async def append_many(
        self, kind: str, items: Sequence[tuple[str | None, Mapping[str, Any]]]
    ) -> list[int | LedgerUnavailable]:
        """Several entries in as few ledger calls as the sink allows; per item its index or the
        failure (a call is all or nothing, so a failed call fails exactly its own items)."""
        many = getattr(self.ledger, "append_many", None)

        async def one(s: str | None, p: Mapping[str, Any]) -> int | LedgerUnavailable:
            try:
                return await self.append(kind, s, p)
            except LedgerUnavailable as exc:
                return exc

        if many is None or len(items) == 1:
            return list(await asyncio.gather(*(one(s, p) for s, p in items)))

        async def call(
            part: list[tuple[str, str | None, Mapping[str, Any]]],
        ) -> list[int | LedgerUnavailable]:
            limit = self.settings.ledger_deadline_s
            try:
                receipts = await asyncio.wait_for(many(part), timeout=limit)
                if len(receipts) != len(part):
                    raise LedgerUnavailable(
                        f"the ledger acknowledged {len(receipts)} of {len(part)} {kind} entries"
                    )
                return [r.index for r in receipts]
            except LedgerUnavailable as exc:
                err = exc
            except TimeoutError:
                err = LedgerUnavailable(
                    f"the ledger did not take {len(part)} {kind} entries within {limit} s"
                )
            except FedcreditError as exc:
                err = LedgerUnavailable(
                    f"the ledger refused {len(part)} {kind} entries ({exc.reason}: {exc.message})"
                )
            except Exception as exc:
                err = LedgerUnavailable(
                    f"the ledger did not take {len(part)} {kind} entries ({type(exc).__name__}: {exc})"
                )
            err.message += "; nothing is answered without a ledger entry"
            return [err] * len(part)

        step = LEDGER_APPEND_BATCH
        parts = [[(kind, s, p) for s, p in items[i : i + step]] for i in range(0, len(items), step)]
        results = await asyncio.gather(*(call(p) for p in parts))
        return [r for part in results for r in part]

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
        }

    async def score_many(
        self,
        bank: Identity,
        items: Sequence[ScoreItem],
        purpose: str,
        stats: ScoringStats | None = None,
    ) -> list[Scored | FedcreditError]:
        st = stats if stats is not None else ScoringStats()
        assessed = await self.assess_many(bank, items, purpose, st)
        t0 = self._clock()
        ok = [k for k, a in enumerate(assessed) if isinstance(a, Assessment)]
        out: list[Scored | FedcreditError] = [
            a if isinstance(a, FedcreditError) else Internal("unset") for a in assessed
        ]
        if ok:
            entries: list[tuple[str | None, Mapping[str, Any]]] = []
            for k in ok:
                a = assessed[k]
                assert isinstance(a, Assessment)
                entries.append((a.item.enterprise, self._access_payload(bank, a)))
            indexes = await self.append_many("score_access", entries)
            for k, index in zip(ok, indexes, strict=True):
                a = assessed[k]
                assert isinstance(a, Assessment)
                out[k] = index if isinstance(index, LedgerUnavailable) else Scored(a, index)
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
