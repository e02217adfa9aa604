"""The monthly tracking schedule (policies.daemon.MonthlyTracking) with an injected clock:
nothing before its day, the month before's round once, idempotent per month however
often it ticks, whoever else runs the round, and however many callers race for it."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.ledger.log import Log
from fedcredit.policies import tracking
from fedcredit.policies.daemon import MonthlyTracking, month_before
from fedcredit.policies.errors import TrackingRoundRunning
from fedcredit.policies.runs import run_automatic
from fedcredit.policies.store import DAY, PolicyStore
from tests.policies.conftest import City
from tests.policies.test_runs import T0, TODAY, _policy
from tests.policies.test_tracking import TARGET


def _at(y: int, m: int, d: int, h: int = 3) -> float:
    return datetime(y, m, d, h, tzinfo=UTC).timestamp()


def test_month_before() -> None:
    assert month_before(_at(2026, 7, 1)) == "2026-06"
    assert month_before(_at(2027, 1, 15)) == "2026-12"


def _kinds(log: Log, start: int) -> list[str]:
    return [json.loads(e.data)["kind"] for e in log.get_entries(start, log.size)]


@pytest.fixture
def funded_city(city: City, tmp_path: Path) -> Any:
    store = PolicyStore.open(f"sqlite:///{tmp_path / 'pol.sqlite'}")
    store.load_registry(list(zip(city.codes, city.platform_rows, strict=True)))
    ledger = Log.open(f"sqlite:///{tmp_path / 'l.sqlite'}", Ed25519PrivateKey.generate(), "p")
    store.publish(_policy("jobs", "social_security.headcount >= 5", 10_000, 10_000_000,
                          target=TARGET), T0, ledger.append_many)  # fmt: skip
    clients = {d: n.client() for d, n in city.nodes.items()}
    run_automatic(store, ledger, clients, city.codes, city.platform_rows, run_id="r1",
                  today=TODAY, now=T0)  # fmt: skip
    store.pay_due(T0 + 8 * DAY, ledger.append_many)
    yield store, ledger, clients
    for c in clients.values():
        c.close()
    ledger.close()
    store.close()


def test_the_schedule_runs_each_month_once(funded_city: Any, city: City) -> None:
    store, ledger, clients = funded_city
    now = [_at(2026, 7, 1, 0)]
    sched = MonthlyTracking(store, ledger, clients, clock=lambda: now[0], day=2)
    assert sched.tick() is None  # before the 2nd: not due
    now[0] = _at(2026, 7, 2)
    start, nodes_before = ledger.size, {d: n.log.size for d, n in city.nodes.items()}
    r = sched.tick()
    assert r is not None and r.round_id == "2026-06" and not r.replayed
    (row,) = r.policies
    assert row["policy_id"] == "jobs" and row["funded"] > 0 and row["has_target"]
    entries = _kinds(ledger, start)
    assert entries.count("policy_tracking") == row["funded"]
    after = ledger.size, {d: n.log.size for d, n in city.nodes.items()}
    assert after[1] != nodes_before  # the nodes were asked
    # Ticking again this month (a restart, a second replica, an hourly check) does nothing:
    # no node is asked, nothing is ledgered.
    for hour in (4, 12, 23):
        now[0] = _at(2026, 7, 20, hour)
        assert sched.tick() is None
    again = tracking.run_round(store, ledger, clients, round_id="2026-06", now=now[0])
    assert again.replayed and again.policies == r.policies and again.finished_at == _at(2026, 7, 2)
    assert (ledger.size, {d: n.log.size for d, n in city.nodes.items()}) == after
    # The next month is its own round.
    now[0] = _at(2026, 8, 2)
    r2 = sched.tick()
    assert r2 is not None and r2.round_id == "2026-07" and not r2.replayed
    assert [rid for rid, _, _ in store.tracking_rounds()] == ["2026-07", "2026-06"]


def test_racing_callers_run_a_round_once(funded_city: Any) -> None:
    store, ledger, clients = funded_city
    start = ledger.size
    results: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            got: Any = tracking.run_round(store, ledger, clients, round_id="2026-09", now=T0)
        except TrackingRoundRunning as exc:
            got = exc
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ran = [r for r in results if isinstance(r, tracking.Round) and not r.replayed]
    assert len(ran) == 1 and len(results) == 4
    funded = ran[0].policies[0]["funded"]
    assert _kinds(ledger, start).count("policy_tracking") == funded


def test_a_failed_round_can_run_again(funded_city: Any) -> None:
    store, ledger, clients = funded_city

    class Down:
        def screen(self, *a: Any, **k: Any) -> Any:
            from fedcredit.common.errors import Unavailable

            raise Unavailable("node down")

    broken = {d: Down() for d in clients}
    with pytest.raises(Exception, match="node down"):
        tracking.run_round(store, ledger, broken, round_id="2026-10", now=T0)
    assert store.tracking_round("2026-10") is None  # released: the next tick retries
    r = tracking.run_round(store, ledger, clients, round_id="2026-10", now=T0)
    assert not r.replayed and r.policies
