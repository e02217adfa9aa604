"""The portal in real Chromium (Debian's, driven by Playwright; no browser download) with
Chromium's virtual WebAuthn authenticator (DevTools protocol): enrol, sign in, a bank's
request, the enterprise's passkey approval, the access page whose proofs the page itself
verifies (and a tampered one it shows failing), revocation, CSRF and session expiry."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from fedcredit.common import uscc
from fedcredit.portal.web import HOME
from tests.portal.conftest import BANK, Federation, Scoring

CHROMIUM = os.environ.get("FEDCREDIT_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Generous: a loaded 2-core machine runs Chromium, the portal and two gRPC services.
TIMEOUT_MS = 30_000

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"expected Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set FEDCREDIT_CHROMIUM)")  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


class Person:
    """One browser context (its own cookies) with its own virtual passkey authenticator."""

    def __init__(self, browser: Any, fed: Federation, *, width: int = 390, height: int = 844, **kw: Any) -> None:  # fmt: skip
        self.fed = fed
        # phone width by default; ``kw``: more context options (bypass_csp for axe)
        self.context = browser.new_context(viewport={"width": width, "height": height}, **kw)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("WebAuthn.enable", {"enableUI": False})
        self.authenticator = self.cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {"options": {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                         "hasUserVerification": True, "isUserVerified": True,
                         "automaticPresenceSimulation": True}},
        )["authenticatorId"]  # fmt: skip

    def go(self, path: str) -> None:
        self.page.goto(self.fed.url + path)

    def enrol_and_sign_in(self, org: str, role: str) -> None:
        self.go("/enrol")
        self.page.fill("#org", org)
        self.page.fill("#code", self.fed.enrol_code(org, role))
        self.page.fill("#label", "office PC")
        self.page.click("form#enrol button[type=submit]")
        self.wait_for("/signin")
        self.page.fill("#org", org)
        self.page.click("form#signin button[type=submit]")
        self.wait_for(HOME[role])

    def wait_for(self, path: str) -> None:
        """Wait for ``path``; a timeout says what the page reported (#result)."""
        try:
            self.page.wait_for_url("**" + path)
        except Exception as exc:
            shown = self.page.locator("#result").all_inner_texts()
            raise AssertionError(
                f"expected {path}, still at {self.page.url}; page says {shown}"
            ) from exc

    def credentials(self) -> list[dict[str, Any]]:
        got = self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator})
        return list(got["credentials"])

    def close(self) -> None:
        self.context.close()


def _state(page: Any, consent_id: str) -> str:
    sel = f'article[data-consent="{consent_id}"] .state'
    return str(page.get_attribute(sel, "data-state"))


def test_enrol_request_approve_score_verify_revoke(
    browser: Any, federation: Federation, scoring: Scoring
) -> None:
    ent = uscc.generate(random.Random(777))
    enterprise, bank = Person(browser, federation), Person(browser, federation)
    try:
        enterprise.enrol_and_sign_in(ent, "enterprise")
        assert len(enterprise.credentials()) == 1  # the passkey lives in the authenticator
        bank.enrol_and_sign_in(BANK, "bank")
        # the bank asks, from its own page
        bank.page.fill("#enterprise", ent)
        bank.page.fill("#max_uses", "2")
        bank.page.click("form#request button[type=submit]")
        bank.page.wait_for_url("**/bank")
        row = bank.page.locator("#bank-consents tbody tr", has_text=ent)
        consent_id = row.get_attribute("data-consent")
        assert consent_id and row.locator(".state").get_attribute("data-state") == "PENDING"
        # the enterprise reads the request in plain language and approves with its passkey
        enterprise.go("/enterprise")
        article = enterprise.page.locator(f'article[data-consent="{consent_id}"]')
        assert "授信评估" in article.inner_text() and BANK in article.inner_text()
        article.locator('button[data-decide="approve"]').click()
        enterprise.page.wait_for_selector(f'article[data-consent="{consent_id}"] .state[data-state="ACTIVE"]')  # fmt: skip
        assert "sha256" in enterprise.page.inner_text("#result")
        ev = [e for e in federation.authority.store.events(consent_id=consent_id) if e.event == "granted"]  # fmt: skip
        assert ev and ev[0].payload["via"] == "portal" and ev[0].actor == ent
        # the bank's page refreshes its rows by itself (htmx), no reload
        bank.page.wait_for_selector(f'tr[data-consent="{consent_id}"] .state[data-state="ACTIVE"]')
        rating, token = _bank_scores(federation, scoring, ent, consent_id)
        _access_page_verifies(enterprise, federation, consent_id)
        assert enterprise.page.locator("#access-log tr", has_text="score_access").count() == 1
        assert rating in "ABCD"
        _tampered_proof_fails(enterprise)
        # the enterprise revokes; the consent's token is refused from then on
        enterprise.go("/enterprise")
        enterprise.page.locator(f'article[data-consent="{consent_id}"] button[data-decide="revoke"]').click()  # fmt: skip
        enterprise.page.wait_for_selector(f'article[data-consent="{consent_id}"] .state[data-state="REVOKED"]')  # fmt: skip
        _score_refused(federation, scoring, ent, token)
    finally:
        enterprise.close()
        bank.close()


def _access_page_verifies(person: Person, fed: Federation, consent_id: str) -> None:
    fed.settle()
    person.go("/enterprise/access")
    person.page.wait_for_selector("body[data-proofs-done='1']")
    assert person.page.get_attribute("#checkpoint-status", "data-status") == "verified", (
        person.page.get_attribute("#checkpoint-status", "title")
    )
    cells = person.page.locator("td.proof")
    assert cells.count() >= 2  # requested, granted
    statuses = set(cells.evaluate_all("els => els.map(e => e.dataset.status)"))
    assert statuses == {"verified"}, statuses


def _tampered_proof_fails(person: Person) -> None:
    """A server that lies (one entry's bytes changed, the checkpoint's signature broken) is
    caught by the page itself."""

    def tamper(route: Any) -> None:
        resp = route.fetch()
        html = resp.text()
        start = html.index('<script type="application/json" id="proofs">') + len('<script type="application/json" id="proofs">')  # fmt: skip
        end = html.index("</script>", start)
        doc = json.loads(html[start:end])
        doc["entries"][0]["data"] = doc["entries"][0]["data"].replace('"kind"', '"kind" ', 1)
        body = html[:start] + json.dumps(doc).replace("<", "\\u003c") + html[end:]
        route.fulfill(response=resp, body=body)

    person.page.route("**/enterprise/access", tamper)
    try:
        person.go("/enterprise/access")
        person.page.wait_for_selector("body[data-proofs-done='1']")
        first = person.page.locator("td.proof").first
        assert first.get_attribute("data-status") == "failed"
        assert "验证失败" in first.inner_text()
    finally:
        person.page.unroute("**/enterprise/access")


def _bank_token(fed: Federation, consent_id: str) -> str:
    from fedcredit.consent.client import ConsentClient

    with ConsentClient(fed.consent_address, fed.pki.tls(BANK), server_org="consent-service") as c:
        return c.token(consent_id).token or ""


def _bank_scores(fed: Federation, scoring: Scoring, ent: str, consent_id: str) -> tuple[str, str]:
    """The bank's own system scores with its token (its certificate, not the portal's)."""
    from fedcredit.coordinator.client import CoordinatorClient

    token = _bank_token(fed, consent_id)
    with CoordinatorClient(scoring.target, fed.pki.tls(BANK), timeout=30) as c:
        r = c.score(ent, token)
    return str(r.rating), token


def _score_refused(fed: Federation, scoring: Scoring, ent: str, token: str) -> None:
    from fedcredit.consent import errors as E
    from fedcredit.coordinator.client import CoordinatorClient

    with (
        CoordinatorClient(scoring.target, fed.pki.tls(BANK), timeout=30) as c,
        pytest.raises(E.ConsentRevoked),
    ):
        c.score(ent, token)


def test_csrf_and_session_expiry_refused_in_the_browser(browser: Any, federation: Federation) -> None:  # fmt: skip
    ent = uscc.generate(random.Random(778))
    person = Person(browser, federation)
    try:
        person.enrol_and_sign_in(ent, "enterprise")
        status = person.page.evaluate(
            """async () => (await fetch('/challenge', {method: 'POST',
                 headers: {'Content-Type': 'application/json', Accept: 'application/json'},
                 body: JSON.stringify({action: 'sign_in'})})).status"""
        )
        assert status == 403
        federation.clock.offset += federation.settings.idle_timeout_s + 1
        try:
            person.go("/enterprise")
            person.page.wait_for_url("**/signin")
            assert "会话因长时间未操作已过期" in person.page.inner_text("#flash")
        finally:
            federation.clock.offset = 0
    finally:
        person.close()


def test_auditor_checks_checkpoint_and_consistency_in_the_page(
    browser: Any, federation: Federation
) -> None:
    person = Person(browser, federation)
    page = person.page
    try:
        federation.ledger.append("operator_note", None, {"note": "before"})
        federation.settle()
        person.enrol_and_sign_in("auditor-pboc-weihai", "auditor")
        page.wait_for_selector("body[data-audit-done='1']")
        assert page.get_attribute("#cp-status", "data-status") == "verified"
        page.click("#save-checkpoint")
        page.wait_for_selector("body[data-audit-done='1']")
        assert page.get_attribute("#consistency-status", "data-status") == "verified"
        # the log grows: the newer checkpoint must extend the saved one
        for i in range(5):
            federation.ledger.append("operator_note", None, {"note": f"after {i}"})
        federation.settle()
        person.go("/audit")
        page.wait_for_selector("body[data-audit-done='1']")
        assert page.get_attribute("#consistency-status", "data-status") == "verified"

        # a server that answers a forged consistency proof is caught by the page
        def forged(route: Any) -> None:
            resp = route.fetch()
            doc = resp.json()
            doc["proof"] = [h[:-4] + "AAA=" for h in doc["proof"]]
            route.fulfill(response=resp, body=json.dumps(doc))

        federation.ledger.append("operator_note", None, {"note": "more"})
        federation.settle()
        page.route("**/audit/consistency*", forged)
        person.go("/audit")
        page.wait_for_selector("body[data-audit-done='1']")
        assert page.get_attribute("#consistency-status", "data-status") == "failed"
        page.unroute("**/audit/consistency*")
    finally:
        person.close()


def test_operator_issues_a_code_that_enrols_an_enterprise(
    browser: Any, federation: Federation
) -> None:
    ent = uscc.generate(random.Random(779))
    operator, enterprise = Person(browser, federation), Person(browser, federation)
    try:
        operator.enrol_and_sign_in("operator", "operator")
        operator.page.fill("#enrol_org", ent)
        operator.page.select_option("#enrol_role", "enterprise")
        operator.page.fill("#enrol_expires", "30m")
        operator.page.click("form#issue-code button[type=submit]")
        operator.page.wait_for_selector("#code[data-code]")
        code = operator.page.get_attribute("#code", "data-code")
        assert code
        enterprise.go("/enrol")
        enterprise.page.fill("#org", ent)
        enterprise.page.fill("#code", code)
        enterprise.page.click("form#enrol button[type=submit]")
        enterprise.page.wait_for_url("**/signin")
        enterprise.page.fill("#org", ent)
        enterprise.page.click("form#signin button[type=submit]")
        enterprise.page.wait_for_url("**/enterprise")
    finally:
        operator.close()
        enterprise.close()


def test_operator_activates_a_model_with_its_passkey(
    browser: Any, federation: Federation, scoring: Scoring
) -> None:
    """Step-up in the page: the confirmation form asks the operator's passkey to sign the
    activation (the authenticator's signature counter moves) before the coordinator
    activates, and the ledger entry carries the assertion's digest."""
    from tests.portal.test_model_pages import (
        FIRST,
        active,
        last_activation,
        operator_client,
        publish_private,
    )

    version = publish_private(federation, scoring)
    operator = Person(browser, federation)
    try:
        operator.enrol_and_sign_in("operator", "operator")
        operator.go(f"/operator/models/confirm?version={version}")
        count = operator.credentials()[0]["signCount"]
        operator.page.click("form#activate button[type=submit]")
        operator.wait_for("/operator/models")
        assert operator.credentials()[0]["signCount"] > count  # the passkey signed it
        assert active(federation, scoring) == version
        entry = last_activation(federation)["payload"]
        assert entry["version"] == version and entry["via"] == "portal"
        assert len(entry["passkey_assertion_sha256"]) == 64
    finally:
        operator.close()
        with operator_client(federation, scoring) as c:
            c.activate(FIRST)
