"""The auditor's witness cosignatures verified by the page itself, in real Chromium
(WebCrypto Ed25519, c2sp.org/tlog-cosignature): the two live witnesses' cosignatures
show verified, the silent witness's missing, and a cosignature a lying server altered
shows failed (and the quorum then not met); the export link downloads a file the CLI's
`audit replay` verifies."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.portal.conftest import QUORUM, SILENT_WITNESS, WITNESSES, Federation
from tests.portal.test_audit_pages import replay
from tests.portal.test_browser import Person, browser  # noqa: F401 - the module's browser

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]

HOLDER = '<script type="application/json" id="checkpoint">'


def _cosig_status(page: Any, name: str) -> str:
    return str(page.get_attribute(f'#witnesses tr[data-witness="{name}"] .cosig', "data-status"))


def _with_doc(change: Any) -> Any:
    """A route handler: the page's checkpoint document changed by ``change(doc)``."""

    def handler(route: Any) -> None:
        resp = route.fetch()
        html = resp.text()
        start = html.index(HOLDER) + len(HOLDER)
        end = html.index("</script>", start)
        doc = json.loads(html[start:end])
        change(doc)
        body = html[:start] + json.dumps(doc).replace("<", "\\u003c") + html[end:]
        route.fulfill(response=resp, body=body)

    return handler


def _tamper_cosignature(witness: str) -> Any:
    """A route handler: the page's note with one bit of ``witness``'s Ed25519 signature
    flipped (key id and timestamp kept, so the page finds the line and must check it)."""

    def handler(route: Any) -> None:
        resp = route.fetch()
        html = resp.text()
        start = html.index(HOLDER) + len(HOLDER)
        end = html.index("</script>", start)
        doc = json.loads(html[start:end])
        lines = doc["checkpoint"].split("\n")
        for i, line in enumerate(lines):
            if line.startswith(f"\u2014 {witness} "):
                raw = bytearray(base64.b64decode(line.split(" ")[2]))
                raw[-1] ^= 0x01
                lines[i] = f"\u2014 {witness} {base64.b64encode(bytes(raw)).decode()}"
        doc["checkpoint"] = "\n".join(lines)
        body = html[:start] + json.dumps(doc).replace("<", "\\u003c") + html[end:]
        route.fulfill(response=resp, body=body)

    return handler


def test_witness_cosignatures_verified_and_a_tampered_one_failed_in_the_page(
    browser: Any,  # noqa: F811
    federation: Federation,
    tmp_path: Path,
) -> None:
    person = Person(browser, federation)
    page = person.page
    try:
        federation.ledger.append("operator_note", None, {"note": "cosigned"})
        federation.witnessed()
        person.enrol_and_sign_in("auditor-pboc-weihai", "auditor")
        federation.witnessed()  # whatever else the federation wrote, cosigned before we look
        person.go("/audit")
        page.wait_for_selector("body[data-audit-done='1']")
        assert page.get_attribute("#cp-status", "data-status") == "verified"
        for name in WITNESSES:
            assert _cosig_status(page, name) == "verified", page.get_attribute(f'#witnesses tr[data-witness="{name}"] .cosig', "title")  # fmt: skip
            when = page.inner_text(f'#witnesses tr[data-witness="{name}"] .cosig-time')
            assert when.startswith("20"), when  # the cosignature's own timestamp, read by the page
        assert _cosig_status(page, SILENT_WITNESS) == "missing"
        assert page.get_attribute("#quorum-status", "data-status") == "verified"
        assert page.get_attribute("#quorum-status", "data-good") == str(QUORUM)

        size = page.get_attribute("#newest-status", "data-size")
        assert page.get_attribute("#newest-status", "data-status") == "verified", size

        # the witnesses behind: an older cosigned checkpoint shown beside the newest one
        older = federation.witnessed()
        federation.ledger.append_many([("operator_note", None, {"note": f"n{i}"}) for i in range(3)])  # fmt: skip
        federation.witnessed()
        page.route("**/audit", _with_doc(lambda doc: doc.update(checkpoint=older)))
        try:
            person.go("/audit")
            page.wait_for_selector("body[data-audit-done='1']")
            assert page.get_attribute("#newest-status", "data-status") == "behind"
            behind = int(page.inner_text("#newest-status").split(":")[1].split()[0])
            assert behind >= 3  # the three appended (and anything else written meanwhile)
            assert _cosig_status(page, WITNESSES[0]) == "verified"  # the older one is cosigned too
        finally:
            page.unroute("**/audit")

        # the export link, clicked in the page: the download passes `fedcredit audit replay`
        # (every entry so far in a checkpoint the witnesses cosigned)
        federation.witnessed()
        with page.expect_download() as dl:
            page.click("#export")
        assert dl.value.suggested_filename == "ledger-central-export.json"
        dl.value.save_as(tmp_path / "export.json")
        report = replay(federation, page_text=page.content(), export=tmp_path / "export.json")
        assert report["verified"] and sorted(report["cosigned_by"]) == sorted(WITNESSES)

        # a server that alters one cosignature is caught by the page itself
        page.route("**/audit", _tamper_cosignature(WITNESSES[0]))
        try:
            person.go("/audit")
            page.wait_for_selector("body[data-audit-done='1']")
            assert _cosig_status(page, WITNESSES[0]) == "failed"
            assert "验证失败" in page.inner_text(f'#witnesses tr[data-witness="{WITNESSES[0]}"] .cosig')  # fmt: skip
            assert _cosig_status(page, WITNESSES[1]) == "verified"
            assert (
                page.get_attribute("#cp-status", "data-status") == "verified"
            )  # the log's own signature is intact
            assert (
                page.get_attribute("#quorum-status", "data-status") == "failed"
            )  # 1 of the 2 required
        finally:
            page.unroute("**/audit")
    finally:
        person.close()
