"""The auditor's pages over HTTP against the federation's ledger and its two witnesses
(real WitnessService servers, mTLS): the newest witnessed checkpoint with each published
witness key, and only for auditors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from fedcredit.ledger.checkpoint import Checkpoint, Note, Verifier, open_checkpoint
from tests.portal.conftest import QUORUM, SILENT_WITNESS, WITNESSES, Federation
from tests.portal.test_portal_http import enrolled, new_enterprise
from tests.portal.webclient import Visitor

AUDITOR = "auditor-pboc-weihai"


@pytest.fixture
def visitor(federation: Federation) -> Iterator[Visitor]:
    base = federation.url.replace("localhost", "127.0.0.1")
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as c:
        yield Visitor(c)


def page_doc(html: str) -> dict[str, object]:
    m = re.search(r'<script type="application/json" id="checkpoint">(.*?)</script>', html, re.S)
    assert m, "the page carries no checkpoint document"
    doc: dict[str, object] = json.loads(m.group(1))
    return doc


def test_auditor_gets_the_witnessed_checkpoint_and_the_published_keys(
    federation: Federation, visitor: Visitor
) -> None:
    federation.ledger.append("operator_note", None, {"note": "witnessed"})
    expected = federation.witnessed()
    enrolled(federation, visitor, AUDITOR, "auditor")
    r = visitor.get("/audit")
    assert r.status_code == 200
    doc = page_doc(r.text)
    keys = [Verifier.parse(str(k)) for k in doc["witness_keys"]]  # type: ignore[attr-defined]
    assert sorted(k.name for k in keys) == sorted([*WITNESSES, SILENT_WITNESS])
    assert doc["quorum"] == QUORUM
    # the note the page verifies is a checkpoint at least as new as the one just witnessed,
    # with the cosignatures of both live witnesses (checked here as the CLI would)
    sc = open_checkpoint(str(doc["checkpoint"]), Verifier.parse(str(doc["log_key"])), witnesses=keys, quorum=QUORUM)  # fmt: skip
    assert sorted(sc.cosigned_by) == sorted(WITNESSES)
    assert sc.size >= Checkpoint.parse_text(Note.parse(expected).text).size
    # one row per published key, the silent witness included (the page marks it missing)
    for name in (*WITNESSES, SILENT_WITNESS):
        assert f'<tr data-witness="{name}"' in r.text


@pytest.mark.parametrize("path", ["/audit", "/audit/consistency?old=1&new=2"])
def test_only_auditors_see_the_audit_pages(federation: Federation, visitor: Visitor, path: str) -> None:  # fmt: skip
    r = visitor.get(path)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    enrolled(federation, visitor, new_enterprise(), "enterprise")
    r = visitor.get(path)
    assert r.status_code == 303 and r.headers["location"] == "/home"
