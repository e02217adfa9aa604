"""Tracking pledged targets inside the nodes: booleans only, the subsidy_tracking basis,
equal to a central evaluation, under-performers flagged with a proposed adjustment."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.ledger.log import Log
from fedcredit.policies import rules
from fedcredit.policies.runs import run_automatic
from fedcredit.policies.store import DAY, PolicyStore
from fedcredit.policies.tracking import funded, track
from tests.policies.conftest import City
from tests.policies.test_runs import T0, TODAY, _policy

TARGET = "tax.revenue_growth_yoy >= 0.0 && social_security.headcount_trend_12m >= 0.0"


def test_a_tracking_round(city: City, tmp_path: Path) -> None:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    ledger = Log.open(
        f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "platform"
    )
    store.publish(_policy("jobs", "social_security.headcount >= 5", 10_000, 10_000_000,
                          target=TARGET), T0, ledger.append_many)  # fmt: skip
    clients = {d: n.client() for d, n in city.nodes.items()}
    run_automatic(store, ledger, clients, city.codes, city.platform_rows, run_id="r1",
                  today=TODAY, now=T0)  # fmt: skip
    store.pay_due(T0 + 8 * DAY, ledger.append_many)
    codes = funded(store, "jobs")
    assert len(codes) > 20
    sizes = {d: n.log.size for d, n in city.nodes.items()}
    platform = dict(zip(city.codes, city.platform_rows, strict=True))
    (t,) = track(store, ledger, clients, platform, round_id="2026-06")
    # Equal to the target evaluated centrally over the same enterprises' data.
    central = city.central_rows()
    index = {c: i for i, c in enumerate(city.codes)}
    expected = rules.evaluate_central(TARGET, [central[index[c]] for c in codes])
    assert t.funded == len(codes) and t.met == int(expected.sum())
    assert t.flagged == [c for c, ok in zip(codes, expected.tolist(), strict=True) if not ok]
    assert 0 < t.met < t.funded
    assert all(p["amount_yuan"] == 5_000 for p in t.proposals)
    # Only the two departments the target reads were asked, under the tracking basis.
    asked = {d for d, n in city.nodes.items() if n.log.size > sizes[d]}
    assert asked == {"tax", "social_security"}
    for d in asked:
        log = city.nodes[d].log
        for e in log.get_entries(sizes[d], log.size):
            assert json.loads(e.data)["payload"]["legal_basis"] == "subsidy_tracking"
    for c in clients.values():
        c.close()
    ledger.close()
    store.close()
