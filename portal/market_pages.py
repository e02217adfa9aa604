"""The marketplace's pages: an enterprise posts needs and answers offers; a bank reads its
pushed leads and the open needs (bands only), grabs one, offers on its claims and reads
its loan book; a fund manager (a bank managing an investment fund) reads each fund's
pipeline and performance report.

Every call goes through the marketplace's SDK under the portal's own certificate, naming
the organisation signed in with a passkey (a delegation ticket, ``ServiceClient.delegated``); the marketplace
applies every one of its rules to that organisation, so a bank's page shows exactly what
the bank would get with its own certificate: bands, never an identity or a score, before
the enterprise's consent. Releasing a consent, reveals and loan steps are not here: they
stay with the organisation's own certificate (the marketplace refuses them from the portal).
Every form posts through the portal's CSRF check (``web.post``)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fedcredit.common.errors import InvalidArgument, RoleNotAllowed, Unavailable
from fedcredit.portal import i18n
from fedcredit.portal.security import Session
from fedcredit.portal.web import Portal, call, delegation, page, post

NEED_PURPOSES = ("working_capital", "equipment", "expansion", "trade", "refinancing")


class MarketNotConfigured(Unavailable):
    reason = "MARKET_NOT_CONFIGURED"


async def market(portal: Portal, s: Session) -> Any:
    """The marketplace client calling for the signed-in organisation (with its delegation
    ticket for the marketplace)."""
    m = getattr(portal.backend, "market", None)
    if m is None:
        raise MarketNotConfigured("this portal has no marketplace configured ([services.market])")
    return m.delegated(await delegation(portal, s, "market"))


def _need_role(s: Session, role: str) -> None:
    """POST endpoints check the role themselves (``page`` does it for GET)."""
    if not s.signed_in or s.role != role:
        raise RoleNotAllowed(
            f"only a signed-in {role} may do this; you are {s.role or 'not signed in'}"
        )


def whole(data: dict[str, Any], key: str, *, digits: int) -> int:
    text = str(data.get(key, "")).strip()
    if not text.isdigit() or len(text) > digits:
        raise InvalidArgument(f"expected a whole number of at most {digits} digits for {key}, got {text[:20]!r}")  # fmt: skip
    return int(text)


def field(data: dict[str, Any], key: str, *, limit: int = 64) -> str:
    text = str(data.get(key, "")).strip()
    if not text or len(text) > limit:
        raise InvalidArgument(f"expected {key} (1 to {limit} characters), got {len(text)} characters")  # fmt: skip
    return text


def back(portal: Portal, s: Session, to: str, flash: str) -> Response:
    s.flash.append(flash)
    return portal.finish(RedirectResponse(to, 303), s)


# --- enterprise ----------------------------------------------------------------------------


@page("enterprise")
async def enterprise_market(portal: Portal, request: Request, s: Session) -> Response:
    m = await market(portal, s)
    needs = await call(m.my_needs)
    loans = await call(m.loans)
    return portal.render(
        request,
        s,
        "market/enterprise.html",
        needs=needs,
        loans=loans,
        purposes=NEED_PURPOSES,
        rid=uuid.uuid4().hex,
        mk_keys=i18n.T,
    )


@post
async def post_need(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    _need_role(s, "enterprise")
    purpose = str(data.get("purpose", ""))
    if purpose not in NEED_PURPOSES:
        raise InvalidArgument(f"expected a purpose of {', '.join(NEED_PURPOSES)}, got {purpose[:40]!r}")  # fmt: skip
    amount, term = whole(data, "amount", digits=12), whole(data, "term_months", digits=3)
    # the request id comes from the form: a double submit posts one need, not two
    rid = str(data.get("request_id", ""))[:64] or None
    await call((await market(portal, s)).post_need, amount, term, purpose, request_id=rid)
    return back(portal, s, "/market/enterprise", "mk_need_posted")


@post
async def answer(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "enterprise")
    accept = str(data.get("accept", "")) == "1"
    why = str(data.get("why", "")).strip()[:200]
    await call((await market(portal, s)).answer, field(data, "need_id"), accept, why)
    return back(portal, s, "/market/enterprise", "mk_accepted" if accept else "mk_declined")


@post
async def withdraw(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "enterprise")
    await call((await market(portal, s)).withdraw, field(data, "need_id"))
    return back(portal, s, "/market/enterprise", "mk_withdrawn")


# --- bank -------------------------------------------------------------------------------------


@page("bank")
async def bank_market(portal: Portal, request: Request, s: Session) -> Response:
    m = await market(portal, s)
    open_needs = await call(m.open_needs, 200)
    claims = await call(m.my_needs)
    leads = await call(m.leads, 200)
    products = await call(m.products, s.org)
    return portal.render(request, s, "market/bank.html", open_needs=open_needs, claims=claims,
                         leads=leads, products=products)  # fmt: skip


@page("bank")
async def bank_loans(portal: Portal, request: Request, s: Session) -> Response:
    m = await market(portal, s)
    loans = await call(m.loans)
    warnings = await call(m.warnings)
    totals = {
        "count": len(loans),
        "principal": sum(int(x.get("principal") or 0) for x in loans),
        "repaid": sum(int(x.get("repaid") or 0) for x in loans),
        "loss": sum(int(x.get("loss") or 0) for x in loans),
        "fund_amount": sum(int(x.get("fund_amount") or 0) for x in loans),
    }
    return portal.render(request, s, "market/loans.html", loans=loans, warnings=warnings, totals=totals)  # fmt: skip


@post
async def claim(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "bank")
    await call((await market(portal, s)).claim, field(data, "need_id"))
    return back(portal, s, "/market/bank", "mk_claimed")


@post
async def offer(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "bank")
    rate = whole(data, "rate_bp", digits=5)
    await call(
        (await market(portal, s)).offer, field(data, "need_id"), field(data, "product_id"), rate
    )
    return back(portal, s, "/market/bank", "mk_offered")


# --- fund manager ------------------------------------------------------------------------------


@page("bank")
async def fund_pipeline(portal: Portal, request: Request, s: Session) -> Response:
    """The funds this bank manages, each with its pipeline and performance report (the
    marketplace refuses a fund's pipeline to anyone but its manager)."""
    m = await market(portal, s)
    funds = [f for f in await call(m.funds) if f.get("manager") == s.org]
    reports = [await call(m.pipeline, str(f["fund_id"])) for f in funds]
    return portal.render(request, s, "market/funds.html", rows=list(zip(funds, reports, strict=True)))  # fmt: skip


MARKET_ROUTES = [
    Route("/market/enterprise", enterprise_market),
    Route("/market/needs", post_need, methods=["POST"]),
    Route("/market/answer", answer, methods=["POST"]),
    Route("/market/withdraw", withdraw, methods=["POST"]),
    Route("/market/bank", bank_market),
    Route("/market/bank/loans", bank_loans),
    Route("/market/claim", claim, methods=["POST"]),
    Route("/market/offer", offer, methods=["POST"]),
    Route("/market/funds", fund_pipeline),
]
