"""The marketplace's gRPC servicer (sync, mTLS): roles from the caller's certificate only.

Banks publish products, list open needs (bands), claim, offer, reveal (under consent) and
move their loans; enterprises post, release consent, answer and withdraw; operators and
auditors read the fund's book and every loan. Every domain error becomes a gRPC status
with its reason (``common.rpc.handle_errors``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from fedcredit.common.canonical import canonical_json
from fedcredit.common.errors import InvalidArgument
from fedcredit.common.rpc import handle_errors
from fedcredit.common.server import build_server
from fedcredit.common.tls import Identity, TlsFiles, peer_identity, require_role
from fedcredit.consent.delegation import DelegationVerifier, acting
from fedcredit.market import funds, pushes, ratings
from fedcredit.market.errors import InvalidMarketRequest
from fedcredit.market.loans import LoanBook, sla_report
from fedcredit.market.service import Marketplace, product_spec
from fedcredit.v1 import market_pb2 as pb
from fedcredit.v1 import market_pb2_grpc as pb_grpc

SERVICE_NAMES = ("fedcredit.v1.MarketService",)
LOAN_EVENTS = (
    "disburse",
    "repay",
    "default",
    "claim",
    "recover",
    "write_off",
    "cancel",
    "guarantee",
)
READERS = ("operator", "auditor", "coordinator")


# The portal (its own certificate, role ``portal``) calls for the organisation signed in
# to it with a passkey only with a delegation ticket the consent service signed for this
# marketplace (consent/delegation.py: audience, the portal's certificate, expiry, the
# passkey still registered). It may act only as an enterprise or a bank, and only in the
# calls that use ``_acting`` below (reading, posting and answering needs, claiming and
# offering); every rule of the call still holds for the named organisation (bands only
# before consent, one winning claim). Consent release, reveal, loan steps, products and
# funds' decisions stay with the organisation's own certificate. Without a ticket the
# portal's certificate acts for no one (DELEGATION_MISSING).
PORTAL_ACTS_AS = ("enterprise", "bank")


def reply(result: Mapping[str, Any]) -> pb.MarketReply:
    body = {k: v for k, v in result.items() if k not in ("ledger_index", "replayed")}
    return pb.MarketReply(
        json=canonical_json(body).decode(),
        ledger_index=int(result.get("ledger_index") or 0),
        replayed=bool(result.get("replayed", False)),
    )


def _spec(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"spec_json is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"spec_json must be a JSON object, got {type(spec).__name__}")
    return spec


class MarketPushServicer:
    """The push, warning and SLA calls (mixed into :class:`MarketServicer`)."""

    m: Marketplace
    delegation: DelegationVerifier | None = None

    def _acting(self, context: Any) -> Identity:
        """The caller, or for the portal the organisation its delegation ticket names."""
        who = peer_identity(context)
        if who.role != "portal":
            return who
        md = tuple(context.invocation_metadata() or ())
        return acting(who, md, self.delegation, PORTAL_ACTS_AS, "the marketplace")

    @handle_errors
    def ListLeads(self, request: pb.ListLeadsRequest, context: Any) -> pb.MarketReply:
        bank = require_role(self._acting(context), "bank")
        return reply({"leads": pushes.leads_for(self.m, bank, min(request.limit or 500, 5000))})

    @handle_errors
    def OfferOnLead(self, request: pb.OfferOnLeadRequest, context: Any) -> pb.MarketReply:
        bank = require_role(self._acting(context), "bank")
        return reply(
            pushes.offer_on_lead(self.m, bank, request.request_id, request.lead_id,
                                 request.amount_yuan, request.term_months, request.rate_bp)
        )  # fmt: skip

    @handle_errors
    def SetPushOptOut(self, request: pb.SetPushOptOutRequest, context: Any) -> pb.MarketReply:
        ent = require_role(peer_identity(context), "enterprise")
        ratings.set_opt_out(self.m, ent.org_id, request.opt_out)
        return reply({"enterprise": ent.org_id, "push_opt_out": request.opt_out})

    @handle_errors
    def LeadsAboutMe(self, request: pb.ListLeadsRequest, context: Any) -> pb.MarketReply:
        ent = require_role(self._acting(context), "enterprise")
        return reply({"leads": pushes.leads_about(self.m, ent)})

    @handle_errors
    def MyRating(self, request: pb.MyRatingRequest, context: Any) -> pb.MarketReply:
        ent = require_role(self._acting(context), "enterprise")
        return reply(ratings.rating_of(self.m, ent.org_id))

    @handle_errors
    def ListWarnings(self, request: pb.ListWarningsRequest, context: Any) -> pb.MarketReply:
        who = require_role(self._acting(context), "bank", "operator", "auditor")
        return reply({"warnings": ratings.warnings_for(self.m, who.org_id)})

    @handle_errors
    def SlaReport(self, request: pb.SlaReportRequest, context: Any) -> pb.MarketReply:
        require_role(peer_identity(context), *READERS)
        return reply(sla_report(self.m))


class FundMarketServicer:
    """The investment-fund calls (mixed into :class:`MarketServicer`)."""

    m: Marketplace
    _acting: Callable[[Any], Identity]  # MarketPushServicer._acting

    @handle_errors
    def PublishFund(self, request: pb.PublishProductRequest, context: Any) -> pb.MarketReply:
        op = require_role(peer_identity(context), "operator")
        return reply(funds.publish_fund(self.m, op, request.request_id, _spec(request.spec_json)))

    @handle_errors
    def ListFunds(self, request: pb.ListProductsRequest, context: Any) -> pb.MarketReply:
        self._acting(context)
        return reply({"funds": funds.funds(self.m)})

    @handle_errors
    def ApplyToFund(self, request: pb.ApplyToFundRequest, context: Any) -> pb.MarketReply:
        ent = require_role(peer_identity(context), "enterprise")
        return reply(
            funds.apply_to_fund(self.m, ent, request.request_id, request.fund_id,
                                request.amount_yuan, request.plan, request.consent_id)
        )  # fmt: skip

    @handle_errors
    def ReviewApplication(
        self, request: pb.ReviewApplicationRequest, context: Any
    ) -> pb.MarketReply:
        mgr = require_role(peer_identity(context), "bank")
        if not request.consent_token:
            raise InvalidMarketRequest(
                "consent_token is empty: expected your investment_review consent JWT"
            )
        return reply(funds.review(self.m, mgr, request.app_id, request.consent_token))

    @handle_errors
    def TrackApplication(self, request: pb.TrackApplicationRequest, context: Any) -> pb.MarketReply:
        who = require_role(peer_identity(context), "bank", "enterprise")
        r = request
        if who.role == "enterprise":
            raise InvalidMarketRequest(
                "enterprises withdraw by the marketplace's portal; managers track"
            )
        return reply(funds.track(self.m, who, r.request_id, r.app_id, r.event, r.reason, r.note,
                                 r.amount_yuan, r.milestone))  # fmt: skip

    @handle_errors
    def FundPipeline(self, request: pb.FundPipelineRequest, context: Any) -> pb.MarketReply:
        who = require_role(self._acting(context), "bank", *READERS)
        if who.role == "bank":
            funds.require_manager(self.m, who, request.fund_id)
        return reply(funds.pipeline(self.m, request.fund_id))


class MarketServicer(FundMarketServicer, MarketPushServicer, pb_grpc.MarketServiceServicer):
    def __init__(self, market: Marketplace, delegation: DelegationVerifier | None = None) -> None:
        self.m = market
        self.delegation = delegation
        self.loans = LoanBook(market)

    def _bank(self, context: Any, *, portal: bool = True) -> Identity:
        return require_role(self._acting(context) if portal else peer_identity(context), "bank")

    def _enterprise(self, context: Any, *, portal: bool = True) -> Identity:
        return require_role(
            self._acting(context) if portal else peer_identity(context), "enterprise"
        )

    @handle_errors
    def PublishProduct(self, request: pb.PublishProductRequest, context: Any) -> pb.MarketReply:
        bank = self._bank(context, portal=False)
        return reply(self.m.publish_product(bank, request.request_id, _spec(request.spec_json)))

    @handle_errors
    def ListProducts(self, request: pb.ListProductsRequest, context: Any) -> pb.ListProductsReply:
        self._acting(context)
        items = self.m.products(request.bank or None)
        return pb.ListProductsReply(
            products_json=[canonical_json(product_spec(p)).decode() for p in items]
        )

    @handle_errors
    def PostNeed(self, request: pb.PostNeedRequest, context: Any) -> pb.MarketReply:
        ent = self._enterprise(context)
        return reply(
            self.m.post_need(
                ent, request.request_id, request.amount_yuan, request.term_months, request.purpose
            )
        )

    @handle_errors
    def ListOpenNeeds(
        self, request: pb.ListOpenNeedsRequest, context: Any
    ) -> pb.ListOpenNeedsReply:
        bank = self._bank(context)
        views = self.m.open_needs(bank, request.limit or 100)
        return pb.ListOpenNeedsReply(needs=[pb.NeedBands(**v) for v in views])

    @handle_errors
    def GetNeed(self, request: pb.NeedRef, context: Any) -> pb.MarketReply:
        return reply(self.m.need_for(self._acting(context), request.need_id))

    @handle_errors
    def MyNeeds(self, request: pb.ListOpenNeedsRequest, context: Any) -> pb.MarketReply:
        who = require_role(self._acting(context), "enterprise", "bank")
        return reply({"needs": self.m.needs_of(who, request.limit or 200)})

    @handle_errors
    def Claim(self, request: pb.NeedAction, context: Any) -> pb.MarketReply:
        return reply(self.m.claim(self._bank(context), request.request_id, request.need_id))

    @handle_errors
    def Offer(self, request: pb.OfferRequest, context: Any) -> pb.MarketReply:
        bank = self._bank(context)
        return reply(
            self.m.offer(
                bank, request.request_id, request.need_id, request.product_id, request.rate_bp
            )
        )

    @handle_errors
    def ReleaseConsent(self, request: pb.ReleaseConsentRequest, context: Any) -> pb.MarketReply:
        ent = self._enterprise(context, portal=False)
        if not request.consent_id:
            raise InvalidMarketRequest(
                "consent_id is empty: expected the marketplace consent's id (c_...)"
            )
        return reply(
            self.m.release_consent(ent, request.request_id, request.need_id, request.consent_id)
        )

    @handle_errors
    def Answer(self, request: pb.AnswerRequest, context: Any) -> pb.MarketReply:
        ent = self._enterprise(context)
        return reply(
            self.m.answer(ent, request.request_id, request.need_id, request.accept, request.why)
        )

    @handle_errors
    def Withdraw(self, request: pb.NeedAction, context: Any) -> pb.MarketReply:
        return reply(
            self.m.withdraw(self._enterprise(context), request.request_id, request.need_id)
        )

    @handle_errors
    def Reveal(self, request: pb.RevealRequest, context: Any) -> pb.MarketReply:
        if not request.consent_token:
            raise InvalidMarketRequest(
                "consent_token is empty: expected your marketplace consent JWT"
            )
        return reply(
            self.m.reveal(self._bank(context, portal=False), request.need_id, request.consent_token)
        )

    @handle_errors
    def LoanStep(self, request: pb.LoanStepRequest, context: Any) -> pb.MarketReply:
        bank = self._bank(context, portal=False)
        ev = request.event
        if ev not in LOAN_EVENTS:
            raise InvalidMarketRequest(f"event must be one of {', '.join(LOAN_EVENTS)}, got {ev!r}")
        if ev == "guarantee":
            return reply(
                self.loans.guarantee(
                    bank, request.request_id, request.loan_id, request.application_id
                )
            )
        if ev == "claim":
            return reply(self.loans.claim(bank, request.request_id, request.loan_id))
        return reply(
            self.loans.step(bank, request.request_id, request.loan_id, ev, request.amount_yuan)
        )

    @handle_errors
    def ListLoans(self, request: pb.ListLoansRequest, context: Any) -> pb.MarketReply:
        who = self._acting(context)
        return reply({"loans": self.loans.list(who, min(request.limit or 1000, 10_000))})

    @handle_errors
    def FundBook(self, request: pb.FundBookRequest, context: Any) -> pb.MarketReply:
        require_role(self._acting(context), *READERS, "bank")
        return reply(self.m.store.book())


def serve(
    market: Marketplace,
    address: str,
    tls: TlsFiles | None,
    *,
    insecure: bool = False,
    delegation: DelegationVerifier | None = None,
) -> tuple[grpc.Server, int]:
    """A started marketplace server and its port (``delegation``: the checker of the
    portal's delegation tickets; None: the portal acts for no one here)."""
    servicer = MarketServicer(market, delegation)
    server, port = build_server(
        address=address,
        tls=tls,
        register=lambda s: pb_grpc.add_MarketServiceServicer_to_server(servicer, s),
        service_names=SERVICE_NAMES,
        insecure=insecure,
        max_workers=32,
    )
    server.start()
    return server, port
