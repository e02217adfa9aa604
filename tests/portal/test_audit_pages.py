"""The auditor's pages over HTTP against the federation's ledger and its two witnesses
(real WitnessService servers, mTLS): the newest witnessed checkpoint with each published
witness key, and only for auditors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.ledger.checkpoint import Checkpoint, Note, Verifier, open_checkpoint
from fedcredit.ledger.client import LedgerClient
from fedcredit.ledger.errors import ExportMalformed, StoreCorrupt
from fedcredit.ledger.export import export_chunks, parse_export, read_export
from tests.portal.conftest import QUORUM, SILENT_WITNESS, WITNESSES, Federation
from tests.portal.test_portal_http import enrolled, new_enterprise
from tests.portal.webclient import Visitor

AUDITOR = "auditor-pboc-weihai"
AUDITOR_CERT = "auditor-pboc-weihai"  # its own certificate (the CLI's export)


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


@pytest.mark.parametrize("path", ["/audit", "/audit/consistency?old=1&new=2", "/audit/export"])
def test_only_auditors_see_the_audit_pages(federation: Federation, visitor: Visitor, path: str) -> None:  # fmt: skip
    r = visitor.get(path)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    enrolled(federation, visitor, new_enterprise(), "enterprise")
    r = visitor.get(path)
    assert r.status_code == 303 and r.headers["location"] == "/home"


def test_the_export_download_verifies_with_the_cli(
    federation: Federation, visitor: Visitor, tmp_path: Path
) -> None:
    """The export the auditor downloads from its page is the ledger's whole log and its
    signed checkpoints, and `fedcredit audit replay` verifies it (with the witnesses'
    quorum); the same file as the CLI's own `ledger export` writes, entry for entry."""
    enrolled(federation, visitor, AUDITOR, "auditor")
    federation.ledger.append_many([("operator_note", None, {"note": f"export {i}"}) for i in range(25)])  # fmt: skip
    federation.witnessed()
    out = tmp_path / "download.json"
    with visitor.http.stream("GET", "/audit/export", headers={"cookie": f"fc_session={visitor.sid}"}) as r:  # fmt: skip
        assert r.status_code == 200, r.read()
        assert r.headers["content-disposition"] == 'attachment; filename="ledger-central-export.json"'  # fmt: skip
        assert r.headers["content-type"].startswith("application/json")
        with out.open("wb") as fp:
            for chunk in r.iter_bytes():
                fp.write(chunk)
    got = read_export(out)
    assert len(got.entries) == Checkpoint.parse_text(Note.parse(got.checkpoints[-1]).text).size
    with LedgerClient(federation.ledger_address, federation.pki.tls(AUDITOR_CERT), server_org="ledger") as c:  # fmt: skip
        c.export(tmp_path / "cli.json", end=len(got.entries))
    assert read_export(tmp_path / "cli.json").entries == got.entries
    report = replay(federation, page_text=visitor.get("/audit").text, export=out)
    assert report["verified"] and report["entries"] == len(got.entries) >= 25
    assert sorted(report["cosigned_by"]) == sorted(WITNESSES)


def replay(fed: Federation, *, page_text: str, export: Path) -> dict[str, object]:
    """`fedcredit audit replay --json` on ``export`` with the keys the auditor's page shows
    (the log's and every published witness's, the quorum of the deployment)."""
    doc = page_doc(page_text)
    keys = [a for k in doc["witness_keys"] for a in ("--witness-key", str(k))]  # type: ignore[attr-defined]
    r = CliRunner().invoke(build_app(), ["audit", "replay", "--export", str(export), "--log-key", str(doc["log_key"]), *keys, "--quorum", str(QUORUM), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    report: dict[str, object] = json.loads(r.stdout)
    return report


def test_a_cut_download_does_not_parse(federation: Federation) -> None:
    """A stream that breaks off (the ledger skipped an entry: DATA_LOSS) raises mid-way:
    what was sent is never a shorter export that parses."""

    class Page:
        def __init__(self, entries: list[tuple[int, bytes]], checkpoints: list[str]) -> None:
            self.origin, self.log_key, self.checkpoints = "o", "k", checkpoints
            self.entries = [type("E", (), {"index": i, "data": d})() for i, d in entries]

    sent: list[str] = []
    with pytest.raises(StoreCorrupt):
        for chunk in export_chunks([Page([(0, b"{}"), (1, b"{}")], []), Page([(3, b"{}")], ["n"])]):  # fmt: skip
            sent.append(chunk)
    with pytest.raises(ExportMalformed):
        parse_export("".join(sent))
    whole = "".join(export_chunks([Page([(0, b'{"a":1}')], []), Page([], ["note"])]))
    assert parse_export(whole).entries == [b'{"a":1}'] and parse_export(whole).checkpoints == ["note"]  # fmt: skip


def test_only_an_auditors_ticket_exports(federation: Federation) -> None:
    """The ledger exports to the portal's certificate only under an auditor's delegation
    ticket: without one, or with an enterprise's, it refuses (and the page wrapper turns
    that into an error page, tested above for roles)."""
    from fedcredit.common.errors import RoleNotAllowed
    from fedcredit.consent import passkey_errors as P

    with LedgerClient(federation.ledger_address, federation.pki.tls("portal"), server_org="ledger") as c:  # fmt: skip
        with pytest.raises(P.DelegationMissing):
            next(iter(c.export_pages()))
        ent_session = federation.signed_in(new_enterprise(), "enterprise")[0]
        with pytest.raises(RoleNotAllowed):
            next(iter(c.delegated(federation.delegate(ent_session.ticket, "ledger")).export_pages()))  # fmt: skip
        auditor = federation.signed_in(AUDITOR, "auditor")[0]
        page = next(iter(c.delegated(federation.delegate(auditor.ticket, "ledger")).export_pages()))
        assert page.origin == "ledger/central"


def test_published_keys_are_read_for_each_page(
    federation: Federation, visitor: Visitor, tmp_path: Path
) -> None:
    """The page reads the deployment's published witness keys each time (a witness
    publishes its key when it first starts, possibly after the portal); a malformed key
    file is an error page naming it, never a witness silently left out."""
    from fedcredit.ledger.keys import publish_vkey

    backend = federation.backend
    saved = backend.witness_keys, backend.keys_dir
    tax = next(k for k in saved[0] if k.startswith("dept-tax+"))
    try:
        backend.keys_dir = tmp_path
        enrolled(federation, visitor, AUDITOR, "auditor")
        assert 'id="no-witnesses"' in visitor.get("/audit").text
        publish_vkey(tmp_path / "dept-tax.witness.vkey", Verifier.parse(tax))
        r = visitor.get("/audit")
        assert page_doc(r.text)["witness_keys"] == [tax] and '<tr data-witness="dept-tax"' in r.text
        (tmp_path / "dept-courts.witness.vkey").write_text("dept-courts+00000000+AAAA\n")
        r = visitor.get("/audit")
        assert r.status_code == 400 and 'data-reason="CONFIG_INVALID"' in r.text
        assert "dept-courts.witness.vkey" in r.text
    finally:
        backend.witness_keys, backend.keys_dir = saved


def test_a_deployments_portal_reads_the_keys_its_witnesses_publish(tmp_path: Path) -> None:
    """In a deployment as `fedcredit init` writes it, the portal reads the witness keys
    where a department node publishes its own at its first start (ledger.keys)."""
    from fedcredit.common.config import load_config
    from fedcredit.common.deploy import write_local_deployment
    from fedcredit.ledger.keys import witness_signer
    from fedcredit.portal.backend import Backend

    dep = load_config(write_local_deployment(tmp_path / "dep"))
    backend = Backend.from_deployment(dep, "portal")
    try:
        assert backend.published_witnesses() == ()
        tax = witness_signer(dep, "dept-tax").verifier  # what the tax node does when it starts
        assert backend.published_witnesses() == (tax.vkey,)
    finally:
        backend.close()
