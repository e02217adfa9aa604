"""Policy funds in real Chromium (the portal's browser fixture), every form a real form
post with the session's CSRF token under the portal's CSP: a department publishes a
免申即享 policy and an application policy (the rule checked by htmx as it is typed) and
screens; the enterprise sees its eligible benefit, applies with an attachment (its
SHA-256 shown back); both reviewing departments approve their parts; after the notice
and payment, the enterprise reports its progress and the department reads it on the
tracking dashboard. Then axe-core finds no serious or critical violation on any of the
pages, filled."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.portal.conftest import Federation
from tests.portal.test_browser import Person, browser  # noqa: F401  (the fixture)
from tests.portal.test_policy_pages import CO, ENTS, LEAD, YEAR, Policies, pol  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]
ENT = ENTS[6]  # a young firm: eligible for the automatic policy below
PLAN = b"%PDF-1.4 kiln retrofit business plan\n" * 50


def _publish(d: Person, pid: str, mode: str, rule: str, **more: str) -> None:
    d.go("/policy/department")
    d.page.fill("#p-id", pid)
    d.page.fill("#p-title", f"Browser policy {pid}")
    d.page.select_option("#p-mode", mode)
    d.page.fill("#p-rule", rule)
    d.page.press("#p-rule", "Tab")  # htmx checks the rule on change
    d.page.wait_for_selector("#rule-check #rule-ok")
    d.page.fill("#p-amount", more.pop("amount", "50000"))
    d.page.fill("#p-budget", "5000000")
    for sel, value in more.items():
        d.page.fill(sel, value)
    d.page.click("form#publish button[type=submit]")
    d.page.wait_for_selector("#published")


def _flow(dept: Person, co: Person, ent: Person, pol: Policies) -> str:  # noqa: F811
    dept.enrol_and_sign_in(LEAD, "department")
    # a rule of the wrong type is shown at its position before anything is published
    dept.go("/policy/department")
    dept.page.fill("#p-rule", "registry.founded_year > 'x'")
    dept.page.press("#p-rule", "Tab")
    err = dept.page.wait_for_selector("#rule-check #rule-error")
    assert err.get_attribute("data-line") == "1" and err.get_attribute("data-column") == "23"
    _publish(dept, "br-auto", "automatic", "registry.founded_year >= 2015")
    _publish(dept, "br-apply", "application", "platform.rating == 'A' || platform.rating == 'B'",
             **{"#p-reviewers": f"{LEAD},{CO}", "#p-fields": "project_name"})  # fmt: skip
    dept.go("/policy/department")
    dept.page.click("form#screen button[type=submit]")
    cell = dept.page.wait_for_selector('#run-counts tr[data-policy="br-auto"] .eligible')
    assert int(cell.inner_text()) >= 1

    ent.enrol_and_sign_in(ENT, "enterprise")
    ent.go("/policy/enterprise")
    ent.page.wait_for_selector('#benefits tr[data-award="br-auto"]')
    ent.page.click('a[data-apply="br-apply"]')
    ent.page.wait_for_url("**/policy/apply/br-apply")
    ent.page.fill("#f-project_name", "Kiln retrofit")
    ent.page.set_input_files("#file1", files=[{"name": "plan.pdf", "mimeType": "application/pdf", "buffer": PLAN}])  # fmt: skip
    ent.page.click("form#apply button[type=submit]")
    shown = ent.page.wait_for_selector("#attachments code.sha256").inner_text()
    assert shown == hashlib.sha256(PLAN).hexdigest()
    app = str(ent.page.locator("#application").get_attribute("data-app"))

    dept.go("/policy/reviews")
    dept.page.click(f'button[data-approve="{app}"]')
    dept.page.wait_for_url("**/policy/reviews")
    co.enrol_and_sign_in(CO, "department")
    co.go("/policy/reviews")
    co.page.click(f'button[data-approve="{app}"]')
    co.page.wait_for_url("**/policy/reviews")
    assert pol.store.application(app).state == "notice"
    pol.clock[0] += 6 * 86_400  # the public notice passes; the operator closes and pays
    with pol.as_org("operator", "operator") as op:
        op.advance(app, "close")
        op.advance(app, "pay")

    ent.go("/policy/enterprise")
    assert ent.page.locator(f'#my-applications tr[data-app="{app}"] .state').get_attribute("data-state") == "paid"  # fmt: skip
    ent.page.select_option("#pr-policy", "br-apply")
    ent.page.fill("#pr-revenue_yuan", "910000")
    ent.page.fill("#pr-employees", "31")
    ent.page.fill("#pr-narrative", "second kiln running")
    ent.page.click("form#progress button[type=submit]")
    ent.page.wait_for_selector('#my-reports tr[data-report^="br-apply/"]')
    dept.go("/policy/tracking")
    assert "second kiln running" in dept.page.content()
    return app


def test_publish_screen_apply_approve_report_in_chromium(
    browser: Any,  # noqa: F811
    federation: Federation,
    pol: Policies,  # noqa: F811
) -> None:
    people = [Person(browser, federation, width=1280, height=900) for _ in range(3)]
    errors: list[str] = []
    for p in people:  # a CSP violation in the console, an uncaught script error
        p.page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)  # fmt: skip
        p.page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        app = _flow(*people, pol)
        assert errors == []
        # axe on every page, filled (axe is injected: bypass_csp for these contexts only)
        _axe(browser, federation, pol, app)
    finally:
        for p in people:
            p.close()


def _axe(browser: Any, federation: Federation, pol: Policies, app: str) -> None:  # noqa: F811
    from tests.portal.test_accessibility import AXE

    d = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    e = Person(browser, federation, width=1280, height=900, bypass_csp=True)
    try:
        d.enrol_and_sign_in(LEAD, "department")
        e.enrol_and_sign_in(ENT, "enterprise")
        with pol.as_org("operator", "operator") as op:
            op.tracking_round(f"{YEAR}-01")  # a round on the dashboard
        bad: list[str] = []
        pages = [(d, "/policy/department"), (d, "/policy/reviews"), (d, "/policy/tracking"),
                 (e, "/policy/enterprise"), (e, "/policy/apply/br-apply")]  # fmt: skip
        for person, path in pages:
            person.go(path)
            if path == "/policy/department":  # with a refused rule and a screening shown
                person.page.fill("#p-rule", "registry.founded_year > 'x'")
                person.page.press("#p-rule", "Tab")
                person.page.wait_for_selector("#rule-check #rule-error")
            bad += _violations(person, path, AXE)
        d.go("/policy/department")
        # the service's clock was moved past the notice period; a department screens as of
        # the service's day (policies.service: within a day of its clock)
        from datetime import UTC, datetime

        d.page.fill("#screen-today", datetime.fromtimestamp(pol.clock[0], UTC).date().isoformat())
        d.page.click("form#screen button[type=submit]")
        d.page.wait_for_selector("#run-counts")
        bad += _violations(d, "/policy/screen (result)", AXE)
        assert bad == []
    finally:
        d.close()
        e.close()


def _violations(person: Person, path: str, axe: Any) -> list[str]:
    person.page.add_script_tag(path=str(axe))
    result = person.page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [
        f"{path}: {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
