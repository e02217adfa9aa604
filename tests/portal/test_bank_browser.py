"""The bank's pages in real Chromium (phone width, Chromium's virtual authenticator): a
bank signs in with its passkey, scores an enterprise and sees the reasons chart, applies
for a guarantee and sees the decision, uploads a small batch and watches its progress to
done (htmx polling), then downloads the results; axe-core finds no serious violation on
the batch's page. Every call the portal makes for the bank carries its delegation ticket."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common import uscc
from fedcredit.common.tls import Identity
from fedcredit.consent.client import ConsentClient
from tests.portal.conftest import BANK, Federation, Scoring
from tests.portal.test_accessibility import AXE
from tests.portal.test_browser import Person, browser  # noqa: F401 - the module's browser
from tests.portal.test_portal_http import terms

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]
_rng = random.Random(19019)


def _granted(fed: Federation, purpose: str) -> tuple[str, str]:
    ent = uscc.generate(_rng)
    with ConsentClient(fed.consent_address, fed.pki.tls(BANK), server_org="consent-service") as c:  # fmt: skip
        cid = c.request(terms(ent, purpose=purpose, scope=["score_only"])).consent_id
    fed.authority.approve(Identity(ent, "enterprise", b""), cid)
    return ent, cid


def _serious(page: Any) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [f"{v['id']}: {v['help']}" for v in result["violations"] if v["impact"] in ("serious", "critical")]  # fmt: skip


def test_bank_scores_applies_and_runs_a_batch(
    browser: Any,  # noqa: F811
    federation: Federation,
    scoring: Scoring,
    tmp_path: Path,
) -> None:
    ent, cid = _granted(federation, "credit_assessment")
    g_ent, g_cid = _granted(federation, "guarantee")
    batch = [_granted(federation, "credit_assessment") for _ in range(3)]
    bank = Person(browser, federation, bypass_csp=True)  # axe is added to one page below
    try:
        bank.enrol_and_sign_in(BANK, "bank")
        page = bank.page
        # score: the rating, the PD and the reasons as a chart
        bank.go("/bank/score")
        page.select_option("#consent_id", cid)
        page.click("form#score button[type=submit]")
        page.wait_for_selector("#score-result")
        rating = page.get_attribute("#score-result .rating", "data-rating")
        assert rating in ("A", "B", "C", "D")
        assert page.locator("#reasons-chart rect").count() >= 1
        assert page.locator("#reasons-chart title").text_content()
        assert ent in page.inner_text("#result")
        # the guarantee fund's decision
        bank.go("/bank/guarantee")
        page.select_option("#consent_id", g_cid)
        page.fill("#amount_yuan", "300000")
        page.fill("#term_months", "12")
        page.click("form#guarantee button[type=submit]")
        page.wait_for_selector("#decision-outcome")
        assert page.get_attribute("#decision-outcome", "data-reason")
        assert g_ent in page.inner_text("#decision")
        # a batch of three consents, its progress polled to done, then the results
        text = "consent_id\n" + "".join(f"{c}\n" for _, c in batch)
        bank.go("/bank/batch")
        page.set_input_files("#file", files=[{"name": "batch.csv", "mimeType": "text/csv", "buffer": text.encode()}])  # fmt: skip
        page.click("form#batch button[type=submit]")
        page.wait_for_url("**/bank/batch/pb-*")
        page.wait_for_selector('#batch-progress[data-state="done"]', timeout=90_000)
        assert page.inner_text("#batch-done") == "3"
        with page.expect_download() as dl:
            page.click("#batch-download")
        out = tmp_path / "results.csv"
        dl.value.save_as(out)
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert sorted(r["enterprise"] for r in rows) == sorted(e for e, _ in batch)
        assert all(r["rating"] in ("A", "B", "C", "D") for r in rows), rows
        assert _serious(page) == []
    finally:
        bank.close()
    # what the bank did through the portal is the bank's, via the portal, in the ledger
    federation.settle()
    for e in (ent, g_ent, *(e for e, _ in batch)):
        got = [json.loads(r.data) for r in federation.ledger.entries_by_subject(e, federation.ledger.size, -1, 50)]  # fmt: skip
        acts = [x["payload"] for x in got if x["kind"] in ("score_access", "guarantee_decision")]
        assert acts and all(a["bank"] == BANK and a["via"] == "portal" for a in acts), got
