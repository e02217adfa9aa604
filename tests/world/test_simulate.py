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
