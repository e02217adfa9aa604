"""The policy-fund side of `fedcredit world simulate`: a year of the 64 automatic and 65
application policies (``world.policies``) beside the marketplace, through the real policy
service code (``policies/``: store and budget books, screening plan, 免申即享 runs, the
joint-approval state machine, tracking rounds) on the simulation's clock and ledger.

**The departments.** The simulated city has no raw departmental records (the marketplace
year draws firms from ``world.generate``'s latent state), so each department here is a
stand-in node (:class:`SimNode`): per enterprise, the derived features the 129 rules read
are drawn once from the firm's latent health, size and age (documented per feature in
:func:`_features`), and evaluated with the node's own CEL evaluator
(``node.celvars.ClauseSet``) — only booleans leave it, as from a real node, and cohort
tracking gets sums only. The figures measure the platform's process, not Weihai's firms.

**A year.** Each quarter (months 0, 3, 6, 9) a 免申即享 run screens every enterprise
against every open automatic policy, budgets, notifies; ``decline_share`` of the notified
decline within the window, the rest are paid when it passes. Each month, enterprises
eligible for an application policy (screened at the quarter) apply as a Poisson stream
(``per_policy`` a year); each reviewing department takes a log-normal number of days for
its part (median ``review_median_days``, ``reject_share`` reject), 5 % of the notices draw
an objection; every step goes through the store (ledgered, budget committed at approval,
paid). Each month a tracking round (id ``YYYY-MM``, once) pulls the cohort aggregates, and
at each quarter's end ``report_share`` of the funded enterprises file a self-evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, cast

import numpy as np

from fedcredit.node import celvars
from fedcredit.policies import approval as ap
from fedcredit.policies import progress, rules, runs, screening, tracking
from fedcredit.policies.errors import BudgetExhausted
from fedcredit.policies.store import DAY, PolicyStore
from fedcredit.world.policies import policy_set

QUARTERS = (0, 3, 6, 9)


@dataclass(frozen=True)
class PolicyYearParams:
    per_policy: float = 12.0  # applications a year per application policy, on average
    review_median_days: float = 3.0
    reject_share: float = 0.05
    objection_share: float = 0.05
    decline_share: float = 0.02
    report_share: float = 0.5  # funded enterprises filing a self-evaluation each quarter
    year: int = 2026


@dataclass
class _Answer:
    bits: dict[str, Any]
    disclosure_index: int


@dataclass
class _Aggregate:
    name: str
    present: int
    sum: float
    suppressed: str = ""


@dataclass
class _AggAnswer:
    indicators: list[_Aggregate]
    disclosure_index: int


class SimNode:
    """One department's stand-in node: its features per enterprise; booleans out."""

    def __init__(self, department: str, codes: Sequence[str], rows: list[dict[str, Any]]) -> None:
        self.department = department
        self.index = {c: i for i, c in enumerate(codes)}
        self.rows = rows
        self.disclosed = 0  # the node's disclosure log, counted
        self._sets: dict[tuple[str, ...], celvars.ClauseSet] = {}

    def screen(self, run_id: str, clauses: Sequence[tuple[str, str]], enterprises: Sequence[str],
               *, legal_basis: str = "policy_screening") -> _Answer:  # fmt: skip
        texts = tuple(t for _, t in clauses)
        if texts not in self._sets:
            self._sets[texts] = celvars.ClauseSet(rules.environment(self.department), list(texts))
        got = self._sets[texts].evaluate([self.rows[self.index[c]] for c in enterprises])
        self.disclosed += 1
        return _Answer({cid: got[:, j] for j, (cid, _) in enumerate(clauses)}, self.disclosed)

    def aggregate(self, round_id: str, indicators: Sequence[str], enterprises: Sequence[str],
                  *, legal_basis: str = tracking.LEGAL_BASIS) -> _AggAnswer:  # fmt: skip
        out = []
        for name in indicators:
            vals = [self.rows[self.index[c]].get(f"{self.department}.{name}") for c in enterprises]
            present = [float(v) for v in vals if v is not None]
            out.append(_Aggregate(name, len(present), float(sum(present))))
        self.disclosed += 1
        return _AggAnswer(out, self.disclosed)


def _features(w: Any, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Per department, the features the policy rules read, drawn from the firm's latent
    health ``mu``, size (employees) and age: healthier and larger firms earn more, file on
    time, pay contributions, patent more; a few are on the courts' or credit lists."""
    n, mu, emp = w.n, w.mu, w.employees.astype(float)
    h = (mu - mu.mean()) / (mu.std() or 1.0)
    revenue = np.exp(12.0 + 0.9 * np.log(emp) + 0.3 * h + rng.normal(0, 0.5, n))
    exporter = rng.random(n) < 0.18 + 0.05 * (h > 0)
    bad = rng.random(n) < 0.03 * np.exp(-h)
    return {
        "tax": {"revenue_12m": revenue, "tax_paid_12m": revenue * 0.06,
                "revenue_growth_yoy": 0.05 + 0.1 * h + rng.normal(0, 0.15, n),
                "tax_credit_grade": np.clip(np.round(3.5 + h + rng.normal(0, 0.8, n)), 1, 5),
                "late_filings_12m": rng.poisson(np.exp(-1.2 - h))},
        "social_security": {"headcount": emp, "ss_arrears_months_12m": rng.poisson(np.exp(-2.0 - h)),
                            "headcount_trend_12m": 0.02 * h + rng.normal(0, 0.05, n)},
        "ip": {"invention_patents_in_force": rng.poisson(np.exp(-1.0 + 0.5 * np.log(emp) + 0.3 * h)),
               "patent_applications_24m": rng.poisson(np.exp(-1.2 + 0.4 * np.log(emp)))},
        "courts": {"on_dishonest_debtor_list": bad, "open_cases_as_defendant": rng.poisson(np.exp(-2.0 - h))},
        "public_credit": {"on_black_list": bad & (rng.random(n) < 0.5),
                          "penalties_24m": rng.poisson(np.exp(-1.8 - h))},
        "customs": {"export_value_12m": np.where(exporter, revenue * rng.uniform(0.1, 0.8, n), 0.0),
                    "trade_active_months_12m": np.where(exporter, rng.integers(1, 13, n), 0),
                    "export_trend_yoy": np.where(exporter, 0.05 * h + rng.normal(0, 0.2, n), 0.0)},
        "utilities": {"electricity_trend_yoy": rng.normal(0.0, 0.08, n)},
        "housing_fund": {"housing_fund_arrears_months_12m": rng.poisson(np.exp(-2.2 - h)),
                         "housing_fund_payers": np.round(emp * rng.uniform(0.3, 1.0, n))},
        "natural_resources": {"mortgaged_share": rng.beta(2, 5, n)},
        "medical_insurance": {"medical_payment_continuity_24m": np.clip(0.85 + 0.08 * h + rng.normal(0, 0.05, n), 0, 1)},
    }  # fmt: skip


def sim_nodes(w: Any, seed: int) -> dict[str, SimNode]:
    """The stand-in nodes of every department the policy set reads (typed as the catalog
    declares each feature: int, double or bool)."""
    rng = np.random.default_rng(seed + 4242)
    declared = rules.all_variables()
    out = {}
    for dep, feats in _features(w, rng).items():
        rows: list[dict[str, Any]] = [{} for _ in range(w.n)]
        for name, col in feats.items():
            var = f"{dep}.{name}"
            kind = declared[var].name()
            conv = {"INT": int, "DOUBLE": float, "BOOL": bool}[kind]
            for i, v in enumerate(col.tolist()):
                rows[i][var] = conv(v)
        out[dep] = SimNode(dep, w.code_list, rows)
    return out


@dataclass
class PolicyStats:
    runs: list[dict[str, Any]] = field(default_factory=list)
    declined: int = 0
    applications: list[ap.Application] = field(default_factory=list)
    serial_days: list[float] = field(default_factory=list)
    refused_budget: int = 0
    objections: int = 0
    self_evaluations: int = 0
    rounds: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU (the machine may be shared)


class PolicyYear:
    """The monthly policy step of :class:`world.simulate.Simulation` (``step(m)``)."""

    def __init__(self, sim: Any, workdir: Path, p: PolicyYearParams | None = None) -> None:
        self.sim, self.p = sim, p or PolicyYearParams()
        self.rng = np.random.default_rng(sim.p.seed + 77)
        self.store = PolicyStore.open(f"sqlite:///{workdir}/policies.sqlite")
        self.append = runs.batched(sim.log.append_many)
        w = sim.w
        self.codes: list[str] = list(w.code_list)
        self.nodes = sim_nodes(w, sim.p.seed)
        # as for the real node client: its answer's ``bits`` is a dict, the protocol's a
        # read-only Mapping, which mypy cannot see through a mutable attribute
        self.screeners = cast("dict[str, screening.NodeScreener]", self.nodes)
        self.stats = PolicyStats()
        self.eligible_apps: dict[str, list[str]] = {}
        self.applied: set[tuple[str, str]] = set()
        for pol in policy_set(year=self.p.year):
            self.store.publish(pol, sim.clock(), self.append)

    def rows(self) -> list[dict[str, Any]]:
        """The platform's variables now: this month's rating and the registry."""
        s, w = self.sim, self.sim.w
        return [rules.platform_row(rating=s.grade[i], industry=s.industry[i], district=s.region[i],
                                   size_class=("micro", "small", "medium", "large")[int(w.size_class[i])],
                                   enterprise_type="llc", founded_year=2025 - int(w.age[i]))
                for i in range(w.n)]  # fmt: skip

    def step(self, m: int) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.sim.at(m)
        today = date(self.p.year, m + 1, 1)
        if m in QUARTERS:
            self._screen(m, today)
        self._apply(m)
        self.sim.at(m, 20 * DAY)
        self._pay_awards()
        self._track(m)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.cpu_seconds += time.process_time() - c0

    def _screen(self, m: int, today: date) -> None:
        rows = self.rows()
        s = runs.run_automatic(self.store, self.sim.log, self.screeners, self.codes, rows,
                               run_id=f"sim-{m:02d}", today=today, now=self.sim.clock())  # fmt: skip
        self.stats.runs.append({"month": m, "screening_s": s.screening_seconds,
                                "eligible": sum(s.eligible.values()),
                                "notified": sum(s.notified.values()),
                                "unfunded": sum(s.unfunded.values())})  # fmt: skip
        apps = self.store.policies(mode="application", on=today)
        plan = screening.plan({p.id: rules.check_rule(p.rule) for p in apps})
        got = screening.screen(f"sim-app-{m:02d}", plan, self.codes, self.screeners, rows)
        self.eligible_apps = {pid: [c for c, ok in zip(self.codes, mask.tolist(), strict=True) if ok]
                              for pid, mask in got.eligible.items()}  # fmt: skip
        self.sim.later(1 * DAY)
        for pid in sorted(s.notified):  # a few decline within their window
            for a in self.store.awards_of_policy(pid, "notified"):
                if self.rng.random() < self.p.decline_share:
                    self.store.decline(pid, a, self.sim.clock(), self.append)
                    self.stats.declined += 1

    def _pay_awards(self) -> None:
        self.store.pay_due(self.sim.clock(), self.append, limit=1_000_000)

    def _apply(self, m: int) -> None:
        """This month's applications, each through the whole joint approval."""
        rate = self.p.per_policy / 12.0
        for pid, eligible in sorted(self.eligible_apps.items()):
            free = [c for c in eligible if (pid, c) not in self.applied]
            k = min(len(free), int(self.rng.poisson(rate)))
            for j in self.rng.choice(len(free), k, replace=False).tolist() if k else []:
                at = self.sim.clock() + float(self.rng.uniform(0, 28)) * DAY
                self._one(self.store.policy(pid), free[j], at)

    def _one(self, pol: rules.Policy, ent: str, at: float) -> None:
        self.applied.add((pol.id, ent))
        a = ap.apply(pol, f"sim-{pol.id}-{ent}"[:64], ent, {f: "x" for f in pol.fields}, {}, at)
        self.store.submit(a, self.append)
        a = self.store.step(a.id, lambda x: ap.push(x, pol, at + 0.1 * DAY), self.append)
        med = math.log(self.p.review_median_days)
        days = {d: float(self.rng.lognormal(med, 0.6)) * DAY for d in pol.reviewers}
        rejects = {d: bool(self.rng.random() < self.p.reject_share) for d in pol.reviewers}
        for d in sorted(pol.reviewers, key=lambda d: days[d]):
            t = a.history[1][0] + days[d]
            if a.state == "under_review" and t >= a.review_deadline:
                a = self.store.step(a.id, lambda x: ap.deadline(x, x.review_deadline), self.append)
            a = self.store.step(a.id, _reviewer(pol, d, not rejects[d], t), self.append)
            if a.state == "rejected":
                self.stats.applications.append(a)
                return
        a = self._notice(pol, a)
        if a.state == "notice":
            try:
                a = self.store.step(a.id, lambda x: ap.close_notice(x, x.notice_until), self.append)
                a = self.store.step(a.id, lambda x: ap.pay(x, x.history[-1][0] + DAY), self.append)
            except BudgetExhausted:
                self.stats.refused_budget += 1
        if a.state == "paid":
            parallel = a.history[-1][0] - a.submitted_at
            self.stats.serial_days.append(
                (parallel - max(days.values()) + sum(days.values())) / DAY
            )
        self.stats.applications.append(a)

    def _notice(self, pol: rules.Policy, a: ap.Application) -> ap.Application:
        if self.rng.random() >= self.p.objection_share:
            return a
        self.stats.objections += 1
        t = a.history[-1][0] + float(self.rng.uniform(0.5, 3)) * DAY
        a = self.store.step(a.id, lambda x: ap.lodge_objection(x, "neighbour", "disputed figures", t), self.append)  # fmt: skip
        upheld = bool(self.rng.random() < 0.3)
        t2 = t + float(self.rng.uniform(1, 5)) * DAY
        return self.store.step(a.id, lambda x: ap.resolve(x, pol, upheld, t2), self.append)

    def _track(self, m: int) -> None:
        """The month's tracking round (once) and, at each quarter's end, the funded
        enterprises' self-evaluations."""
        period = f"{self.p.year}-{m + 1:02d}"
        tracking.run_round(self.store, self.sim.log, self.nodes, round_id=period, now=self.sim.clock())  # fmt: skip
        self.stats.rounds += 1
        if m % 3 != 2:
            return
        for pol in self.store.policies():
            for code in self.store.funded(pol.id):
                if self.rng.random() >= self.p.report_share:
                    continue
                i = self.nodes["tax"].index[code]
                rev = float(self.nodes["tax"].rows[i]["tax.revenue_12m"]) / 12
                ev = progress.evaluation(pol.id, code, period, {
                    "revenue_yuan": round(rev * float(self.rng.uniform(0.8, 1.2))),
                    "employees": float(self.nodes["social_security"].rows[i]["social_security.headcount"]),
                }, "", self.sim.clock())  # fmt: skip
                self.store.report_progress(ev, self.append)
                self.stats.self_evaluations += 1

    def report(self) -> dict[str, Any]:
        """The policy side of the simulated year: applications, approvals, payouts, cycle
        time per policy, the 免申即享 runs, tracking, and the budgets held."""
        apps = self.stats.applications
        states: dict[str, int] = {}
        for a in apps:
            states[a.state] = states.get(a.state, 0) + 1
        cycles = ap.cycle_report(apps)
        par = sorted(d["median_days"] for d in cycles.values())
        paid_days = sorted(c / DAY for a in apps if (c := ap.cycle_seconds(a)) is not None)
        books = {p.id: self.store.books(p.id) for p in self.store.policies()}
        awards = self.store.award_totals()
        return {
            "policies": {"automatic": sum(1 for p in self.store.policies() if p.mode == "automatic"),
                         "application": sum(1 for p in self.store.policies() if p.mode == "application")},
            "applications": len(apps), "by_state": states, "objections": self.stats.objections,
            "refused_for_budget": self.stats.refused_budget,
            "approved_paid": states.get("paid", 0),
            "application_payout_yuan": sum(a.amount_yuan for a in apps if a.state == "paid"),
            "cycle_days": {"median": _q(paid_days, 0.5), "p90": _q(paid_days, 0.9),
                           "serial_baseline_median": _q(sorted(self.stats.serial_days), 0.5)},
            "cycle_per_policy": cycles, "median_of_policy_medians": _q(par, 0.5),
            "automatic_runs": self.stats.runs, "awards": awards, "declined": self.stats.declined,
            "tracking_rounds": self.stats.rounds, "self_evaluations": self.stats.self_evaluations,
            "paid_yuan": sum(b.paid_yuan for b in books.values()),
            "budgets_held": all(0 <= b.paid_yuan <= b.committed_yuan <= b.budget_yuan for b in books.values()),
            "policy_step_s": self.stats.seconds, "policy_step_cpu_s": self.stats.cpu_seconds,
        }  # fmt: skip


def _reviewer(pol: rules.Policy, dept: str, approve: bool, at: float) -> Any:
    return lambda x: ap.review(x, pol, dept, approve, at)


def _q(xs: Sequence[float], q: float) -> float | None:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def bench_row(r: Mapping[str, Any], enterprises: int) -> dict[str, Any]:
    """The bench row: application cycle time (submission to payment) in the simulated year."""
    c = r["cycle_days"]
    return {"bench": "policy_application_cycle_simulated_year", "enterprises": enterprises,
            "applications": r["applications"], "paid": r["approved_paid"],
            "median_days": c["median"], "p90_days": c["p90"],
            "serial_baseline_median_days": c["serial_baseline_median"],
            "faster_than_serial": (1 - c["median"] / c["serial_baseline_median"])
            if c["median"] and c["serial_baseline_median"] else None}  # fmt: skip
