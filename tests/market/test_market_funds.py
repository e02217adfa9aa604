"""The investment-fund market: criteria pre-screen, review only under the enterprise's
investment_review consent (verified against the manager's certificate), decisions with
reasons, milestones, and each fund's pipeline."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.errors import InvalidArgument
from fedcredit.common.tls import Identity
from fedcredit.consent.authority import ConsentAuthority, local_verifier
from fedcredit.consent.errors import ConsentRevoked, PurposeNotCovered
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms
from fedcredit.market import funds, rules
from fedcredit.market.errors import ConsentNotReleased, IllegalTransition, NotYourNeed
from tests.market.conftest import Env, ent, make_env, seed

MANAGER = DEFAULT_BANKS[2]
OPERATOR = Identity("operator", "operator", b"o" * 32)


def manager(org: str = MANAGER) -> Identity:
    return Identity(org, "bank", org.encode().ljust(32, b"."))


@pytest.fixture
def fenv(db_url: str, tmp_path: Path) -> Iterator[tuple[Env, ConsentAuthority]]:
    env = make_env(db_url, tmp_path)
    authority = ConsentAuthority(
        ConsentStore(f"sqlite:///{tmp_path}/consent.sqlite"), ConsentSettings(),
        banks=list(DEFAULT_BANKS), bank_certs=lambda b: manager(b).cert_sha256,
    )  # fmt: skip
    env.market.verifier = local_verifier(authority)
    env.clock.t = __import__("time").time()
    yield env, authority
    env.market.store.close()
    env.log.close()
    authority.close()
    authority.store.close()


FUND = {"fund_id": "weihai-marine", "manager": MANAGER, "name": "Marine economy fund",
        "industries": ["C", "A"], "min_grade": "B", "size_bands": [], "ticket_min": 1_000_000,
        "ticket_max": 20_000_000, "capacity": 500_000_000}  # fmt: skip


def test_every_illegal_application_transition_is_refused() -> None:
    for state, event in itertools.product(rules.FUND_APP_STATES, rules.FUND_APP_MACHINE):
        sources, target = rules.FUND_APP_MACHINE[event]
        if state in sources:
            assert rules.next_app_state(state, event) == (state if target == "=" else target)
        else:
            with pytest.raises(IllegalTransition, match=f"the application is {state}"):
                rules.next_app_state(state, event)


def test_apply_review_decide_track_and_report(fenv: tuple[Env, ConsentAuthority]) -> None:
    env, authority = fenv
    m = env.market
    (c,) = seed(env, 1, grade="B")
    funds.publish_fund(m, OPERATOR, "f1", FUND)
    with pytest.raises(InvalidArgument, match="TICKET_SIZE"):
        funds.apply_to_fund(m, ent(c), "a0", "weihai-marine", 50_000, "plan", "c_x")
    view = authority.grant(ent(c), ConsentTerms(enterprise=c, bank=MANAGER, purpose="investment_review",
                                                scope=["score_only"], validity_days=60, max_uses=5,
                                                retention_days=365))  # fmt: skip
    app = funds.apply_to_fund(
        m, ent(c), "a1", "weihai-marine", 5_000_000, "new trawlers", view.consent_id
    )["app_id"]
    token = authority.token(manager(), view.consent_id).token
    assert token
    with pytest.raises(NotYourNeed):  # another institution is not this fund's manager
        funds.review(m, manager(DEFAULT_BANKS[3]), app, token)
    profile = funds.review(m, manager(), app, token)
    assert (profile["enterprise"], profile["grade"], profile["plan"]) == (c, "B", "new trawlers")
    with pytest.raises(InvalidArgument, match="decline names one of"):
        funds.track(m, manager(), "d0", app, "decline", reason="DONT_LIKE")
    funds.track(m, manager(), "ok", app, "accept")
    with pytest.raises(IllegalTransition):
        funds.track(m, manager(), "mm", app, "milestone", milestone="first boat")
    funds.track(m, manager(), "inv", app, "invest", amount=5_000_000)
    funds.track(m, manager(), "m1", app, "milestone", milestone="first boat delivered")
    r = funds.pipeline(m, "weihai-marine")
    assert (
        r["by_state"]["INVESTED"] == 1 and r["success_rate"] == 1.0 and r["invested"] == 5_000_000
    )
    # a revoked consent stops any further review; a credit-assessment consent never served one
    authority.revoke(ent(c), view.consent_id)
    with pytest.raises(ConsentRevoked):
        funds.review(m, manager(), app, token)
    other = authority.grant(ent(c), ConsentTerms(enterprise=c, bank=MANAGER, purpose="credit_assessment",
                                                 scope=["score_only"], validity_days=5, max_uses=1,
                                                 retention_days=5))  # fmt: skip
    wrong = authority.token(manager(), other.consent_id).token
    assert wrong
    with pytest.raises((PurposeNotCovered, ConsentNotReleased)):
        funds.review(m, manager(), app, wrong)
    kinds = [e["payload"]["event"] for e in m.store.events_of(c)]
    assert {
        "fund_application",
        "fund_review",
        "fund_accept",
        "fund_invest",
        "fund_milestone",
    } <= set(kinds)
