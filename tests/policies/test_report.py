"""The tracking report: a PNG per policy and per enterprise and report.json, from what the
policy service holds (tracking booleans, node aggregates, self-evaluations)."""

from __future__ import annotations

import json
from pathlib import Path

from fedcredit.policies.cohort import CohortRow
from fedcredit.policies.progress import evaluation
from fedcredit.policies.report import write_report
from fedcredit.policies.tracking import PolicyTracking

PNG = b"\x89PNG\r\n\x1a\n"
T = 1_767_225_600.0 + 200 * 86_400.0  # 2026-07-20


def test_report_written_with_plots(tmp_path: Path) -> None:
    a, b = "91371002MA3C000001", "91371002MA3C000002"
    tracking = [PolicyTracking("jobs", 12, 9, [a, b, "x"], [
        {"enterprise": a, "action": "withhold_next_tranche", "amount_yuan": 5_000}])]  # fmt: skip
    cohorts = [
        CohortRow(
            "jobs",
            12,
            "ok",
            {
                "tax.revenue_12m": {"present": 12, "sum": 1.2e7, "mean": 1e6, "suppressed": ""},
                "social_security.headcount": {
                    "present": 12,
                    "sum": 0.0,
                    "mean": None,
                    "suppressed": "dominance",
                },
            },
        ),
        CohortRow("tiny", 3, "cohort_too_small"),
    ]
    reports = [
        evaluation("jobs", a, "2026-05", {"employees": 10, "revenue_yuan": 5e5}, "", T),
        evaluation("jobs", a, "2026-06", {"employees": 12}, "", T),
        evaluation("jobs", b, "2026-06", {"tax_yuan": 3e4}, "", T),
    ]
    doc = write_report(tmp_path / "rep", tracking, cohorts, reports, enterprises=[a])
    rows = {r["policy"]: r for r in doc["policies"]}
    assert set(rows) == {"jobs", "tiny"}
    assert rows["jobs"]["met_share"] == 0.75 and rows["jobs"]["self_evaluations"] == 3
    assert rows["jobs"]["reporting_enterprises"] == 2 and rows["jobs"]["proposals"]
    assert (
        rows["tiny"]["cohort_status"] == "cohort_too_small" and rows["tiny"]["target_met"] is None
    )
    for name in ("jobs.png", "tiny.png", f"enterprise-{a}.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, name
    assert json.loads((tmp_path / "rep" / "report.json").read_text()) == doc
