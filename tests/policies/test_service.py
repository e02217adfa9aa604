"""The policy service over real mTLS gRPC: roles, typed refusals, a run, decline, payment."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.ledger.log import Log
from fedcredit.policies.client import PolicyClient
from fedcredit.policies.errors import (
    AwardDeclined,
    InvalidPolicy,
    PolicyExists,
    RuleInvalid,
    UnknownAward,
)
from fedcredit.policies.service import PolicyServicer, build_policy_server
from fedcredit.policies.store import DAY, PolicyStore
from fedcredit.v1 import policies_pb2
from tests.conftest import Pki
from tests.policies.conftest import City

T0 = 1_767_225_600.0


def _msg(**kw: object) -> policies_pb2.PolicyMessage:
    base: dict[str, object] = dict(
        id="auto-export-01", title="Export credit insurance subsidy", department="commerce-bureau",
        mode="automatic", amount_yuan=20_000, budget_yuan=2_000_000, opens="2026-01-01",
        closes="2026-12-31", rule="customs.export_value_12m > 0.0 && platform.rating != 'D'",
    )  # fmt: skip
    return policies_pb2.PolicyMessage(**{**base, **kw})  # type: ignore[arg-type]


def test_policy_service_end_to_end(city: City, pki: Pki, tmp_path: Path) -> None:
    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    store.load_registry(list(zip(city.codes, city.platform_rows, strict=True)))
    ledger = Log.open(
        f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform"
    )
    clock = [T0]
    nodes = {d: n.client() for d, n in city.nodes.items()}
    servicer = PolicyServicer(store=store, ledger=ledger, nodes=nodes, clock=lambda: clock[0])
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    addr = f"127.0.0.1:{server.port}"

    def client(org: str, role: str) -> PolicyClient:
        return PolicyClient(addr, pki.issue(org, role), server_org="policies")

    try:
        dept, op, bank = (client("dept-customs", "department"), client("operator", "operator"),
                          client("bank-icbc-weihai", "bank"))  # fmt: skip
        with pytest.raises(RuleInvalid) as ei:
            dept.check_rule("customs.export_value_12m > 'x'")
        assert ei.value.metadata == {"line": "1", "column": "26"}
        with pytest.raises(RoleNotAllowed):
            bank.publish(_msg())
        with pytest.raises(InvalidPolicy):
            dept.publish(_msg(opens="2026-13-01"))
        with pytest.raises(RoleNotAllowed):  # a department publishes in its own name only
            dept.publish(_msg())
        plan = op.publish(_msg())  # the operator, for the commerce bureau
        assert [c.evaluated_by for c in plan.clauses] == ["customs", "platform"]
        with pytest.raises(PolicyExists):
            op.publish(_msg())
        assert [p.id for p in bank.policies()] == ["auto-export-01"]
        with pytest.raises(RoleNotAllowed):
            bank.run_screening("2026-03-01")
        # a department screens only the automatic policies it issues (none here)
        assert dept.run_screening("2026-01-01", run_id="dept-run").policies == 0
        run = op.run_screening("2026-03-01", run_id="svc-run")
        assert run.enterprises == len(city.codes) and run.notified["auto-export-01"] > 0
        # The enterprise sees its own awards only, and declines one.
        code = next(c for c in city.codes if store.awards_of(c))
        me = client(code, "enterprise")
        (award,) = me.awards()
        assert award.state == "notified" and award.amount_yuan == 20_000
        assert me.decline("auto-export-01").state == "declined"
        with pytest.raises(AwardDeclined):
            me.decline("auto-export-01")
        other = client("91371002MA00000000", "enterprise")
        with pytest.raises(UnknownAward):
            other.decline("auto-export-01")
        clock[0] = T0 + 8 * DAY
        paid = op.pay_due()
        assert paid.paid == run.notified["auto-export-01"] - 1
        assert paid.amount_yuan == paid.paid * 20_000
    finally:
        server.stop(0)
        for c in nodes.values():
            c.close()
        ledger.close()
        store.close()


def test_applications_over_grpc(pki: Pki, tmp_path: Path) -> None:
    from fedcredit.policies.errors import IllegalTransition

    pki.issue("policies", "policy")
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    ledger = Log.open(
        f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform"
    )
    clock = [T0]
    servicer = PolicyServicer(store=store, ledger=ledger, nodes={}, clock=lambda: clock[0])
    server = build_policy_server(servicer, address="127.0.0.1:0", tls=pki.tls("policies"))
    server.start()
    addr = f"127.0.0.1:{server.port}"

    def client(org: str, role: str) -> PolicyClient:
        return PolicyClient(addr, pki.issue(org, role), server_org="policies")

    try:
        op = client("operator", "operator")
        lead = client("development-reform", "department")
        lead.publish(_msg(id="app-growth-01", mode="application", rule="platform.rating == 'A'",
                          department="development-reform",
                          reviewers=["development-reform", "finance"],
                          fields=["project_name"]))  # fmt: skip
        import random

        from fedcredit.common import uscc

        rng = random.Random(9)
        me, competitor, stranger = (uscc.generate(rng) for _ in range(3))
        ent = client(me, "enterprise")
        a = ent.apply(
            "a-1",
            "app-growth-01",
            {"project_name": "line 2"},
            {"plan.pdf": b"%PDF" + b"x" * 100_000},
        )
        assert a.state == "under_review" and dict(a.parts) == {
            "development-reform": "pending", "finance": "pending"}  # fmt: skip
        with pytest.raises(RoleNotAllowed):
            client("bank-icbc-weihai", "bank").review("a-1", True)
        with pytest.raises(UnknownAward):  # not a reviewer: as if it did not exist (issue 14)
            client("tax-bureau", "department").review("a-1", True)
        lead.review("a-1", True)
        a = client("finance", "department").review("a-1", True)
        assert a.state == "notice"
        a = client(competitor, "enterprise").object("a-1", "figures double counted")
        assert a.state == "objected"
        assert op.resolve("a-1", False).state == "notice"
        with pytest.raises(IllegalTransition):
            op.advance("a-1", "close")  # the notice period has not passed
        clock[0] = T0 + 6 * DAY
        assert op.advance("a-1", "close").state == "approved"
        paid = op.advance("a-1", "pay")
        assert paid.state == "paid" and len(paid.history) == 8
        with pytest.raises(UnknownAward):  # not its own: as if it did not exist (issue 14)
            client(stranger, "enterprise").application("a-1")
        assert ent.application("a-1").state == "paid"
        assert store.books("app-growth-01").paid_yuan == 20_000
    finally:
        server.stop(0)
        ledger.close()
        store.close()
