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
