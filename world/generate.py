"""The synthetic city: enterprises, twelve departments' raw records, banks' loan books.

Generative model (all draws from one seeded PCG64 stream per component, so the same
seed gives byte-identical files):

Enterprises
    Industry from the GB/T 4754-2017 sections with small-business weights, one of
    Weihai's districts, a log-size ``z ~ N(0, 1)`` (employees ``≈ exp(1.5 + 1.05 z)``:
    heavy-tailed, most firms are micro or small), an age (exponential, mean 7 years,
    some founded inside the observation window), registered capital (log-normal,
    rising with size), credit code from ``common.uscc.generate`` for the district.

Latent health ``h[i, t]``
    ``h = μ_i + x_t`` with a long-run level ``μ_i = industry effect + 0.25 z +
    0.15 log(1 + age) + N(0, 0.7²)`` and an AR(1) deviation ``x_t = 0.92 x_{t-1} +
    0.3 ε_t`` plus rare persistent shocks (0.6 % a month, size ~ -N(1.5, 0.5)).
    It is simulated for the ``M`` observed months and 12 future months.

Department records (months ``t < M`` only; each reflects ``h`` partly and noisily)
    tax: monthly revenue ``∝ exp(0.35 h + season + N(0, 0.3²))``, VAT, income tax on a
    margin rising with ``h``, late/zero/missing filings more likely when ``h`` is low,
    yearly tax credit grade from the year's mean ``h`` plus noise; social security,
    medical insurance and housing fund: headcounts following ``h``, arrears and late
    payments when ``h`` is low, partial coverage (not every firm is registered);
    utilities: electricity and water with industry intensity, seasonality and
    ``exp(0.25 h)``; customs: only trading firms, export values following ``h``;
    courts: Poisson cases as defendant with rate ``∝ exp(-1.0 h)``, enforcement and the
    dishonest-debtor list for the worst; public credit: penalties, red/black lists,
    yearly grade, quarterly score ``600 + 60 h + N(0, 45²)``; IP: patents and
    trademarks by industry and size, lapses when ``h`` is low; natural resources:
    property by size and mortgages (more and larger when ``h`` is low); shareholders:
    scores correlated with ``μ``. Data-entry noise: a few values off by a factor of 10,
    missing months, departments that do not know the firm at all.

Outcome
    Monthly default hazard ``sigmoid(a - 1.45 h_t)`` over the 12 months after the
    as-of month; ``a`` is set so that about 8 % of all firms (3-4 % of the borrowers,
    whom banks screened) default.
    Because the future ``h`` keeps moving and the records are noisy, a good model on
    the derived features reaches a held-out AUC of roughly 0.75-0.85.

Banks
    About 15 % of firms borrow (more likely when larger and healthier: banks screen).
    Each bank has Dirichlet-drawn affinities for industries, size classes and districts
    (non-IID books); a borrower goes to the bank with the highest affinity plus Gumbel
    noise. A loan has amount, term, start month (last 12 months), rate and the outcome.

Output (``OUT/``): ``enterprises.csv`` (public registry data only),
``departments/<id>/<table>.csv`` + ``meta.json``, ``banks/<org>/loans.csv``,
``_truth/enterprises.csv`` (latent health, default probability and label — for tests
and benchmarks only; never loaded by a node) and ``manifest.json`` (parameters and the
SHA-256 of every file).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedcredit.common.departments import DEFAULT_BANKS, DEPARTMENTS
from fedcredit.node.schema import BY_DEPARTMENT, date_texts, month_ordinal, month_text, month_texts
from fedcredit.world.errors import InvalidWorldParameter, NotAWorld

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

FORMAT = "fedcredit-world/1"
GENERATOR_VERSION = "1"
FUTURE_MONTHS = 12

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Section:
    code: str
    name: str
    weight: float
    health: float  # effect on long-run health
    revenue_per_head: float  # yuan per employee per month
    kwh_per_head: float
    trade: float  # probability the firm trades across borders
    patents: float  # patent-rate multiplier


SECTIONS: tuple[Section, ...] = (
    Section("A", "Agriculture, forestry, animal husbandry and fishery", 0.04, -0.10, 9000, 300, 0.10, 0.2),
    Section("B", "Mining", 0.005, -0.20, 30000, 2500, 0.05, 0.3),
    Section("C", "Manufacturing", 0.18, 0.00, 25000, 1500, 0.30, 1.5),
    Section("D", "Electricity, heat, gas and water supply", 0.004, 0.20, 40000, 3000, 0.0, 0.4),
    Section("E", "Construction", 0.07, -0.20, 28000, 250, 0.02, 0.3),
    Section("F", "Wholesale and retail trade", 0.30, -0.05, 40000, 150, 0.15, 0.1),
    Section("G", "Transport, storage and postal services", 0.05, -0.05, 20000, 300, 0.08, 0.1),
    Section("H", "Accommodation and catering", 0.06, -0.25, 9000, 400, 0.0, 0.05),
    Section("I", "Information transmission, software and IT services", 0.05, 0.15, 20000, 200, 0.05, 2.5),
    Section("K", "Real estate", 0.025, -0.30, 50000, 200, 0.0, 0.05),
    Section("L", "Leasing and business services", 0.09, 0.00, 18000, 120, 0.03, 0.2),
    Section("M", "Scientific research and technical services", 0.05, 0.15, 18000, 200, 0.05, 3.0),
    Section("N", "Water conservancy, environment and public facilities", 0.006, 0.05, 15000, 300, 0.0, 0.5),
    Section("O", "Resident services, repair and other services", 0.04, -0.10, 8000, 200, 0.0, 0.05),
    Section("P", "Education", 0.01, 0.05, 9000, 150, 0.0, 0.1),
    Section("Q", "Health and social work", 0.01, 0.15, 12000, 300, 0.0, 0.3),
    Section("R", "Culture, sports and entertainment", 0.014, -0.10, 10000, 200, 0.02, 0.2),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class District:
    id: str
    name: str
    division: str  # administrative division code (GB/T 2260) used in the credit code
    weight: float


DISTRICTS: tuple[District, ...] = (
    District("huancui", "Huancui District", "371002", 0.30),
    District("wendeng", "Wendeng District", "371003", 0.17),
    District("rongcheng", "Rongcheng City", "371082", 0.18),
    District("rushan", "Rushan City", "371083", 0.10),
    District("etdz", "Economic and Technological Development Zone", "371071", 0.10),
    District("torch", "Torch Hi-tech Industrial Development Zone", "371072", 0.10),
    District("lingang", "Lingang Economic and Technological Development Zone", "371073", 0.05),
)

SIZE_CLASSES: tuple[str, ...] = ("micro", "small", "medium", "large")
ENTERPRISE_TYPES: tuple[str, ...] = (
    "limited_liability",
    "sole_proprietorship",
    "joint_stock",
    "partnership",
)

_BRAND = "海港明华泰丰鑫源宏达盛利恒通瑞祥嘉德永安兴隆福康金诚正远东方蓝天鼎新博润中信和美聚成"
_TRADE = {
    "A": "农业", "B": "矿业", "C": "机械制造", "D": "能源", "E": "建筑工程", "F": "商贸",
    "G": "物流", "H": "餐饮", "I": "信息技术", "K": "置业", "L": "商务服务", "M": "科技",
    "N": "环保", "O": "家政服务", "P": "教育咨询", "Q": "医疗", "R": "文化传媒",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorldParams:
    enterprises: int = 2000
    banks: int = 7
    months: int = 24
    seed: int = 0
    as_of: str = "2025-12"  # last observed month

    def validate(self) -> None:
        if not 10 <= self.enterprises <= 2_000_000:
            raise InvalidWorldParameter(
                f"--enterprises: expected 10 to 2,000,000, got {self.enterprises}"
            )
        if not 1 <= self.banks <= 64:
            raise InvalidWorldParameter(f"--banks: expected 1 to 64, got {self.banks}")
        if not 13 <= self.months <= 120:
            raise InvalidWorldParameter(
                f"--months: expected 13 to 120 (trends need 13), got {self.months}"
            )
        if not 0 <= self.seed < 2**63:  # numpy's SeedSequence takes no negative seed
            raise InvalidWorldParameter(f"--seed: expected 0 to 2^63-1, got {self.seed}")
        try:
            month_ordinal(self.as_of)
        except ValueError as exc:
            raise InvalidWorldParameter(f"--as-of: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    data: dict[str, Any]

    @property
    def files(self) -> dict[str, Any]:
        """Relative path -> {"sha256", "rows"} of every file written."""
        return dict(self.data["files"])


Progress = Callable[[str, float], None]  # (step description, fraction of the work done)


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def bank_ids(k: int) -> list[str]:
    if k <= len(DEFAULT_BANKS):
        return list(DEFAULT_BANKS[:k])
    return [*DEFAULT_BANKS, *(f"bank-{i:02d}" for i in range(len(DEFAULT_BANKS) + 1, k + 1))]


class _Csv:
    """Writes CSV files fast (one join per file) and records their hashes for the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict[str, Any]] = {}

    def write(self, rel: str, header: Sequence[str], columns: Sequence[Sequence[str]]) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = len(columns[0]) if columns else 0
        body = "\n".join(map(",".join, zip(*columns, strict=True)))
        data = (",".join(header) + "\n" + body + ("\n" if rows else "")).encode()
        path.write_bytes(data)
        self.files[rel] = {"rows": rows, "sha256": hashlib.sha256(data).hexdigest()}

    def write_json(self, rel: str, obj: Any) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
        path.write_bytes(data)
        self.files[rel] = {"sha256": hashlib.sha256(data).hexdigest()}


def _s(a: npt.NDArray[Any]) -> list[str]:
    """Integers (or strings) to a list of str, vectorised."""
    return a.astype(str).tolist()  # type: ignore[no-any-return]


def _opt_dates(months: IntArray, days: IntArray, present: npt.NDArray[np.bool_]) -> list[str]:
    texts = date_texts(months, days)
    return [t if p else "" for t, p in zip(texts, present.tolist(), strict=True)]


class _World:
    """The simulation state; each ``_dept_*`` method writes one department's files."""

    def __init__(self, p: WorldParams, out: Path) -> None:
        self.p = p
        self.csv = _Csv(out)
        seeds = np.random.SeedSequence(p.seed).spawn(32)
        self._seeds = iter(seeds)
        self.n = p.enterprises
        self.m = p.months
        self.end = month_ordinal(p.as_of)
        self.start = self.end - self.m + 1
        self.months = np.arange(self.start, self.end + 1, dtype=np.int64)

    def rng(self) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(next(self._seeds)))

    # -- enterprises and latent health ----------------------------------------------------

    def enterprises(self) -> None:
        from fedcredit.common import uscc  # the lead's module; imported lazily

        rng, n = self.rng(), self.n
        w = np.array([s.weight for s in SECTIONS])
        self.industry = rng.choice(len(SECTIONS), n, p=w / w.sum())
        dw = np.array([d.weight for d in DISTRICTS])
        self.district = rng.choice(len(DISTRICTS), n, p=dw / dw.sum())
        self.z = rng.standard_normal(n)
        self.employees = np.clip(np.round(np.exp(1.5 + 1.05 * self.z)), 1, 20000).astype(np.int64)
        self.size_class = np.digitize(self.employees, [20, 100, 300]).astype(np.int64)
        age_years = np.minimum(rng.exponential(7.0, n), 40.0) + 0.05
        self.founded = self.end - np.floor(age_years * 12).astype(np.int64)
        self.founded_day = rng.integers(1, 29, n)
        self.age = age_years
        self.etype = rng.choice(len(ENTERPRISE_TYPES), n, p=[0.78, 0.15, 0.04, 0.03])
        self.capital = np.round(np.exp(3.5 + 0.8 * self.z + rng.normal(0, 0.7, n))).astype(np.int64)
        self.capital = np.maximum(self.capital, 1) * 10000  # yuan, whole 10k units
        sec_h = np.array([s.health for s in SECTIONS])
        self.mu = (
            sec_h[self.industry]
            + 0.25 * self.z
            + 0.15 * np.log1p(age_years)
            - 0.25
            + rng.normal(0, 0.7, n)
        )
        # Credit codes: the district's division code, unique within the city.
        py = random.Random(self.p.seed * 1_000_003 + 17)
        codes: list[str] = []
        seen: set[str] = set()
        for d in self.district.tolist():
            while True:
                code = uscc.generate(py, divisions=(DISTRICTS[d].division,))
                if code not in seen:
                    seen.add(code)
                    codes.append(code)
                    break
        self.codes = np.array(codes)
        self.code_list = codes
        b = rng.integers(0, len(_BRAND), (n, 2))
        brands = [_BRAND[i] + _BRAND[j] for i, j in b.tolist()]
        trade = [_TRADE[SECTIONS[s].code] for s in self.industry.tolist()]
        suffix = ["商行" if t == 1 else "有限公司" for t in self.etype.tolist()]
        self.names = [f"威海{a}{t}{s}" for a, t, s in zip(brands, trade, suffix, strict=True)]
        # Latent health over observed + future months.
        t_all = self.m + FUTURE_MONTHS
        x = np.empty((n, t_all))
        x_prev = rng.normal(0, 0.3 / np.sqrt(1 - 0.92**2), n)
        eps = rng.standard_normal((n, t_all))
        shock = (rng.random((n, t_all)) < 0.006) * -np.abs(rng.normal(1.5, 0.5, (n, t_all)))
        for t in range(t_all):
            x_prev = 0.92 * x_prev + 0.3 * eps[:, t] + shock[:, t]
            x[:, t] = x_prev
        self.h_all = self.mu[:, None] + x
        self.h = self.h_all[:, : self.m]
        month_idx = self.months[None, :]
        self.alive = month_idx >= self.founded[:, None]  # (n, m): firm exists that month
        self.season = np.sin(2 * np.pi * (self.months % 12) / 12.0)[None, :]

    def write_registry(self) -> None:
        sec = np.array([s.code for s in SECTIONS])
        dist = np.array([d.id for d in DISTRICTS])
        self.csv.write(
            "enterprises.csv",
            ("code", "name", "industry", "district", "size_class", "enterprise_type", "founded_on"),
            [
                self.code_list,
                self.names,
                sec[self.industry].tolist(),
                dist[self.district].tolist(),
                np.array(SIZE_CLASSES)[self.size_class].tolist(),
                np.array(ENTERPRISE_TYPES)[self.etype].tolist(),
                date_texts(self.founded, self.founded_day),
            ],
        )

    # -- helpers -------------------------------------------------------------------------

    def _monthly_rows(
        self,
        rng: np.random.Generator,
        covered: npt.NDArray[np.bool_],
        p_missing: FloatArray | float,
    ) -> tuple[IntArray, IntArray]:
        """(enterprise index, month index) of the rows a monthly table holds."""
        keep = covered[:, None] & self.alive & (rng.random(self.alive.shape) >= p_missing)
        ii, tt = np.nonzero(keep)
        return ii.astype(np.int64), tt.astype(np.int64)

    def _events(
        self,
        rng: np.random.Generator,
        rate: FloatArray,
        history: int = 0,
        base: FloatArray | None = None,
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Poisson events: monthly rates over the observed window (n, m) and, if
        ``history`` > 0, at rate ``base`` (n,) in the ``history`` months before it.
        Returns (enterprise, month ordinal, day)."""
        counts = rng.poisson(np.where(self.alive, rate, 0.0))
        ii, tt = np.nonzero(counts)
        reps = counts[ii, tt]
        ii, months = np.repeat(ii, reps), np.repeat(self.months[tt], reps)
        if history > 0 and base is not None:
            span = np.clip(self.start - self.founded, 0, history)
            hc = rng.poisson(base * span)
            hi = np.repeat(np.arange(self.n), hc)
            offs = (rng.random(len(hi)) * np.repeat(span, hc)).astype(np.int64) + 1
            ii = np.concatenate([hi, ii])
            months = np.concatenate([self.start - offs, months])
        order = np.lexsort((months, ii))
        ii, months = ii[order].astype(np.int64), months[order].astype(np.int64)
        return ii, months, rng.integers(1, 29, len(ii))

    def _noise10(self, rng: np.random.Generator, v: FloatArray, p: float = 0.002) -> FloatArray:
        """Data-entry noise: a few values off by a factor of ten."""
        u = rng.random(v.shape)
        return np.where(u < p / 2, v * 10, np.where(u < p, v / 10, v))

    def _code(self, ii: IntArray) -> list[str]:
        return self.codes[ii].tolist()  # type: ignore[no-any-return]

    # -- departments ---------------------------------------------------------------------

    def dept_market_regulation(self) -> None:
        rng = self.rng()
        sec = np.array([s.code for s in SECTIONS])
        dist = np.array([d.id for d in DISTRICTS])
        status = np.where(self.h[:, -1] < -2.2, "suspended", "active")
        self.csv.write(
            "departments/market_regulation/registrations.csv",
            ("code", "name", "enterprise_type", "industry", "district", "registered_on",
             "registered_capital", "status"),
            [self.code_list, self.names, np.array(ENTERPRISE_TYPES)[self.etype].tolist(),
             sec[self.industry].tolist(), dist[self.district].tolist(),
             date_texts(self.founded, self.founded_day), _s(self.capital), status.tolist()],
        )  # fmt: skip
        rate = 0.012 * np.exp(-0.45 * self.h)
        ii, months, days = self._events(rng, rate, history=36, base=0.012 * np.exp(-0.45 * self.mu))
        hh = self._h_at(ii, months)
        kinds = np.array(["address", "business_scope", "legal_representative", "shareholder",
                          "capital_increase", "capital_decrease", "name"])  # fmt: skip
        logits = np.stack(
            [np.zeros_like(hh), np.zeros_like(hh) - 0.2, -0.6 - 0.5 * hh, -0.4 - 0.4 * hh,
             -1.2 + 0.5 * hh, -2.0 - 0.7 * hh, np.zeros_like(hh) - 1.5], axis=1)  # fmt: skip
        k = _categorical(rng, logits)
        self.csv.write(
            "departments/market_regulation/changes.csv",
            ("code", "changed_on", "change_type"),
            [self._code(ii), date_texts(months, days), kinds[k].tolist()],
        )

    def _h_at(self, ii: IntArray, months: IntArray) -> FloatArray:
        """Health of firm ``ii`` at ``months`` (long-run level before the window)."""
        t = months - self.start
        inside = t >= 0
        out = self.mu[ii].copy()
        out[inside] = self.h[ii[inside], t[inside]]
        return out

    def dept_tax(self) -> None:
        rng = self.rng()
        n = self.n
        covered = rng.random(n) < 0.97
        p_missing = 0.01 + 0.08 * _sigmoid(-2.0 - 1.2 * self.h)
        ii, tt = self._monthly_rows(rng, covered, p_missing)
        h = self.h[ii, tt]
        rph = np.array([s.revenue_per_head for s in SECTIONS])[self.industry]
        base = self.employees * rph * np.exp(rng.normal(0, 0.5, n))
        rev = base[ii] * np.exp(0.35 * h + 0.08 * self.season[0, tt] + rng.normal(0, 0.3, len(ii)))
        zero = rng.random(len(ii)) < _sigmoid(-3.6 - 1.1 * h)
        rev = np.where(zero, 0.0, self._noise10(rng, rev))
        vat_rate = np.where(self.size_class[ii] == 0, 0.01, 0.06) * rng.uniform(0.5, 1.0, len(ii))
        margin = 0.04 + 0.04 * h + rng.normal(0, 0.03, len(ii))
        income_tax = np.maximum(rev * margin, 0) * 0.2
        late = rng.random(len(ii)) < _sigmoid(-2.8 - 1.1 * h)
        due_month = self.months[tt] + 1
        filed_m = np.where(late, due_month + rng.integers(0, 3, len(ii)), due_month)
        filed_d = np.where(late & (filed_m == due_month), rng.integers(16, 29, len(ii)),
                           np.where(late, rng.integers(1, 29, len(ii)), rng.integers(1, 16, len(ii))))  # fmt: skip
        self.csv.write(
            "departments/tax/filings.csv",
            ("code", "period", "sales_revenue", "vat_paid", "income_tax_paid", "filed_on"),
            [self._code(ii), month_texts(self.months[tt]), _s(np.round(rev).astype(np.int64)),
             _s(np.round(rev * vat_rate).astype(np.int64)),
             _s(np.round(income_tax).astype(np.int64)), date_texts(filed_m, filed_d)],
        )  # fmt: skip
        # Yearly grade for each calendar year fully or partly observed.
        years = sorted({int(o) // 12 for o in self.months.tolist()})
        gi: list[IntArray] = []
        gy: list[IntArray] = []
        gg: list[IntArray] = []
        for y in years:
            cols = np.nonzero(self.months // 12 == y)[0]
            hy = self.h[:, cols].mean(axis=1) + rng.normal(0, 0.6, n)
            has = covered & (self.founded <= y * 12 + 11) & (self.founded <= self.months[cols[-1]])
            g = np.digitize(hy, [-1.6, -0.8, 0.0, 0.9])  # 0=D .. 4=A
            idx = np.nonzero(has)[0]
            gi.append(idx)
            gy.append(np.full(len(idx), y))
            gg.append(g[idx])
        i_all, y_all, g_all = np.concatenate(gi), np.concatenate(gy), np.concatenate(gg)
        order = np.lexsort((y_all, i_all))
        grades = np.array(["D", "C", "M", "B", "A"])
        self.csv.write(
            "departments/tax/credit_grades.csv",
            ("code", "year", "grade"),
            [self._code(i_all[order]), _s(y_all[order]), grades[g_all[order]].tolist()],
        )
        self.headcount_noise = rng.normal(0, 0.08, (n, self.m))

    def _headcount(self) -> FloatArray:
        # Headcount follows health relative to the firm's own level, plus a level effect.
        return self.employees[:, None].astype(np.float64) * np.exp(
            0.25 * (self.h - self.mu[:, None]) + 0.08 * self.h + self.headcount_noise
        )

    def dept_social_security(self) -> None:
        rng = self.rng()
        covered = rng.random(self.n) < np.where(self.size_class == 0, 0.80, 0.97)
        ii, tt = self._monthly_rows(rng, covered, 0.01 + 0.05 * _sigmoid(-2.5 - self.h))
        h = self.h[ii, tt]
        head = np.maximum(np.round(self._headcount()[ii, tt]), 1).astype(np.int64)
        head = np.where(rng.random(len(ii)) < 0.001, head * 10, head)  # entry noise
        wage = np.exp(rng.normal(8.4, 0.25, self.n))[ii] * np.exp(0.05 * h)
        due = np.round(head * wage * 0.24).astype(np.int64)
        short = rng.random(len(ii)) < _sigmoid(-3.3 - 1.4 * h)
        paid = np.where(short, np.round(due * rng.uniform(0, 0.8, len(ii))), due).astype(np.int64)
        self.csv.write(
            "departments/social_security/contributions.csv",
            ("code", "period", "headcount", "amount_due", "amount_paid"),
            [self._code(ii), month_texts(self.months[tt]), _s(head), _s(due), _s(paid)],
        )

    def dept_medical_insurance(self) -> None:
        rng = self.rng()
        covered = rng.random(self.n) < np.where(self.size_class == 0, 0.75, 0.95)
        ii, tt = self._monthly_rows(rng, covered, 0.01 + 0.12 * _sigmoid(-2.8 - 1.2 * self.h))
        h = self.h[ii, tt]
        insured = np.maximum(
            np.round(self._headcount()[ii, tt] * rng.uniform(0.85, 1.0, len(ii))), 1
        )
        amount = np.round(insured * rng.normal(520, 40, len(ii))).astype(np.int64)
        late = rng.random(len(ii)) < _sigmoid(-3.0 - 1.3 * h)
        days = np.where(late, rng.integers(1, 60, len(ii)), 0)
        self.csv.write(
            "departments/medical_insurance/payments.csv",
            ("code", "period", "insured", "amount_paid", "days_late"),
            [self._code(ii), month_texts(self.months[tt]), _s(insured.astype(np.int64)),
             _s(amount), _s(days)],
        )  # fmt: skip

    def dept_housing_fund(self) -> None:
        rng = self.rng()
        p_cov = _sigmoid(-0.8 + 0.9 * self.z + 0.4 * self.mu)
        covered = rng.random(self.n) < p_cov
        ii, tt = self._monthly_rows(rng, covered, 0.01 + 0.04 * _sigmoid(-2.5 - self.h))
        h = self.h[ii, tt]
        share = rng.uniform(0.4, 1.0, self.n)[ii]
        payers = np.maximum(np.round(self._headcount()[ii, tt] * share), 1).astype(np.int64)
        per = np.exp(rng.normal(6.6, 0.3, self.n))[ii] * np.exp(0.05 * h)
        due = np.round(payers * per).astype(np.int64)
        short = rng.random(len(ii)) < _sigmoid(-3.5 - 1.5 * h)
        paid = np.where(short, np.round(due * rng.uniform(0, 0.6, len(ii))), due).astype(np.int64)
        self.csv.write(
            "departments/housing_fund/contributions.csv",
            ("code", "period", "payers", "amount_due", "amount_paid"),
            [self._code(ii), month_texts(self.months[tt]), _s(payers), _s(due), _s(paid)],
        )

    def dept_ip(self) -> None:
        rng = self.rng()
        pm = np.array([s.patents for s in SECTIONS])[self.industry]
        base = 0.004 * pm * np.exp(0.6 * self.z + 0.3 * self.mu)
        ii, months, days = self._events(rng, base[:, None] * np.exp(0.2 * self.h), 96, base)
        hh = self._h_at(ii, months)
        ptype = _categorical(rng, np.stack([np.log(0.3 * pm[ii] + 1e-9) - 0.5, np.zeros(len(ii)),
                                            np.full(len(ii), -0.7)], axis=1))  # fmt: skip
        age_m = self.end - months
        wait = np.array([24, 10, 6])[ptype]
        decided = age_m >= wait
        granted = decided & (rng.random(len(ii)) < np.array([0.55, 0.85, 0.9])[ptype])
        grant_m = months + wait + rng.integers(0, 6, len(ii))
        granted &= grant_m <= self.end
        lapse = granted & (
            rng.random(len(ii))
            < _sigmoid(-2.0 - 1.0 * self._h_at(ii, np.minimum(months + 12, self.end)))
        )
        lapse_m = np.minimum(grant_m + rng.integers(12, 48, len(ii)), self.end)
        lapse &= lapse_m > grant_m
        status = np.where(
            lapse, "lapsed", np.where(granted, "granted", np.where(decided, "rejected", "pending"))
        )
        _ = hh
        self.csv.write(
            "departments/ip/patents.csv",
            ("code", "patent_type", "applied_on", "status", "granted_on", "lapsed_on"),
            [self._code(ii), np.array(["invention", "utility_model", "design"])[ptype].tolist(),
             date_texts(months, days), status.tolist(),
             _opt_dates(grant_m, rng.integers(1, 29, len(ii)), granted),
             _opt_dates(lapse_m, rng.integers(1, 29, len(ii)), lapse)],
        )  # fmt: skip
        tb = (
            0.006
            * np.exp(0.4 * self.z + 0.2 * self.mu)
            * np.where(np.isin(self.industry, [2, 5, 7, 16]), 1.5, 0.7)
        )
        ti, tm, td = self._events(rng, np.broadcast_to(tb[:, None], self.h.shape), 96, tb)
        tstatus = np.where(self.end - tm < 9, "pending",
                           np.where(rng.random(len(ti)) < 0.85, "registered", "refused"))  # fmt: skip
        self.csv.write(
            "departments/ip/trademarks.csv",
            ("code", "applied_on", "status"),
            [self._code(ti), date_texts(tm, td), tstatus.tolist()],
        )

    def dept_courts(self) -> None:
        rng = self.rng()
        size = np.exp(0.35 * self.z)[:, None]
        rate_d = 0.006 * size * np.exp(-1.0 * self.h)
        rate_p = 0.005 * size * np.exp(-0.2 * self.h)
        di, dm, dd = self._events(rng, rate_d, 24, 0.006 * np.exp(0.35 * self.z - self.mu))
        pi, pm, pd = self._events(rng, rate_p, 24, 0.005 * np.exp(0.35 * self.z))
        ii = np.concatenate([di, pi])
        months = np.concatenate([dm, pm])
        days = np.concatenate([dd, pd])
        role = np.concatenate([np.zeros(len(di), np.int64), np.ones(len(pi), np.int64)])
        order = np.lexsort((days, months, ii))
        ii, months, days, role = ii[order], months[order], days[order], role[order]
        hh = self._h_at(ii, months)
        ctype = _categorical(rng, np.stack([np.zeros(len(ii)), np.full(len(ii), -0.3),
                                            -1.5 - 0.5 * hh, np.full(len(ii), -3.0)], axis=1))  # fmt: skip
        amount = np.round(np.exp(rng.normal(11.0, 1.2, len(ii)) + 0.3 * self.z[ii]), -2).astype(
            np.int64
        )
        dur = rng.integers(3, 18, len(ii))
        closed = months + dur <= self.end
        self.csv.write(
            "departments/courts/cases.csv",
            ("code", "role", "case_type", "filed_on", "amount", "status", "closed_on"),
            [self._code(ii), np.array(["defendant", "plaintiff"])[role].tolist(),
             np.array(["commercial", "civil", "labor", "administrative"])[ctype].tolist(),
             date_texts(months, days), _s(amount),
             np.where(closed, "closed", "open").tolist(),
             _opt_dates(months + dur, rng.integers(1, 29, len(ii)), closed)],
        )  # fmt: skip
        # Enforcement follows lost cases as defendant when the firm is weak.
        lost = (role == 0) & closed & (rng.random(len(ii)) < _sigmoid(-0.5 - 1.2 * hh))
        e_m = months + dur + rng.integers(1, 4, len(ii))
        lost &= e_m <= self.end
        ei, em, eamt = ii[lost], e_m[lost], amount[lost]
        estat = np.where(rng.random(len(ei)) < 0.5, "concluded", "pending")
        self.csv.write(
            "departments/courts/enforcements.csv",
            ("code", "filed_on", "amount", "status"),
            [
                self._code(ei),
                date_texts(em, rng.integers(1, 29, len(ei))),
                _s(eamt),
                estat.tolist(),
            ],
        )
        dishonest = rng.random(len(ei)) < _sigmoid(-0.8 - 1.5 * self._h_at(ei, em))
        li, lm = (
            ei[dishonest],
            np.minimum(em[dishonest] + rng.integers(1, 4, int(dishonest.sum())), self.end),
        )
        # One entry per firm (the first), removed for some.
        first = np.unique(li, return_index=True)[1]
        li, lm = li[first], lm[first]
        removed = (rng.random(len(li)) < 0.3) & (lm + 6 <= self.end)
        rm = lm + rng.integers(6, 12, len(li))
        removed &= rm <= self.end
        self.csv.write(
            "departments/courts/dishonest_list.csv",
            ("code", "listed_on", "removed_on"),
            [self._code(li), date_texts(lm, rng.integers(1, 29, len(li))),
             _opt_dates(rm, rng.integers(1, 29, len(li)), removed)],
        )  # fmt: skip
        self.dishonest = np.zeros(self.n, dtype=bool)
        self.dishonest[li[~removed]] = True

    def dept_public_credit(self) -> None:
        rng = self.rng()
        rate = 0.004 * np.exp(0.2 * self.z)[:, None] * np.exp(-0.8 * self.h)
        ii, months, days = self._events(rng, rate, 24, 0.004 * np.exp(0.2 * self.z - 0.8 * self.mu))
        hh = self._h_at(ii, months)
        severe = rng.random(len(ii)) < _sigmoid(-2.0 - 0.8 * hh)
        amount = np.round(np.exp(rng.normal(8.0, 1.0, len(ii)) + 1.5 * severe), -2).astype(np.int64)
        auth = np.array(
            ["market_regulation", "tax", "environment", "fire_safety", "labour", "customs"]
        )
        self.csv.write(
            "departments/public_credit/penalties.csv",
            ("code", "decided_on", "authority", "amount", "severity"),
            [self._code(ii), date_texts(months, days), auth[rng.integers(0, len(auth), len(ii))].tolist(),
             _s(amount), np.where(severe, "severe", "general").tolist()],
        )  # fmt: skip
        # Black list: severe penalties (some) or dishonest debtors; red list: healthy firms.
        sev_firms = np.unique(ii[severe & (rng.random(len(ii)) < 0.5)])
        black = np.zeros(self.n, dtype=bool)
        black[sev_firms] = True
        black |= self.dishonest & (rng.random(self.n) < 0.7)
        red = (~black) & (rng.random(self.n) < _sigmoid(-4.5 + 1.2 * self.h[:, -1] + 0.5 * self.z))
        lists_i = np.concatenate([np.nonzero(black)[0], np.nonzero(red)[0]])
        lists_t = np.array(["black"] * int(black.sum()) + ["red"] * int(red.sum()))
        order = np.argsort(lists_i, kind="stable")
        lists_i, lists_t = lists_i[order], lists_t[order]
        lm = np.maximum(self.end - rng.integers(0, 24, len(lists_i)), self.founded[lists_i])
        self.csv.write(
            "departments/public_credit/lists.csv",
            ("code", "list_type", "listed_on", "removed_on"),
            [self._code(lists_i), lists_t.tolist(), date_texts(lm, rng.integers(1, 29, len(lists_i))),
             [""] * len(lists_i)],
        )  # fmt: skip
        years = sorted({int(o) // 12 for o in self.months.tolist()})
        gi, gy, gg = [], [], []
        for y in years:
            cols = np.nonzero(self.months // 12 == y)[0]
            hy = self.h[:, cols].mean(axis=1) + rng.normal(0, 0.7, self.n)
            idx = np.nonzero(self.founded <= self.months[cols[-1]])[0]
            gi.append(idx)
            gy.append(np.full(len(idx), y))
            gg.append(np.digitize(hy[idx], [-1.2, 0.0, 1.0]))
        i_all, y_all, g_all = np.concatenate(gi), np.concatenate(gy), np.concatenate(gg)
        order = np.lexsort((y_all, i_all))
        self.csv.write(
            "departments/public_credit/evaluations.csv",
            ("code", "year", "grade"),
            [
                self._code(i_all[order]),
                _s(y_all[order]),
                np.array(["D", "C", "B", "A"])[g_all[order]].tolist(),
            ],
        )
        quarter = (self.months % 3) == 2
        covered = np.ones(self.n, dtype=bool)
        p_missing = np.where(quarter[None, :], 0.02, 1.0)
        ii, tt = self._monthly_rows(rng, covered, p_missing)
        score = np.clip(np.round(600 + 60 * self.h[ii, tt] + rng.normal(0, 45, len(ii))), 0, 1000)
        self.csv.write(
            "departments/public_credit/scores.csv",
            ("code", "period", "score"),
            [self._code(ii), month_texts(self.months[tt]), _s(score.astype(np.int64))],
        )

    def dept_utilities(self) -> None:
        rng = self.rng()
        kph = np.array([s.kwh_per_head for s in SECTIONS])[self.industry]
        covered = rng.random(self.n) < 0.93
        ii, tt = self._monthly_rows(rng, covered, 0.015)
        h = self.h[ii, tt]
        base = (self.employees * kph * np.exp(rng.normal(0, 0.5, self.n)))[ii]
        kwh = base * np.exp(0.25 * h + 0.15 * self.season[0, tt] + rng.normal(0, 0.2, len(ii)))
        zero = rng.random(len(ii)) < _sigmoid(-4.2 - 1.4 * h)
        kwh = np.where(zero, 0, np.round(self._noise10(rng, kwh))).astype(np.int64)
        self.csv.write(
            "departments/utilities/electricity.csv",
            ("code", "period", "kwh"),
            [self._code(ii), month_texts(self.months[tt]), _s(kwh)],
        )
        covered_w = covered & (rng.random(self.n) < 0.9)
        wi, wt = self._monthly_rows(rng, covered_w, 0.03)
        wh = self.h[wi, wt]
        wbase = (self.employees * 2.5 * np.exp(rng.normal(0, 0.6, self.n)))[wi]
        m3 = np.round(wbase * np.exp(0.15 * wh + rng.normal(0, 0.3, len(wi)))).astype(np.int64)
        self.csv.write(
            "departments/utilities/water.csv",
            ("code", "period", "m3"),
            [self._code(wi), month_texts(self.months[wt]), _s(m3)],
        )

    def dept_customs(self) -> None:
        rng = self.rng()
        tp = np.array([s.trade for s in SECTIONS])[self.industry] * _sigmoid(0.8 * self.z + 0.5)
        trader = rng.random(self.n) < tp * 1.2
        exporter = trader & (rng.random(self.n) < 0.8)
        importer = trader & ((~exporter) | (rng.random(self.n) < 0.5))
        rows_i, rows_t, rows_d, rows_v, rows_c = [], [], [], [], []
        for d, who, lvl in ((0, exporter, 9.5), (1, importer, 9.0)):
            active_p = _sigmoid(0.6 + 0.8 * self.h)
            keep = who[:, None] & self.alive & (rng.random(self.h.shape) < active_p)
            ii, tt = np.nonzero(keep)
            base = np.exp(lvl + 0.9 * self.z + rng.normal(0, 0.6, self.n))[ii]
            v = np.round(base * np.exp(0.3 * self.h[ii, tt] + rng.normal(0, 0.5, len(ii))))
            rows_i.append(ii)
            rows_t.append(tt)
            rows_d.append(np.full(len(ii), d))
            rows_v.append(v.astype(np.int64))
            rows_c.append(1 + rng.poisson(np.maximum(v / 40000, 0.1)))
        ii, tt, dd = np.concatenate(rows_i), np.concatenate(rows_t), np.concatenate(rows_d)
        vv, cc = np.concatenate(rows_v), np.concatenate(rows_c)
        order = np.lexsort((dd, tt, ii))
        ii, tt, dd, vv, cc = ii[order], tt[order], dd[order], vv[order], cc[order]
        self.csv.write(
            "departments/customs/declarations.csv",
            ("code", "period", "direction", "value_usd", "declarations"),
            [self._code(ii), month_texts(self.months[tt]), np.array(["export", "import"])[dd].tolist(),
             _s(vv), _s(cc.astype(np.int64))],
        )  # fmt: skip

    def dept_natural_resources(self) -> None:
        rng = self.rng()
        count = rng.poisson(np.clip(0.15 * np.exp(0.7 * self.z), 0, 20))
        ii = np.repeat(np.arange(self.n), count)
        ptype = np.where(rng.random(len(ii)) < 0.4, "land", "building")
        area = np.round(np.exp(rng.normal(6.5, 1.0, len(ii)) + 0.4 * self.z[ii])).astype(np.int64)
        value = np.round(area * np.exp(rng.normal(8.0, 0.4, len(ii))), -3).astype(np.int64)
        span = np.maximum(self.end - self.founded[ii], 1)
        acq = self.end - (rng.random(len(ii)) * span).astype(np.int64)
        self.csv.write(
            "departments/natural_resources/properties.csv",
            ("code", "property_type", "area_m2", "appraised_value", "acquired_on"),
            [self._code(ii), ptype.tolist(), _s(area), _s(value),
             date_texts(acq, rng.integers(1, 29, len(ii)))],
        )  # fmt: skip
        # Mortgages on owned property: more, larger and more recent when health is low.
        h_last = self.h[ii, -1]
        mort = rng.random(len(ii)) < _sigmoid(-0.3 - 0.8 * h_last)
        mi = ii[mort]
        amt = np.round(
            value[mort] * np.clip(rng.normal(0.5, 0.15, len(mi)) - 0.12 * h_last[mort], 0.05, 0.95),
            -3,
        )
        reg_ago = np.where(rng.random(len(mi)) < _sigmoid(-1.0 - 0.9 * h_last[mort]),
                           rng.integers(0, 12, len(mi)), rng.integers(12, 60, len(mi)))  # fmt: skip
        reg = np.maximum(self.end - reg_ago, acq[mort])
        released = (rng.random(len(mi)) < 0.25) & (reg + 12 <= self.end)
        banks = np.array([*bank_ids(self.p.banks), "other-lender"])
        self.csv.write(
            "departments/natural_resources/mortgages.csv",
            ("code", "mortgagee", "amount", "registered_on", "released_on"),
            [self._code(mi), banks[rng.integers(0, len(banks), len(mi))].tolist(), _s(amt.astype(np.int64)),
             date_texts(reg, rng.integers(1, 29, len(mi))),
             _opt_dates(np.minimum(reg + 12 + rng.integers(0, 24, len(mi)), self.end),
                        rng.integers(1, 29, len(mi)), released)],
        )  # fmt: skip

    def dept_shareholders(self) -> None:
        rng = self.rng()
        k = 1 + np.minimum(rng.poisson(0.8 + 0.3 * np.maximum(self.z, 0)), 7)
        covered = rng.random(self.n) < 0.9
        k = np.where(covered, k, 0)
        ii = np.repeat(np.arange(self.n), k)
        raw = rng.exponential(1.0, len(ii))
        tot = np.bincount(ii, weights=raw, minlength=self.n)
        share = np.round(100 * raw / tot[ii], 2)
        person = rng.random(len(ii)) < 0.85
        score = np.clip(np.round(650 + 45 * self.mu[ii] + rng.normal(0, 60, len(ii))), 300, 950)
        self.csv.write(
            "departments/shareholders/shareholders.csv",
            ("code", "holder_type", "share_pct", "credit_score"),
            [self._code(ii), np.where(person, "person", "company").tolist(),
             [f"{v:.2f}" for v in share.tolist()], _s(score.astype(np.int64))],
        )  # fmt: skip

    # -- outcomes and banks ---------------------------------------------------------------

    def outcomes(self) -> None:
        rng = self.rng()
        fut = self.h_all[:, self.m :]
        # Choose the intercept so that ~8 % of all firms (~3-4 % of borrowers) default in 12 months.
        a = _solve(
            lambda a: float((1 - np.prod(1 - _sigmoid(a - 1.45 * fut), axis=1)).mean()), 0.08
        )
        self.pd = 1 - np.prod(1 - _sigmoid(a - 1.45 * fut), axis=1)
        self.defaulted = rng.random(self.n) < self.pd
        self.hazard_intercept = a

    def banks(self) -> None:
        rng = self.rng()
        ids = bank_ids(self.p.banks)
        k = len(ids)
        h_last = self.h[:, -1]
        score = 0.7 * self.z + 0.5 * (h_last - h_last.mean())
        c = _solve(lambda c: float(_sigmoid(c + score).mean()), 0.165)
        borrower = (rng.random(self.n) < _sigmoid(c + score)) & (self.founded <= self.end - 6)
        aff_ind = np.log(rng.dirichlet(np.full(len(SECTIONS), 0.6), k) * len(SECTIONS) + 1e-3)
        aff_size = np.log(
            rng.dirichlet(np.full(len(SIZE_CLASSES), 0.8), k) * len(SIZE_CLASSES) + 1e-3
        )
        aff_dist = np.log(rng.dirichlet(np.full(len(DISTRICTS), 0.6), k) * len(DISTRICTS) + 1e-3)
        bi = np.nonzero(borrower)[0]
        util = (
            aff_ind[:, self.industry[bi]].T
            + aff_size[:, self.size_class[bi]].T
            + aff_dist[:, self.district[bi]].T
            + rng.gumbel(0, 1.0, (len(bi), k))
        )
        bank = util.argmax(axis=1)
        amount = np.clip(
            np.round(np.exp(11.5 + 0.8 * self.z[bi] + rng.normal(0, 0.5, len(bi))), -3),
            50_000,
            30_000_000,
        )
        term = np.array([6, 12, 24, 36])[rng.choice(4, len(bi), p=[0.15, 0.45, 0.25, 0.15])]
        start = self.end - rng.integers(0, 12, len(bi))
        rate = np.round(
            3.45
            + 0.3 * bank / max(k - 1, 1)
            + np.clip(-0.6 * h_last[bi], -1, 3)
            + rng.normal(0, 0.3, len(bi)),
            2,
        )
        rate = np.maximum(rate, 2.5)
        self.loan_bank = np.full(self.n, -1)
        self.loan_bank[bi] = bank
        for b, org in enumerate(ids):
            sel = bi[bank == b]
            idx = np.nonzero(bank == b)[0]
            self.csv.write(
                f"banks/{org}/loans.csv",
                ("loan_id", "code", "amount", "term_months", "start_month", "annual_rate_pct", "defaulted"),
                [[f"L{b + 1:02d}{j + 1:07d}" for j in range(len(sel))], self._code(sel),
                 _s(amount[idx].astype(np.int64)), _s(term[idx]), month_texts(start[idx]),
                 [f"{r:.2f}" for r in rate[idx].tolist()], _s(self.defaulted[sel].astype(np.int64))],
            )  # fmt: skip
        self.bank_ids = ids

    def truth(self) -> None:
        ids = np.array([*self.bank_ids, ""])
        self.csv.write(
            "_truth/enterprises.csv",
            ("code", "mu", "health_as_of", "health_future_mean", "pd_12m", "defaulted_12m", "bank"),
            [self.code_list, [f"{v:.4f}" for v in self.mu.tolist()],
             [f"{v:.4f}" for v in self.h[:, -1].tolist()],
             [f"{v:.4f}" for v in self.h_all[:, self.m :].mean(axis=1).tolist()],
             [f"{v:.5f}" for v in self.pd.tolist()], _s(self.defaulted.astype(np.int64)),
             ids[self.loan_bank].tolist()],
        )  # fmt: skip


def _categorical(rng: np.random.Generator, logits: FloatArray) -> IntArray:
    """One categorical draw per row (Gumbel-max)."""
    if len(logits) == 0:
        return np.zeros(0, dtype=np.int64)
    return (logits + rng.gumbel(size=logits.shape)).argmax(axis=1).astype(np.int64)


def _solve(f: Callable[[float], float], target: float) -> float:
    """Bisection for an increasing ``f``: the x with f(x) = target (deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


_DEPARTMENT_STEPS: tuple[str, ...] = tuple(d.id for d in DEPARTMENTS)


def generate(
    out: Path | str,
    *,
    enterprises: int = 2000,
    banks: int = 7,
    months: int = 24,
    seed: int = 0,
    as_of: str = "2025-12",
    progress: Progress | RichProgress | None = None,
) -> Manifest:
    """Write a synthetic city to ``out`` (created; existing files are overwritten).

    ``progress``: a callable ``(step, fraction)`` or a ``rich.progress.Progress`` (a task
    is added to it)."""
    progress = _progress_callback(progress)
    p = WorldParams(enterprises, banks, months, seed, as_of)
    p.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = _World(p, out)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("enterprises and latent health", w.enterprises),
        ("public registry", w.write_registry),
    ]
    steps += [(f"department {d}", getattr(w, f"dept_{d}")) for d in _DEPARTMENT_STEPS]
    steps += [("outcomes", w.outcomes), ("banks' loan books", w.banks), ("truth", w.truth)]
    # Weights only drive the progress bar.
    weights = [3.0, 1.0] + [1.0] * len(_DEPARTMENT_STEPS) + [0.5, 1.0, 0.5]
    weights[2 + _DEPARTMENT_STEPS.index("tax")] = 3.0
    total, done = sum(weights), 0.0
    for (label, step), wt in zip(steps, weights, strict=True):
        if progress:
            progress(label, done / total)
        step()
        done += wt
    for d in DEPARTMENTS:
        tables = {
            t.name: w.csv.files[f"departments/{d.id}/{t.file_name}"]["rows"]
            for t in BY_DEPARTMENT[d.id]
        }
        w.csv.write_json(
            f"departments/{d.id}/meta.json",
            {"department": d.id, "category": d.category, "as_of": p.as_of, "tables": tables},
        )
    manifest = {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "seed": p.seed,
        "enterprises": p.enterprises,
        "months": p.months,
        "first_month": month_text(w.start),
        "as_of": p.as_of,
        "outcome_window_months": FUTURE_MONTHS,
        "banks": w.bank_ids,
        "departments": [d.id for d in DEPARTMENTS],
        "files": dict(sorted(w.csv.files.items())),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    if progress:
        progress("done", 1.0)
    return Manifest(path, manifest)


def _progress_callback(progress: Progress | RichProgress | None) -> Progress | None:
    from rich.progress import Progress as RichProgress

    if not isinstance(progress, RichProgress):
        return progress
    bar = progress
    task = bar.add_task("world", total=1.0)

    def update(label: str, fraction: float) -> None:
        bar.update(task, completed=fraction, description=label)

    return update


def load_manifest(world_dir: Path | str) -> dict[str, Any]:
    path = Path(world_dir) / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotAWorld(
            f"{path} does not exist; expected a directory made by `world generate`"
        ) from exc
    if data.get("format") != FORMAT:
        raise NotAWorld(f"{path}: expected format {FORMAT!r}, got {data.get('format')!r}")
    return data
