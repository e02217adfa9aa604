"""The node's record schema: the raw tables each department holds, and the calendar.

A contract owned by the node side: the store mirrors exactly these tables, the feature
catalog reads them, and the synthetic-data generator (``world``) writes them.

Tables (data, no logic): every department writes its records as CSV files under
``departments/<department id>/``. Every table has the enterprise's unified social
credit code in column ``code``. Column kinds:

- ``str``: short categorical text (never free text),
- ``int``: integer (amounts in yuan, counts, kWh ...),
- ``float``: decimal,
- ``month``: ``YYYY-MM``, ``date``: ``YYYY-MM-DD`` (empty = none).

Calendar: months are integers ``year * 12 + (month - 1)`` ("month ordinals")
internally and ``YYYY-MM`` strings in files; dates are ``YYYY-MM-DD`` strings in files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

# -- tables ----------------------------------------------------------------------------

ColumnKind = Literal["str", "int", "float", "month", "date"]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: ColumnKind
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    department: str
    name: str
    description: str
    columns: tuple[Column, ...]
    monthly: bool = False  # one row per enterprise and month (column `period`)

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _t(
    department: str, name: str, description: str, cols: str, *, monthly: bool = False
) -> TableSpec:
    """Compact spec: ``"code:str period:month amount:int closed_on:date?"``."""
    columns: list[Column] = []
    for item in cols.split():
        col, kind = item.split(":")
        nullable = kind.endswith("?")
        columns.append(Column(col, kind.rstrip("?"), nullable))  # type: ignore[arg-type]
    return TableSpec(department, name, description, tuple(columns), monthly)


TABLES: tuple[TableSpec, ...] = (
    _t("market_regulation", "registrations", "business registration (one row per enterprise)",
       "code:str name:str enterprise_type:str industry:str district:str registered_on:date "
       "registered_capital:int status:str"),
    _t("market_regulation", "changes", "registered changes (legal representative, shareholders, capital ...)",
       "code:str changed_on:date change_type:str"),
    _t("tax", "filings", "monthly VAT and income tax filings",
       "code:str period:month sales_revenue:int vat_paid:int income_tax_paid:int filed_on:date",
       monthly=True),
    _t("tax", "credit_grades", "yearly tax credit grade (A, B, M, C, D)",
       "code:str year:int grade:str"),
    _t("social_security", "contributions", "monthly social insurance contributions",
       "code:str period:month headcount:int amount_due:int amount_paid:int", monthly=True),
    _t("medical_insurance", "payments", "monthly medical insurance payments",
       "code:str period:month insured:int amount_paid:int days_late:int", monthly=True),
    _t("housing_fund", "contributions", "monthly housing provident fund contributions",
       "code:str period:month payers:int amount_due:int amount_paid:int", monthly=True),
    _t("ip", "patents", "patent applications and their status",
       "code:str patent_type:str applied_on:date status:str granted_on:date? lapsed_on:date?"),
    _t("ip", "trademarks", "trademark applications and their status",
       "code:str applied_on:date status:str"),
    _t("courts", "cases", "court cases with the enterprise as a party",
       "code:str role:str case_type:str filed_on:date amount:int status:str closed_on:date?"),
    _t("courts", "enforcements", "enforcement proceedings against the enterprise",
       "code:str filed_on:date amount:int status:str"),
    _t("courts", "dishonest_list", "entries on the list of dishonest judgment debtors",
       "code:str listed_on:date removed_on:date?"),
    _t("public_credit", "penalties", "administrative penalties",
       "code:str decided_on:date authority:str amount:int severity:str"),
    _t("public_credit", "lists", "red (commended) and black (untrustworthy) lists",
       "code:str list_type:str listed_on:date removed_on:date?"),
    _t("public_credit", "evaluations", "yearly public credit evaluation grade (A, B, C, D)",
       "code:str year:int grade:str"),
    _t("public_credit", "scores", "quarterly local public credit score (0-1000)",
       "code:str period:month score:int", monthly=True),
    _t("utilities", "electricity", "monthly electricity use", "code:str period:month kwh:int",
       monthly=True),
    _t("utilities", "water", "monthly water use", "code:str period:month m3:int", monthly=True),
    _t("customs", "declarations", "monthly import and export declarations",
       "code:str period:month direction:str value_usd:int declarations:int", monthly=True),
    _t("natural_resources", "properties", "registered land and building rights",
       "code:str property_type:str area_m2:int appraised_value:int acquired_on:date"),
    _t("natural_resources", "mortgages", "registered mortgages on the enterprise's property",
       "code:str mortgagee:str amount:int registered_on:date released_on:date?"),
    _t("shareholders", "shareholders", "main shareholders and their credit scores",
       "code:str holder_type:str share_pct:float credit_score:int"),
)  # fmt: skip

# The public registry extract written to the world's top level (enterprises.csv).
ENTERPRISES = _t("registry", "enterprises", "public registry extract",
                 "code:str name:str industry:str district:str size_class:str "
                 "enterprise_type:str founded_on:date")  # fmt: skip

BY_DEPARTMENT: dict[str, tuple[TableSpec, ...]] = {}
for _spec in TABLES:
    BY_DEPARTMENT[_spec.department] = (*BY_DEPARTMENT.get(_spec.department, ()), _spec)


def table(department: str, name: str) -> TableSpec:
    for spec in BY_DEPARTMENT.get(department, ()):
        if spec.name == name:
            return spec
    raise KeyError(f"{department}.{name}")


# -- calendar --------------------------------------------------------------------------


def month_ordinal(text: str) -> int:
    """``"2025-12"`` -> 24311. Raises ValueError naming the expected format."""
    try:
        year_s, month_s = text.split("-")[:2]
        year, month = int(year_s), int(month_s)
    except ValueError as exc:
        raise ValueError(f"expected a month as YYYY-MM, got {text!r}") from exc
    if not 1 <= month <= 12 or not 1900 <= year <= 2200:
        raise ValueError(f"expected a month as YYYY-MM, got {text!r}")
    return year * 12 + month - 1


def month_text(ordinal: int) -> str:
    return f"{ordinal // 12:04d}-{ordinal % 12 + 1:02d}"


def month_texts(ordinals: npt.NDArray[np.int64]) -> list[str]:
    """Vectorised ``month_text`` over an array (via a small lookup table)."""
    if len(ordinals) == 0:
        return []
    lo = int(ordinals.min())
    table = [month_text(o) for o in range(lo, int(ordinals.max()) + 1)]
    return [table[o] for o in (ordinals - lo).tolist()]


def date_texts(month_ords: npt.NDArray[np.int64], days: npt.NDArray[np.int64]) -> list[str]:
    """``YYYY-MM-DD`` strings; days are 1..28 so every date exists."""
    months = month_texts(month_ords)
    return [f"{m}-{d:02d}" for m, d in zip(months, days.tolist(), strict=True)]


def parse_month_column(values: list[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    """Month ordinals of ``YYYY-MM`` or ``YYYY-MM-DD`` strings (vectorised, validated)."""
    arr = np.asarray(values, dtype="U10")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    chars = arr.view("U1").reshape(arr.size, -1)
    digits = (chars[:, [0, 1, 2, 3, 5, 6]].view(np.uint32) - ord("0")).astype(np.int64)
    if (digits < 0).any() or (digits > 9).any() or (chars[:, 4] != "-").any():
        bad = next(v for v in arr.tolist() if not _looks_like_month(v))
        raise ValueError(f"expected a month as YYYY-MM, got {bad!r}")
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month = digits[:, 4] * 10 + digits[:, 5]
    if ((month < 1) | (month > 12)).any():
        bad = arr[(month < 1) | (month > 12)][0]
        raise ValueError(f"expected a month as YYYY-MM, got {str(bad)!r}")
    return year * 12 + month - 1


def _looks_like_month(value: str) -> bool:
    try:
        month_ordinal(value)
    except ValueError:
        return False
    return True
