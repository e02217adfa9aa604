"""The 66 feature definitions, each checked against hand-computed values on tiny records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from fedcredit.common.departments import CATEGORIES, DEPARTMENTS
from fedcredit.node import catalog
from fedcredit.node.catalog import Missing
from fedcredit.node.records import Batch, batch_from_columns, convert
from fedcredit.node.schema import BY_DEPARTMENT, month_ordinal
from fedcredit.world import pooled

AS_OF = month_ordinal("2025-12")
CODES = ["E1", "E2", "E3"]  # E3 is unknown to every department in these scenarios
NA = None  # a missing value (reason checked separately)


def months(first: str, last: str) -> list[str]:
    a, b = month_ordinal(first), month_ordinal(last)
    return [f"{o // 12:04d}-{o % 12 + 1:02d}" for o in range(a, b + 1)]


def make_batch(department: str, rows: Mapping[str, Sequence[Mapping[str, object]]]) -> Batch:
    tables = {}
    for spec in BY_DEPARTMENT[department]:
        rs = rows.get(spec.name, [])
        raw = {
            c.name: np.array([str(r.get(c.name, "")) for r in rs], dtype=str) for c in spec.columns
        }
        tables[spec.name] = convert(spec, raw)
    return batch_from_columns(department, CODES, AS_OF, tables)


def check(
    department: str,
    rows: Mapping[str, Sequence[Mapping[str, object]]],
    expected: Mapping[str, tuple[object, ...]],
) -> catalog.Computed:
    out = catalog.compute(make_batch(department, rows))
    names = [f.name for f in out.features]
    assert sorted(expected) == sorted(names), "every feature of the department is checked"
    for j, name in enumerate(names):
        for i, want in enumerate(expected[name]):
            got = out.values[i, j]
            if want is None:
                assert np.isnan(got), (name, CODES[i], got)
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (name, CODES[i], got, want)
    return out


def test_catalog_shape() -> None:
    assert len(catalog.FEATURES) == 66
    assert len(set(catalog.FEATURE_NAMES)) == 66
    per = Counter(f.category for f in catalog.FEATURES)
    assert set(per) == set(CATEGORIES) and min(per.values()) >= 4
    for f in catalog.FEATURES:
        assert f.description and f.unit and f.computation and f.tables
        assert set(f.tables) <= {t.name for t in BY_DEPARTMENT[f.department]}, f.name
        assert f.type in ("int", "float", "bool", "ordinal")
        assert f.sensitivity in ("public", "restricted", "confidential")


def test_round_significant() -> None:
    v = catalog.round_significant(np.array([26238.0, 0.0, np.nan, -1549.0, 0.01234, 99.6]), 2)
    np.testing.assert_allclose(v, [26000, 0, np.nan, -1500, 0.012, 100])


def test_market_regulation() -> None:
    reg = [
        {"code": "E1", "name": "A", "enterprise_type": "limited_liability", "industry": "C", "district": "huancui",
         "registered_on": "2015-12-01", "registered_capital": 1234567, "status": "active"},
        {"code": "E2", "name": "B", "enterprise_type": "limited_liability", "industry": "F", "district": "rushan",
         "registered_on": "2025-06-16", "registered_capital": 500000, "status": "active"},
    ]  # fmt: skip
    ch = [
        {"code": "E1", "changed_on": "2025-03-02", "change_type": "legal_representative"},
        {"code": "E1", "changed_on": "2024-06-02", "change_type": "legal_representative"},
        {
            "code": "E1",
            "changed_on": "2023-12-31",
            "change_type": "legal_representative",
        },  # > 24 months
        {
            "code": "E1",
            "changed_on": "2024-12-05",
            "change_type": "shareholder",
        },  # 13 months before
        {"code": "E1", "changed_on": "2025-11-05", "change_type": "capital_decrease"},
        {"code": "E2", "changed_on": "2025-07-01", "change_type": "address"},
    ]
    check("market_regulation", {"registrations": reg, "changes": ch}, {
        "age_years": (10.0 + 1 / 12, (7 - 15 / 31) / 12, NA),
        "registered_capital": (1200000, 500000, NA),
        "registry_changes_12m": (2, 1, NA),
        "legal_rep_changes_24m": (2, 0, NA),
        "shareholder_changes_24m": (1, 0, NA),
        "capital_decrease_24m": (1, 0, NA),
    })  # fmt: skip


def _filing(
    code: str, period: str, rev: int, vat: int, it: int, filed: str | None = None
) -> dict[str, object]:
    o = month_ordinal(period) + 1
    due = f"{o // 12:04d}-{o % 12 + 1:02d}-10"
    return {"code": code, "period": period, "sales_revenue": rev, "vat_paid": vat, "income_tax_paid": it,
            "filed_on": filed or due}  # fmt: skip


def test_tax() -> None:
    f = [_filing("E1", p, 1000, 100, 10) for p in months("2024-01", "2024-12")]
    f += [
        _filing("E1", p, 0 if p == "2025-06" else 2000, 100, 10)
        for p in months("2025-01", "2025-12")
    ]
    f[1]["filed_on"] = "2024-03-20"  # late, but outside the 12 months
    f[14]["filed_on"] = "2025-04-16"  # 2025-03 filed late
    f += [
        _filing("E2", p, r, 10, 0)
        for p, r in zip(months("2025-10", "2025-12"), (500, 600, 700), strict=True)
    ]
    grades = [{"code": "E1", "year": 2024, "grade": "B"}, {"code": "E1", "year": 2025, "grade": "A"},
              {"code": "E2", "year": 2022, "grade": "D"}]  # fmt: skip
    e1 = np.array([2000.0] * 11 + [0.0])
    e2 = np.array([500.0, 600, 700])
    out = check("tax", {"filings": f, "credit_grades": grades}, {
        "revenue_12m": (22000, 1800, NA),
        "revenue_growth_yoy": (22000 / 12000 - 1, NA, NA),
        "tax_paid_12m": (1300, 30, NA),
        "tax_burden_12m": (1320 / 22000, 30 / 1800, NA),
        "late_filings_12m": (1, 0, NA),
        "missing_or_zero_filings_12m": (1, 0, NA),
        "tax_credit_grade": (5, NA, NA),  # E2's only grade is too old
        "revenue_volatility_12m": (e1.std() / e1.mean(), e2.std() / e2.mean(), NA),
    })  # fmt: skip
    j = [f.name for f in out.features].index("revenue_growth_yoy")
    assert list(out.reasons[:, j]) == [Missing.PRESENT, Missing.NOT_COVERED, Missing.NO_RECORDS]


def test_social_security() -> None:
    rows = [{"code": "E1", "period": p, "headcount": 10 + i, "amount_due": 1000, "amount_paid": 1000 if i % 6 else 400}
            for i, p in enumerate(months("2024-01", "2025-12"))]  # fmt: skip
    rows += [
        {"code": "E2", "period": "2025-12", "headcount": 3, "amount_due": 300, "amount_paid": 300}
    ]
    # E1 headcount: 2025-10..12 -> 31, 32, 33; 2024-10..12 -> 19, 20, 21. Short months: i % 6 == 0
    # i = 12 (2025-01) and 18 (2025-07) in the last 12 months.
    check("social_security", {"contributions": rows}, {
        "headcount": (33, 3, NA),
        "headcount_trend_12m": (32 / 20 - 1, NA, NA),
        "ss_arrears_months_12m": (2, 0, NA),
        "ss_arrears_amount_12m": (1200, 0, NA),
        "ss_contribution_months_24m": (24, 1, NA),
        "ss_contribution_per_head": (36, 100, NA),  # 12000 / 330 = 36.4
    })  # fmt: skip


def test_medical_insurance() -> None:
    ps = [
        p
        for p in months("2024-01", "2025-12")
        if p not in ("2025-02", "2025-03", "2025-04", "2024-07")
    ]
    rows = [
        {
            "code": "E1",
            "period": p,
            "insured": 12,
            "amount_paid": 5000,
            "days_late": 3 if p == "2025-08" else 0,
        }
        for p in ps
    ]
    rows += [
        {"code": "E2", "period": p, "insured": 4, "amount_paid": 900, "days_late": 0}
        for p in ("2025-06", "2025-07", "2025-09")
    ]
    check("medical_insurance", {"payments": rows}, {
        "medical_insured": (12, 4, NA),
        "medical_payment_continuity_24m": (20 / 24, 3 / 7, NA),  # E2: first 2025-06, 7 months span
        "medical_late_payments_12m": (1, 0, NA),
        "medical_longest_gap_24m": (3, 3, NA),  # E2: 2025-10..12 unpaid up to as-of
    })  # fmt: skip


def test_housing_fund() -> None:
    rows = [{"code": "E1", "period": p, "payers": 10 if p < "2025-01" else 15, "amount_due": 800 * (10 if p < "2025-01" else 15),
             "amount_paid": 0 if p == "2025-05" else 800 * (10 if p < "2025-01" else 15)} for p in months("2024-01", "2025-12")]  # fmt: skip
    rows += [
        {"code": "E2", "period": "2025-11", "payers": 2, "amount_due": 1000, "amount_paid": 1000}
    ]
    check("housing_fund", {"contributions": rows}, {
        "housing_fund_payers": (15, 2, NA),
        "housing_fund_payers_trend_12m": (0.5, NA, NA),
        "housing_fund_arrears_months_12m": (1, 0, NA),
        "housing_fund_per_payer": (800, 500, NA),
    })  # fmt: skip


def test_ip() -> None:
    pat = [
        {"code": "E1", "patent_type": "invention", "applied_on": "2020-01-05", "status": "granted", "granted_on": "2022-03-01", "lapsed_on": ""},
        {"code": "E1", "patent_type": "utility_model", "applied_on": "2024-05-05", "status": "granted", "granted_on": "2025-03-01", "lapsed_on": ""},
        {"code": "E1", "patent_type": "design", "applied_on": "2019-05-05", "status": "lapsed", "granted_on": "2019-12-01", "lapsed_on": "2024-08-02"},
        {"code": "E1", "patent_type": "invention", "applied_on": "2025-09-09", "status": "pending", "granted_on": "", "lapsed_on": ""},
        {"code": "E2", "patent_type": "design", "applied_on": "2021-01-05", "status": "rejected", "granted_on": "", "lapsed_on": ""},
    ]  # fmt: skip
    tm = [{"code": "E1", "applied_on": "2018-01-01", "status": "registered"},
          {"code": "E1", "applied_on": "2025-10-01", "status": "pending"},
          {"code": "E2", "applied_on": "2019-01-01", "status": "refused"}]  # fmt: skip
    check("ip", {"patents": pat, "trademarks": tm}, {
        "patents_in_force": (2, 0, 0),
        "invention_patents_in_force": (1, 0, 0),
        "patent_applications_24m": (2, 0, 0),
        "trademarks_registered": (1, 0, 0),
        "patents_lapsed_24m": (1, 0, 0),
    })  # fmt: skip


def test_courts() -> None:
    cases = [
        {"code": "E1", "role": "defendant", "case_type": "commercial", "filed_on": "2025-02-01", "amount": 123456, "status": "open", "closed_on": ""},
        {"code": "E1", "role": "defendant", "case_type": "labor", "filed_on": "2024-05-01", "amount": 20000, "status": "closed", "closed_on": "2024-11-03"},
        {"code": "E1", "role": "defendant", "case_type": "civil", "filed_on": "2022-01-01", "amount": 70000, "status": "open", "closed_on": ""},
        {"code": "E1", "role": "plaintiff", "case_type": "commercial", "filed_on": "2025-06-01", "amount": 5000, "status": "open", "closed_on": ""},
        {"code": "E2", "role": "plaintiff", "case_type": "labor", "filed_on": "2023-06-01", "amount": 5000, "status": "closed", "closed_on": "2023-09-01"},
    ]  # fmt: skip
    enf = [{"code": "E1", "filed_on": "2024-12-01", "amount": 20000, "status": "pending"},
           {"code": "E1", "filed_on": "2023-11-30", "amount": 1, "status": "concluded"}]  # fmt: skip
    dl = [{"code": "E1", "listed_on": "2025-01-10", "removed_on": ""},
          {"code": "E2", "listed_on": "2024-01-10", "removed_on": "2024-09-01"}]  # fmt: skip
    check("courts", {"cases": cases, "enforcements": enf, "dishonest_list": dl}, {
        "open_cases_as_defendant": (2, 0, 0),
        "amount_at_stake_as_defendant": (190000, 0, 0),  # 193,456 at two significant digits
        "cases_as_defendant_24m": (2, 0, 0),
        "cases_as_plaintiff_24m": (1, 0, 0),
        "labor_disputes_24m": (1, 0, 0),
        "enforcements_24m": (1, 0, 0),
        "on_dishonest_debtor_list": (1, 0, 0),
    })  # fmt: skip


def test_public_credit() -> None:
    pen = [{"code": "E1", "decided_on": "2025-01-01", "authority": "tax", "amount": 5000, "severity": "general"},
           {"code": "E1", "decided_on": "2024-03-01", "authority": "environment", "amount": 40000, "severity": "severe"},
           {"code": "E1", "decided_on": "2023-03-01", "authority": "tax", "amount": 900, "severity": "severe"}]  # fmt: skip
    lists = [{"code": "E1", "list_type": "black", "listed_on": "2025-03-03", "removed_on": ""},
             {"code": "E2", "list_type": "red", "listed_on": "2024-03-03", "removed_on": ""},
             {"code": "E2", "list_type": "black", "listed_on": "2023-03-03", "removed_on": "2023-12-01"}]  # fmt: skip
    ev = [{"code": "E1", "year": 2025, "grade": "C"}, {"code": "E2", "year": 2024, "grade": "A"}]
    sc = [{"code": "E1", "period": "2025-09", "score": 612}, {"code": "E1", "period": "2025-12", "score": 587},
          {"code": "E2", "period": "2024-09", "score": 700}]  # fmt: skip
    check("public_credit", {"penalties": pen, "lists": lists, "evaluations": ev, "scores": sc}, {
        "penalties_24m": (2, 0, 0),
        "penalty_amount_24m": (45000, 0, 0),
        "severe_penalties_24m": (1, 0, 0),
        "on_black_list": (1, 0, 0),
        "on_red_list": (0, 1, 0),
        "public_credit_grade": (2, 4, NA),
        "public_credit_score": (590, NA, NA),  # E2's last score is older than 12 months
    })  # fmt: skip


def test_utilities() -> None:
    el = [{"code": "E1", "period": p, "kwh": 1000 if p < "2025-01" else (0 if p in ("2025-02", "2025-03") else 1500)}
          for p in months("2024-01", "2025-12")]  # fmt: skip
    wa = [
        {"code": "E1", "period": p, "m3": 30 if p < "2025-01" else 33}
        for p in months("2024-01", "2025-12")
    ]
    el += [{"code": "E2", "period": "2025-12", "kwh": 77}]
    e1 = np.array([1500.0] * 10 + [0, 0])
    check("utilities", {"electricity": el, "water": wa}, {
        "electricity_kwh_12m": (15000, 77, NA),
        "electricity_trend_yoy": (0.25, NA, NA),
        "zero_electricity_months_12m": (2, 0, NA),
        "electricity_volatility_12m": (e1.std() / e1.mean(), NA, NA),  # E2: < 3 months
        "water_m3_12m": (400, NA, NA),  # 396
        "water_trend_yoy": (0.1, NA, NA),
    })  # fmt: skip


def test_customs() -> None:
    rows = [{"code": "E1", "period": p, "direction": "export", "value_usd": 1000 if p < "2025-01" else 1200, "declarations": 2}
            for p in months("2024-01", "2025-12") if p not in ("2025-04",)]  # fmt: skip
    rows += [{"code": "E1", "period": "2025-04", "direction": "import", "value_usd": 777, "declarations": 1},
             {"code": "E1", "period": "2025-05", "direction": "import", "value_usd": 300, "declarations": 1},
             {"code": "E2", "period": "2023-01", "direction": "export", "value_usd": 300, "declarations": 1}]  # fmt: skip
    check("customs", {"declarations": rows}, {
        "export_value_12m": (13000, 0, 0),  # 13,200
        "import_value_12m": (1100, 0, 0),  # 1,077
        "export_trend_yoy": (13200 / 12000 - 1, NA, NA),
        "trade_active_months_12m": (12, 0, 0),
        "declarations_12m": (24, 0, 0),
    })  # fmt: skip


def test_natural_resources() -> None:
    props = [{"code": "E1", "property_type": "land", "area_m2": 500, "appraised_value": 3_000_000, "acquired_on": "2019-01-01"},
             {"code": "E1", "property_type": "building", "area_m2": 200, "appraised_value": 1_000_000, "acquired_on": "2024-01-01"}]  # fmt: skip
    morts = [{"code": "E1", "mortgagee": "bank-x", "amount": 1_000_000, "registered_on": "2025-05-01", "released_on": ""},
             {"code": "E1", "mortgagee": "bank-y", "amount": 500_000, "registered_on": "2022-05-01", "released_on": "2024-05-01"},
             {"code": "E2", "mortgagee": "bank-y", "amount": 9, "registered_on": "2021-05-01", "released_on": ""}]  # fmt: skip
    check("natural_resources", {"properties": props, "mortgages": morts}, {
        "properties_held": (2, 0, 0),
        "property_value": (4_000_000, 0, 0),
        "mortgaged_share": (0.25, NA, NA),
        "new_mortgages_12m": (1, 0, 0),
    })  # fmt: skip


def test_shareholders() -> None:
    rows = [{"code": "E1", "holder_type": "person", "share_pct": 60, "credit_score": 700},
            {"code": "E1", "holder_type": "company", "share_pct": 40, "credit_score": 512},
            {"code": "E2", "holder_type": "person", "share_pct": 100, "credit_score": 655}]  # fmt: skip
    check("shareholders", {"shareholders": rows}, {
        "shareholder_count": (2, 1, NA),
        "min_shareholder_score": (510, 660, NA),
        "weighted_shareholder_score": (620, 660, NA),  # 624.8
        "major_shareholder_score": (700, 660, NA),
    })  # fmt: skip


def test_batch_equals_one_by_one(
    small_world_for_catalog: tuple[list[str], dict[str, Batch]],
) -> None:
    """Vectorised over a whole population = computed for each enterprise alone."""
    codes, batches = small_world_for_catalog
    for d in DEPARTMENTS:
        full = catalog.compute(batches[d.id])
        for i in (0, 7, 42, 99):
            tables = {}
            for name, cols in batches[d.id].tables.items():
                mine = cols["_ent"] == i
                tables[name] = {c: v[mine] for c, v in cols.items() if c != "_ent"}
            one = catalog.compute(batch_from_columns(d.id, [codes[i]], AS_OF, tables))
            np.testing.assert_array_equal(one.values[0], full.values[i])
            np.testing.assert_array_equal(one.reasons[0], full.reasons[i])


@pytest.fixture(scope="module")
def small_world_for_catalog(small_world: object) -> tuple[list[str], dict[str, Batch]]:
    from pathlib import Path

    from tests.node.conftest import world_codes

    w = Path(str(small_world))
    codes = world_codes(w)[:100]
    return codes, {d.id: pooled.read_department(w, d.id, codes, AS_OF) for d in DEPARTMENTS}
