"""The city's synthetic policy set: 64 automatic (免申即享) and 65 application policies.

Shaped like Weihai's: technology sub-branch loan interest, direct-financing subsidies,
employment stabilisation, export credit, tax-credit rewards, start-ups, energy saving,
patents, housing-fund compliance, growth rewards. Each family is a CEL rule template;
variants differ by threshold, district or industry, amount and budget. Seeded and
reproducible; every rule type-checks against the catalog (tests/policies check all 129).
"""

from __future__ import annotations

import random
from datetime import date

from fedcredit.policies.rules import Mode, Policy

DISTRICTS = ("huancui", "wendeng", "rongcheng", "rushan", "etdz", "torch", "lingang")
INDUSTRIES = ("C", "F", "G", "I", "M")

# (id stem, title, issuing department, rule template, reviewers for applications)
FAMILIES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("tech-loan", "Technology sub-branch loan interest subsidy", "finance-bureau",
     "ip.invention_patents_in_force >= {k} && platform.rating in ['A', 'B']"
     " && !courts.on_dishonest_debtor_list", ("finance", "science-technology")),
    ("jobs", "Employment stabilisation refund", "hr-social-security",
     "social_security.headcount >= {k} && social_security.ss_arrears_months_12m == 0"
     " && social_security.headcount_trend_12m >= 0.0", ("human-resources", "finance")),
    ("export", "Export credit insurance subsidy", "commerce-bureau",
     "customs.export_value_12m > {x}.0 && customs.trade_active_months_12m >= {m}"
     " && !public_credit.on_black_list", ("commerce", "finance")),
    ("tax-a", "Tax credit grade A reward", "tax-bureau",
     "tax.tax_credit_grade == 5 && tax.late_filings_12m == 0 && registry.district == '{d}'",
     ("tax", "finance")),
    ("startup", "Start-up subsidy", "market-regulation-bureau",
     "registry.founded_year >= {y} && registry.size_class in ['micro', 'small']"
     " && public_credit.penalties_24m == 0", ("market-regulation", "finance")),
    ("energy", "Energy-saving reward", "industry-it-bureau",
     "utilities.electricity_trend_yoy < -0.0{p} && registry.industry == '{i}'",
     ("industry-it", "development-reform")),
    ("patent", "Patent filing grant", "ip-office",
     "ip.patent_applications_24m >= {k} && courts.open_cases_as_defendant == 0",
     ("science-technology", "finance")),
    ("housing", "Housing-fund compliance reward", "housing-fund-centre",
     "housing_fund.housing_fund_arrears_months_12m == 0 && housing_fund.housing_fund_payers >= {k}",
     ("housing-fund", "finance")),
    ("growth", "Growth reward (revenue or exports)", "development-reform-commission",
     "tax.revenue_growth_yoy > 0.{g} && tax.revenue_12m >= {x}.0"
     " || customs.export_trend_yoy > 0.{g} && customs.export_value_12m > {x}.0",
     ("development-reform", "commerce", "finance")),
    ("direct-finance", "Direct-financing subsidy", "finance-bureau",
     "platform.rating == 'A' && natural_resources.mortgaged_share < 0.{g}"
     " && medical_insurance.medical_payment_continuity_24m >= 0.9", ("finance", "development-reform")),
)  # fmt: skip


def _rule(template: str, rng: random.Random) -> str:
    return template.format(
        k=rng.choice([1, 2, 3, 5, 10, 20]),
        x=rng.choice([100_000, 500_000, 1_000_000, 5_000_000]),
        m=rng.choice([3, 6, 9]),
        d=rng.choice(DISTRICTS),
        y=rng.choice([2018, 2020, 2022]),
        p=rng.choice([2, 5, 8]),
        i=rng.choice(INDUSTRIES),
        g=rng.choice([1, 2, 3, 5]),
    )


def policy_set(
    *, automatic: int = 64, application: int = 65, seed: int = 0, year: int = 2026
) -> list[Policy]:
    """``automatic`` + ``application`` policies, cycling through the families."""
    rng = random.Random(seed)
    out: list[Policy] = []
    for mode, count in (("automatic", automatic), ("application", application)):
        for n in range(count):
            stem, title, dept, template, reviewers = FAMILIES[n % len(FAMILIES)]
            amount = rng.choice([10_000, 20_000, 50_000, 100_000, 200_000])
            m: Mode = "automatic" if mode == "automatic" else "application"
            out.append(Policy(
                id=f"{'auto' if m == 'automatic' else 'app'}-{stem}-{n:02d}",
                title=f"{title} ({year}, no. {n + 1})", department=dept, mode=m,
                amount_yuan=amount, budget_yuan=amount * rng.choice([20, 50, 100, 300]),
                opens=date(year, 1, 1), closes=date(year, 12, 31), rule=_rule(template, rng),
                reviewers=reviewers if m == "application" else (),
                fields=("project_name", "planned_investment_yuan") if m == "application" else (),
            ))  # fmt: skip
    return out
