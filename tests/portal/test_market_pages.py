"""The marketplace's pages over HTTP, against the real consent service (passkey sign-in)
and a real MarketService over mTLS that the portal calls under its own certificate for the
signed-in organisation: each page renders, every form refuses without the CSRF token, the
wrong role is turned away, and a bank's pages carry no identity of an enterprise (its
code) before the enterprise accepts an offer."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.errors import RoleNotAllowed
from fedcredit.consent import passkey_errors as P
from fedcredit.market.client import FundMarketClient, MarketClient
from fedcredit.market.ratings import rate_city
from fedcredit.market.rules import Profile
from fedcredit.market.servicer import serve
from fedcredit.portal.market_pages import MARKET_ROUTES
from tests.market.conftest import code, make_env, product
from tests.portal.conftest import Federation
from tests.portal.test_portal_http import enrolled
from tests.portal.webclient import Visitor

BANK = DEFAULT_BANKS[0]
ENTS = [code(500 + i) for i in range(8)]  # [6], [7]: the Chromium tests


@dataclass
class Market:
    address: str
    env: Any
    pki: Any

    def as_org(self, org: str) -> MarketClient:
        return MarketClient(self.address, self.pki.tls(org))


@pytest.fixture(scope="module")
def mk(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    d: Path = tmp_path_factory.mktemp("portal-market")
    env = make_env(f"sqlite:///{d}/market.sqlite", d)
    env.clock.t = time.time()  # the portal shows real times; claims expire in an hour
    federation.pki.issue("market", "market")
    for e in ENTS:  # the tests read back through each enterprise's own certificate
        federation.pki.issue(e, "enterprise")
    rate_city(env.market, "r0", [Profile(e, "C", "wendeng", 40, "A", 900_000) for e in ENTS])
    checker = federation.delegation_checker("market")
    server, port = serve(env.market, "127.0.0.1:0", federation.pki.tls("market"), delegation=checker.verifier)  # fmt: skip
    m = Market(f"127.0.0.1:{port}", env, federation.pki)
    with m.as_org(BANK) as b:
        b.publish_product(product("wc1"))
    client = FundMarketClient(m.address, federation.pki.tls("portal"))
    federation.backend.market = client
    try:
        yield m
    finally:
        federation.backend.market = None
        client.close()
        server.stop(0)
        checker.close()
        env.market.store.close()
        env.log.close()


def _visitor(federation: Federation) -> httpx.Client:
    return httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1"), timeout=30)


@pytest.fixture
def ent_v(federation: Federation, mk: Market) -> Iterator[Visitor]:
    with _visitor(federation) as c:
        yield Visitor(c)


@pytest.fixture
def bank_v(federation: Federation, mk: Market) -> Iterator[Visitor]:
    with _visitor(federation) as c:
        v = Visitor(c)
        enrolled(federation, v, BANK, "bank")
        yield v


def form(v: Visitor, path: str, **fields: str) -> httpx.Response:
    r = v.post_form(path, {"csrf": v.csrf, **fields})
    assert r.status_code == 303, r.text
    return r


def flash_error(v: Visitor) -> str:
    """The flash the next page shows (an error's sentence, or '')."""
    got = v.get("/home")
    return " ".join(re.findall(r'<p class="flash">([^<]*)</p>', got.text))


def test_enterprise_posts_bank_claims_offers_enterprise_accepts(
    federation: Federation, mk: Market, ent_v: Visitor, bank_v: Visitor
) -> None:
    ent = ENTS[0]
    enrolled(federation, ent_v, ent)
    page = ent_v.get("/market/enterprise")
    assert page.status_code == 200 and 'id="post-need"' in page.text
    form(ent_v, "/market/needs", amount="800000", term_months="12", purpose="equipment",
         request_id="form-1")  # fmt: skip
    form(ent_v, "/market/needs", amount="800000", term_months="12", purpose="equipment",
         request_id="form-1")  # the same form sent twice: one need  # fmt: skip
    with mk.as_org(ent) as own:
        mine = own.my_needs()
    assert len(mine) == 1 and mine[0]["state"] == "OPEN"
    need = mine[0]["need_id"]
    assert need in ent_v.get("/market/enterprise").text

    desk = bank_v.get("/market/bank")
    assert desk.status_code == 200 and f'data-claim="{need}"' in desk.text
    assert ent not in desk.text  # bands only: no code of the enterprise on a bank's page
    form(bank_v, "/market/claim", need_id=need)
    desk = bank_v.get("/market/bank")
    assert f'data-offer="{need}"' in desk.text and ent not in desk.text
    form(bank_v, "/market/offer", need_id=need, product_id="wc1", rate_bp="420")
    assert ent not in bank_v.get("/market/bank").text
    assert ent not in bank_v.get("/market/bank/loans").text

    page = ent_v.get("/market/enterprise")
    assert f'data-accept="{need}"' in page.text and "4.20%" in page.text
    form(ent_v, "/market/answer", need_id=need, accept="1")
    with mk.as_org(ent) as own:
        assert own.need(need)["state"] == "ACCEPTED"
    book = bank_v.get("/market/bank/loans")
    assert book.status_code == 200 and "800,000" in book.text and ent in book.text


def test_enterprise_declines_and_withdraws(
    federation: Federation, mk: Market, ent_v: Visitor, bank_v: Visitor
) -> None:
    ent = ENTS[1]
    enrolled(federation, ent_v, ent)
    form(ent_v, "/market/needs", amount="300000", term_months="6", purpose="trade")
    with mk.as_org(ent) as own:
        need = own.my_needs()[0]["need_id"]
    form(bank_v, "/market/claim", need_id=need)
    form(bank_v, "/market/offer", need_id=need, product_id="wc1", rate_bp="500")
    form(ent_v, "/market/answer", need_id=need, accept="0", why="rate too high")
    with mk.as_org(ent) as own:
        assert own.need(need)["state"] == "OPEN"
    # the declined bank no longer sees it among the open needs
    assert f'data-claim="{need}"' not in bank_v.get("/market/bank").text
    form(ent_v, "/market/withdraw", need_id=need)
    with mk.as_org(ent) as own:
        assert own.need(need)["state"] == "WITHDRAWN"


def test_every_act_through_the_portal_is_ledgered_via_the_portal(
    federation: Federation, mk: Market, ent_v: Visitor, bank_v: Visitor
) -> None:
    """Review of issue 19: an act a person did through the portal (under a delegation
    ticket) is ledgered as the organisation's, with ``"via": "portal"``, like the
    coordinator's; an act over the organisation's own certificate carries no ``via``."""
    import json

    ent = ENTS[1]
    enrolled(federation, ent_v, ent)
    form(ent_v, "/market/needs", amount="200000", term_months="6", purpose="refinancing",
         request_id="via-1")  # fmt: skip
    with mk.as_org(ent) as own:
        need = next(n["need_id"] for n in own.my_needs() if n.get("purpose") == "refinancing")
    form(bank_v, "/market/claim", need_id=need)
    form(bank_v, "/market/offer", need_id=need, product_id="wc1", rate_bp="450")
    with mk.as_org(ent) as own:  # the enterprise's own certificate, not the portal
        own.withdraw(need, request_id="via-own")
    log = mk.env.log
    about = [json.loads(e.data) for e in log.entries_by_subject(ent, log.size)]
    events = {p["payload"]["event"]: p["payload"] for p in about if p["payload"].get("need_id") == need}  # fmt: skip
    for event in ("need_posted", "need_claimed", "offer_made"):
        assert events[event].get("via") == "portal", (event, events[event])
    assert events["need_claimed"]["bank"] == BANK
    assert "via" not in events["need_withdrawn"]


def test_every_market_form_refuses_without_csrf(
    federation: Federation, mk: Market, ent_v: Visitor
) -> None:
    ent = ENTS[2]
    enrolled(federation, ent_v, ent)
    posts = [r.path for r in MARKET_ROUTES if isinstance(r, Route) and "POST" in (r.methods or ())]  # fmt: skip
    assert {"/market/needs", "/market/answer", "/market/withdraw", "/market/claim", "/market/offer"} <= set(posts)  # fmt: skip
    for path in posts:
        fields = {"amount": "100000", "term_months": "6", "purpose": "trade", "need_id": "n-x"}
        for bad in ({}, {"csrf": "forged"}):
            r = ent_v.post_form(path, {**fields, **bad})
            assert r.status_code == 403, (path, r.status_code)
        r = ent_v.post_json(path, fields, csrf="")
        assert r.status_code == 403 and r.json()["error"] == "CSRF_FAILED"
    with mk.as_org(ent) as own:
        assert own.my_needs() == []  # nothing changed


def test_pages_and_forms_refuse_the_wrong_role(
    federation: Federation, mk: Market, ent_v: Visitor, bank_v: Visitor
) -> None:
    ent = ENTS[3]
    for path in ("/market/enterprise", "/market/bank", "/market/bank/loans", "/market/funds"):
        r = ent_v.get(path)  # not signed in
        assert r.status_code == 303 and r.headers["location"] == "/signin", path
    enrolled(federation, ent_v, ent)
    for path in ("/market/bank", "/market/bank/loans", "/market/funds"):
        r = ent_v.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/home", path
    r = bank_v.get("/market/enterprise")
    assert r.status_code == 303 and r.headers["location"] == "/home"
    # a bank posting a need, an enterprise claiming: refused by the portal, nothing changed
    form(bank_v, "/market/needs", amount="100000", term_months="6", purpose="trade")
    assert "enterprise" in flash_error(bank_v)
    form(ent_v, "/market/needs", amount="100000", term_months="6", purpose="trade")
    with mk.as_org(ent) as own:
        (need,) = own.my_needs()
    form(ent_v, "/market/claim", need_id=need["need_id"])
    assert "bank" in flash_error(ent_v)
    with mk.as_org(ent) as own:
        assert own.need(need["need_id"])["state"] == "OPEN"


def test_bad_input_is_refused_precisely(federation: Federation, mk: Market, ent_v: Visitor) -> None:
    ent = ENTS[4]
    enrolled(federation, ent_v, ent)
    for fields, words in (
        ({"amount": "12x", "term_months": "6", "purpose": "trade"}, "whole number"),
        ({"amount": "1000", "term_months": "6", "purpose": "yacht"}, "purpose"),
        ({"amount": "9" * 13, "term_months": "6", "purpose": "trade"}, "12 digits"),
    ):
        form(ent_v, "/market/needs", **fields)
        assert words in flash_error(ent_v)
    mk.pki.issue(ent, "enterprise")
    with mk.as_org(ent) as own:
        assert own.my_needs() == []


def test_funds_page_shows_the_managers_pipeline_and_report(
    federation: Federation, mk: Market, bank_v: Visitor
) -> None:
    spec = {"name": "Technology fund", "industries": ["C"], "min_grade": "B",
            "size_bands": ["small", "medium"], "ticket_min": 1_000_000,
            "ticket_max": 10_000_000, "capacity": 100_000_000}  # fmt: skip
    with FundMarketClient(mk.address, federation.pki.tls("operator")) as op:
        op.publish_fund({**spec, "fund_id": "f-mine", "manager": BANK})
        op.publish_fund({**spec, "fund_id": "f-other", "manager": DEFAULT_BANKS[1]})
    with FundMarketClient(mk.address, federation.pki.tls(ENTS[5])) as firm:
        firm.apply("f-mine", 2_000_000, "automation line", "c_for_the_manager")
    r = bank_v.get("/market/funds?lang=en")
    assert r.status_code == 200
    assert 'data-fund="f-mine"' in r.text and 'data-fund="f-other"' not in r.text
    assert "<td>SUBMITTED</td><td>1</td>" in r.text.replace("\n", "")
    assert ENTS[5] not in r.text  # the report counts applications; the review names them


def test_the_market_limits_what_the_portal_may_do(federation: Federation, mk: Market) -> None:
    """The portal's certificate acts only for the enterprise or bank its delegation ticket
    names, and never releases a consent, reveals, moves a loan or publishes a product."""
    ent_session, _ = federation.signed_in(ENTS[5], "enterprise")
    bank_session, _ = federation.signed_in(BANK, "bank")
    with FundMarketClient(mk.address, federation.pki.tls("portal")) as portal:
        with pytest.raises(P.DelegationMissing):
            portal.my_needs()  # names no one
        with pytest.raises(P.DelegationMissing):
            portal.fund_book()
        # a ticket for another service is refused here
        with pytest.raises(P.DelegationWrongAudience):
            portal.delegated(federation.delegate(ent_session.ticket, "ledger")).my_needs()
        as_ent = portal.delegated(federation.delegate(ent_session.ticket, "market"))
        need = as_ent.post_need(200_000, 6, "trade")["need_id"]
        with pytest.raises(RoleNotAllowed):
            as_ent.release_consent(need, "c_x")
        as_bank = portal.delegated(federation.delegate(bank_session.ticket, "market"))
        with pytest.raises(RoleNotAllowed):
            as_bank.reveal(need, "token")
        with pytest.raises(RoleNotAllowed):
            as_bank.loan_step("loan-x", "disburse", amount=1)
        with pytest.raises(RoleNotAllowed):
            as_bank.publish_product(product("p-portal"))
        views = as_bank.open_needs()
        assert need in {v.need_id for v in views}
        assert ENTS[5].encode() not in b"".join(v.SerializeToString() for v in views)


@pytest.mark.parametrize("role", ["enterprise", "bank"])
def test_hostile_requests_to_the_market_pages_change_nothing(
    federation: Federation, mk: Market, ent_v: Visitor, role: str
) -> None:
    """tests/portal/test_hostile_http.py's requests with the marketplace behind the pages
    (there it is absent): no 500, no internals, no need posted."""
    from tests.portal.test_hostile_http import SEEN, hostile_requests

    ent = code(590)  # used by no other test here
    enrolled(federation, ent_v, ent if role == "enterprise" else BANK, role)
    problems = hostile_requests(ent_v, [r for r in MARKET_ROUTES if isinstance(r, Route)])
    assert not problems, "\n".join(problems[:40])
    assert SEEN[400] > 0, "no request reached a field's check"
    mk.pki.issue(ent, "enterprise")
    with mk.as_org(ent) as own:
        assert own.my_needs() == []
