"""Over mTLS: everything a bank receives before the enterprise's marketplace consent holds no
identity and no score (captured off the wire); after the consent it holds exactly those;
after a revocation, nothing more. Roles come from certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.errors import RoleNotAllowed
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.errors import ConsentRevoked
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.market.client import MarketClient
from fedcredit.market.errors import ConsentNotReleased, NotYourNeed
from fedcredit.market.ratings import rate_city
from fedcredit.market.rules import Profile
from fedcredit.market.servicer import serve
from fedcredit.v1 import market_pb2_grpc
from tests.market.conftest import code, make_env, product

BANK, OTHER = DEFAULT_BANKS[0], DEFAULT_BANKS[1]


class Capture(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Every message and every error detail the bank's client receives, serialised."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = continuation(details, request)
        try:
            self.received.append(call.result().SerializeToString())
        except grpc.RpcError as exc:
            self.received.append(
                repr(exc.trailing_metadata()).encode() + str(exc.details()).encode()
            )
        return call


@dataclass
class Wire:
    address: str
    authority: ConsentAuthority
    pki: Any
    ent: str
    market: Any

    def client(self, org: str, capture: Capture | None = None) -> MarketClient:
        c = MarketClient(self.address, self.pki.tls(org))
        if capture is not None:
            c._stub = market_pb2_grpc.MarketServiceStub(grpc.intercept_channel(c.channel, capture))
        return c


@pytest.fixture
def wire(pki: Any, tmp_path: Path) -> Iterator[Wire]:
    env = make_env(f"sqlite:///{tmp_path}/market.sqlite", tmp_path)
    banks = {b: pki.tls(b).identity() for b in DEFAULT_BANKS}
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{tmp_path}/consent.sqlite"), ConsentSettings(),
        banks=list(DEFAULT_BANKS), bank_certs=lambda b: banks[b].cert_sha256 if b in banks else None,
    )  # fmt: skip
    env.market.verifier = local_verifier(authority)
    env.clock.t = __import__("time").time()
    ent = code(99)
    pki.issue(ent, "enterprise")
    pki.issue("market", "market")
    rate_city(env.market, "r0", [Profile(ent, "C", "wendeng", 57, "A", 987_654)])
    server, port = serve(env.market, "127.0.0.1:0", pki.tls("market"))
    yield Wire(f"127.0.0.1:{port}", authority, pki, ent, env.market)
    server.stop(2).wait()
    env.market.store.close()
    env.log.close()
    authority.close()
    authority.store.close()


def test_a_bank_learns_no_identity_or_score_before_consent(wire: Wire) -> None:
    cap = Capture()
    bank, firm = wire.client(BANK, cap), wire.client(wire.ent)
    bank.publish_product(product("p1"))
    need = firm.post_need(1_234_567, 24, "equipment")["need_id"]
    (seen,) = bank.open_needs()
    assert (seen.grade_band, seen.industry, seen.region, seen.size_band, seen.amount_band) == (
        "A-B", "C", "wendeng", "small", "1M-3M")  # fmt: skip
    bank.claim(need)
    bank.offer(need, "p1", 420)
    bank.need(need)
    bank.products()
    with pytest.raises(ConsentNotReleased):
        bank.reveal(need, "x.y.z")
    blob = b"".join(cap.received)
    for secret in (
        wire.ent,
        "987654",
        "1234567",
        "1,234,567",
        '"grade":"A"',
        '"headcount"',
        "pd_ppm",
    ):
        assert secret.encode() not in blob, secret
    # the enterprise grants a marketplace consent to the winner and releases it
    view = wire.authority.grant(
        wire.pki.tls(wire.ent).identity(),
        ConsentTerms(enterprise=wire.ent, bank=BANK, purpose="marketplace", scope=["score_only"],
                     validity_days=7, max_uses=3, retention_days=30),
    )  # fmt: skip
    firm.release_consent(need, view.consent_id)
    assert bank.need(need)["consent_id"] == view.consent_id
    token = wire.authority.token(wire.pki.tls(BANK).identity(), view.consent_id).token
    assert token
    revealed = bank.reveal(need, token)
    assert (revealed["enterprise"], revealed["grade"], revealed["pd_ppm"]) == (
        wire.ent,
        "A",
        987_654,
    )
    # another bank gets nothing; a revoked consent stops further releases
    with pytest.raises(NotYourNeed):
        wire.client(OTHER).reveal(need, token)
    wire.authority.revoke(wire.pki.tls(wire.ent).identity(), view.consent_id)
    with pytest.raises(ConsentRevoked):
        bank.reveal(need, token)


def test_roles_come_from_the_certificate(wire: Wire) -> None:
    with pytest.raises(RoleNotAllowed):
        wire.client(wire.ent).publish_product(product("p2"))
    with pytest.raises(RoleNotAllowed):
        wire.client(BANK).post_need(1_000_000, 12, "trade")


def test_pushed_leads_carry_bands_only_and_opt_out_holds(wire: Wire) -> None:
    from fedcredit.market.pushes import push_leads

    cap = Capture()
    bank, firm = wire.client(BANK, cap), wire.client(wire.ent)
    bank.publish_product(product("p1"))
    market = wire.market
    push_leads(market, "r1")
    (lead,) = bank.leads()
    assert (lead["grade_band"], lead["size_band"]) == ("A-B", "small")
    assert wire.ent.encode() not in b"".join(cap.received)
    assert [x["bank"] for x in firm.leads_about_me()] == [BANK]
    firm.set_push_opt_out(True)
    push_leads(market, "r2")
    assert [x["run_id"] for x in firm.leads_about_me()] == ["r1"]
    mine = firm.my_rating()  # the platform's rating is visible to the enterprise it rates
    assert (mine["grade"], mine["pd_ppm"], mine["run_id"], mine["push_opt_out"]) == (
        "A",
        987_654,
        "r0",
        True,
    )
    assert "designated body" in mine["legal_basis"] and mine["run_ledger_index"] >= 0
    with pytest.raises(RoleNotAllowed):
        bank.my_rating()


def test_investment_fund_review_over_the_wire(wire: Wire) -> None:
    from fedcredit.market.client import FundMarketClient

    mgr_org = DEFAULT_BANKS[2]
    op = FundMarketClient(wire.address, wire.pki.tls("operator"))
    mgr = FundMarketClient(wire.address, wire.pki.tls(mgr_org))
    firm = FundMarketClient(wire.address, wire.pki.tls(wire.ent))
    op.publish_fund({"fund_id": "f-tech", "manager": mgr_org, "name": "Technology fund",
                     "industries": ["C"], "min_grade": "B", "size_bands": ["small", "medium"],
                     "ticket_min": 1_000_000, "ticket_max": 10_000_000, "capacity": 100_000_000})  # fmt: skip
    with pytest.raises(RoleNotAllowed):
        mgr.publish_fund({"fund_id": "x"})
    assert [f["fund_id"] for f in firm.funds()] == ["f-tech"]
    ident = wire.pki.tls(wire.ent).identity()
    view = wire.authority.grant(ident, ConsentTerms(enterprise=wire.ent, bank=mgr_org, purpose="investment_review",
                                                    scope=["score_only"], validity_days=30, max_uses=3,
                                                    retention_days=30))  # fmt: skip
    app = firm.apply("f-tech", 2_000_000, "automation line", view.consent_id)["app_id"]
    token = wire.authority.token(wire.pki.tls(mgr_org).identity(), view.consent_id).token
    assert token
    with pytest.raises(NotYourNeed):
        FundMarketClient(wire.address, wire.pki.tls(BANK)).review(app, token)
    got = mgr.review(app, token)
    assert (got["enterprise"], got["grade"], got["headcount"]) == (wire.ent, "A", 57)
    mgr.track(app, "decline", reason="BUSINESS_PLAN", note="payback too long")
    p = mgr.pipeline("f-tech")
    assert p["by_state"]["DECLINED"] == 1 and p["decline_reasons"]["BUSINESS_PLAN"] == 1
    with pytest.raises(NotYourNeed):
        FundMarketClient(wire.address, wire.pki.tls(BANK)).pipeline("f-tech")


def test_cli_bank_and_enterprise_commands(wire: Wire, tmp_path: Path) -> None:
    import json as _json

    from typer.testing import CliRunner

    from fedcredit.clients.cli import build_app

    app, run = build_app(), CliRunner()
    common = ["--pki", str(wire.pki.dir), "--address", wire.address, "--json"]
    spec = tmp_path / "p.json"
    spec.write_text(_json.dumps(product("cli-1")))
    r = run.invoke(app, ["bank", "market", "publish", str(spec), "--as", BANK, *common])
    assert r.exit_code == 0, r.output
    r = run.invoke(
        app, ["enterprise", "market", "post", "2000000", "12", "trade", "--as", wire.ent, *common]
    )
    need = _json.loads(r.output)["need_id"]
    r = run.invoke(app, ["bank", "market", "needs", "--as", BANK, *common])
    assert [n["need_id"] for n in _json.loads(r.output)] == [need] and wire.ent not in r.output
    r = run.invoke(app, ["bank", "market", "claim", "need-nope", "--as", BANK, *common])
    assert r.exit_code != 0 and _json.loads(r.output)["error"]["reason"] == "NEED_NOT_FOUND"
