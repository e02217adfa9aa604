"""`fedcredit world simulate`: a year of the financing marketplace at Weihai's scale.

The synthetic city (``world.generate``'s enterprises, latent health and hidden 12-month
outcomes; 18,000 firms by default, the case study's platform population) is driven month
by month through the real marketplace service code (``market/``: store, state machines,
ledger outbox, fund book) with an embedded ledger, 23 institutions and their products:

1. **rating run** under the platform's legal basis: the platform's PD is a calibrated but
   imperfect stand-in for the credit model — last month's latent health seen through
   noise (σ = ``score_noise``), mapped to the mean true 12-month PD of its score
   quantile (50 bins) — then graded A/B/C/D by ``coordinator.rating.calibrate`` and
   stored with ``market.ratings.rate_city`` (post-loan warnings included);
2. **pushes**: each bank gets ``leads_per_bank`` leads, offers on ``lead_offer_share`` of
   them, and a pushed firm accepts with ``push_accept``;
3. **needs and grab orders**: ``need_rate`` of the firms without a loan post a need;
   up to ``claimants`` banks with a covering product try to claim it (one wins), the
   winner reviews (exponential, mean ``review_mean_min``) and offers, the firm accepts
   with ``accept`` or declines (the need reopens);
4. **loans**: a fund-guaranteed product asks the fund (``coordinator.policy.decide`` on
   the fund's live book); disbursement ``U(disburse_h)`` hours after acceptance; equal
   monthly principal; a firm whose hidden outcome is a default (``world`` draws it; its
   month ∝ the monthly hazard) defaults in that month, the fund pays its grade's share,
   ``recovery_share`` of the loss is recovered ``recovery_months`` later and shared the
   same way, then the loan is written off.

Outputs in ``--out`` (default ``bench/results/simulation``): ``report.json``,
``report.md`` and PNG plots. The steps are a list (``Simulation.steps``) so another
programme (policy funds) can add its own monthly step.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.coordinator.policy import FundPolicy, FundState, decide
from fedcredit.coordinator.rating import GRADES, calibrate, rate
from fedcredit.ledger.log import Log
from fedcredit.market import rules
from fedcredit.market.loans import LoanBook, check_books, sla_report
from fedcredit.market.pushes import leads_for, offer_on_lead, push_leads
from fedcredit.market.ratings import rate_city
from fedcredit.market.rules import GuaranteeView
from fedcredit.market.service import Marketplace, MarketSettings
from fedcredit.market.store import MarketStore
from fedcredit.world.errors import InvalidWorldParameter
from fedcredit.world.generate import DISTRICTS, SECTIONS, WorldParams, _World

DAY = 86400
BASE_TIME = 1_767_225_600  # 2026-01-01 UTC: month 0 of the simulated year


@dataclass(frozen=True)
class SimParams:
    enterprises: int = 18_000
    banks: int = 23
    months: int = 12
    seed: int = 0
    # monthly share of firms without a loan posting a need: ~1,500 needs a year at 18,000
    # firms, the order of Weihai's 1,473 loans
    need_rate: float = 0.008
    claimants: int = 4
    accept: float = 0.85
    leads_per_bank: int = 30
    lead_offer_share: float = 0.3
    push_accept: float = 0.3
    review_mean_min: float = 25.0
    disburse_h: tuple[float, float] = (3.0, 30.0)
    score_noise: float = 0.6
    recovery_share: float = 0.3
    recovery_months: int = 3
    # the policy funds beside the marketplace (world.policy_sim): 64 automatic and 65
    # application policies, 免申即享 runs, joint approvals, tracking rounds
    policies: bool = True

    def validate(self) -> None:
        """The ranges a person sets on `fedcredit world simulate`: expected X, got Y."""
        for name, value, low, high in (
            ("--enterprises", self.enterprises, 100, 2_000_000),
            ("--banks", self.banks, 1, 64),
            ("--months", self.months, 1, 120),
            ("--seed", self.seed, 0, 2**63 - 1),
        ):
            if not low <= value <= high:
                raise InvalidWorldParameter(f"{name}: expected {low:,} to {high:,}, got {value:,}")


class SimClock:
    def __init__(self) -> None:
        self.t = float(BASE_TIME)

    def __call__(self) -> float:
        return self.t


class FundDesk:
    """The guarantee fund's decisions as the coordinator makes them (its pure rules on the
    fund's live book), answered to the marketplace as the coordinator's SDK would."""

    def __init__(self, market: Marketplace, policy: FundPolicy) -> None:
        self.market, self.policy = market, policy
        self.views: dict[str, GuaranteeView] = {}

    def get(self, enterprise: str, application_id: str, bank: str) -> GuaranteeView | None:
        g = self.views.get(application_id)
        return g if g is not None and g.bank == bank else None

    def apply(self, loan: dict[str, Any], grade: str) -> GuaranteeView:
        book = self.market.store.book()
        state = FundState(
            self.policy.fund_size - book["paid_out"] + book["recovered"], book["exposure"]
        )
        d = decide(self.policy, grade=grade, amount=loan["principal"], term_months=loan["term_months"],
                   collateral_offered=loan["principal"], state=state)  # fmt: skip
        app = f"app-{loan['loan_id']}"
        self.views[app] = GuaranteeView(app, loan["bank"], loan["enterprise"], loan["principal"],
                                        loan["term_months"], d.approved, d.reason, grade, d.fund_share_bp,
                                        d.fund_amount, "ACTIVE" if d.approved else "REFUSED")  # fmt: skip
        return self.views[app]


@dataclass
class Stats:
    needs: int = 0
    claims_lost: int = 0
    declined: int = 0
    warnings: int = 0
    refused_guarantees: int = 0
    monthly: list[dict[str, Any]] = field(default_factory=list)


class Simulation:
    def __init__(self, p: SimParams, workdir: Path) -> None:
        self.p = p
        self.rng = np.random.default_rng(p.seed + 101)
        self.clock = SimClock()
        self.log = Log.open(f"sqlite:///{workdir}/ledger.sqlite", Ed25519PrivateKey.generate(),
                            "ledger/simulation", actor="market")  # fmt: skip
        self.market = Marketplace(MarketStore(f"sqlite:///{workdir}/market.sqlite"), self.log,
                                  settings=MarketSettings(), clock=self.clock,
                                  defer_publish=True)  # fmt: skip
        self.fund = FundDesk(self.market, FundPolicy())
        self.market.guarantees = self.fund
        self.book = LoanBook(self.market)
        self._city(workdir)
        self.bank_ids = [f"bank-{i + 1:02d}" for i in range(p.banks)]
        self.stats = Stats()
        self.loans: dict[str, dict[str, Any]] = {}  # loan id -> simulation's view
        self.busy: set[int] = set()  # firms with a need or loan under way
        self.steps: list[Callable[[int], None]] = [
            self.rating,
            self.pushes,
            self.grabs,
            self.loan_month,
        ]
        self.policy_year = None
        if p.policies:
            from fedcredit.world.policy_sim import PolicyYear

            self.policy_year = PolicyYear(self, workdir)
            self.steps.append(self.policy_year.step)

    def _city(self, workdir: Path) -> None:
        w = _World(
            WorldParams(self.p.enterprises, 7, 24, self.p.seed, "2025-12"), workdir / "world"
        )
        w.enterprises()
        w.outcomes()
        self.w = w
        a, fut = w.hazard_intercept, w.h_all[:, w.m : w.m + self.p.months]
        hazard = 1 / (1 + np.exp(-(a - 1.45 * fut)))
        self.default_month = np.full(w.n, -1)
        for i in np.nonzero(w.defaulted)[0]:
            self.default_month[i] = int(
                self.rng.choice(fut.shape[1], p=hazard[i] / hazard[i].sum())
            )
        self.industry = [SECTIONS[s].code for s in w.industry.tolist()]
        self.region = [DISTRICTS[d].id for d in w.district.tolist()]
        self.grade = ["C"] * w.n
        self.pd = np.zeros(w.n)

    def bank(self, org: str) -> Identity:
        return Identity(org, "bank", org.encode().ljust(32, b"."))

    def firm(self, i: int) -> Identity:
        c = self.w.code_list[i]
        return Identity(c, "enterprise", c.encode().ljust(32, b"."))

    def publish_products(self) -> None:
        for k, org in enumerate(self.bank_ids):
            for j, (floor, guaranteed) in enumerate(
                [("B", True), ("C", True), ("A", False)][: 2 + k % 2]
            ):
                lo = [50_000, 100_000, 300_000][(k + j) % 3]
                spec = {"product_id": f"{org}-p{j}", "name": f"{org} product {j}", "grade_floor": floor,
                        "amount_min": lo, "amount_max": 30_000_000, "term_min": 6, "term_max": 36,
                        "rate_min_bp": 330 + 40 * j, "rate_max_bp": 650 + 60 * j,
                        "industries": [], "regions": [], "fund_guaranteed": guaranteed}  # fmt: skip
                self.market.publish_product(self.bank(org), f"pub-{j}", spec)

    def at(self, month: int, seconds: float = 0.0) -> None:
        self.clock.t = BASE_TIME + month * 30 * DAY + seconds

    def later(self, seconds: float) -> None:
        self.clock.t += seconds

    # ------------------------------------------------------------ monthly steps

    def rating(self, m: int) -> None:
        self.at(m)
        w = self.w
        score = w.h_all[:, w.m - 1 + m] + self.rng.normal(0, self.p.score_noise, w.n)
        bins = np.quantile(score, np.linspace(0, 1, 51))
        idx = np.clip(np.searchsorted(bins, score, side="right") - 1, 0, 49)
        # the stand-in model is calibrated on the city's 12-month outcomes (world.pd)
        means = np.array([w.pd[idx == b].mean() if (idx == b).any() else 0.0 for b in range(50)])
        self.pd = means[idx]
        th = calibrate(self.pd + self.rng.uniform(0, 1e-9, w.n))
        self.grade = [rate(float(x), th) for x in self.pd]
        if m == 0:
            self.grade0, self.pd0 = list(self.grade), self.pd.copy()
        rows = [rules.Profile(c, self.industry[i], self.region[i], int(w.employees[i]), self.grade[i],
                              int(self.pd[i] * 1e6)) for i, c in enumerate(w.code_list)]  # fmt: skip
        self.stats.warnings += len(rate_city(self.market, f"month-{m}", rows).warnings)

    def amount(self, i: int) -> int:
        v = math.exp(11.5 + 0.8 * float(self.w.z[i]) + self.rng.normal(0, 0.5))
        return int(min(max(round(v, -3), 50_000), 20_000_000))

    def pushes(self, m: int) -> None:
        self.at(m, 2 * 3600)
        push_leads(self.market, f"month-{m}", max_per_bank=self.p.leads_per_bank)
        index = {c: i for i, c in enumerate(self.w.code_list)}
        for org in self.bank_ids:
            for lead in leads_for(self.market, self.bank(org), limit=self.p.leads_per_bank):
                if self.rng.random() > self.p.lead_offer_share:
                    continue
                self._offer_lead(m, org, lead, index)

    def _offer_lead(self, m: int, org: str, lead: dict[str, Any], index: dict[str, int]) -> None:
        from fedcredit.market.store import leads

        with self.market.store.tx() as c:
            code = (
                c.execute(leads.select().where(leads.c.lead_id == lead["lead_id"]))
                .mappings()
                .one()["enterprise"]
            )
        i = index[code]
        if i in self.busy:
            return
        try:
            need = offer_on_lead(self.market, self.bank(org), f"lead-{lead['lead_id']}", lead["lead_id"],
                                 self.amount(i), 12, 450)["need_id"]  # fmt: skip
        except FedcreditError:
            return
        self.busy.add(i)
        self.at(m, 2 * 3600 + self.rng.exponential(6 * 3600))
        self._answer(m, i, need, self.rng.random() < self.p.push_accept, "push")

    def grabs(self, m: int) -> None:
        free = np.array([i for i in range(self.w.n) if i not in self.busy])
        posting = self.rng.choice(free, int(len(free) * self.p.need_rate), replace=False)
        for i in posting.tolist():
            t0 = DAY + self.rng.uniform(0, 25 * DAY)
            self.at(m, t0)
            amount, term = self.amount(i), int(self.rng.choice([6, 12, 24, 36]))
            need = self.market.post_need(
                self.firm(i), f"need-{m}-{i}", amount, term, "working_capital"
            )["need_id"]
            self.stats.needs += 1
            self.busy.add(i)
            self.at(m, t0 + self.rng.uniform(60, 1800))
            winner = self._race(need)
            if winner is None:
                self.busy.discard(i)
                continue
            self.later(min(self.rng.exponential(self.p.review_mean_min * 60), 3300))
            prod = next(p for p in self.market.products(winner)
                        if rules.matches(p, rules.Profile("", self.industry[i], self.region[i], 0, self.grade[i]),
                                         amount, term))  # fmt: skip
            self.market.offer(
                self.bank(winner),
                f"offer-{need}",
                need,
                prod.product_id,
                (prod.rate_min_bp + prod.rate_max_bp) // 2,
            )
            self.later(self.rng.exponential(4 * 3600))
            self._answer(m, i, need, self.rng.random() < self.p.accept, "grab")

    def _race(self, need: str) -> str | None:
        order = self.rng.permutation(self.bank_ids)[: self.p.claimants]
        winner = None
        for org in order.tolist():
            try:
                self.market.claim(self.bank(org), f"claim-{need}-{org}", need)
                winner = winner or org
            except FedcreditError:
                if winner is not None:
                    self.stats.claims_lost += 1
        return winner

    def _answer(self, m: int, i: int, need: str, accept: bool, channel: str) -> None:
        if not accept:
            self.market.answer(self.firm(i), f"no-{need}", need, accept=False)
            self.stats.declined += 1
            self.busy.discard(i)
            return
        loan_id = self.market.answer(self.firm(i), f"yes-{need}", need, accept=True)["loan_id"]
        loan = self.book.get(self.firm(i), loan_id)
        org = loan["bank"]
        if loan["guaranteed_product"]:
            g = self.fund.apply(loan, self.grade[i])
            self.later(self.rng.uniform(600, 3000))
            if not g.approved:
                self.stats.refused_guarantees += 1
                self.book.step(self.bank(org), f"cancel-{loan_id}", loan_id, "cancel")
                self.busy.discard(i)
                return
            self.book.guarantee(self.bank(org), f"g-{loan_id}", loan_id, g.application_id)
        self.later(3600 * self.rng.uniform(*self.p.disburse_h))
        self.book.step(self.bank(org), f"d-{loan_id}", loan_id, "disburse")
        self.loans[loan_id] = {"i": i, "bank": org, "start": m, "grade": self.grade[i], "pd": float(self.pd[i]),
                               "channel": channel, "principal": loan["principal"], "term": loan["term_months"],
                               "guaranteed": loan["guaranteed_product"], "state": "ACTIVE", "paid": 0}  # fmt: skip

    def loan_month(self, m: int) -> None:
        self.at(m, 28 * DAY)
        for loan_id, s in self.loans.items():
            org = self.bank(s["bank"])
            if s["state"] == "ACTIVE" and s["start"] < m:
                if self.default_month[s["i"]] == m:
                    self._default(m, loan_id, s, org)
                    continue
                inst = min(s["principal"] - s["paid"], -(-s["principal"] // s["term"]))
                r = self.book.step(org, f"repay-{loan_id}-{m}", loan_id, "repay", inst)
                s["paid"] += inst
                if r["state"] == "CLOSED":
                    s["state"] = "CLOSED"
                    self.busy.discard(s["i"])
            elif s["state"] == "CLAIMED" and m == s["recover_at"]:
                rec = int(s["loss"] * self.p.recovery_share)
                if rec > 0:
                    self.book.step(org, f"recover-{loan_id}", loan_id, "recover", rec)
                self.book.step(org, f"wo-{loan_id}", loan_id, "write_off")
                s["state"] = "WRITTEN_OFF"

    def _default(self, m: int, loan_id: str, s: dict[str, Any], org: Identity) -> None:
        r = self.book.step(org, f"default-{loan_id}", loan_id, "default")
        s.update(state="DEFAULTED", loss=r["loss"], default_month=m)
        if s["guaranteed"]:
            app = f"app-{loan_id}"
            v = self.fund.views[app]
            self.fund.views[app] = GuaranteeView(**{**asdict(v), "status": "DEFAULTED"})
            self.book.claim(org, f"claim-{loan_id}", loan_id)
            s.update(state="CLAIMED", recover_at=m + self.p.recovery_months)
        else:
            self.book.step(org, f"wo-{loan_id}", loan_id, "write_off")
            s["state"] = "WRITTEN_OFF"

    def run(self, progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        self.publish_products()
        for m in range(self.p.months):
            for step in self.steps:
                step(m)
                self.market.flush()  # each step's events into the ledger, in batches
            book = self.market.store.book()
            self.stats.monthly.append({"month": m, **book, "loans": len(self.loans)})
            if progress:
                progress(m, time.perf_counter() - started)
        return report(self, time.perf_counter() - started)


def report(sim: Simulation, wall_s: float) -> dict[str, Any]:
    by_grade: dict[str, dict[str, Any]] = {}
    for g in GRADES:
        ls = [s for s in sim.loans.values() if s["grade"] == g]
        defaulted = [
            s for s in ls if s["state"] in ("DEFAULTED", "CLAIMED", "WRITTEN_OFF") and "loss" in s
        ]
        by_grade[g] = {"loans": len(ls), "amount": sum(s["principal"] for s in ls),
                       "defaults": len(defaulted),
                       "realised_default_rate": len(defaulted) / len(ls) if ls else None,
                       "predicted_pd": float(np.mean([s["pd"] for s in ls])) if ls else None}  # fmt: skip
    book = sim.market.store.book()
    recomputed = check_books(sim.market)
    population = {
        g: {"firms": int(sum(1 for x in sim.grade0 if x == g)),
            "hidden_default_rate": float(np.mean([sim.w.defaulted[i] for i, x in enumerate(sim.grade0) if x == g])),
            "predicted_pd": float(np.mean([sim.pd0[i] for i, x in enumerate(sim.grade0) if x == g]))}
        for g in GRADES
    }  # fmt: skip
    guaranteed_amount = sum(s["principal"] for s in sim.loans.values() if s["guaranteed"])
    channels = {
        c: sum(1 for s in sim.loans.values() if s["channel"] == c) for c in ("grab", "push")
    }
    return {"params": asdict(sim.p), "wall_s": wall_s, "loans": len(sim.loans),
            "amount": sum(s["principal"] for s in sim.loans.values()), "by_grade": by_grade,
            "population_calibration": population,
            "fund": {**book, "guaranteed_amount": guaranteed_amount,
                     "books_equal_loans": all(book[k] == v for k, v in recomputed.items()),
                     "loss_rate": (book["paid_out"] - book["recovered"]) / guaranteed_amount if guaranteed_amount else 0.0},
            "channels": channels, "needs": sim.stats.needs, "declined": sim.stats.declined,
            "claims_lost": sim.stats.claims_lost, "warnings": sim.stats.warnings,
            "refused_guarantees": sim.stats.refused_guarantees, "sla": sla_report(sim.market),
            "monthly": sim.stats.monthly}  # fmt: skip


def simulate(
    out: Path, p: SimParams, progress: Callable[[int, float], None] | None = None
) -> dict[str, Any]:
    """Run the simulated year and write the report and plots to ``out``."""
    from fedcredit.world.simreport import write_report

    p.validate()  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as d:
        sim = Simulation(p, Path(d))
        try:
            r = sim.run(progress)
            r["hours_need_to_money"] = need_to_money_hours(sim)
            if sim.policy_year is not None:
                from fedcredit.world.policy_sim import bench_row

                r["policies"] = sim.policy_year.report()
                r["bench"] = [bench_row(r["policies"], p.enterprises)]
                sim.policy_year.store.close()
        finally:
            sim.log.close()
            sim.market.store.close()
    write_report(out, r)
    return r


def need_to_money_hours(sim: Simulation) -> list[float]:
    from sqlalchemy import select

    from fedcredit.market.store import loans

    with sim.market.store.tx() as c:
        rows = c.execute(select(loans.c.times)).scalars().all()
    return [(t["ACTIVE"] - t["posted"]) / 3600 for t in rows if "ACTIVE" in t]


def summary(r: dict[str, Any]) -> str:
    return json.dumps({k: r[k] for k in ("loans", "amount", "channels", "wall_s")})
