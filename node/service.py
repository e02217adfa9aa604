"""The node's gRPC FeatureService (sync server, mTLS) and how a node process is assembled.

Order of checks for GetFeatures / StreamFeatures (request-level failures refuse the whole
call and write nothing; per-enterprise failures are answered in that item only):

1. caller identity from its certificate; access policy (role x purpose, on whose behalf);
2. batch not empty and not above ``max_batch``; no enterprise twice; features known;
3. the store answers (its data version; STORE_UNAVAILABLE otherwise);
4. per enterprise: valid credit code, then the consent token verified *here* for the bank
   the policy decided, this node's category and organisation, the purpose;
5. feature vectors (cache or store);
6. the disclosure-log entries of every served enterprise, appended atomically —
   if that fails, the call fails with DISCLOSURE_LOG_UNAVAILABLE and nothing is returned
   (the answer's messages are built while the log commits; none leaves before it is durable);
7. the answer.

A batch's consent signatures are checked together first when the servicer has a
:class:`node.sigpool.SignaturePool` (spread over worker processes); every token is
still verified item by item in step 4, and a token the batch check did not admit is
checked there from scratch.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from fedcredit.common import metrics, uscc
from fedcredit.common.departments import BY_ID
from fedcredit.common.errors import BatchTooLarge, FedcreditError
from fedcredit.common.evidence import Receipt
from fedcredit.common.rpc import handle_errors
from fedcredit.common.server import build_server
from fedcredit.common.tls import Identity, TlsFiles, peer_identity
from fedcredit.common.wire import (
    FEATURE_TYPE_TO_PB,
    SENSITIVITY_TO_PB,
    item_error,
    purpose_label,
)
from fedcredit.consent import errors as E
from fedcredit.consent.verify import TokenVerifier, UseRef, VerifiedConsent
from fedcredit.node import celvars, cohort
from fedcredit.node.disclosure import AGGREGATE_KIND, KIND, DisclosureLog, feature_payload
from fedcredit.node.engine import FeatureEngine, Reasons
from fedcredit.node.errors import (
    DisclosureLogUnavailable,
    DuplicateEnterprise,
    EmptyBatch,
    InvalidChunkSize,
    InvalidMaxBins,
    UsesUnavailable,
)
from fedcredit.node.policy import AccessPolicy, Decision
from fedcredit.node.records import FloatArray
from fedcredit.node.screening import KIND as SCREENING_KIND
from fedcredit.node.screening import Screener, log_payload
from fedcredit.node.settings import NodeSettings
from fedcredit.node.sigpool import SignaturePool
from fedcredit.node.store import StoreState
from fedcredit.v1 import feature_pb2, feature_pb2_grpc

if TYPE_CHECKING:
    from fedcredit.ledger.log import PreparedEntry

log = logging.getLogger(__name__)

SERVICE_NAME = feature_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name
MAX_STREAM_ITEMS = 1_000_000
LOG_TIMEOUT_S = 30.0
T = TypeVar("T")


@functools.lru_cache(maxsize=200_000)
def _valid_code(code: str) -> str:
    """``uscc.validate`` memoised: a batch re-validates the same codes request after
    request (invalid codes raise and are not cached)."""
    return uscc.validate(code)


def refused(enterprise: str, err: FedcreditError) -> feature_pb2.FeatureVector:
    """One enterprise's refusal inside an answer (``common.wire.item_error``)."""
    return feature_pb2.FeatureVector(enterprise=enterprise, error=item_error(err))


@dataclass
class Stats:
    requests: int = 0
    served: int = 0
    refused_items: int = 0
    refused_requests: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(
        self,
        *,
        node_org: str,
        engine: FeatureEngine,
        verifier: TokenVerifier,
        disclosures: DisclosureLog,
        policy: AccessPolicy | None = None,
        settings: NodeSettings | None = None,
        signatures: SignaturePool | None = None,
    ) -> None:
        self.node_org = node_org
        self.engine = engine
        self.department = engine.department
        self.category = BY_ID[engine.department].category
        self.verifier = verifier
        self.disclosures = disclosures
        self.policy = policy or AccessPolicy()
        self.settings = settings or NodeSettings()
        self.signatures = signatures
        self.stats = Stats()
        # Commits of uses run here, off the answer's path (one thread keeps their order).
        self._settler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="use-settle")
        # Reservations run here while the request's thread computes its vectors (one per
        # request in flight: as many as the server's own threads).
        self._reserver = ThreadPoolExecutor(
            max_workers=self.settings.max_workers, thread_name_prefix="use-reserve"
        )
        self._all_columns = list(range(len(engine.names)))
        self.screener = Screener(engine)
        self.aggregator = cohort.Aggregator(engine)

    # -- catalog -------------------------------------------------------------------------

    def catalog_message(self, st: StoreState | None) -> feature_pb2.Catalog:
        return feature_pb2.Catalog(
            node=self.node_org,
            department=self.department,
            category=self.category,
            as_of=st.as_of_text if st else "",
            data_version=st.data_version if st else 0,
            max_batch=self.settings.max_batch,
            features=[
                feature_pb2.FeatureDescriptor(
                    name=f.name,
                    category=f.category,
                    department=f.department,
                    description=f.description,
                    unit=f.unit,
                    type=FEATURE_TYPE_TO_PB[f.type],  # type: ignore[arg-type]
                    sensitivity=SENSITIVITY_TO_PB[f.sensitivity],  # type: ignore[arg-type]
                    tables=list(f.tables),
                    computation=f.computation,
                    zero_when_absent=f.absent == "zero",
                )
                for f in self.engine.features
            ],
        )

    @handle_errors
    def GetCatalog(self, request: Any, context: Any) -> Any:
        peer_identity(context)  # any authenticated organisation may read the catalog
        return self.catalog_message(self.engine.state())

    # -- features ------------------------------------------------------------------------

    def _check_request(
        self, caller: Identity, request: Any, *, limit: int
    ) -> tuple[Decision, str, list[int], StoreState]:
        purpose = purpose_label(request.purpose)
        decision = self.policy.decide(
            caller, purpose, request.on_behalf_of, bytes(request.on_behalf_of_cert_sha256),
            request.via,
        )  # fmt: skip
        n = len(request.items)
        if n == 0:
            raise EmptyBatch("the request holds no enterprise; send at least one item")
        if n > limit:
            raise BatchTooLarge(
                f"the batch holds {n} enterprises; this node answers at most {limit} per request",
                max_batch=limit,
                got=n,
            )
        seen: set[str] = set()
        for it in request.items:
            if it.enterprise in seen:
                raise DuplicateEnterprise(
                    f"enterprise {it.enterprise} appears more than once in the batch",
                    enterprise=it.enterprise,
                )
            seen.add(it.enterprise)
        columns = self.engine.resolve(list(request.features))
        st = self.engine.state()
        return decision, purpose, columns, st

    def _serve(
        self,
        caller: Identity,
        decision: Decision,
        purpose: str,
        columns: Sequence[int],
        st: StoreState,
        items: Sequence[Any],
        request_id: str,
    ) -> list[feature_pb2.FeatureVector]:
        out: list[feature_pb2.FeatureVector | None] = [None] * len(items)
        verified = self._verify_items(decision, purpose, items, out)
        # The use is reserved before anything is logged or answered: a refused item
        # discloses nothing, and the count is the consent service's, federation-wide.
        # A bank's own fetch (the features reach it) pins a use it joins: the opener at
        # another node can no longer give it back once this node disclosed.
        ok, vectors = self._reserve_computing(request_id, verified, items, out, st,
                                              pin=decision.release)  # fmt: skip
        if ok:
            opened = [UseRef.of(vc) for _, vc, was_opened in ok if was_opened]
            try:
                self._disclose(caller, decision, purpose, columns, st, items, ok, vectors,
                               request_id, out)  # fmt: skip
                # Committed BEFORE the answer leaves: a commit left to after it could fail
                # or come too late, and the lease reaper would give back a use whose
                # features the caller already has. No commit, no answer.
                failed = self._commit(request_id, opened)
            except BaseException:
                self._settle(request_id, opened, commit=False)  # the use is given back
                raise
            if failed is not None:
                for i, _, was_opened in ok:
                    if was_opened:
                        self._refuse(out, i, items[i].enterprise, failed)
                self._settle(request_id, opened, commit=False)
            self._count_served(decision, purpose, [i for i, _, _ in ok], out)
        return [v for v in out if v is not None]

    def _reserve_computing(
        self,
        use_id: str,
        verified: Sequence[tuple[int, VerifiedConsent]],
        items: Sequence[Any],
        out: list[Any],
        st: StoreState,
        *,
        pin: bool,
    ) -> tuple[list[tuple[int, VerifiedConsent, bool]], tuple[FloatArray, Reasons]]:
        """:meth:`_reserve`, with the feature vectors of every verified item computed while
        the consent service answers (the round trip costs this node no CPU). Computing is
        not disclosing: nothing is logged or answered until the reservation is back, and
        the rows of items it refuses are dropped. Returns the items reserved and the
        vectors of those items, in their order."""
        if not verified:
            k = len(self.engine.names)
            return [], (np.empty((0, k)), np.empty((0, k), dtype=np.int8))
        pending = self._reserver.submit(self._reserve, use_id, verified, items, out, pin=pin)
        try:
            values, reasons = self.engine.vectors([items[i].enterprise for i, _ in verified], st)
        except BaseException:
            # The store failed: whatever the call opens is given back before the refusal.
            ok = pending.result()
            self._settle(use_id, [UseRef.of(vc) for _, vc, opened in ok if opened], commit=False)
            raise
        ok = pending.result()
        if len(ok) < len(verified):
            row = {i: r for r, (i, _) in enumerate(verified)}
            keep = [row[i] for i, _, _ in ok]
            values, reasons = values[keep], reasons[keep]
        return ok, (values, reasons)

    def _commit(self, use_id: str, opened: list[UseRef]) -> FedcreditError | None:
        """Commit the uses this node opened, synchronously (one call per answer, or per
        chunk of a stream); the error to answer the opened items with when it fails."""
        counter = self.verifier.counter
        if not opened or counter is None:
            return None
        try:
            counter.settle(use_id, opened, commit=True)
        except Exception as exc:
            if getattr(exc, "reason", None) == "CONSENT_USES_EXHAUSTED":
                # The reservation outlived its lease and the use went to someone else.
                return E.UsesExhausted(
                    f"the use was committed too late and no use is left ({exc}); "
                    "nothing was disclosed",
                    jti=opened[0].jti,
                )
            why = f"{exc.reason}: {exc.message}" if isinstance(exc, FedcreditError) else repr(exc)
            return UsesUnavailable(
                f"the consent service could not commit the uses ({why}); "
                "nothing was disclosed, retry later"
            )
        return None

    def _count_served(
        self, decision: Decision, purpose: str, idx: Sequence[int], out: Sequence[Any]
    ) -> None:
        n = sum(1 for i in idx if out[i] is not None and not out[i].HasField("error"))
        self.stats.served += n
        metrics.DISCLOSURES.labels(
            metrics.service(), self.node_org, purpose, decision.bank_org
        ).inc(n)

    def _refuse(self, out: list[Any], i: int, enterprise: str, err: FedcreditError) -> None:
        out[i] = refused(enterprise, err)
        self.stats.refused_items += 1
        self.stats.by_reason[err.reason] = self.stats.by_reason.get(err.reason, 0) + 1

    def _verify_items(
        self, decision: Decision, purpose: str, items: Sequence[Any], out: list[Any]
    ) -> list[tuple[int, VerifiedConsent]]:
        """Step 4: each item's code and token; the refused ones answered in ``out``."""
        verified: list[tuple[int, VerifiedConsent]] = []
        pool = self.signatures
        if pool is not None and len(items) >= pool.min_batch:
            self.verifier.precheck([it.consent_token for it in items], pool.verify_chunks)
        for i, it in enumerate(items):
            try:
                code = _valid_code(it.enterprise)
                vc = self.verifier.verify(
                    it.consent_token,
                    bank_org=decision.bank_org,
                    bank_cert_sha256=decision.bank_cert_sha256,
                    enterprise=code,
                    purposes=(purpose,),
                    category=self.category,
                    node=self.node_org,
                    count_use=False,
                    release=decision.release,
                )
            except FedcreditError as err:
                self._refuse(out, i, it.enterprise, err)
                continue
            verified.append((i, vc))
        return verified

    def _reserve(
        self,
        use_id: str,
        verified: Sequence[tuple[int, VerifiedConsent]],
        items: Sequence[Any],
        out: list[Any],
        *,
        pin: bool,
    ) -> list[tuple[int, VerifiedConsent, bool]]:
        """Reserve use ``use_id`` of every verified token in one call to the consent
        service; fail closed (every item refused) when it cannot answer. Returns the
        items reserved: (index, consent, whether this node opened the use)."""
        if not verified:
            return []
        counter = self.verifier.counter
        try:
            if counter is None:
                raise UsesUnavailable("this node's verifier has no use counter")
            results = counter.reserve(use_id, [UseRef.of(vc) for _, vc in verified], pin=pin)
        except Exception as exc:
            why = f"{exc.reason}: {exc.message}" if isinstance(exc, FedcreditError) else repr(exc)
            err = UsesUnavailable(
                f"the consent service could not reserve the uses ({why}); "
                "nothing was disclosed, retry later"
            )
            for i, _ in verified:
                self._refuse(out, i, items[i].enterprise, err)
            return []
        ok: list[tuple[int, VerifiedConsent, bool]] = []
        for (i, vc), r in zip(verified, results, strict=True):
            if isinstance(r, FedcreditError):
                self._refuse(out, i, items[i].enterprise, r)
            else:
                ok.append((i, vc, r.opened))
        return ok

    def _settle(self, use_id: str, opened: list[UseRef], *, commit: bool) -> None:
        """Release the uses opened here (the work failed before anything left); a failure
        is logged (an unreleased use stays counted, never the other way)."""
        counter = self.verifier.counter
        if not opened or counter is None:
            return

        def run() -> None:
            try:
                counter.settle(use_id, opened, commit=commit)
            except Exception as exc:
                log.warning("could not %s %d use(s) of %s: %s",
                            "commit" if commit else "release", len(opened), use_id, exc)  # fmt: skip

        if commit:
            self._settler.submit(run)
        else:
            run()

    def _disclose(
        self,
        caller: Identity,
        decision: Decision,
        purpose: str,
        columns: Sequence[int],
        st: StoreState,
        items: Sequence[Any],
        ok: Sequence[tuple[int, VerifiedConsent, bool]],
        vectors: tuple[FloatArray, Reasons],
        request_id: str,
        out: list[Any],
    ) -> None:
        """Steps 5-6 for the reserved items (``vectors``: theirs, step 5, computed while
        they were reserved): log entries (durable first), answers."""
        ok_idx = [i for i, _, _ in ok]
        jtis = [vc.jti for _, vc, _ in ok]
        codes = [items[i].enterprise for i in ok_idx]
        values, reasons = vectors
        cols = list(columns)
        names = [self.engine.names[j] for j in cols]
        # The entries differ only in subject and consent jti.
        template = feature_payload(
            node=self.node_org,
            caller=caller.org_id,
            caller_role=caller.role,
            on_behalf_of=decision.bank_org,
            purpose=purpose,
            jti="",
            features=names,
            request_id=request_id,
            data_version=st.data_version,
            as_of=st.as_of_text,
            via=decision.via,
        )
        wait = self._submit_each(template, list(zip(codes, jtis, strict=True)))
        if cols == self._all_columns:
            sel_v, sel_r = values, reasons
        else:
            sel_v, sel_r = values[:, cols], reasons[:, cols]
        vecs = [
            feature_pb2.FeatureVector(enterprise=code, values=v, missing=m, consent_jti=jti)
            for code, v, m, jti in zip(codes, sel_v.tolist(), sel_r.tolist(), jtis, strict=True)
        ]
        receipts = wait()  # durable before any of it is answered
        for r, i in enumerate(ok_idx):
            vec = vecs[r]
            vec.disclosure_index = receipts[r].index
            out[i] = vec

    def _append(self, entries: list[tuple[str, str | None, dict[str, Any]]]) -> list[Receipt]:
        """No log entry, no answer: any failure to append refuses the whole answer."""
        log_ = self.disclosures
        return self._submit(lambda: [log_.prepare(k, s, p) for k, s, p in entries])()

    def _submit_each(
        self, template: dict[str, Any], rows: list[tuple[str, str]]
    ) -> Callable[[], list[Receipt]]:
        """Start appending one feature-disclosure entry per ``(enterprise, jti)`` of
        ``rows``, payload ``template`` with that jti (canonicalised once: ``prepare_each``)."""
        log_ = self.disclosures
        return self._submit(lambda: log_.prepare_each(KIND, template, "consent_jti", rows))

    def _submit(self, prepare: Callable[[], list[PreparedEntry]]) -> Callable[[], list[Receipt]]:
        """Queue the entries ``prepare`` makes as one atomic group; the function returned
        waits until they are durable and returns their receipts. Either step failing
        refuses the answer."""
        log_ = self.disclosures
        fut = self._guard_log(lambda: log_.submit_many(prepare()))
        return lambda: self._guard_log(lambda: fut.result(LOG_TIMEOUT_S))

    @staticmethod
    def _guard_log(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FedcreditError as err:
            raise DisclosureLogUnavailable(
                f"the disclosure log did not record the answer ({err.reason}: {err.message}); "
                "nothing was disclosed, retry later"
            ) from err
        except Exception as exc:
            raise DisclosureLogUnavailable(
                f"the disclosure log did not record the answer ({type(exc).__name__}: {exc}); "
                "nothing was disclosed, retry later"
            ) from exc

    def _request_id(self, request: Any) -> str:
        return request.request_id or uuid.uuid4().hex

    @handle_errors
    def GetFeatures(self, request: Any, context: Any) -> Any:
        caller = peer_identity(context)
        self.stats.requests += 1
        try:
            decision, purpose, cols, st = self._check_request(
                caller, request, limit=self.settings.max_batch
            )
        except FedcreditError:
            self.stats.refused_requests += 1
            raise
        vectors = self._serve(
            caller, decision, purpose, cols, st, request.items, self._request_id(request)
        )
        return feature_pb2.GetFeaturesResponse(
            features=[self.engine.names[j] for j in cols],
            items=vectors,
            as_of=st.as_of_text,
            data_version=st.data_version,
        )

    @handle_errors
    def StreamFeatures(self, request: Any, context: Any) -> Iterator[Any]:
        caller = peer_identity(context)
        self.stats.requests += 1
        chunk = request.chunk_size or self.settings.stream_chunk
        if not 1 <= chunk <= self.settings.max_batch:
            raise InvalidChunkSize(
                f"chunk_size must be between 1 and {self.settings.max_batch}; got {chunk}"
            )
        decision, purpose, cols, st = self._check_request(caller, request, limit=MAX_STREAM_ITEMS)
        names = [self.engine.names[j] for j in cols]
        rid = self._request_id(request)
        items = request.items
        for start in range(0, len(items), chunk):
            # Each chunk is logged before it is sent; the data version is re-read so a
            # long stream reflects loads that complete while it runs.
            st = self.engine.state() if start else st
            vectors = self._serve(
                caller, decision, purpose, cols, st, items[start : start + chunk], rid
            )
            yield feature_pb2.GetFeaturesResponse(
                features=names, items=vectors, as_of=st.as_of_text, data_version=st.data_version
            )

    # -- bin edges ---------------------------------------------------------------------

    @handle_errors
    def GetBinEdges(self, request: Any, context: Any) -> Any:
        caller = peer_identity(context)
        self.policy.decide_aggregate(caller, purpose_label(request.purpose))
        if not 2 <= request.max_bins <= 1024:
            raise InvalidMaxBins(f"max_bins must be between 2 and 1024; got {request.max_bins}")
        cols = self.engine.resolve(list(request.features))
        st = self.engine.state()
        edges, population = self.engine.bin_edges(cols, request.max_bins, st)
        self._append(
            [
                (
                    AGGREGATE_KIND,
                    None,
                    {
                        "node": self.node_org,
                        "caller": caller.org_id,
                        "caller_role": caller.role,
                        "what": "bin_edges",
                        "features": [e.name for e in edges],
                        "max_bins": request.max_bins,
                        "min_bin_count": self.engine.min_bin_count,
                        "population": population,
                        "data_version": st.data_version,
                    },
                )
            ]
        )
        return feature_pb2.BinEdges(
            features=[
                feature_pb2.FeatureEdges(
                    name=e.name, upper_bounds=e.upper_bounds, missing_share=e.missing_share
                )
                for e in edges
            ],
            population=population,
            min_bin_count=self.engine.min_bin_count,
            as_of=st.as_of_text,
            data_version=st.data_version,
        )

    # -- policy screening (node.screening) -----------------------------------------------

    @handle_errors
    def ScreenPolicies(self, request: Any, context: Any) -> Any:
        caller = peer_identity(context)
        screening = self.screener.admit(caller, request)
        st = self.engine.state()
        bits = self.screener.evaluate(screening, st)
        payload = log_payload(screening, node=self.node_org, caller=caller, st=st)
        (receipt,) = self._append([(SCREENING_KIND, None, payload)])  # durable first
        return feature_pb2.ScreenResponse(
            results=[
                feature_pb2.ClauseBits(id=cid, bits=celvars.pack(bits[:, j]))
                for j, cid in enumerate(screening.ids)
            ],
            enterprises=len(screening.codes),
            data_version=st.data_version,
            as_of=st.as_of_text,
            disclosure_index=receipt.index,
        )

    @handle_errors
    def AggregateCohort(self, request: Any, context: Any) -> Any:
        caller = peer_identity(context)
        codes, names = self.aggregator.admit(caller, request)
        st = self.engine.state()
        self.aggregator.remember(caller, codes, st)
        released = self.aggregator.aggregate(codes, names, st)
        payload = cohort.log_payload(request, codes, released, node=self.node_org,
                                     caller=caller, st=st)  # fmt: skip
        (receipt,) = self._append([(cohort.KIND, None, payload)])  # durable first
        aggs = [
            feature_pb2.IndicatorAggregate(
                name=r.name, present=r.present, sum=r.total, suppressed=r.suppressed
            )
            for r in released
        ]
        return feature_pb2.CohortAggregate(
            indicators=aggs,
            enterprises=len(codes),
            min_cohort=self.aggregator.min_cohort,
            data_version=st.data_version,
            as_of=st.as_of_text,
            disclosure_index=receipt.index,
        )


@dataclass
class NodeServer:
    server: grpc.Server
    port: int
    servicer: FeatureServicer

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float | None = 1.0) -> None:
        self.server.stop(grace).wait()


def build_node_server(
    *,
    servicer: FeatureServicer,
    address: str,
    tls: TlsFiles | None,
    insecure: bool = False,
    extra: Sequence[tuple[Callable[[grpc.Server], None], str]] = (),
) -> NodeServer:
    """A FeatureService server (not started). ``extra``: (register function, service name)
    pairs mounted on the same server (e.g. the ledger's witness service)."""

    def register(server: grpc.Server) -> None:
        feature_pb2_grpc.add_FeatureServiceServicer_to_server(servicer, server)
        for fn, _ in extra:
            fn(server)

    server, port = build_server(
        address=address,
        tls=tls,
        register=register,
        service_names=[SERVICE_NAME, *(name for _, name in extra)],
        insecure=insecure,
        max_workers=servicer.settings.max_workers,
    )
    return NodeServer(server, port, servicer)
