"""The tracking report (资金跟踪问效): per policy, a PNG and a table; per enterprise, its own.

Built from what the policy service already holds — the tracking round's booleans (target
met or not, ``policies.tracking``), the cohort aggregates the nodes released
(``policies.cohort``), and the enterprises' self-evaluations (``policies.progress``) — so
writing a report asks no node for anything. Per policy: ``<policy>.png`` with three
panels (target met / below target; mean per funded firm of each tracking indicator,
suppressed ones marked; self-evaluations filed per month) and a row of ``report.json``
with the under-performers and the proposed adjustments. Per enterprise (for the
department or for the enterprise itself): ``enterprise-<code>.png``, its own reported
indicators month by month.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcredit.policies.cohort import CohortRow
from fedcredit.policies.progress import INDICATORS, SelfEvaluation
from fedcredit.policies.tracking import PolicyTracking


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def policy_summary(
    policy: str, t: PolicyTracking | None, c: CohortRow | None, reports: Sequence[SelfEvaluation]
) -> dict[str, Any]:
    return {
        "policy": policy,
        "funded": t.funded if t else (c.cohort if c else 0),
        "target_met": t.met if t else None,
        "met_share": round(t.met_share, 4) if t else None,
        "flagged": list(t.flagged) if t else [],
        "proposals": list(t.proposals) if t else [],
        "cohort_status": c.status if c else "not_asked",
        "cohort": dict(c.indicators) if c else {},
        "self_evaluations": len(reports),
        "reporting_enterprises": len({r.enterprise for r in reports}),
    }


def _policy_png(path: Path, s: dict[str, Any], reports: Sequence[SelfEvaluation]) -> None:
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    fig.suptitle(f"{s['policy']}: {s['funded']} funded enterprises")
    if s["target_met"] is not None:
        a.bar(["met", "below"], [s["target_met"], s["funded"] - s["target_met"]],
              color=["#2a7", "#c43"])  # fmt: skip
        a.set_title(f"pledged target: {s['met_share']:.0%} met")
    else:
        a.text(0.5, 0.5, "no target tracked", ha="center", va="center")
        a.set_title("pledged target")
    names = sorted(s["cohort"])
    means = [s["cohort"][n]["mean"] or 0.0 for n in names]
    bars = b.barh(names, means, color="#37a")
    for bar, n in zip(bars, names, strict=True):
        if s["cohort"][n]["suppressed"]:
            bar.set_hatch("//")
            b.annotate(f"suppressed: {s['cohort'][n]['suppressed']}", (0, bar.get_y()), fontsize=7)
    b.set_xscale("symlog")  # yuan and persons on one axis: a log scale keeps both visible
    b.set_title(f"mean per funded firm, log scale ({s['cohort_status']})")
    per_month = Counter(r.period for r in reports)
    months = sorted(per_month)
    c.bar(months, [per_month[m] for m in months], color="#888")
    c.set_title("self-evaluations filed per month")
    c.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def enterprise_png(path: Path, enterprise: str, reports: Sequence[SelfEvaluation]) -> Path:
    """One enterprise's own reported indicators, month by month, one line per policy."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(INDICATORS), figsize=(4 * len(INDICATORS), 3.2))
    fig.suptitle(f"{enterprise}: self-evaluations")
    for ax, name in zip(axes, INDICATORS, strict=True):
        series: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)
        for r in sorted(reports, key=lambda r: r.period):
            if name in r.indicators:
                series[r.policy].append((r.period, r.indicators[name]))
        for policy, pts in sorted(series.items()):
            ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=policy)
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=45)
        if series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(
    out: Path,
    tracking: Sequence[PolicyTracking],
    cohorts: Sequence[CohortRow],
    reports: Sequence[SelfEvaluation],
    *,
    enterprises: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``report.json``, one PNG per policy and one per listed enterprise into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    by_t = {t.policy: t for t in tracking}
    by_c = {c.policy: c for c in cohorts}
    by_r: defaultdict[str, list[SelfEvaluation]] = defaultdict(list)
    for r in reports:
        by_r[r.policy].append(r)
    policies = sorted(set(by_t) | set(by_c) | set(by_r))
    rows = []
    for p in policies:
        s = policy_summary(p, by_t.get(p), by_c.get(p), by_r[p])
        s["plot"] = f"{p}.png"
        _policy_png(out / s["plot"], s, by_r[p])
        rows.append(s)
    plots = []
    for code in enterprises:
        own = [r for r in reports if r.enterprise == code]
        plots.append(enterprise_png(out / f"enterprise-{code}.png", code, own).name)
    doc = {"policies": rows, "enterprise_plots": plots}
    (out / "report.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return doc
