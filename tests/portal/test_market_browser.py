"""The marketplace in real Chromium (the portal's browser fixture): an enterprise posts a
need, a bank grabs it and offers, the enterprise accepts — every form a real form post
with the session's CSRF token, every page under the portal's CSP."""

from __future__ import annotations

from typing import Any

import pytest

from tests.portal.conftest import BANK, Federation
from tests.portal.test_browser import Person, browser  # noqa: F401  (the fixture)
from tests.portal.test_market_pages import ENTS, Market, mk  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]


def test_post_claim_offer_accept_in_chromium(
    browser: Any,  # noqa: F811
    federation: Federation,
    mk: Market,  # noqa: F811
) -> None:
    ent = ENTS[6]
    enterprise, bank = Person(browser, federation), Person(browser, federation)
    errors: list[str] = []
    for p in (enterprise, bank):  # a CSP violation in the console, an uncaught script error
        p.page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)  # fmt: skip
        p.page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        enterprise.enrol_and_sign_in(ent, "enterprise")
        enterprise.go("/market/enterprise")
        enterprise.page.fill("#amount", "650000")
        enterprise.page.fill("#term_months", "18")
        enterprise.page.select_option("#need-purpose", "expansion")
        enterprise.page.click("form#post-need button[type=submit]")
        enterprise.page.wait_for_url("**/market/enterprise")
        row = enterprise.page.locator("#my-needs tbody tr").first
        need = str(row.get_attribute("data-need"))
        assert row.locator(".state").get_attribute("data-state") == "OPEN"

        bank.enrol_and_sign_in(BANK, "bank")
        bank.go("/market/bank")
        assert ent not in bank.page.content()  # bands only before consent
        bank.page.click(f'button[data-claim="{need}"]')
        bank.page.wait_for_url("**/market/bank")
        bank.page.fill(f"#rate-{need}", "450")
        bank.page.click(f'button[data-offer="{need}"]')
        bank.page.wait_for_url("**/market/bank")
        assert ent not in bank.page.content()

        enterprise.go("/market/enterprise")
        enterprise.page.click(f'button[data-accept="{need}"]')
        enterprise.page.wait_for_url("**/market/enterprise")
        state = enterprise.page.locator(f'#my-needs tr[data-need="{need}"] .state')
        assert state.get_attribute("data-state") == "ACCEPTED"
        bank.go("/market/bank/loans")
        assert bank.page.locator("#loan-book tbody tr", has_text=ent).count() == 1
        assert errors == []
    finally:
        enterprise.close()
        bank.close()


def test_market_pages_are_accessible(
    browser: Any,  # noqa: F811
    federation: Federation,
    mk: Market,  # noqa: F811
) -> None:
    """axe-core (as tests/portal/test_accessibility.py runs it) on each marketplace page,
    filled: a need offered on, a claim, a loan."""
    from tests.portal.test_accessibility import AXE

    ent = ENTS[7]
    # axe is injected as a script: bypass_csp lets the test (only) add it to the page
    e = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    b = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    try:
        e.enrol_and_sign_in(ent, "enterprise")
        b.enrol_and_sign_in(BANK, "bank")
        with mk.as_org(ent) as own:
            need = own.post_need(400_000, 12, "working_capital")["need_id"]
            own.post_need(500_000, 24, "equipment")  # stays open on the bank's desk
        with mk.as_org(BANK) as bank:
            bank.claim(need)
            bank.offer(need, "wc1", 400)
        bad: list[str] = []
        for person, path in ((e, "/market/enterprise"), (b, "/market/bank"),
                             (b, "/market/bank/loans"), (b, "/market/funds")):  # fmt: skip
            person.go(path)
            person.page.add_script_tag(path=str(AXE))
            result = person.page.evaluate(
                "async () => await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
            )
            bad += [
                f"{path}: {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                for v in result["violations"]
                if v["impact"] in ("serious", "critical")
            ]
        assert bad == []
    finally:
        e.close()
        b.close()
