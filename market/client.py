"""Python SDK for the marketplace (mTLS), plus the coordinator adapter the marketplace uses.

    with MarketClient(address, tls) as m:
        for need in m.open_needs():        # bands only: no identity, no score
            print(need.need_id, need.grade_band, need.amount_band)
        won = m.claim(need.need_id)        # NeedAlreadyClaimed if another bank was first

Every mutating call takes a ``request_id`` (a fresh one by default): retrying with the
same id is safe and returns the same answer (``replayed``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import fedcredit.consent.errors
import fedcredit.market.errors  # noqa: F401  (their reasons map back to their classes)
from fedcredit.common.client import ServiceClient
from fedcredit.market.rules import GuaranteeView
from fedcredit.v1 import market_pb2 as pb
from fedcredit.v1 import market_pb2_grpc as pb_grpc

DEFAULT_SERVER_ORG = "market"


def _rid(request_id: str | None) -> str:
    return request_id or uuid.uuid4().hex


def parse(r: pb.MarketReply) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(r.json) if r.json else {}
    out["ledger_index"], out["replayed"] = int(r.ledger_index), bool(r.replayed)
    return out


class MarketClient(ServiceClient[pb_grpc.MarketServiceStub]):
    stub_type = pb_grpc.MarketServiceStub
    default_server_org = DEFAULT_SERVER_ORG

    def my_needs(self, limit: int = 200) -> list[dict[str, Any]]:
        """An enterprise's needs, or the needs a bank holds a claim on (newest first)."""
        rep = self._call(self._stub.MyNeeds, pb.ListOpenNeedsRequest(limit=limit))
        return list(parse(rep)["needs"])

    def publish_product(
        self, spec: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        req = pb.PublishProductRequest(
            request_id=_rid(request_id), spec_json=json.dumps(dict(spec))
        )
        return parse(self._call(self._stub.PublishProduct, req))

    def products(self, bank: str = "") -> list[dict[str, Any]]:
        rep = self._call(self._stub.ListProducts, pb.ListProductsRequest(bank=bank))
        return [json.loads(p) for p in rep.products_json]

    def post_need(
        self, amount: int, term_months: int, purpose: str, *, request_id: str | None = None
    ) -> dict[str, Any]:
        req = pb.PostNeedRequest(
            request_id=_rid(request_id),
            amount_yuan=amount,
            term_months=term_months,
            purpose=purpose,
        )
        return parse(self._call(self._stub.PostNeed, req))

    def open_needs(self, limit: int = 100) -> list[pb.NeedBands]:
        return list(
            self._call(self._stub.ListOpenNeeds, pb.ListOpenNeedsRequest(limit=limit)).needs
        )

    def need(self, need_id: str) -> dict[str, Any]:
        return parse(self._call(self._stub.GetNeed, pb.NeedRef(need_id=need_id)))

    def claim(self, need_id: str, *, request_id: str | None = None) -> dict[str, Any]:
        req = pb.NeedAction(request_id=_rid(request_id), need_id=need_id)
        return parse(self._call(self._stub.Claim, req))

    def offer(
        self, need_id: str, product_id: str, rate_bp: int, *, request_id: str | None = None
    ) -> dict[str, Any]:
        req = pb.OfferRequest(
            request_id=_rid(request_id), need_id=need_id, product_id=product_id, rate_bp=rate_bp
        )
        return parse(self._call(self._stub.Offer, req))

    def release_consent(
        self, need_id: str, consent_id: str, *, request_id: str | None = None
    ) -> dict[str, Any]:
        req = pb.ReleaseConsentRequest(
            request_id=_rid(request_id), need_id=need_id, consent_id=consent_id
        )
        return parse(self._call(self._stub.ReleaseConsent, req))

    def answer(
        self, need_id: str, accept: bool, why: str = "", *, request_id: str | None = None
    ) -> dict[str, Any]:
        req = pb.AnswerRequest(request_id=_rid(request_id), need_id=need_id, accept=accept, why=why)
        return parse(self._call(self._stub.Answer, req))

    def withdraw(self, need_id: str, *, request_id: str | None = None) -> dict[str, Any]:
        req = pb.NeedAction(request_id=_rid(request_id), need_id=need_id)
        return parse(self._call(self._stub.Withdraw, req))

    def reveal(self, need_id: str, token: str) -> dict[str, Any]:
        return parse(
            self._call(self._stub.Reveal, pb.RevealRequest(need_id=need_id, consent_token=token))
        )

    def loan_step(
        self,
        loan_id: str,
        event: str,
        *,
        amount: int = 0,
        application_id: str = "",
        request_id: str | None = None,
    ) -> dict[str, Any]:
        req = pb.LoanStepRequest(
            request_id=_rid(request_id), loan_id=loan_id, event=event, amount_yuan=amount,
            application_id=application_id,
        )  # fmt: skip
        return parse(self._call(self._stub.LoanStep, req))

    def loans(self, limit: int = 1000) -> list[dict[str, Any]]:
        return list(
            parse(self._call(self._stub.ListLoans, pb.ListLoansRequest(limit=limit)))["loans"]
        )

    def fund_book(self) -> dict[str, Any]:
        return parse(self._call(self._stub.FundBook, pb.FundBookRequest()))

    def leads(self, limit: int = 500) -> list[dict[str, Any]]:
        return list(
            parse(self._call(self._stub.ListLeads, pb.ListLeadsRequest(limit=limit)))["leads"]
        )

    def offer_on_lead(
        self,
        lead_id: str,
        amount: int,
        term_months: int,
        rate_bp: int,
        *,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        req = pb.OfferOnLeadRequest(
            request_id=_rid(request_id), lead_id=lead_id, amount_yuan=amount,
            term_months=term_months, rate_bp=rate_bp,
        )  # fmt: skip
        return parse(self._call(self._stub.OfferOnLead, req))

    def set_push_opt_out(self, opt_out: bool) -> dict[str, Any]:
        return parse(self._call(self._stub.SetPushOptOut, pb.SetPushOptOutRequest(opt_out=opt_out)))

    def leads_about_me(self) -> list[dict[str, Any]]:
        return list(parse(self._call(self._stub.LeadsAboutMe, pb.ListLeadsRequest()))["leads"])

    def my_rating(self) -> dict[str, Any]:
        return parse(self._call(self._stub.MyRating, pb.MyRatingRequest()))

    def warnings(self) -> list[dict[str, Any]]:
        return list(
            parse(self._call(self._stub.ListWarnings, pb.ListWarningsRequest()))["warnings"]
        )

    def sla(self) -> dict[str, Any]:
        return parse(self._call(self._stub.SlaReport, pb.SlaReportRequest()))


class FundMarketClient(MarketClient):
    """The investment-fund market's calls (same service, same channel)."""

    def publish_fund(
        self, spec: Mapping[str, Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        req = pb.PublishProductRequest(
            request_id=_rid(request_id), spec_json=json.dumps(dict(spec))
        )
        return parse(self._call(self._stub.PublishFund, req))

    def funds(self) -> list[dict[str, Any]]:
        return list(parse(self._call(self._stub.ListFunds, pb.ListProductsRequest()))["funds"])

    def apply(
        self,
        fund_id: str,
        amount: int,
        plan: str,
        consent_id: str,
        *,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        req = pb.ApplyToFundRequest(request_id=_rid(request_id), fund_id=fund_id, amount_yuan=amount,
                                    plan=plan, consent_id=consent_id)  # fmt: skip
        return parse(self._call(self._stub.ApplyToFund, req))

    def review(self, app_id: str, token: str) -> dict[str, Any]:
        req = pb.ReviewApplicationRequest(app_id=app_id, consent_token=token)
        return parse(self._call(self._stub.ReviewApplication, req))

    def track(self, app_id: str, event: str, *, reason: str = "", note: str = "", amount: int = 0,
              milestone: str = "", request_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        req = pb.TrackApplicationRequest(request_id=_rid(request_id), app_id=app_id, event=event,
                                         reason=reason, note=note, amount_yuan=amount, milestone=milestone)  # fmt: skip
        return parse(self._call(self._stub.TrackApplication, req))

    def pipeline(self, fund_id: str) -> dict[str, Any]:
        return parse(self._call(self._stub.FundPipeline, pb.FundPipelineRequest(fund_id=fund_id)))


class CoordinatorGuarantees:
    """The coordinator's guarantee decisions, read through its SDK (``ListGuarantees``)."""

    def __init__(self, coordinator: Any) -> None:
        self.c = coordinator  # a coordinator.client.CoordinatorClient

    def get(self, enterprise: str, application_id: str, bank: str) -> GuaranteeView | None:
        for g in self.c.list_guarantees(enterprise=enterprise, limit=1000):
            if g.application_id == application_id and g.bank == bank:
                return GuaranteeView(
                    application_id=g.application_id, bank=g.bank, enterprise=g.enterprise,
                    amount=int(g.amount_yuan), term_months=int(g.term_months), approved=g.approved,
                    reason=g.reason, rating=g.rating, fund_share_bp=int(g.fund_share_bp),
                    fund_amount=int(g.fund_amount_yuan), status=g.status,
                )  # fmt: skip
        return None
