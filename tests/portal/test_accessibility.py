"""Every portal page in real Chromium: axe-core (vendored from npm) finds no serious or
critical violation; the pages fit a phone's width; the keyboard reaches the skip link and
the sign-in form. With FEDCREDIT_SCREENSHOTS=DIR (``make screenshots``) each page is also
saved as DIR/<role>-<page>.png for docs/."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common import metrics, uscc
from fedcredit.common.departments import BY_ID
from fedcredit.portal.watch import Target, Watch
from tests.portal.conftest import BANK, Federation, Scoring, free_port
from tests.portal.test_browser import Person, browser  # noqa: F401 - the module's browser
from tests.portal.test_model_pages import publish_private

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SHOTS = os.environ.get("FEDCREDIT_SCREENSHOTS", "")
PRIVATE_MODEL = ""  # a second registered version, from a private run (set by ``people``)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]


@pytest.fixture(scope="module")
def people(browser: Any, federation: Federation, scoring: Scoring) -> Iterator[dict[str, Person]]:  # noqa: F811
    from fedcredit.consent.client import ConsentClient
    from fedcredit.consent.terms import ConsentTerms

    ent = uscc.generate(random.Random(9191))
    # axe is injected as a script: bypass_csp lets the test (only) add it to the page
    anon = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    e = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    b = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    a = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    o = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    d = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    mserver, mport = metrics.serve("127.0.0.1:0")
    tax = BY_ID["tax"].org_id
    # the tax node is down here (unreachable) but its metrics answer: every part of both pages
    node = Target("node-tax", tax, f"127.0.0.1:{free_port()}", f"127.0.0.1:{mport}")
    federation.app.state.watch = Watch(
        [node],
        [Target("ledger", "ledger", federation.ledger_address, f"127.0.0.1:{mport}"),
         Target("consent", "consent-service", federation.consent_address), node],
        federation.pki.tls("portal"),
    )  # fmt: skip
    try:
        d.enrol_and_sign_in(tax, "department")
        o.enrol_and_sign_in("operator", "operator")
        a.enrol_and_sign_in("auditor-pboc-weihai", "auditor")
        e.enrol_and_sign_in(ent, "enterprise")
        b.enrol_and_sign_in(BANK, "bank")
        with ConsentClient(federation.consent_address, federation.pki.tls(BANK), server_org="consent-service") as c:  # fmt: skip
            for purpose in ("credit_assessment", "guarantee"):
                c.request(ConsentTerms(ent, BANK, purpose, ["judicial", "operations_tax"], max_uses=3))  # fmt: skip
        _bank_results(federation, b)
        global PRIVATE_MODEL
        PRIVATE_MODEL = publish_private(federation, scoring)  # the registry shows (ε, δ)
        federation.witnessed()  # the auditor's page shows every live witness's cosignature
        yield {"anonymous": anon, "enterprise": e, "bank": b, "auditor": a, "operator": o,
               "department": d}  # fmt: skip
    finally:
        federation.app.state.watch = None
        mserver.shutdown()
        for p in (anon, e, b, a, o, d):
            p.close()


def _bank_results(fed: Federation, b: Person) -> None:
    """The bank's pages with something to show: a score (its chart), a guarantee decision
    and a watch-list check, each made in the page under granted consents."""
    from fedcredit.common.tls import Identity
    from fedcredit.consent.client import ConsentClient
    from fedcredit.consent.terms import ConsentTerms

    ent = uscc.generate(random.Random(9292))
    with ConsentClient(fed.consent_address, fed.pki.tls(BANK), server_org="consent-service") as c:  # fmt: skip
        for purpose, extra in (("credit_assessment", {}), ("guarantee", {}),
                               ("post_loan_monitoring", {"loan_term_days": 365, "validity_days": 360})):  # fmt: skip
            v = c.request(ConsentTerms(ent, BANK, purpose, ["score_only"], max_uses=3, **extra))  # type: ignore[arg-type]
            fed.authority.approve(Identity(ent, "enterprise", b""), v.consent_id)
    for path, form, done in (("/bank/score", "score", "#score-result"),
                             ("/bank/guarantee", "guarantee", "#decision-outcome"),
                             ("/bank/watch", "watch-check", "td[data-move]")):  # fmt: skip
        b.go(path)
        b.page.click(f"form#{form} button[type=submit]")
        b.page.wait_for_selector(done)


PAGES = [
    ("anonymous", "/signin", "signin"),
    ("anonymous", "/enrol", "enrol"),
    ("enterprise", "/enterprise", "consents"),
    ("enterprise", "/enterprise/access", "access"),
    ("enterprise", "/passkeys", "passkeys"),
    ("bank", "/bank", "desk"),
    ("bank", "/bank/score", "score"),
    ("bank", "/bank/guarantee", "guarantee"),
    ("bank", "/bank/watch", "watch"),
    ("bank", "/bank/batch", "batch"),
    ("auditor", "/audit", "checkpoint"),
    ("operator", "/operator", "enrol-codes"),
    ("operator", "/operator/health", "health"),
    ("operator", "/operator/models", "models"),
    ("operator", "/operator/models/confirm?version={private}", "model-confirm"),
    ("department", "/department", "node"),
]


@pytest.mark.parametrize(("who", "path", "name"), PAGES, ids=[f"{w}-{n}" for w, _, n in PAGES])
def test_page_is_accessible(people: dict[str, Person], who: str, path: str, name: str) -> None:
    person = people[who]
    person.go(path.format(private=PRIVATE_MODEL))
    if path == "/enterprise/access":
        person.page.wait_for_selector("body[data-proofs-done='1']")
    if path == "/audit":
        person.page.wait_for_selector("body[data-audit-done='1']")
    person.page.add_script_tag(path=str(AXE))
    result = person.page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], bad
    assert result["passes"], "axe ran no check"
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        person.page.screenshot(path=str(Path(SHOTS) / f"{who}-{name}.png"), full_page=True)


@pytest.mark.parametrize(("who", "path", "name"), PAGES, ids=[f"{w}-{n}" for w, _, n in PAGES])
def test_page_fits_a_phone(people: dict[str, Person], who: str, path: str, name: str) -> None:
    page = people[who].page
    page.set_viewport_size({"width": 360, "height": 740})
    try:
        people[who].go(path.format(private=PRIVATE_MODEL))
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than a 360 px phone"
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_keyboard_reaches_the_form(people: dict[str, Person]) -> None:
    page = people["anonymous"].page
    people["anonymous"].go("/signin")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip"
    seen = []
    for _ in range(8):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("() => document.activeElement.id || document.activeElement.tagName"))  # fmt: skip
    assert "org" in seen and "BUTTON" in seen, seen


def test_axe_sees_a_planted_violation(people: dict[str, Person]) -> None:
    """The check above can fail: an unlabelled input is a critical violation."""
    page = people["anonymous"].page
    people["anonymous"].go("/signin")
    page.evaluate("() => document.querySelector('main').insertAdjacentHTML('beforeend', '<input id=planted>')")  # fmt: skip
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {runOnly: {type: 'rule', values: ['label']}})")  # fmt: skip
    assert [v["id"] for v in result["violations"] if v["impact"] == "critical"] == ["label"]
