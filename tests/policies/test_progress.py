"""Self-evaluations over real mTLS gRPC: only an enterprise, only for a policy it was paid
under, once a month, validated field by field, ledgered by digest (not by value); read
back by the enterprise itself, the policy's department and the operator, nobody else."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common import uscc
from fedcredit.common.errors import RoleNotAllowed
from fedcredit.ledger.log import Log
from fedcredit.policies import progress
from fedcredit.policies.client import PolicyClient
from fedcredit.policies.errors import InvalidPolicy, NotFunded, ProgressReported, UnknownPolicy
from fedcredit.policies.service import PolicyServicer, build_policy_server
from fedcredit.policies.store import DAY, PolicyStore
from tests.conftest import Pki
from tests.policies.test_runs import T0, _policy


def test_self_evaluations_over_grpc(pki: Pki, tmp_path: Path) -> None:
    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    ledger = Log.open(
        f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform"
    )
    rng = random.Random(21)
    paid, notified, stranger = (uscc.generate(rng) for _ in range(3))
    p = _policy("jobs", "platform.rating == 'A'", 10_000, 1_000_000, reviewers=("finance",))
    store.publish(p, T0, ledger.append_many)
    store.notify(p, [paid], "r1", T0, ledger.append_many)
    store.pay_due(T0 + 8 * DAY, ledger.append_many)
    store.notify(p, [notified], "r2", T0 + 8 * DAY, ledger.append_many)  # not paid yet
    clock = [T0 + 40 * DAY]  # 2026-02-10
    servicer = PolicyServicer(store=store, ledger=ledger, nodes={}, clock=lambda: clock[0])
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    addr = f"127.0.0.1:{server.port}"

    def client(org: str, role: str) -> PolicyClient:
        return PolicyClient(addr, pki.issue(org, role), server_org="policies")

    good = {"revenue_yuan": 1_200_000.0, "employees": 14.0}
    try:
        me = client(paid, "enterprise")
        size = ledger.size
        # Roles: no bank, department or operator files an enterprise's self-evaluation.
        for org, role in (("bank-icbc-weihai", "bank"), ("finance", "department"),
                          ("operator", "operator")):  # fmt: skip
            with pytest.raises(RoleNotAllowed):
                client(org, role).report_progress("jobs", "2026-01", good)
        # Ownership: only an enterprise paid under the policy (not one merely notified).
        for code in (notified, stranger):
            with pytest.raises(NotFunded):
                client(code, "enterprise").report_progress("jobs", "2026-01", good)
        with pytest.raises(UnknownPolicy):
            me.report_progress("no-such", "2026-01", good)
        # Malformed input: a precise refusal naming the field.
        bad = [("2026-13", good), ("2026-1", good), ("2026-03", good), ("2026-01", {}),
               ("2026-01", {"profit_yuan": 1.0}), ("2026-01", {"employees": 2.5}),
               ("2026-01", {"revenue_yuan": -1.0}), ("2026-01", {"tax_yuan": float("nan")})]  # fmt: skip
        for period, values in bad:
            with pytest.raises(InvalidPolicy):
                me.report_progress("jobs", period, values)
        with pytest.raises(InvalidPolicy):
            me.report_progress("jobs", "2026-01", good, "x" * (progress.MAX_NARRATIVE + 1))
        assert ledger.size == size and store.progress_reports() == []  # nothing changed
        r = me.report_progress("jobs", "2026-01", good, "hired four, new line running")
        assert r.enterprise == paid and r.period == "2026-01" and dict(r.indicators) == good
        with pytest.raises(ProgressReported):
            me.report_progress("jobs", "2026-01", {"employees": 15.0})
        me.report_progress("jobs", "2026-02", {"employees": 15.0})
        # The ledger holds the digest and which indicators were reported, never the values.
        entries = [json.loads(e.data) for e in ledger.get_entries(size, ledger.size)]
        assert [e["kind"] for e in entries] == ["policy_self_evaluation"] * 2
        first = entries[0]["payload"]
        assert first["digest"] == r.digest and first["indicators"] == ["employees", "revenue_yuan"]
        assert "1200000" not in json.dumps(entries) and "hired" not in json.dumps(entries)
        # Reading back: the enterprise its own; the operator and the policy's reviewer the
        # policy's; another department, a bank and another enterprise nothing of it.
        assert [x.period for x in me.progress()] == ["2026-01", "2026-02"]
        assert client(stranger, "enterprise").progress() == []
        assert len(client("operator", "operator").progress("jobs")) == 2
        assert len(client("finance", "department").progress("jobs")) == 2
        with pytest.raises(RoleNotAllowed):
            client("tax-bureau", "department").progress("jobs")
        with pytest.raises(RoleNotAllowed):
            client("bank-icbc-weihai", "bank").progress("jobs")
        with pytest.raises(InvalidPolicy):
            client("operator", "operator").progress()
    finally:
        server.stop(0)
        ledger.close()
        store.close()


def test_self_evaluation_store_on_postgres_too(db_url: str) -> None:
    store = PolicyStore.open(db_url)
    seen: list[object] = []
    p = _policy("jobs2", "platform.rating == 'A'", 10_000, 1_000_000)
    store.publish(p, T0, seen.extend)
    store.notify(p, ["91371002MA3C000001"], "r1", T0, seen.extend)
    store.pay_due(T0 + 8 * DAY, seen.extend)
    ev = progress.evaluation("jobs2", "91371002MA3C000001", "2026-01", {"tax_yuan": 5.0}, "",
                             T0 + 40 * DAY)  # fmt: skip
    store.report_progress(ev, seen.extend)
    with pytest.raises(ProgressReported):
        store.report_progress(ev, seen.extend)
    (back,) = store.progress_reports("jobs2")
    assert back.digest == ev.digest and dict(back.indicators) == {"tax_yuan": 5.0}
    store.close()
