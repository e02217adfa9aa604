"""One wire mapping of a score (the guide: wire mappings in one place): the CLI's JSON and
the portal's score page both read ScoreResult through coordinator/client.py ``score_dict``,
so a field added to the message reaches both or neither."""

from __future__ import annotations

from fedcredit.coordinator import cli
from fedcredit.coordinator.client import score_dict
from fedcredit.portal.bank_pages import score_view
from fedcredit.v1 import coordinator_pb2 as pb


def result() -> pb.ScoreResult:
    return pb.ScoreResult(
        enterprise="91370000MA3C5LTX1X", rating="B", probability_of_default=0.031234567,
        model_version="m-7", ledger_index=42, consent_jti="j-1", feature_hash="ab" * 32,
        request_id="r-1", missing_categories=["social_security"],
        reasons=[pb.Reason(feature="tax_arrears", description="tax arrears", contribution=0.123456, missing=False)],
    )  # fmt: skip


def test_every_score_field_is_mapped_once() -> None:
    r = result()
    d = score_dict(r)
    assert set(d) == {f.name for f in pb.ScoreResult.DESCRIPTOR.fields}
    assert d["reasons"] == [{"feature": "tax_arrears", "description": "tax arrears", "contribution": 0.123456, "missing": False}]  # fmt: skip
    assert cli.score_dict(r) == d  # the CLI's JSON lines: the same mapping


def test_the_portal_page_is_the_same_mapping_plus_its_display() -> None:
    r = result()
    d, v = score_dict(r), score_view(r)
    for k in set(d) - {"reasons"}:
        assert v[k] == d[k], k
    assert v["pd"] == d["probability_of_default"] and v["pd_pct"] == 3.12
    assert [x["contribution"] for x in v["reasons"]] == [0.1235] and v["chart"]["bars"]
