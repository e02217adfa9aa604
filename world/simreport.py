"""The simulated year's report: JSON, Markdown and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GRADES = ("A", "B", "C", "D")
# Weihai's figures from the case study, for the comparison in the report.
WEIHAI = {"loans": 1473, "amount_yuan": 8_600_000_000, "enterprises": 18_000, "institutions": 23}


def write_report(out: Path, r: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
    plots(out, r)
    text = markdown(r)
    if "policies" in r:
        policy_plot(out, r["policies"])
        text += policy_markdown(r["policies"])
        # the bench row (application cycle time in the simulated year), as bench/ writes them
        (out / "policy_bench.json").write_text(
            json.dumps(r["bench"], indent=2, default=float) + "\n"
        )
    (out / "report.md").write_text(text)


def policy_plot(out: Path, p: dict[str, Any]) -> None:
    """Cycle time per application policy (median and 90th percentile, days), sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(p["cycle_per_policy"].items(), key=lambda kv: kv[1]["median_days"])
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(rows))
    ax.bar(xs, [v["p90_days"] for _, v in rows], color="#c9d6e8", label="p90")
    ax.bar(xs, [v["median_days"] for _, v in rows], color="#2b5d9b", label="median")
    ax.set_xlabel(f"application policies ({len(rows)}), sorted by median")
    ax.set_ylabel("days, submission to payment")
    ax.set_title("policy funds: application cycle time per policy (simulated year)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "policy_cycle_time.png", dpi=100)
    plt.close(fig)


def policy_markdown(p: dict[str, Any]) -> str:
    c, aw = p["cycle_days"], p["awards"]
    runs = p["automatic_runs"]
    lines = [
        "## Policy funds",
        "",
        f"{p['policies']['automatic']} automatic (免申即享) and {p['policies']['application']} "
        f"application policies. Applications {p['applications']:,}: paid {p['approved_paid']:,}, "
        f"by state {p['by_state']}, objections {p['objections']}, refused for budget "
        f"{p['refused_for_budget']}; paid {p['application_payout_yuan'] / 1e6:,.1f} M yuan.",
        f"Cycle time (submission to payment): median {c['median'] or 0:.1f} days, p90 "
        f"{c['p90'] or 0:.1f} days; the same draws with departments one after another: median "
        f"{c['serial_baseline_median'] or 0:.1f} days.",
        f"免申即享 runs: {len(runs)}, first run {runs[0]['eligible'] if runs else 0:,} eligible "
        f"(enterprise × policy), {sum(x['notified'] for x in runs):,} notified in all; awards "
        f"{ {k: v['count'] for k, v in aw.items()} }, declined {p['declined']}.",
        f"Paid in all {p['paid_yuan'] / 1e6:,.1f} M yuan; every budget held: {p['budgets_held']}. "
        f"Tracking rounds {p['tracking_rounds']}, self-evaluations {p['self_evaluations']:,}. "
        f"Policy step {p['policy_step_s']:.0f} s wall, {p['policy_step_cpu_s']:.0f} s CPU.",
        "",
        "| policy | paid | median days | p90 days |",
        "|---|---:|---:|---:|",
    ]
    for pid, v in sorted(p["cycle_per_policy"].items()):
        lines.append(f"| {pid} | {v['paid']:.0f} | {v['median_days']:.1f} | {v['p90_days']:.1f} |")
    return "\n".join([*lines, "", "Plot: policy_cycle_time.png.", ""])


def plots(out: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = r["by_grade"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].bar(GRADES, [g[x]["loans"] for x in GRADES])
    ax[0].set_title("loans by grade")
    ax[1].bar(GRADES, [g[x]["amount"] / 1e6 for x in GRADES])
    ax[1].set_title("amount by grade (million yuan)")
    fig.tight_layout()
    fig.savefig(out / "loans_by_grade.png", dpi=100)
    plt.close(fig)

    pop = r["population_calibration"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = range(len(GRADES))
    ax.bar(
        [i - 0.2 for i in x],
        [pop[k]["predicted_pd"] for k in GRADES],
        0.4,
        label="predicted PD (rating)",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [pop[k]["hidden_default_rate"] for k in GRADES],
        0.4,
        label="realised default rate",
    )
    ax.set_xticks(list(x), GRADES)
    ax.set_title("calibration by grade (all rated firms, 12 months)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)

    mo = r["monthly"]
    fig, ax = plt.subplots(figsize=(7, 4))
    months = [m["month"] + 1 for m in mo]
    ax.plot(months, [m["exposure"] / 1e6 for m in mo], label="exposure")
    ax.plot(months, [m["paid_out"] / 1e6 for m in mo], label="paid out (cumulative)")
    ax.plot(months, [m["recovered"] / 1e6 for m in mo], label="recovered (cumulative)")
    ax.set_xlabel("month")
    ax.set_ylabel("million yuan")
    ax.set_title(f"guarantee fund; loss rate {r['fund']['loss_rate']:.2%}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fund.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].hist(r["hours_need_to_money"], bins=40)
    ax[0].set_title("need -> disbursement (hours)")
    ax[1].bar(list(r["channels"]), list(r["channels"].values()))
    ax[1].set_title("loans by channel")
    fig.tight_layout()
    fig.savefig(out / "need_to_money_and_channels.png", dpi=100)
    plt.close(fig)


def markdown(r: dict[str, Any]) -> str:
    g, pop, f = r["by_grade"], r["population_calibration"], r["fund"]
    lines = [
        f"# Simulated year: {r['params']['enterprises']:,} enterprises, {r['params']['banks']} institutions",
        "",
        f"Wall time {r['wall_s']:.0f} s. Loans {r['loans']:,} ({r['amount'] / 1e9:.2f} bn yuan) from "
        f"{r['needs']:,} needs and pushes; Weihai reports {WEIHAI['loans']:,} loans, "
        f"{WEIHAI['amount_yuan'] / 1e9:.1f} bn yuan.",
        "",
        "| grade | loans | amount (M yuan) | defaults in year | firms rated | predicted PD | realised 12-month default rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in GRADES:
        lines.append(
            f"| {k} | {g[k]['loans']:,} | {g[k]['amount'] / 1e6:,.1f} | {g[k]['defaults']} | "
            f"{pop[k]['firms']:,} | {pop[k]['predicted_pd']:.2%} | {pop[k]['hidden_default_rate']:.2%} |"
        )
    sla = r["sla"]
    lines += [
        "",
        f"Fund: guaranteed {f['guaranteed_amount'] / 1e6:,.1f} M yuan, paid out {f['paid_out'] / 1e6:,.2f} M, "
        f"recovered {f['recovered'] / 1e6:,.2f} M, loss rate {f['loss_rate']:.2%}, exposure at year end "
        f"{f['exposure'] / 1e6:,.1f} M.",
        f"Channels: {r['channels']}. Declined offers {r['declined']}, claims that lost a race "
        f"{r['claims_lost']}, refused guarantees {r['refused_guarantees']}, post-loan warnings {r['warnings']}.",
        f"Review p95 {sla['review'].get('p95_s', 0) / 60:.0f} min (breaches {sla['review'].get('breaches', 0)}); "
        f"disbursement p95 {sla['disbursement'].get('p95_s', 0) / 3600:.1f} h "
        f"(breaches {sla['disbursement'].get('breaches', 0)}).",
        "",
        "Plots: loans_by_grade.png, calibration.png, fund.png, need_to_money_and_channels.png.",
        "",
    ]
    return "\n".join(lines)
