"""`fedcredit world simulate` on a small city: the year runs through the marketplace, the
fund's book equals the loans, every loan event is ledgered, and the plots are written."""

from __future__ import annotations

import json
from pathlib import Path

from fedcredit.world.simulate import SimParams, simulate


def test_a_small_simulated_year(tmp_path: Path) -> None:
    r = simulate(tmp_path, SimParams(enterprises=600, banks=3, months=3, need_rate=0.05, seed=3))
    assert r["loans"] > 0 and r["needs"] > 0
    assert sum(r["channels"].values()) == r["loans"]
    assert sum(g["loans"] for g in r["by_grade"].values()) == r["loans"]
    f = r["fund"]
    assert f["books_equal_loans"] is True
    assert f["recovered"] <= f["paid_out"] and f["exposure"] >= 0
    for png in (
        "loans_by_grade.png",
        "calibration.png",
        "fund.png",
        "need_to_money_and_channels.png",
    ):
        assert (tmp_path / png).stat().st_size > 1000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["loans"] == r["loans"]
    # the rating is calibrated: predicted PD rises with the grade, as the hidden outcomes do
    pop = r["population_calibration"]
    assert (
        pop["A"]["predicted_pd"]
        < pop["B"]["predicted_pd"]
        < pop["C"]["predicted_pd"]
        < pop["D"]["predicted_pd"]
    )


def test_a_small_year_of_policy_funds_beside_the_marketplace(tmp_path: Path) -> None:
    """The 129 synthetic policies run through the policy service code: 免申即享 runs,
    applications through joint approval, payments within every budget, a tracking round
    each month, self-evaluations at the quarter's end; the report and the bench row."""
    r = simulate(tmp_path, SimParams(enterprises=600, banks=3, months=4, need_rate=0.05, seed=5))
    p = r["policies"]
    assert p["policies"] == {"automatic": 64, "application": 65}
    assert p["applications"] > 0 and 0 < p["approved_paid"] <= p["applications"]
    assert sum(p["by_state"].values()) == p["applications"]
    assert set(p["by_state"]) <= {"paid", "rejected"}  # every application decided
    assert [x["month"] for x in p["automatic_runs"]] == [0, 3]
    assert p["awards"]["paid"]["count"] > 0 and p["budgets_held"] is True
    assert p["paid_yuan"] == p["application_payout_yuan"] + p["awards"]["paid"]["yuan"]
    assert p["tracking_rounds"] == 4 and p["self_evaluations"] > 0
    c = p["cycle_days"]
    assert 0 < c["median"] <= c["p90"] and c["median"] <= c["serial_baseline_median"]
    assert sum(v["paid"] for v in p["cycle_per_policy"].values()) == p["approved_paid"]
    (row,) = json.loads((tmp_path / "policy_bench.json").read_text())
    assert row["bench"] == "policy_application_cycle_simulated_year"
    assert row["median_days"] == c["median"] and row["paid"] == p["approved_paid"]
    assert (tmp_path / "policy_cycle_time.png").stat().st_size > 1000
    assert "## Policy funds" in (tmp_path / "report.md").read_text()
