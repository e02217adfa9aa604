"""The feature catalog: 66 derived features across the 12 categories, as data + pure functions.

Each :class:`Feature` names its department and category, says what it means, its unit,
type and sensitivity class, which raw tables it reads and, in words, how it is computed;
``fn`` computes it for a whole :class:`node.records.Batch` at once (numpy, vectorised),
returning NaN where the value cannot be computed.

Missing values are explicit, with a reason (:class:`Missing`):

- ``NO_RECORDS``: the department holds no record at all about the enterprise. For
  event-style features (court cases, penalties, patents, trade, property) the absence of
  records *is* the answer (zero), declared per feature with ``absent="zero"``.
- ``NOT_COVERED``: the department knows the enterprise, but not for the period or
  the quantity this feature needs (e.g. a year-on-year trend of a firm with less than
  two years of filings, a ratio whose denominator is zero).

Disclosure control: levels (units yuan, kWh, m³, USD, persons, score) are released
rounded to ``RELEASE_DIGITS`` significant digits, so a value computed from a single
record (the amount at stake in the one open case, the latest month's headcount, the
lowest shareholder score) never reveals that record's exact value. Counts, flags,
grades, months and ratios are exact.

Time windows are in months ending at the node's as-of month inclusive: "12m" means the
as-of month and the 11 before it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedcredit.common.departments import BY_ID, DEPARTMENTS
from fedcredit.node.records import Batch, FloatArray

FeatureType = Literal["int", "float", "bool", "ordinal"]
Sensitivity = Literal["public", "restricted", "confidential"]


RELEASE_DIGITS = 2
ROUNDED_UNITS = frozenset({"yuan", "kWh", "m³", "USD", "persons", "score"})


# Public domain of each unit (lo, hi, grid scale): what anyone knows about a feature
# before seeing a value, so private training can bin on it without any enterprise's
# value (issue 15). Amounts are wide and heavy-tailed (asinh grid: linear near 0,
# logarithmic beyond); scores, grades, shares and month counts are bounded (linear).
# Values outside are clipped into the end bins.
UNIT_DOMAINS: dict[str, tuple[float, float, str]] = {
    "yuan": (0.0, 1e10, "asinh"),
    "USD": (0.0, 1e9, "asinh"),
    "kWh": (0.0, 1e9, "asinh"),
    "m³": (0.0, 1e8, "asinh"),
    "persons": (0.0, 1e5, "asinh"),
    "count": (0.0, 1e3, "asinh"),
    "years": (0.0, 60.0, "linear"),
    "ratio": (-1.0, 10.0, "asinh"),
    "flag": (0.0, 1.0, "linear"),
    "score": (0.0, 1000.0, "linear"),
}
# Features whose own definition narrows their unit's domain.
FEATURE_DOMAINS: dict[str, tuple[float, float, str]] = {
    "tax_credit_grade": (1.0, 5.0, "linear"),  # D=1 ... A=5
    "public_credit_grade": (1.0, 4.0, "linear"),  # D=1 ... A=4
    # Shareholders' personal credit scores are on the 300-950 scale.
    "min_shareholder_score": (300.0, 950.0, "linear"),
    "weighted_shareholder_score": (300.0, 950.0, "linear"),
    "major_shareholder_score": (300.0, 950.0, "linear"),
    "medical_payment_continuity_24m": (0.0, 1.0, "linear"),
    "mortgaged_share": (0.0, 1.0, "linear"),
    "tax_burden_12m": (0.0, 1.0, "linear"),
}


def round_significant(values: FloatArray, digits: int) -> FloatArray:
    """Round to ``digits`` significant digits (NaN and 0 unchanged)."""
    v = np.asarray(values, dtype=np.float64)
    out = v.copy()
    ok = np.isfinite(v) & (v != 0)
    if ok.any():
        exp = np.floor(np.log10(np.abs(v[ok]))) - (digits - 1)
        scale = 10.0**exp
        out[ok] = np.round(v[ok] / scale) * scale
    return out


class Missing(enum.IntEnum):
    """Why a value is missing (0 = present)."""

    PRESENT = 0
    NO_RECORDS = 1
    NOT_COVERED = 2


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    department: str
    description: str
    unit: str
    type: FeatureType
    sensitivity: Sensitivity
    tables: tuple[str, ...]
    computation: str
    fn: Callable[[Batch], FloatArray]
    absent: Literal["zero", "missing"] = "missing"

    @property
    def category(self) -> str:
        return BY_ID[self.department].category

    @property
    def public_range(self) -> tuple[float, float, str]:
        """(lo, hi, grid scale): the public domain of the feature (UNIT_DOMAINS,
        FEATURE_DOMAINS); a count of months over a window is at most its length."""
        if self.name in FEATURE_DOMAINS:
            return FEATURE_DOMAINS[self.name]
        if self.unit == "months":
            window = 24.0 if self.name.endswith("_24m") else 12.0
            return 0.0, window, "linear"
        return UNIT_DOMAINS[self.unit]

    @property
    def significant_digits(self) -> int | None:
        """Amounts and volumes are released rounded (disclosure control, see module doc)."""
        return RELEASE_DIGITS if self.unit in ROUNDED_UNITS else None


_REGISTRY: list[Feature] = []


def _feature(
    name: str,
    department: str,
    description: str,
    unit: str,
    type: FeatureType,
    sensitivity: Sensitivity,
    tables: str,
    computation: str,
    absent: Literal["zero", "missing"] = "missing",
) -> Callable[[Callable[[Batch], FloatArray]], Callable[[Batch], FloatArray]]:
    def deco(fn: Callable[[Batch], FloatArray]) -> Callable[[Batch], FloatArray]:
        _REGISTRY.append(
            Feature(
                name,
                department,
                description,
                unit,
                type,
                sensitivity,
                tuple(tables.split()),
                computation,
                fn,
                absent,
            )
        )
        return fn

    return deco


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    out = np.full(num.shape, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _nan_if_none(values: FloatArray, count: FloatArray) -> FloatArray:
    return np.where(count > 0, values, np.nan)


def _trend(b: Batch, table: str, col: str) -> FloatArray:
    """Sum over the last 12 months / sum over the 12 before - 1 (NaN if < 6 earlier months)."""
    t = b.t(table)
    now, before = b.window(table, "period", 12), b.window(table, "period", 12, end_offset=12)
    prev = b.sum(table, t[col], before)
    ok = b.count(table, before) >= 6
    return np.where(ok, _ratio(b.sum(table, t[col], now), prev) - 1, np.nan)


def _level_trend(b: Batch, table: str, col: str) -> FloatArray:
    """Mean of the last 3 months / mean of months 12-14 before - 1."""
    t = b.t(table)
    now, then = b.window(table, "period", 3), b.window(table, "period", 3, end_offset=12)
    a = _ratio(b.sum(table, t[col], now), b.count(table, now))
    c = _ratio(b.sum(table, t[col], then), b.count(table, then))
    return _ratio(a, c) - 1


def _latest(b: Batch, table: str, col: str, months: int = 12) -> FloatArray:
    t = b.t(table)
    return b.at_max(table, t["period"], t[col], b.window(table, "period", months))


def _cv(b: Batch, table: str, col: str) -> FloatArray:
    t = b.t(table)
    w = b.window(table, "period", 12)
    n = b.count(table, w)
    s = b.sum(table, t[col], w)
    s2 = b.sum(table, t[col].astype(np.float64) ** 2, w)
    mean = _ratio(s, n)
    var = np.maximum(_ratio(s2, n) - mean**2, 0)
    return np.where(n >= 3, _ratio(np.sqrt(var), mean), np.nan)


def _grade(b: Batch, table: str, scale: dict[str, int]) -> FloatArray:
    t = b.t(table)
    g = (
        np.vectorize(lambda s: scale.get(s, np.nan), otypes=[np.float64])(t["grade"])
        if len(t["grade"])
        else np.zeros(0)
    )
    recent = t["year"] >= b.as_of // 12 - 1
    return b.at_max(table, t["year"], g, recent)


def _active_at(
    b: Batch, start: npt.NDArray[np.float64], end: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """Started on or before the as-of month and not ended by then."""
    return (np.floor(start) <= b.as_of) & ~(np.floor(end) <= b.as_of)


# -- composition (market regulation) -------------------------------------------------------

MR = "market_regulation"


@_feature("age_years", MR, "Years since registration", "years", "float", "public",
          "registrations", "(as-of month end - registered_on) in years")  # fmt: skip
def _age(b: Batch) -> FloatArray:
    t = b.t("registrations")
    return b.at_max("registrations", t["registered_on"], (b.as_of + 1 - t["registered_on"]) / 12.0)


@_feature("registered_capital", MR, "Registered capital", "yuan", "float", "public",
          "registrations", "registered_capital of the registration record")  # fmt: skip
def _capital(b: Batch) -> FloatArray:
    t = b.t("registrations")
    return b.at_max("registrations", t["registered_on"], t["registered_capital"])


@_feature("registry_changes_12m", MR, "Registered changes of any kind in the last 12 months",
          "count", "int", "public", "registrations changes", "count of changes, changed_on in 12m")  # fmt: skip
def _changes12(b: Batch) -> FloatArray:
    return b.count("changes", b.window("changes", "changed_on", 12))


def _change_count(b: Batch, kind: str, months: int) -> FloatArray:
    t = b.t("changes")
    return b.count(
        "changes", b.window("changes", "changed_on", months) & (t["change_type"] == kind)
    )


@_feature("legal_rep_changes_24m", MR, "Changes of legal representative in the last 24 months",
          "count", "int", "public", "registrations changes", "changes of type legal_representative in 24m")  # fmt: skip
def _legal_rep(b: Batch) -> FloatArray:
    return _change_count(b, "legal_representative", 24)


@_feature("shareholder_changes_24m", MR, "Shareholder changes in the last 24 months", "count",
          "int", "public", "registrations changes", "changes of type shareholder in 24m")  # fmt: skip
def _sh_changes(b: Batch) -> FloatArray:
    return _change_count(b, "shareholder", 24)


@_feature("capital_decrease_24m", MR, "Registered capital was reduced in the last 24 months",
          "flag", "bool", "public", "registrations changes", "any change of type capital_decrease in 24m")  # fmt: skip
def _cap_dec(b: Batch) -> FloatArray:
    return (_change_count(b, "capital_decrease", 24) > 0).astype(np.float64)


# -- operations: tax ---------------------------------------------------------------------


@_feature("revenue_12m", "tax", "Declared sales revenue over the last 12 months", "yuan",
          "float", "confidential", "filings", "sum of sales_revenue, period in 12m")  # fmt: skip
def _rev12(b: Batch) -> FloatArray:
    w = b.window("filings", "period", 12)
    return _nan_if_none(b.sum("filings", b.t("filings")["sales_revenue"], w), b.count("filings", w))


@_feature("revenue_growth_yoy", "tax", "Revenue growth: last 12 months over the 12 before",
          "ratio", "float", "confidential", "filings",
          "sum(revenue, 12m) / sum(revenue, months 13-24) - 1; needs >= 6 earlier filings")  # fmt: skip
def _rev_growth(b: Batch) -> FloatArray:
    return _trend(b, "filings", "sales_revenue")


@_feature("tax_paid_12m", "tax", "VAT and income tax paid over the last 12 months", "yuan",
          "float", "confidential", "filings", "sum of vat_paid + income_tax_paid, period in 12m")  # fmt: skip
def _tax12(b: Batch) -> FloatArray:
    t = b.t("filings")
    w = b.window("filings", "period", 12)
    return _nan_if_none(
        b.sum("filings", t["vat_paid"] + t["income_tax_paid"], w), b.count("filings", w)
    )


@_feature("tax_burden_12m", "tax", "Taxes paid as a share of revenue, last 12 months", "ratio",
          "float", "confidential", "filings", "tax_paid_12m / revenue_12m")  # fmt: skip
def _burden(b: Batch) -> FloatArray:
    t = b.t("filings")
    w = b.window("filings", "period", 12)
    return _ratio(
        b.sum("filings", t["vat_paid"] + t["income_tax_paid"], w),
        b.sum("filings", t["sales_revenue"], w),
    )


@_feature("late_filings_12m", "tax", "Filings made after the 15th of the following month, last 12 months",
          "count", "int", "restricted", "filings", "count of filed_on > (period + 1 month, day 15), period in 12m")  # fmt: skip
def _late(b: Batch) -> FloatArray:
    t = b.t("filings")
    late = t["filed_on"] > t["period"] + 1 + 14 / 31.0 + 1e-9
    return b.count("filings", b.window("filings", "period", 12) & late)


@_feature("missing_or_zero_filings_12m", "tax", "Months of the last 12 with no filing or zero revenue",
          "months", "int", "restricted", "filings",
          "12 (or months since first filing) - filings with revenue > 0, period in 12m")  # fmt: skip
def _zero(b: Batch) -> FloatArray:
    t = b.t("filings")
    w = b.window("filings", "period", 12)
    first = b.reduce("filings", t["period"], "min")
    expected = np.clip(b.as_of - first + 1, 0, 12)
    good = b.count("filings", w & (t["sales_revenue"] > 0))
    return np.maximum(expected - good, 0)


@_feature("tax_credit_grade", "tax", "Latest tax credit grade (A=5, B=4, M=3, C=2, D=1)",
          "grade", "ordinal", "restricted", "credit_grades", "grade of the latest year (as-of year or the one before)")  # fmt: skip
def _tax_grade(b: Batch) -> FloatArray:
    return _grade(b, "credit_grades", {"A": 5, "B": 4, "M": 3, "C": 2, "D": 1})


@_feature("revenue_volatility_12m", "tax", "Coefficient of variation of monthly revenue, last 12 months",
          "ratio", "float", "confidential", "filings", "std / mean of monthly sales_revenue in 12m; needs >= 3 filings")  # fmt: skip
def _rev_cv(b: Batch) -> FloatArray:
    return _cv(b, "filings", "sales_revenue")


# -- social security -------------------------------------------------------------------------

SS = "social_security"


@_feature("headcount", SS, "Insured employees in the latest month reported", "persons", "int",
          "restricted", "contributions", "headcount of the latest period in 12m")  # fmt: skip
def _headcount(b: Batch) -> FloatArray:
    return _latest(b, "contributions", "headcount")


@_feature("headcount_trend_12m", SS, "Headcount change over 12 months", "ratio", "float",
          "restricted", "contributions", "mean headcount of the last 3 months / of months 13-15 before - 1")  # fmt: skip
def _hc_trend(b: Batch) -> FloatArray:
    return _level_trend(b, "contributions", "headcount")


@_feature("ss_arrears_months_12m", SS, "Months in arrears (paid < due), last 12 months", "months",
          "int", "restricted", "contributions", "count of amount_paid < amount_due, period in 12m")  # fmt: skip
def _ss_arrears(b: Batch) -> FloatArray:
    t = b.t("contributions")
    return b.count(
        "contributions",
        b.window("contributions", "period", 12) & (t["amount_paid"] < t["amount_due"]),
    )


@_feature("ss_arrears_amount_12m", SS, "Unpaid social insurance contributions, last 12 months",
          "yuan", "float", "confidential", "contributions", "sum of amount_due - amount_paid, period in 12m")  # fmt: skip
def _ss_arrears_amt(b: Batch) -> FloatArray:
    t = b.t("contributions")
    return b.sum(
        "contributions",
        np.maximum(t["amount_due"] - t["amount_paid"], 0),
        b.window("contributions", "period", 12),
    )


@_feature("ss_contribution_months_24m", SS, "Months with a contribution record, last 24 months",
          "months", "int", "restricted", "contributions", "count of periods in 24m")  # fmt: skip
def _ss_months(b: Batch) -> FloatArray:
    return b.count("contributions", b.window("contributions", "period", 24))


@_feature("ss_contribution_per_head", SS, "Average monthly contribution due per insured employee",
          "yuan", "float", "confidential", "contributions", "sum(amount_due) / sum(headcount), period in 12m")  # fmt: skip
def _ss_per_head(b: Batch) -> FloatArray:
    t = b.t("contributions")
    w = b.window("contributions", "period", 12)
    return _ratio(
        b.sum("contributions", t["amount_due"], w), b.sum("contributions", t["headcount"], w)
    )


# -- medical insurance -----------------------------------------------------------------------

MI = "medical_insurance"


@_feature("medical_insured", MI, "Employees with medical insurance, latest month", "persons",
          "int", "restricted", "payments", "insured of the latest period in 12m")  # fmt: skip
def _mi_insured(b: Batch) -> FloatArray:
    return _latest(b, "payments", "insured")


@_feature("medical_payment_continuity_24m", MI, "Share of months paid since first payment, last 24 months",
          "ratio", "float", "restricted", "payments",
          "payments in 24m / months from max(first payment, 24m start) to as-of")  # fmt: skip
def _mi_cont(b: Batch) -> FloatArray:
    t = b.t("payments")
    w = b.window("payments", "period", 24)
    first = b.reduce("payments", t["period"], "min", w)
    span = np.clip(b.as_of - first + 1, 1, 24)
    return _nan_if_none(b.count("payments", w) / span, b.count("payments", w))


@_feature("medical_late_payments_12m", MI, "Late medical insurance payments, last 12 months",
          "count", "int", "restricted", "payments", "count of days_late > 0, period in 12m")  # fmt: skip
def _mi_late(b: Batch) -> FloatArray:
    t = b.t("payments")
    return b.count("payments", b.window("payments", "period", 12) & (t["days_late"] > 0))


@_feature("medical_longest_gap_24m", MI, "Longest run of unpaid months, last 24 months", "months",
          "int", "restricted", "payments",
          "max gap between consecutive payment periods (and to the as-of month) in 24m")  # fmt: skip
def _mi_gap(b: Batch) -> FloatArray:
    t = b.t("payments")
    w = b.window("payments", "period", 24)
    ent, per = t["_ent"][w], t["period"][w]
    out = np.full(b.n, np.nan)
    if len(ent):
        order = np.lexsort((per, ent))
        ent, per = ent[order], per[order]
        same = ent[1:] == ent[:-1]
        gaps = np.where(same, per[1:] - per[:-1] - 1, 0)
        gmax = np.zeros(b.n)
        np.maximum.at(gmax, ent[1:], gaps)
        last = b.reduce("payments", t["period"], "max", w)
        has = ~np.isnan(last)
        out[has] = np.maximum(gmax[has], b.as_of - last[has])
    return out


# -- staff benefits (housing provident fund) ---------------------------------------------------

HF = "housing_fund"


@_feature("housing_fund_payers", HF, "Employees with housing fund contributions, latest month",
          "persons", "int", "restricted", "contributions", "payers of the latest period in 12m")  # fmt: skip
def _hf_payers(b: Batch) -> FloatArray:
    return _latest(b, "contributions", "payers")


@_feature("housing_fund_payers_trend_12m", HF, "Change in housing fund payers over 12 months",
          "ratio", "float", "restricted", "contributions", "mean payers of the last 3 months / of months 13-15 before - 1")  # fmt: skip
def _hf_trend(b: Batch) -> FloatArray:
    return _level_trend(b, "contributions", "payers")


@_feature("housing_fund_arrears_months_12m", HF, "Months with housing fund arrears, last 12 months",
          "months", "int", "restricted", "contributions", "count of amount_paid < amount_due, period in 12m")  # fmt: skip
def _hf_arrears(b: Batch) -> FloatArray:
    t = b.t("contributions")
    return b.count(
        "contributions",
        b.window("contributions", "period", 12) & (t["amount_paid"] < t["amount_due"]),
    )


@_feature("housing_fund_per_payer", HF, "Average monthly housing fund contribution per payer",
          "yuan", "float", "confidential", "contributions", "sum(amount_due) / sum(payers), period in 12m")  # fmt: skip
def _hf_per(b: Batch) -> FloatArray:
    t = b.t("contributions")
    w = b.window("contributions", "period", 12)
    return _ratio(
        b.sum("contributions", t["amount_due"], w), b.sum("contributions", t["payers"], w)
    )


# -- intellectual property -------------------------------------------------------------------


def _in_force(b: Batch) -> npt.NDArray[np.bool_]:
    t = b.t("patents")
    return _active_at(b, t["granted_on"], t["lapsed_on"]) & ~np.isnan(t["granted_on"])


@_feature("patents_in_force", "ip", "Granted patents in force", "count", "int", "public",
          "patents", "granted_on <= as-of and not lapsed", absent="zero")  # fmt: skip
def _pat_force(b: Batch) -> FloatArray:
    return b.count("patents", _in_force(b))


@_feature("invention_patents_in_force", "ip", "Granted invention patents in force", "count", "int",
          "public", "patents", "patents_in_force of patent_type invention", absent="zero")  # fmt: skip
def _inv_force(b: Batch) -> FloatArray:
    return b.count("patents", _in_force(b) & (b.t("patents")["patent_type"] == "invention"))


@_feature("patent_applications_24m", "ip", "Patent applications filed in the last 24 months",
          "count", "int", "public", "patents", "count of applied_on in 24m", absent="zero")  # fmt: skip
def _pat_apps(b: Batch) -> FloatArray:
    return b.count("patents", b.window("patents", "applied_on", 24))


@_feature("trademarks_registered", "ip", "Registered trademarks", "count", "int", "public",
          "trademarks", "count of status registered, applied_on <= as-of", absent="zero")  # fmt: skip
def _tm(b: Batch) -> FloatArray:
    t = b.t("trademarks")
    return b.count(
        "trademarks", (t["status"] == "registered") & (np.floor(t["applied_on"]) <= b.as_of)
    )


@_feature("patents_lapsed_24m", "ip", "Patents lapsed (e.g. unpaid fees) in the last 24 months",
          "count", "int", "public", "patents", "count of lapsed_on in 24m", absent="zero")  # fmt: skip
def _pat_lapsed(b: Batch) -> FloatArray:
    return b.count("patents", b.window("patents", "lapsed_on", 24))


# -- judicial (courts) -------------------------------------------------------------------------


def _open_def(b: Batch) -> npt.NDArray[np.bool_]:
    t = b.t("cases")
    return (t["role"] == "defendant") & _active_at(b, t["filed_on"], t["closed_on"])


@_feature("open_cases_as_defendant", "courts", "Open court cases with the enterprise as defendant",
          "count", "int", "restricted", "cases", "filed_on <= as-of, not closed by as-of, role defendant", absent="zero")  # fmt: skip
def _open_cases(b: Batch) -> FloatArray:
    return b.count("cases", _open_def(b))


@_feature("amount_at_stake_as_defendant", "courts", "Amount claimed in open cases as defendant",
          "yuan", "float", "restricted", "cases", "sum of amount over open cases as defendant", absent="zero")  # fmt: skip
def _stake(b: Batch) -> FloatArray:
    return b.sum("cases", b.t("cases")["amount"], _open_def(b))


@_feature("cases_as_defendant_24m", "courts", "Cases filed against the enterprise, last 24 months",
          "count", "int", "restricted", "cases", "role defendant, filed_on in 24m", absent="zero")  # fmt: skip
def _def24(b: Batch) -> FloatArray:
    return b.count(
        "cases", b.window("cases", "filed_on", 24) & (b.t("cases")["role"] == "defendant")
    )


@_feature("cases_as_plaintiff_24m", "courts", "Cases filed by the enterprise, last 24 months",
          "count", "int", "restricted", "cases", "role plaintiff, filed_on in 24m", absent="zero")  # fmt: skip
def _pl24(b: Batch) -> FloatArray:
    return b.count(
        "cases", b.window("cases", "filed_on", 24) & (b.t("cases")["role"] == "plaintiff")
    )


@_feature("labor_disputes_24m", "courts", "Labour dispute cases, last 24 months", "count", "int",
          "restricted", "cases", "case_type labor, filed_on in 24m", absent="zero")  # fmt: skip
def _labor(b: Batch) -> FloatArray:
    return b.count(
        "cases", b.window("cases", "filed_on", 24) & (b.t("cases")["case_type"] == "labor")
    )


@_feature("enforcements_24m", "courts", "Enforcement proceedings against the enterprise, last 24 months",
          "count", "int", "restricted", "enforcements", "filed_on in 24m", absent="zero")  # fmt: skip
def _enf(b: Batch) -> FloatArray:
    return b.count("enforcements", b.window("enforcements", "filed_on", 24))


@_feature("on_dishonest_debtor_list", "courts", "Currently on the list of dishonest judgment debtors",
          "flag", "bool", "public", "dishonest_list", "listed_on <= as-of and not removed by as-of", absent="zero")  # fmt: skip
def _dishonest(b: Batch) -> FloatArray:
    t = b.t("dishonest_list")
    return (b.count("dishonest_list", _active_at(b, t["listed_on"], t["removed_on"])) > 0).astype(
        np.float64
    )


# -- public credit ---------------------------------------------------------------------------

PC = "public_credit"


@_feature("penalties_24m", PC, "Administrative penalties, last 24 months", "count", "int",
          "public", "penalties", "decided_on in 24m", absent="zero")  # fmt: skip
def _pen(b: Batch) -> FloatArray:
    return b.count("penalties", b.window("penalties", "decided_on", 24))


@_feature("penalty_amount_24m", PC, "Fines from administrative penalties, last 24 months", "yuan",
          "float", "public", "penalties", "sum of amount, decided_on in 24m", absent="zero")  # fmt: skip
def _pen_amt(b: Batch) -> FloatArray:
    return b.sum("penalties", b.t("penalties")["amount"], b.window("penalties", "decided_on", 24))


@_feature("severe_penalties_24m", PC, "Severe administrative penalties, last 24 months", "count",
          "int", "public", "penalties", "severity severe, decided_on in 24m", absent="zero")  # fmt: skip
def _pen_sev(b: Batch) -> FloatArray:
    t = b.t("penalties")
    return b.count(
        "penalties", b.window("penalties", "decided_on", 24) & (t["severity"] == "severe")
    )


def _on_list(b: Batch, kind: str) -> FloatArray:
    t = b.t("lists")
    active = _active_at(b, t["listed_on"], t["removed_on"]) & (t["list_type"] == kind)
    return (b.count("lists", active) > 0).astype(np.float64)


@_feature("on_black_list", PC, "Currently on a black list (untrustworthy entities)", "flag",
          "bool", "public", "lists", "a black list entry listed by as-of, not removed", absent="zero")  # fmt: skip
def _black(b: Batch) -> FloatArray:
    return _on_list(b, "black")


@_feature("on_red_list", PC, "Currently on a red list (commended entities)", "flag", "bool",
          "public", "lists", "a red list entry listed by as-of, not removed", absent="zero")  # fmt: skip
def _red(b: Batch) -> FloatArray:
    return _on_list(b, "red")


@_feature("public_credit_grade", PC, "Latest public credit evaluation grade (A=4 ... D=1)",
          "grade", "ordinal", "restricted", "evaluations", "grade of the latest year (as-of year or the one before)")  # fmt: skip
def _pc_grade(b: Batch) -> FloatArray:
    return _grade(b, "evaluations", {"A": 4, "B": 3, "C": 2, "D": 1})


@_feature("public_credit_score", PC, "Latest local public credit score (0-1000)", "score", "int",
          "restricted", "scores", "score of the latest period in 12m")  # fmt: skip
def _pc_score(b: Batch) -> FloatArray:
    return _latest(b, "scores", "score")


# -- operations: utilities -------------------------------------------------------------------

UT = "utilities"


@_feature("electricity_kwh_12m", UT, "Electricity used, last 12 months", "kWh", "float",
          "confidential", "electricity", "sum of kwh, period in 12m")  # fmt: skip
def _el12(b: Batch) -> FloatArray:
    w = b.window("electricity", "period", 12)
    return _nan_if_none(
        b.sum("electricity", b.t("electricity")["kwh"], w), b.count("electricity", w)
    )


@_feature("electricity_trend_yoy", UT, "Electricity use: last 12 months over the 12 before",
          "ratio", "float", "confidential", "electricity", "sum(kwh, 12m) / sum(kwh, months 13-24) - 1")  # fmt: skip
def _el_trend(b: Batch) -> FloatArray:
    return _trend(b, "electricity", "kwh")


@_feature("zero_electricity_months_12m", UT, "Months with zero electricity use, last 12 months",
          "months", "int", "confidential", "electricity", "count of kwh = 0, period in 12m")  # fmt: skip
def _el_zero(b: Batch) -> FloatArray:
    w = b.window("electricity", "period", 12)
    n = b.count("electricity", w & (b.t("electricity")["kwh"] == 0))
    return _nan_if_none(n, b.count("electricity", w))


@_feature("electricity_volatility_12m", UT, "Coefficient of variation of monthly electricity use",
          "ratio", "float", "confidential", "electricity", "std / mean of monthly kwh in 12m")  # fmt: skip
def _el_cv(b: Batch) -> FloatArray:
    return _cv(b, "electricity", "kwh")


@_feature("water_m3_12m", UT, "Water used, last 12 months", "m³", "float", "confidential",
          "water", "sum of m3, period in 12m")  # fmt: skip
def _w12(b: Batch) -> FloatArray:
    w = b.window("water", "period", 12)
    return _nan_if_none(b.sum("water", b.t("water")["m3"], w), b.count("water", w))


@_feature("water_trend_yoy", UT, "Water use: last 12 months over the 12 before", "ratio", "float",
          "confidential", "water", "sum(m3, 12m) / sum(m3, months 13-24) - 1")  # fmt: skip
def _w_trend(b: Batch) -> FloatArray:
    return _trend(b, "water", "m3")


# -- trade (customs) ---------------------------------------------------------------------------


def _dir(b: Batch, direction: str) -> npt.NDArray[np.bool_]:
    return b.window("declarations", "period", 12) & (b.t("declarations")["direction"] == direction)


@_feature("export_value_12m", "customs", "Declared export value, last 12 months", "USD", "float",
          "confidential", "declarations", "sum of value_usd, direction export, period in 12m", absent="zero")  # fmt: skip
def _exp(b: Batch) -> FloatArray:
    return b.sum("declarations", b.t("declarations")["value_usd"], _dir(b, "export"))


@_feature("import_value_12m", "customs", "Declared import value, last 12 months", "USD", "float",
          "confidential", "declarations", "sum of value_usd, direction import, period in 12m", absent="zero")  # fmt: skip
def _imp(b: Batch) -> FloatArray:
    return b.sum("declarations", b.t("declarations")["value_usd"], _dir(b, "import"))


@_feature("export_trend_yoy", "customs", "Exports: last 12 months over the 12 before", "ratio",
          "float", "confidential", "declarations", "sum(export value, 12m) / sum(months 13-24) - 1")  # fmt: skip
def _exp_trend(b: Batch) -> FloatArray:
    t = b.t("declarations")
    ex = t["direction"] == "export"
    now = b.window("declarations", "period", 12) & ex
    before = b.window("declarations", "period", 12, end_offset=12) & ex
    prev = b.sum("declarations", t["value_usd"], before)
    return np.where(
        b.count("declarations", before) >= 3,
        _ratio(b.sum("declarations", t["value_usd"], now), prev) - 1,
        np.nan,
    )


@_feature("trade_active_months_12m", "customs", "Months with any declaration, last 12 months",
          "months", "int", "confidential", "declarations", "distinct periods in 12m", absent="zero")  # fmt: skip
def _trade_months(b: Batch) -> FloatArray:
    t = b.t("declarations")
    w = b.window("declarations", "period", 12)
    key = t["_ent"][w] * 100_000 + t["period"][w] % 100_000
    uniq = np.unique(key)
    return np.bincount((uniq // 100_000).astype(np.int64), minlength=b.n).astype(np.float64)


@_feature("declarations_12m", "customs", "Customs declarations lodged, last 12 months", "count",
          "int", "confidential", "declarations", "sum of declarations, period in 12m", absent="zero")  # fmt: skip
def _decl(b: Batch) -> FloatArray:
    t = b.t("declarations")
    return b.sum("declarations", t["declarations"], b.window("declarations", "period", 12))


# -- assets (natural resources) ----------------------------------------------------------------

NR = "natural_resources"


def _held(b: Batch) -> npt.NDArray[np.bool_]:
    return np.floor(b.t("properties")["acquired_on"]) <= b.as_of


def _active_mortgage_amount(b: Batch) -> FloatArray:
    t = b.t("mortgages")
    return b.sum("mortgages", t["amount"], _active_at(b, t["registered_on"], t["released_on"]))


@_feature("properties_held", NR, "Land and building rights held", "count", "int", "restricted",
          "properties", "count of properties acquired by as-of", absent="zero")  # fmt: skip
def _props(b: Batch) -> FloatArray:
    return b.count("properties", _held(b))


@_feature("property_value", NR, "Appraised value of property held", "yuan", "float",
          "confidential", "properties", "sum of appraised_value of properties held", absent="zero")  # fmt: skip
def _prop_val(b: Batch) -> FloatArray:
    return b.sum("properties", b.t("properties")["appraised_value"], _held(b))


@_feature("mortgaged_share", NR, "Active mortgages as a share of property value", "ratio", "float",
          "confidential", "properties mortgages", "sum(active mortgage amounts) / property_value")  # fmt: skip
def _mort_share(b: Batch) -> FloatArray:
    return _ratio(
        _active_mortgage_amount(b),
        b.sum("properties", b.t("properties")["appraised_value"], _held(b)),
    )


@_feature("new_mortgages_12m", NR, "Mortgages registered in the last 12 months", "count", "int",
          "restricted", "mortgages", "count of registered_on in 12m", absent="zero")  # fmt: skip
def _new_mort(b: Batch) -> FloatArray:
    return b.count("mortgages", b.window("mortgages", "registered_on", 12))


# -- shareholder credit ------------------------------------------------------------------------

SH = "shareholders"


@_feature("shareholder_count", SH, "Main shareholders on record", "count", "int", "public",
          "shareholders", "count of shareholders")  # fmt: skip
def _sh_n(b: Batch) -> FloatArray:
    return _nan_if_none(b.count("shareholders"), b.count("shareholders"))


@_feature("min_shareholder_score", SH, "Lowest credit score among main shareholders", "score",
          "int", "restricted", "shareholders", "min of credit_score")  # fmt: skip
def _sh_min(b: Batch) -> FloatArray:
    return b.reduce("shareholders", b.t("shareholders")["credit_score"], "min")


@_feature("weighted_shareholder_score", SH, "Shareholders' credit score weighted by share",
          "score", "float", "restricted", "shareholders", "sum(score * share_pct) / sum(share_pct)")  # fmt: skip
def _sh_w(b: Batch) -> FloatArray:
    t = b.t("shareholders")
    return _ratio(
        b.sum("shareholders", t["credit_score"] * t["share_pct"]),
        b.sum("shareholders", t["share_pct"]),
    )


@_feature("major_shareholder_score", SH, "Credit score of the largest shareholder", "score", "int",
          "restricted", "shareholders", "credit_score of the holder with the largest share_pct")  # fmt: skip
def _sh_major(b: Batch) -> FloatArray:
    t = b.t("shareholders")
    return b.at_max("shareholders", t["share_pct"], t["credit_score"])


# -- the catalog ---------------------------------------------------------------------------------

_ORDER = {d.id: i for i, d in enumerate(DEPARTMENTS)}
FEATURES: tuple[Feature, ...] = tuple(sorted(_REGISTRY, key=lambda f: _ORDER[f.department]))
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


def for_department(department: str) -> tuple[Feature, ...]:
    return tuple(f for f in FEATURES if f.department == department)


@dataclass(frozen=True, slots=True)
class Computed:
    """Values (NaN when missing) and reasons (:class:`Missing`), shape (n, k)."""

    features: tuple[Feature, ...]
    values: FloatArray
    reasons: npt.NDArray[np.int8]


def compute(batch: Batch, features: Sequence[Feature] | None = None) -> Computed:
    """Compute ``features`` (default: all of the batch's department) for every enterprise."""
    feats = tuple(features) if features is not None else for_department(batch.department)
    present = batch.present()
    values = np.full((batch.n, len(feats)), np.nan)
    reasons = np.zeros((batch.n, len(feats)), dtype=np.int8)
    for j, f in enumerate(feats):
        if f.department != batch.department:
            raise ValueError(f"feature {f.name} belongs to {f.department}, not {batch.department}")
        v = np.asarray(f.fn(batch), dtype=np.float64)
        if f.significant_digits is not None:
            v = round_significant(v, f.significant_digits)
        if f.absent == "missing":
            v = np.where(present, v, np.nan)
        nan = np.isnan(v)
        reasons[:, j] = np.where(
            nan, np.where(present, Missing.NOT_COVERED, Missing.NO_RECORDS), Missing.PRESENT
        )
        values[:, j] = v
    return Computed(feats, values, reasons)
