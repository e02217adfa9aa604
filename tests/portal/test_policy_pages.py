"""The policy-fund pages over HTTP, against the real consent service (passkey sign-in) and
a real PolicyService over mTLS that the portal calls under its own certificate for the
signed-in organisation: a department publishes (a refused rule shown at its line and
column), screens and reads the counts, reviews its part; an enterprise sees its benefits,
declines one, applies with an attachment (its SHA-256), reports progress; every form
refuses without the CSRF token; the wrong role is turned away; an enterprise's pages and
acts reach only its own records."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.routing import Route

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.consent import passkey_errors as P
from fedcredit.ledger.log import Log
from fedcredit.policies import rules
from fedcredit.policies.client import PolicyClient
from fedcredit.policies.service import PolicyServicer, build_policy_server
from fedcredit.policies.store import PolicyStore
from fedcredit.portal.policy_pages import POLICY_ROUTES
from tests.market.conftest import code
from tests.portal.conftest import Federation
from tests.portal.test_portal_http import enrolled
from tests.portal.webclient import Visitor

ENTS = [code(900 + i) for i in range(8)]  # [6], [7]: the Chromium flow
LEAD, CO = "dept-tax", "dept-ip"  # issuer / co-reviewer (department nodes sign in)
YEAR = datetime.now(UTC).year


@dataclass
class Policies:
    address: str
    store: PolicyStore
    ledger: Log
    clock: list[float]
    pki: Any

    def as_org(self, org: str, role: str) -> PolicyClient:
        return PolicyClient(self.address, self.pki.issue(org, role), server_org="policies")


def registry() -> list[tuple[str, dict[str, Any]]]:
    """Platform-only attributes (the rules here read no department's data): the even
    enterprises are young, the odd ones old."""
    return [(c, rules.platform_row(rating="A" if i % 3 else "B", industry="C", district="wendeng",
                                   size_class="small", enterprise_type="llc",
                                   founded_year=2021 if i % 2 == 0 else 2001))
            for i, c in enumerate(ENTS)]  # fmt: skip


@pytest.fixture(scope="module")
def pol(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Policies]:
    d: Path = tmp_path_factory.mktemp("portal-policies")
    store = PolicyStore.open(f"sqlite:///{d / 'pol.sqlite'}")
    store.load_registry(registry())
    ledger = Log.open(f"sqlite:///{d / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform")
    clock = [time.time()]
    federation.pki.issue("policies", "policy")
    checker = federation.delegation_checker("policies")
    servicer = PolicyServicer(store=store, ledger=ledger, nodes={}, clock=lambda: clock[0],
                              delegation=checker.verifier)  # fmt: skip
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=federation.pki.tls("policies"))  # fmt: skip
    server.start()
    p = Policies(f"127.0.0.1:{server.port}", store, ledger, clock, federation.pki)
    client = PolicyClient(p.address, federation.pki.tls("portal"), server_org="policies")
    federation.backend.policies = client
    try:
        yield p
    finally:
        federation.backend.policies = None
        client.close()
        server.stop(0)
        checker.close()
        ledger.close()
        store.close()


def _visitor(federation: Federation) -> httpx.Client:
    return httpx.Client(base_url=federation.url.replace("localhost", "127.0.0.1"), timeout=30)


@pytest.fixture
def v1(federation: Federation, pol: Policies) -> Iterator[Visitor]:
    with _visitor(federation) as c:
        yield Visitor(c)


@pytest.fixture
def v2(federation: Federation, pol: Policies) -> Iterator[Visitor]:
    with _visitor(federation) as c:
        yield Visitor(c)


def form(v: Visitor, path: str, **fields: str) -> httpx.Response:
    r = v.post_form(path, {"csrf": v.csrf, **fields})
    assert r.status_code in (200, 303), r.text
    return r


def flash(v: Visitor) -> str:
    return " ".join(re.findall(r'<p class="flash">([^<]*)</p>', v.get("/home").text))


def policy_form(pid: str, mode: str, rule: str, **kw: str) -> dict[str, str]:
    base = {"id": pid, "title": f"Policy {pid}", "mode": mode, "rule": rule,
            "amount_yuan": "20000", "budget_yuan": "1000000", "opens": f"{YEAR}-01-01",
            "closes": f"{YEAR}-12-31"}  # fmt: skip
    return {**base, **kw}


def test_department_publishes_sees_errors_at_their_position_and_screens(
    federation: Federation, pol: Policies, v1: Visitor
) -> None:
    enrolled(federation, v1, LEAD, "department")
    page = v1.get("/policy/department")
    assert page.status_code == 200 and 'id="publish"' in page.text, page.text[-1500:]
    # a rule comparing the wrong types: refused, shown at line 2, column 24 (the operator)
    bad = form(v1, "/policy/publish", **policy_form("young-firms", "automatic",
                                                     "platform.rating == 'A' &&\n registry.founded_year > 'x'"))  # fmt: skip
    assert bad.status_code == 200
    assert 'data-line="2"' in bad.text and 'data-column="24"' in bad.text, bad.text[-3000:]
    assert "POLICY_RULE_INVALID" in bad.text and "第 2 行第 24 列" in bad.text
    assert "registry.founded_year &gt; &#39;x&#39;" in bad.text  # the form keeps what was typed
    assert pol.store.policies() == []
    # the htmx check answers a fragment
    frag = v1.post_form("/policy/check", {"csrf": v1.csrf, "rule": "tax.nope > 1"})
    assert frag.status_code == 200 and 'data-column="4"' in frag.text and "<html" not in frag.text
    # a formula of the wrong type: refused with its position, nothing published
    f_bad = form(v1, "/policy/publish", **policy_form("young-formula", "automatic",
                 "registry.founded_year >= 2015", benefit_formula="registry.founded_year > 1"))  # fmt: skip
    assert "got BOOL" in f_bad.text and pol.store.policies() == []
    f_pos = form(v1, "/policy/publish", **policy_form("young-formula", "automatic",
                 "registry.founded_year >= 2015", benefit_formula="registry.founded_yeer * 2"))  # fmt: skip
    assert 'data-column="9"' in f_pos.text and "registry.founded_yeer * 2" in f_pos.text
    ok = form(v1, "/policy/publish", **policy_form("young-firms", "automatic",
                                                    "registry.founded_year >= 2015"))  # fmt: skip
    assert 'id="published"' in ok.text and "platform" in ok.text
    assert pol.store.policy("young-firms").department == LEAD  # always the signed-in one
    form(v1, "/policy/publish", **policy_form("young-formula", "automatic",
         "registry.founded_year >= 2015", benefit_formula="(registry.founded_year - 2000) * 1000",
         amount_yuan="30000"))  # fmt: skip
    run = form(v1, "/policy/screen", today=datetime.now(UTC).date().isoformat())
    young = sum(1 for _, r in registry() if r["registry.founded_year"] >= 2015)
    assert re.search(rf'data-policy="young-firms"><td>young-firms</td><td class="eligible">{young}<', run.text)  # fmt: skip
    # the formula's amounts: (2021 - 2000) * 1000 for every young firm
    awards = [a for c in ENTS for a in pol.store.awards_of(c) if a.policy_id == "young-formula"]
    assert len(awards) == young and {a.amount_yuan for a in awards} == {21_000}


def test_enterprise_sees_only_its_own_benefits_and_declines(
    federation: Federation, pol: Policies, v1: Visitor
) -> None:
    from datetime import date

    old = rules.Policy(id="old-firms", title="Old firms", department=LEAD, mode="automatic",
                       amount_yuan=5_000, budget_yuan=100_000, opens=date(YEAR, 1, 1),
                       closes=date(YEAR, 12, 31), rule="registry.founded_year < 2015")  # fmt: skip
    pol.store.publish(old, pol.clock[0], pol.ledger.append_many)
    with pol.as_org("operator", "operator") as op:
        op.run_screening(f"{YEAR}-03-01", run_id="ent-run")
    me, other = ENTS[5], ENTS[3]  # both old firms
    enrolled(federation, v1, me)
    page = v1.get("/policy/enterprise")
    assert page.status_code == 200 and 'data-award="old-firms"' in page.text
    assert other not in page.text
    form(v1, "/policy/decline", policy_id="old-firms")
    assert pol.store.award("old-firms", me).state == "declined"
    assert pol.store.award("old-firms", other).state == "notified"  # not touched
    assert pol.store.books("old-firms").committed_yuan == 5_000 * (len(ENTS) // 2 - 1)
    # declining twice: a precise error, nothing changed
    form(v1, "/policy/decline", policy_id="old-firms")
    assert "AWARD_DECLINED" in flash(v1)


def test_application_joint_review_and_progress(
    federation: Federation, pol: Policies, v1: Visitor, v2: Visitor
) -> None:
    enrolled(federation, v1, LEAD, "department")
    form(v1, "/policy/publish", **policy_form("tech-loan", "application", "platform.rating == 'A'",
         reviewers=f"{LEAD},{CO}", fields="project_name,planned_investment_yuan"))  # fmt: skip
    ent = ENTS[1]
    enrolled(federation, v2, ent)
    assert 'data-apply="tech-loan"' in v2.get("/policy/enterprise").text
    assert 'name="field_project_name"' in v2.get("/policy/apply/tech-loan").text
    body = b"%PDF-1.4 business plan\n" * 40
    r = v2.http.post("/policy/apply", headers={"cookie": f"fc_session={v2.sid}"},
                     data={"csrf": v2.csrf, "policy_id": "tech-loan", "request_id": "r1",
                           "field_project_name": "Kiln retrofit",
                           "field_planned_investment_yuan": "1200000"},
                     files={"file1": ("plan.pdf", body, "application/pdf")})  # fmt: skip
    assert r.status_code == 200, r.text
    digest = hashlib.sha256(body).hexdigest()
    assert f'<code class="sha256">{digest}</code>' in r.text
    (app,) = pol.store.applications(enterprise=ent)
    assert app.attachments == {"plan.pdf": digest} and app.state == "under_review"
    # each department reviews its own part, the deadline shown
    desk = v1.get("/policy/reviews")
    assert f'data-approve="{app.id}"' in desk.text
    form(v1, "/policy/review", application_id=app.id, approve="1")
    assert pol.store.application(app.id).parts == {LEAD: "approved", CO: "pending"}
    assert f'data-approve="{app.id}"' not in v1.get("/policy/reviews").text  # decided once
    with _visitor(federation) as c:
        co = Visitor(c)
        enrolled(federation, co, CO, "department")
        form(co, "/policy/review", application_id=app.id, approve="1")
    assert pol.store.application(app.id).state == "notice"
    # the operator's own steps: the notice period passes, then payment
    pol.clock[0] += 6 * 86_400
    with pol.as_org("operator", "operator") as op:
        op.advance(app.id, "close")
        op.advance(app.id, "pay")
    page = v2.get("/policy/enterprise")
    assert 'id="progress"' in page.text and 'data-state="paid"' in page.text
    period = datetime.fromtimestamp(pol.clock[0], UTC).strftime("%Y-%m")
    form(v2, "/policy/progress", policy_id="tech-loan", period=period, revenue_yuan="850000",
         employees="23", narrative="kiln commissioned")  # fmt: skip
    (ev,) = pol.store.progress_reports("tech-loan", ent)
    assert ev.indicators == {"revenue_yuan": 850_000.0, "employees": 23.0}
    tracking = v1.get("/policy/tracking")
    assert tracking.status_code == 200 and "kiln commissioned" in tracking.text
    # every act through the portal is ledgered as the organisation's, via the portal; the
    # operator's own steps (its certificate) are not
    import json

    log = pol.ledger
    mine = [json.loads(e.data) for e in log.get_entries(0, log.size)]
    mine = [e for e in mine if e["payload"].get("policy") == "tech-loan"]
    by = {(e["kind"], e["payload"].get("event", "")): e["payload"] for e in mine}
    for key in [("policy_published", ""), ("policy_application", "submit"),
                ("policy_application", f"review:{LEAD}:approve"),
                ("policy_application", f"review:{CO}:approve"), ("policy_self_evaluation", "")]:  # fmt: skip
        assert by[key].get("via") == "portal", (key, by.get(key))
    assert "via" not in by[("policy_application", "pay")]


def test_every_policy_form_refuses_without_csrf(
    federation: Federation, pol: Policies, v1: Visitor
) -> None:
    enrolled(federation, v1, ENTS[3])
    posts = [r.path for r in POLICY_ROUTES if isinstance(r, Route) and "POST" in (r.methods or ())]  # fmt: skip
    assert len(posts) == 7
    before = (pol.store.policies(), pol.ledger.size)
    for path in posts:
        fields = {"policy_id": "young-firms", "application_id": "x", "approve": "1",
                  **policy_form("csrf-policy", "automatic", "true")}  # fmt: skip
        for bad in ({}, {"csrf": "forged"}):
            r = v1.post_form(path, {**fields, **bad})
            assert r.status_code == 403, (path, r.status_code)
        r = v1.post_json(path, fields, csrf="")
        assert r.status_code == 403 and r.json()["error"] == "CSRF_FAILED"
    assert (pol.store.policies(), pol.ledger.size) == before  # nothing changed


def test_pages_and_forms_refuse_the_wrong_role(
    federation: Federation, pol: Policies, v1: Visitor, v2: Visitor
) -> None:
    dept_pages = ("/policy/department", "/policy/reviews", "/policy/tracking")
    ent_pages = ("/policy/enterprise", "/policy/apply/tech-loan")
    for path in dept_pages + ent_pages:
        r = v1.get(path)  # not signed in
        assert r.status_code == 303 and r.headers["location"] == "/signin", path
    enrolled(federation, v1, ENTS[4])
    enrolled(federation, v2, LEAD, "department")
    for path in dept_pages:
        assert v1.get(path).headers.get("location") == "/home", path
    for path in ent_pages:
        assert v2.get(path).headers.get("location") == "/home", path
    before = (len(pol.store.policies()), pol.ledger.size)
    form(v1, "/policy/publish", **policy_form("ent-policy", "automatic", "true"))
    assert "department" in flash(v1)
    form(v2, "/policy/decline", policy_id="young-firms")
    assert "enterprise" in flash(v2)
    form(v2, "/policy/progress", policy_id="tech-loan", period="2026-01", employees="3")
    assert "enterprise" in flash(v2)
    assert (len(pol.store.policies()), pol.ledger.size) == before


def test_the_service_limits_what_the_portal_may_do(federation: Federation, pol: Policies) -> None:
    """The portal's certificate acts only for the enterprise or department its delegation
    ticket names, only as that organisation, and never for an operator's step."""
    ent_session, _ = federation.signed_in(ENTS[6], "enterprise")
    op_session, _ = federation.signed_in("operator", "operator")
    with PolicyClient(pol.address, federation.pki.tls("portal"), server_org="policies") as raw:
        with pytest.raises(P.DelegationMissing):
            raw.awards()  # names no one
        with pytest.raises(P.DelegationWrongAudience):
            raw.delegated(federation.delegate(ent_session.ticket, "market")).awards()
        as_ent = raw.delegated(federation.delegate(ent_session.ticket, "policies"))
        assert all(a.enterprise == ENTS[6] for a in as_ent.awards())
        with pytest.raises(RoleNotAllowed):
            as_ent.pay_due()
        with pytest.raises(RoleNotAllowed):
            as_ent.review("any", True)
        with pytest.raises(RoleNotAllowed):  # the portal never acts as the operator
            raw.delegated(federation.delegate(op_session.ticket, "policies")).pay_due()


def test_a_department_publishes_only_in_its_own_name(federation: Federation, pol: Policies) -> None:
    """Review of issue 19: the policy's ``department`` comes from the request body; a
    department (through the portal's delegation ticket, or over its own certificate) must
    not publish a policy in another department's name. Nothing is published or ledgered."""
    from fedcredit.policies.errors import UnknownPolicy
    from fedcredit.v1 import policies_pb2

    session, _ = federation.signed_in(LEAD, "department")
    msg = policies_pb2.PolicyMessage(
        id="forged-co-01", title="Not ours", department=CO, mode="automatic",
        amount_yuan=1000, budget_yuan=100_000, opens=f"{YEAR}-01-01", closes=f"{YEAR}-12-31",
        rule="platform.rating != 'D'",
    )  # fmt: skip
    size = pol.ledger.size
    with PolicyClient(pol.address, federation.pki.tls("portal"), server_org="policies") as raw:
        as_lead = raw.delegated(federation.delegate(session.ticket, "policies"))
        with pytest.raises(RoleNotAllowed) as got:
            as_lead.publish(msg)
    assert LEAD in got.value.message
    with pol.as_org(LEAD, "department") as own, pytest.raises(RoleNotAllowed):
        own.publish(msg)
    with pytest.raises(UnknownPolicy):
        pol.store.policy("forged-co-01")
    assert pol.ledger.size == size


def test_an_application_is_read_only_by_its_parties(federation: Federation, pol: Policies) -> None:
    """Review of issue 19 (#14's rule: NOT_FOUND for what is not the caller's): any
    certificate -- a bank's, a node's -- read any enterprise's application with its form
    fields; another enterprise (through the portal's ticket or its own certificate) was
    told PERMISSION_DENIED for an existing id and NOT_FOUND for an unknown one."""
    from fedcredit.common.departments import DEFAULT_BANKS
    from fedcredit.policies.errors import UnknownAward
    from fedcredit.v1 import policies_pb2

    msg = policies_pb2.PolicyMessage(
        id="parties-01", title="Parties", department=LEAD, mode="application",
        amount_yuan=1000, budget_yuan=100_000, opens=f"{YEAR}-01-01", closes=f"{YEAR}-12-31",
        rule="platform.rating != 'D'", reviewers=[LEAD], fields=["project_name"],
    )  # fmt: skip
    with pol.as_org(LEAD, "department") as lead:
        lead.publish(msg)
    owner, other = ENTS[4], ENTS[5]
    with pol.as_org(owner, "enterprise") as me:
        app = me.apply("parties-app-1", "parties-01", {"project_name": "secret plan"}, {})
        assert me.application(app.id).fields["project_name"] == "secret plan"
    for org, role in ((DEFAULT_BANKS[0], "bank"), ("coordinator", "coordinator")):
        with pol.as_org(org, role) as c, pytest.raises(RoleNotAllowed):
            c.application(app.id)
    session, _ = federation.signed_in(other, "enterprise")
    with PolicyClient(pol.address, federation.pki.tls("portal"), server_org="policies") as raw:
        as_other = raw.delegated(federation.delegate(session.ticket, "policies"))
        with pytest.raises(UnknownAward) as theirs:
            as_other.application(app.id)
        with pytest.raises(UnknownAward) as nobody:
            as_other.application("parties-app-none")
    assert theirs.value.message == nobody.value.message.replace("parties-app-none", app.id)
    assert owner not in theirs.value.message
    with pol.as_org(other, "enterprise") as them, pytest.raises(UnknownAward):
        them.application(app.id)


@pytest.mark.parametrize(("org", "role"), [(LEAD, "department"), (ENTS[5], "enterprise")])
def test_hostile_requests_to_the_policy_pages_change_nothing(
    federation: Federation, pol: Policies, v1: Visitor, org: str, role: str
) -> None:
    """tests/portal/test_hostile_http.py's requests with the policy service behind the pages
    (there it is absent): no 500, no internals, not one policy more."""
    from tests.portal.test_hostile_http import SEEN, hostile_requests

    enrolled(federation, v1, org, role)
    before = (pol.store.policies(), pol.ledger.size)
    problems = hostile_requests(v1, [r for r in POLICY_ROUTES if isinstance(r, Route)])
    assert not problems, "\n".join(problems[:40])
    assert SEEN[400] > 0, "no request reached a field's check"
    import json

    from fedcredit.policies.service import DEPARTMENT_RUNS

    assert pol.store.policies() == before[0]
    # A screen form without a day is a usable request (screen as of today): those runs are
    # the only entries, and no more of them than a department may run in a day.
    kinds = [json.loads(bytes(e.data)).get("kind") for e in pol.ledger.iter_entries(before[1], pol.ledger.size)]  # fmt: skip
    assert set(kinds) <= {"policy_screening_run", "policy_screening"}, set(kinds)
    assert kinds.count("policy_screening_run") <= DEPARTMENT_RUNS
