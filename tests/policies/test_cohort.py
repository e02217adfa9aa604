"""Tracking aggregates inside the nodes (node.cohort) over real mTLS gRPC: counts and sums
over a cohort only, small and near-duplicate cohorts refused, dominated sums suppressed,
nothing per enterprise in what the node sends or logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.ledger.log import Log
from fedcredit.node import cohort
from fedcredit.node.errors import CohortOverlap, CohortTooSmall, LegalBasisRequired, UnknownFeature
from fedcredit.policies.cohort import aggregate_round
from fedcredit.policies.runs import run_automatic
from fedcredit.policies.store import DAY, PolicyStore
from fedcredit.v1 import feature_pb2
from tests.conftest import Pki
from tests.policies.conftest import City
from tests.policies.test_runs import T0, TODAY, _policy


def _values(city: City, dep: str, name: str, codes: list[str]) -> np.ndarray:
    eng = city.nodes[dep].engine
    values, _ = eng.vectors(codes, eng.state())
    return values[:, eng.names.index(name)]


def test_cohort_aggregates_disclose_only_counts_and_sums(city: City) -> None:
    tax = city.nodes["tax"]
    client = tax.client()
    codes = city.codes[:60]
    size = tax.log.size
    resp = client.aggregate("t-2026-06", ["revenue_12m", "tax_paid_12m"], codes)
    # What crossed the wire: exactly these fields, one pair of numbers per indicator.
    assert set(feature_pb2.CohortAggregate.DESCRIPTOR.fields_by_name) == {
        "indicators", "enterprises", "min_cohort", "data_version", "as_of", "disclosure_index"
    }  # fmt: skip
    assert set(feature_pb2.IndicatorAggregate.DESCRIPTOR.fields_by_name) == {
        "name", "present", "sum", "suppressed"
    }  # fmt: skip
    assert resp.enterprises == 60 and len(resp.indicators) == 2
    assert len(resp.SerializeToString()) < 200  # independent of the cohort's size
    sent = [(a.name, a.present, a.sum, a.suppressed) for a in resp.indicators]
    for name, present, total, suppressed in sent:
        col = _values(city, "tax", name, codes)
        col = col[~np.isnan(col)]
        assert present == col.size >= cohort.MIN_COHORT
        if not suppressed:
            assert math.isclose(total, float(col.sum()), rel_tol=1e-9)
        # No single enterprise's value is among the numbers sent or logged.
        singles = {float(v) for v in col if v != 0}
        assert not singles & {total, float(present)}
    (entry,) = tax.log.get_entries(size, tax.log.size)
    logged = json.loads(entry.data)
    assert logged["kind"] == cohort.KIND and logged.get("subject") in (None, "")
    payload = logged["payload"]
    assert payload["legal_basis"] == "subsidy_tracking" and payload["enterprises"] == 60
    assert not any(c in entry.data.decode() for c in codes)  # the cohort only by digest
    client.close()


def test_cohort_refusals(city: City) -> None:
    tax = city.nodes["tax"]
    client = tax.client()
    size = tax.log.size
    with pytest.raises(CohortTooSmall):
        client.aggregate("t-small", ["revenue_12m"], city.codes[: cohort.MIN_COHORT - 1])
    with pytest.raises(LegalBasisRequired):
        client.aggregate("t-basis", ["revenue_12m"], city.codes[100:130],
                         legal_basis="policy_screening")  # fmt: skip
    with pytest.raises(UnknownFeature):  # a feature, but not a tracking indicator
        client.aggregate("t-feat", ["tax_burden_12m"], city.codes[100:130])
    with pytest.raises(UnknownFeature):  # another node's indicator
        client.aggregate("t-feat", ["headcount"], city.codes[100:130])
    bank = tax.client("bank-icbc-weihai")
    with pytest.raises(RoleNotAllowed):
        bank.aggregate("t-bank", ["revenue_12m"], city.codes[100:130])
    assert tax.log.size == size  # nothing answered, nothing logged
    # Differencing: a cohort one enterprise away from an answered one is refused; an
    # identical or a far-enough one is answered.
    base = city.codes[200:230]
    client.aggregate("t-a", ["revenue_12m"], base)
    with pytest.raises(CohortOverlap):
        client.aggregate("t-b", ["revenue_12m"], [*base, city.codes[230]])
    with pytest.raises(CohortOverlap):
        client.aggregate("t-c", ["tax_paid_12m"], base[1:])
    client.aggregate("t-d", ["revenue_12m"], base)
    client.aggregate("t-e", ["revenue_12m"], city.codes[200:240])
    for c in (client, bank):
        c.close()


def test_release_suppresses_small_and_dominated_sums() -> None:
    assert cohort.release("x", np.ones(9), 10).suppressed == "too_few_values"
    dominated = np.array([1_000_000.0] + [10.0] * 20)
    r = cohort.release("x", dominated, 10)
    assert r.suppressed == "dominance" and r.total == 0.0 and r.present == 21
    ok = cohort.release("x", np.arange(1.0, 21.0), 10)
    assert ok.suppressed == "" and ok.total == 210.0


def test_a_cohort_round_from_the_policy_service(city: City, tmp_path: Path) -> None:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    ledger = Log.open(
        f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform"
    )
    rule = "social_security.headcount >= 5"
    store.publish(_policy("big", rule, 10_000, 10_000_000), T0, ledger.append_many)
    store.publish(_policy("tiny", rule, 10_000, 30_000), T0, ledger.append_many)  # 3 awards
    clients = {d: n.client() for d, n in city.nodes.items()}
    run_automatic(store, ledger, clients, city.codes, city.platform_rows, run_id="r1",
                  today=TODAY, now=T0)  # fmt: skip
    store.pay_due(T0 + 8 * DAY, ledger.append_many)
    big, tiny = store.funded("big"), store.funded("tiny")
    assert len(big) >= 20 and len(tiny) == 3
    sizes = {d: n.log.size for d, n in city.nodes.items()}
    before = ledger.size
    rows = {r.policy: r for r in aggregate_round(store, ledger, clients, round_id="2026-06")}
    assert rows["tiny"].status == "cohort_too_small" and rows["tiny"].indicators == {}
    assert rows["big"].status == "ok" and rows["big"].cohort == len(big)
    head = rows["big"].indicators["social_security.headcount"]
    col = _values(city, "social_security", "headcount", big)
    assert head["present"] == int((~np.isnan(col)).sum())
    if not head["suppressed"]:
        assert math.isclose(head["sum"], float(np.nansum(col)), rel_tol=1e-9)
    # Only the nodes holding tracking indicators were asked, once each, for "big" only.
    asked = {d: n.log.size - sizes[d] for d, n in city.nodes.items() if n.log.size > sizes[d]}
    assert asked == {"tax": 1, "social_security": 1, "ip": 1}
    entries = [json.loads(e.data) for e in ledger.get_entries(before, ledger.size)]
    assert [e["kind"] for e in entries] == ["policy_tracking_aggregate"] * 2
    assert all(e.get("subject") in (None, "") for e in entries)
    assert not any(c in json.dumps(entries) for c in big + tiny)
    # A node's differencing refusal is a row status, not a failed round.

    class Refusing:
        def aggregate(self, *a: object, **k: object) -> object:
            raise CohortOverlap("differs by 1 enterprise")

    again = aggregate_round(store, ledger, {"tax": Refusing()}, round_id="2026-06b")
    assert {r.policy: r.status for r in again} == {"big": "refused_overlap",
                                                   "tiny": "cohort_too_small"}  # fmt: skip
    for c in clients.values():
        c.close()
    ledger.close()
    store.close()


def test_tracking_round_over_grpc_and_its_report(city: City, pki: Pki, tmp_path: Path) -> None:
    from fedcredit.policies.cli import _write_report, plot_progress
    from fedcredit.policies.client import PolicyClient
    from fedcredit.policies.errors import InvalidPolicy
    from fedcredit.policies.service import PolicyServicer, build_policy_server

    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    store.load_registry(list(zip(city.codes, city.platform_rows, strict=True)))
    ledger = Log.open(
        f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform"
    )
    target = "tax.revenue_growth_yoy >= 0.0"
    store.publish(_policy("jobs-r", "social_security.headcount >= 5", 10_000, 10_000_000,
                          target=target), T0, ledger.append_many)  # fmt: skip
    nodes = {d: n.client() for d, n in city.nodes.items()}
    run_automatic(store, ledger, nodes, city.codes, city.platform_rows, run_id="r1",
                  today=TODAY, now=T0)  # fmt: skip
    store.pay_due(T0 + 8 * DAY, ledger.append_many)
    servicer = PolicyServicer(store=store, ledger=ledger, nodes=nodes,
                              clock=lambda: T0 + 40 * DAY)  # fmt: skip
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    addr = f"127.0.0.1:{server.port}"
    try:
        op = PolicyClient(addr, pki.issue("operator", "operator"), server_org="policies")
        dept = PolicyClient(addr, pki.issue("finance", "department"), server_org="policies")
        with pytest.raises(RoleNotAllowed):
            dept.tracking_round("2026-06")
        with pytest.raises(InvalidPolicy):
            op.tracking_round("2026/06 ")
        resp = op.tracking_round("2026-06")
        (s,) = resp.policies
        funded = store.funded("jobs-r")
        assert s.policy_id == "jobs-r" and s.funded == len(funded) and s.has_target
        assert s.target_met + len(s.flagged) == s.funded and len(s.proposals) == len(s.flagged)
        assert s.cohort_status == "ok"
        assert {i.name for i in s.cohort} == {"tax.revenue_12m", "tax.tax_paid_12m",
                                               "social_security.headcount",
                                               "ip.patent_applications_24m"}  # fmt: skip
        code = funded[0]
        me = PolicyClient(addr, pki.issue(code, "enterprise"), server_org="policies")
        me.report_progress("jobs-r", "2026-01", {"employees": 9.0})
        _write_report(tmp_path / "rep", resp, op.progress("jobs-r"))
        doc = json.loads((tmp_path / "rep" / "report.json").read_text())
        (row,) = doc["policies"]
        assert row["target_met"] == s.target_met and row["self_evaluations"] == 1
        assert (tmp_path / "rep" / "jobs-r.png").read_bytes()[:4] == b"\x89PNG"
        (mine,) = plot_progress(tmp_path / "mine", me.progress())  # the enterprise's own plot
        assert mine.name == f"enterprise-{code}.png" and mine.read_bytes()[:4] == b"\x89PNG"
        for c in (op, dept, me):
            c.close()
    finally:
        server.stop(0)
        for n in nodes.values():
            n.close()
        ledger.close()
        store.close()
