"""A simulated year of online applications under joint approval (``policies.approval``).

For every application policy of ``world.policies``, enterprises apply through the year
(a Poisson stream, ``per_policy`` a year on average). Each reviewing department takes a
log-normal number of days for its part (median ``review_median_days``; 5 % reject); 5 %
of the public notices draw an objection, resolved in 1-5 days (30 % upheld). Every step
goes through the real state machine, so every illegal step would raise.

The same draws are replayed *serially* — each department starts when the previous one has
finished, the paper process the platform replaces — so the run reports both cycle times
from one set of random numbers: the platform's parallel joint review, and the baseline.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from fedcredit.policies import approval as ap
from fedcredit.policies.rules import Policy
from fedcredit.world.policies import policy_set

YEAR_START = 1_767_225_600.0  # 2026-01-01 UTC
DAY = ap.DAY


@dataclass(frozen=True, slots=True)
class YearResult:
    applications: int
    paid: int
    rejected: int
    objections: int
    parallel_days: list[float]  # cycle time (submission -> payment) of each paid one
    serial_days: list[float]  # the same applications, departments one after another

    @staticmethod
    def median(xs: list[float]) -> float:
        s = sorted(xs)
        return s[len(s) // 2] if s else math.nan


def _one(policy: Policy, n: int, at: float, rng: random.Random, median: float
         ) -> tuple[ap.Application, float | None, bool]:  # fmt: skip
    """One application through the machine: (final state, serial cycle days, objected)."""
    a = ap.apply(policy, f"{policy.id}-{n}", f"ent-{n}",
                 {f: "x" for f in policy.fields}, {}, at)  # fmt: skip
    a = ap.push(a, policy, at + 0.1 * DAY)
    durations = {d: rng.lognormvariate(math.log(median), 0.6) * DAY for d in policy.reviewers}
    rejects = {d: rng.random() < 0.05 for d in policy.reviewers}
    for d in sorted(policy.reviewers, key=lambda d: durations[d]):
        t = a.history[1][0] + durations[d]
        if a.state == "under_review" and t >= a.review_deadline:
            a = ap.deadline(a, a.review_deadline)
        a = ap.review(a, policy, d, not rejects[d], t)
        if a.state == "rejected":
            return a, None, False
    objected = rng.random() < 0.05
    t = a.history[-1][0]
    if objected:
        a = ap.lodge_objection(a, "neighbour", "disputed figures", t + rng.uniform(0.5, 3) * DAY)
        a = ap.resolve(a, policy, rng.random() < 0.3, a.history[-1][0] + rng.uniform(1, 5) * DAY)
        if a.state == "rejected":
            return a, None, True
    a = ap.close_notice(a, a.notice_until)
    a = ap.pay(a, a.history[-1][0] + 1 * DAY)
    # Serially: the departments' parts one after another, the rest unchanged.
    parallel = a.history[-1][0] - a.submitted_at
    serial = parallel - max(durations.values()) + sum(durations.values())
    return a, serial / DAY, objected


def simulate(*, per_policy: int = 20, seed: int = 0, review_median_days: float = 3.0) -> YearResult:
    rng = random.Random(seed)
    policies = [p for p in policy_set() if p.mode == "application"]
    apps = paid = rejected = objections = 0
    par: list[float] = []
    ser: list[float] = []
    for p in policies:
        t = YEAR_START
        while True:
            t += rng.expovariate(per_policy / 365.0) * DAY
            if t > YEAR_START + 365 * DAY:
                break
            a, serial, objected = _one(p, apps, t, rng, review_median_days)
            apps += 1
            objections += objected
            if a.state == "paid":
                paid += 1
                par.append((a.history[-1][0] - a.submitted_at) / DAY)
                ser.append(serial if serial is not None else math.nan)
            else:
                rejected += 1
    return YearResult(apps, paid, rejected, objections, par, ser)
