"""fedcredit audit coverage: every access covered by a consent valid at that moment.

The consent events are made by the consent service's own emitter (consent.outbox.event_values)
and the node disclosures by node.disclosure.feature_payload, so the test breaks if they stop
carrying what the audit needs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.common import uscc
from fedcredit.common.tls import Identity
from fedcredit.consent.outbox import event_values
from fedcredit.consent.store import ConsentRow
from fedcredit.ledger.checkpoint import Signer
from fedcredit.ledger.coverage import audit_coverage
from fedcredit.ledger.export import read_export
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LogSettings
from fedcredit.node.disclosure import KIND, feature_payload

ORIGIN = "fedcredit/ledger"
NODE_ORIGIN = "dept-tax/disclosures"
KEY = Signer.generate(ORIGIN)
NODE_KEY = Signer.generate(NODE_ORIGIN)
ENT = [uscc.generate(__import__("random").Random(i)) for i in range(8)]
BANK = "bank-a"
ENTERPRISE = Identity(org_id="ent", role="enterprise", cert_sha256=b"")
NOW = int(time.time())


def _row(n: int, **kw: Any) -> ConsentRow:
    base: dict[str, Any] = dict(
        id=n, consent_id=f"c{n}", enterprise=ENT[n], bank=BANK, purpose="loan_application",
        scope=["operations_tax"], nodes=["dept-tax"], max_uses=5, uses=0, retention_days=30,
        validity_days=30, loan_term_days=None, state="ACTIVE", created_at=NOW - 1000,
        updated_at=NOW - 1000, not_before=NOW - 1000, expires_at=NOW + 86400, bank_x5t="x",
        jti=f"jti-{n}", token="t", replaces=None, replaced_by=None, requested_by=BANK,
    )  # fmt: skip
    base.update(kw)
    return ConsentRow(**base)


def _event(row: ConsentRow, event: str, at: int) -> tuple[str, str, dict[str, Any]]:
    v = event_values(row, event, ENTERPRISE, at)
    return ("consent_event", v["subject"], v["payload"])


def _score(n: int, jti: str, *, bank: str = BANK, purpose: str = "loan_application") -> Any:
    payload = {"bank": bank, "enterprise": ENT[n], "jti": jti, "purpose": purpose,
               "model_version": "m1", "rating": "A", "feature_hash": "00" * 32,
               "missing_categories": []}  # fmt: skip
    return ("score_access", ENT[n], payload)


def _disclosure(n: int, jti: str, node: str) -> Any:
    payload = feature_payload(
        node=node, caller="coordinator", caller_role="coordinator", on_behalf_of=BANK,
        purpose="loan_application", jti=jti, features=["tax.vat_12m"], request_id="r1",
        data_version=1, as_of="2026-12-01",
    )  # fmt: skip
    return (KIND, ENT[n], payload)


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """A central log with one clean consent and one of each violation, and a node log."""
    central = [
        _event(_row(0), "granted", NOW - 900),  # clean: 2 scores, 1 disclosure
        _score(0, "jti-0"),
        _score(0, "jti-0"),
        _event(_row(1), "granted", NOW - 900),  # revoked, then used
        _event(_row(1), "revoked", NOW - 100),
        _score(1, "jti-1"),
        _event(_row(2, max_uses=2), "granted", NOW - 900),  # beyond its uses
        _score(2, "jti-2"),
        _score(2, "jti-2"),
        _score(2, "jti-2"),
        _event(_row(3), "granted", NOW - 900),  # outside scope: another purpose
        _score(3, "jti-3", purpose="post_loan_monitoring"),
        _score(4, "jti-unknown"),  # no consent at all
        _event(_row(5), "granted", NOW - 900),  # paused
        _event(_row(5), "paused", NOW - 50),
        _score(5, "jti-5"),
        _event(_row(6, expires_at=NOW - 10), "granted", NOW - 900),  # past its end
        _score(6, "jti-6"),
        _event(_row(7), "granted", NOW - 900),  # another bank uses the token
        _score(7, "jti-7", bank="bank-b"),
    ]
    node = [
        _disclosure(0, "jti-0", "dept-tax"),  # clean
        _disclosure(0, "jti-0", "dept-social-security"),  # a node the consent does not name
        _disclosure(1, "jti-1", "dept-tax"),  # after revocation
    ]
    out = []
    for origin, key, items in ((ORIGIN, KEY, central), (NODE_ORIGIN, NODE_KEY, node)):
        path = tmp_path / f"{origin.replace('/', '_')}.json"
        with Log.open(f"sqlite:///{tmp_path / (path.stem + '.sqlite')}", key, origin,
                      settings=LogSettings(checkpoint_interval=3600.0)) as log:  # fmt: skip
            log.append_many(items)
            log.checkpoint()
            with path.open("w") as fp:
                log.export(fp)
        out.append(path)
    return out[0], out[1]


EXPECTED = {
    (ORIGIN, 5, "NOT_ACTIVE"),  # revoked
    (ORIGIN, 9, "BEYOND_USES"),
    (ORIGIN, 11, "OUTSIDE_SCOPE"),
    (ORIGIN, 12, "NO_CONSENT"),
    (ORIGIN, 15, "NOT_ACTIVE"),  # paused
    (ORIGIN, 17, "OUTSIDE_WINDOW"),
    (ORIGIN, 19, "WRONG_PARTY"),
    (NODE_ORIGIN, 1, "OUTSIDE_SCOPE"),
    (NODE_ORIGIN, 2, "NOT_ACTIVE"),
}


def test_each_planted_violation_is_found_and_nothing_else(tmp_path: Path) -> None:
    central, node = _build(tmp_path)
    report = audit_coverage(
        [(ORIGIN, read_export(central).entries), (NODE_ORIGIN, read_export(node).entries)]
    )
    assert {(u.log, u.index, u.reason) for u in report.uncovered} == EXPECTED
    assert report.accesses == {"score_access": 11, "feature_disclosure": 3}
    revoked = next(u for u in report.uncovered if u.index == 5)
    assert "REVOKED" in revoked.detail and revoked.jti == "jti-1"


def test_the_clean_part_audits_clean(tmp_path: Path) -> None:
    central, node = _build(tmp_path)
    entries = read_export(central).entries
    clean = audit_coverage([(ORIGIN, entries[:3]), (NODE_ORIGIN, read_export(node).entries[:1])])
    assert clean.clean and clean.accesses == {"score_access": 2, "feature_disclosure": 1}


def test_cli_verifies_then_lists_uncovered_and_exits_1(tmp_path: Path) -> None:
    central, node = _build(tmp_path)
    runner = CliRunner()
    args = ["audit", "coverage", "--export", str(central), "--log-key", KEY.verifier.vkey,
            "--node-export", str(node), "--node-key", NODE_KEY.verifier.vkey, "--json"]  # fmt: skip
    r = runner.invoke(build_app(), args)
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert data["covered"] is False
    assert {(u["log"], u["index"], u["reason"]) for u in data["uncovered"]} == EXPECTED
    # a node export without its key is refused with one line, not audited unverified
    r = runner.invoke(build_app(), [*args[:-3], "--json"])
    assert r.exit_code != 0 and "--node-key" in r.output and "Traceback" not in r.output
    # a log key that did not sign the export: verification fails before any coverage claim
    other = Signer.generate(ORIGIN).verifier.vkey
    r = runner.invoke(
        build_app(), ["audit", "coverage", "--export", str(central), "--log-key", other]
    )
    assert r.exit_code == 1 and "FAILED" in r.output


def test_the_fast_score_access_parse_equals_json(tmp_path: Path) -> None:
    """score_access entries take a regex path; it must read exactly what json.loads reads,
    and an entry with an escape in a string must fall back (not match)."""
    from fedcredit.ledger.coverage import _SCORE_ACCESS

    central, _ = _build(tmp_path)
    scores = [e for e in read_export(central).entries if b'"kind":"score_access"' in e]
    assert len(scores) == 11
    for raw in scores:
        m = _SCORE_ACCESS.fullmatch(raw)
        assert m is not None, raw
        d = json.loads(raw)
        p = d["payload"]
        want = (p["bank"], p["jti"], p["purpose"], d["subject"], d["time"])
        assert tuple(g.decode() for g in m.groups()) == want
    escaped = scores[0].replace(b'"rating":"A"', b'"rating":"A\\"x"')
    assert _SCORE_ACCESS.fullmatch(escaped) is None
    assert _SCORE_ACCESS.fullmatch(scores[0] + b" ") is None
