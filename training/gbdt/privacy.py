"""Differential privacy for `hist` boosting: public bin grids, per-bank noise shares,
the run's (ε, δ) from OpenDP's accountant, and the bank's check of every request.

The privacy unit is one borrower's row at one bank (add or remove one row). What a
bank releases, and its L2 sensitivity to one row:

- with ``sketch_rounds`` > 0, the DP sketch once, before training: the bank's rows per
  cell of the fine public grid (``SKETCH_CELLS_DP`` cells per feature, from the public
  ranges). A row adds 1 to one cell of each feature, so Δ = √F; its noise multiplier
  prices it as ``sketch_rounds`` histogram releases. Bins are the public rule
  ``quantile_spec`` applied to the noisy sum (post-processing);
- the totals ``[training rows, positives]`` once per run: one row moves each by at
  most 1, so Δ = √2 (the noise is calibrated for Δ = √2 on both entries);
- one histogram round per tree level (at most ``max_depth`` per tree): the
  histograms of the leaves asked for. The bank refuses requests whose leaves
  overlap (see :class:`RequestGuard`), so a row lies in at most one of them and moves,
  per feature, one cell by (g, h, 1) with |g| = |p − y| ≤ 1 and 0 ≤ h = p(1 − p) ≤ 1/4.
  A release carries the histograms of K features: all F, or with ``features_per_tree``
  the tree's public subset of K (drawn from the committed ``feature_seed``, checked by
  every bank, see ``tree_features``), so Δ_g = √K, Δ_h = √K/4, Δ_n = √K. A feature
  left out of a tree releases nothing in it.

Every channel of every release gets Gaussian noise of standard deviation z·Δ (the
noise multiplier z), i.e. ρ = 1/(2z²) zero-concentrated DP per channel whatever K is:
the same budget spread over K instead of F features' cells puts noise of z·√K rather
than z·√F on each. OpenDP is handed each release as a Gaussian mechanism on distances
in units of its Δ (noise scale z at d_in = 1), and composes the 1 (+ 1 sketch) + 3 · trees · depth releases (zCDP composes adaptively: later trees'
gradients depend on earlier noisy releases) and converts to (ε, δ).

Distributed noise: with B banks each adds a discrete Gaussian share of variance
σ²/B, so the sum carries variance σ² and SecAgg hides each share. The sum of B
discrete Gaussians is not exactly a discrete Gaussian; at the scales used here
(shares of hundreds of grid steps) the difference is negligible (Kairouz, Liu,
Steinke 2021, "The Distributed Discrete Gaussian Mechanism", Thm 2), and the
accounting treats the sum as a Gaussian of variance σ². Banks that collude with the
coordinator know their own shares: with k colluding banks the others' noise has
variance σ²(B − k)/B, reported as ``epsilon_if_colluding``.

Gradients and hessians are rounded to a grid of 2**-DP_GRID_BITS before they are
summed, so signal and noise share one integer lattice (the discrete Gaussian is
private only on the lattice it is sampled on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from fedcredit.training.gbdt.binning import BinSpec
from fedcredit.training.gbdt.params import FIXED_POINT_BITS, GBDTParams, tree_features

DP_GRID_BITS = 8
GRID_UNIT = 1 << (FIXED_POINT_BITS - DP_GRID_BITS)  # one grid step in fixed-point units
GRID = float(1 << DP_GRID_BITS)
# The default budget of one training run.
DEFAULT_EPSILON = 4.0
DEFAULT_DELTA = 1e-6
# Most bins a bank accepts per feature in private mode (more, finer cells: each holds
# fewer rows and the same noise drowns them).
MAX_PRIVATE_BINS = 64

IntArray = npt.NDArray[np.int64]
# (standard deviation in lattice steps, shape, tag) -> integer noise; the tag (request
# number, channel) only lets a seeded test sampler replay.
Sampler = Callable[[float, tuple[int, ...], tuple[int, int]], IntArray]


class PrivacyBudgetExceeded(FailedPrecondition):
    reason = "PRIVACY_BUDGET_EXCEEDED"


class InvalidPrivacySettings(InvalidArgument):
    reason = "PRIVACY_SETTINGS_INVALID"


class CoordinatorDeviates(PermissionDenied):
    """A bank refuses a request the protocol does not allow (it drops out rather than answer)."""

    reason = "COORDINATOR_DEVIATES"


# -- public bin grids -------------------------------------------------------------


SCALES = ("asinh", "linear")
# ``public_ranges`` naming the feature catalog's declared domains (city mode) instead of
# a file: each bank takes them from its own copy of the catalog.
CATALOG = "catalog"


@dataclass(frozen=True)
class PublicRange:
    """A feature's public domain: values are clipped into [lo, hi] before binning; the
    grid is equal-width in asinh(x) (amounts, counts: heavy tails) or in x (``linear``:
    scores, grades, shares)."""

    lo: float
    hi: float
    scale: str = "asinh"


def public_spec(
    feature_names: Sequence[str], ranges: dict[str, PublicRange], max_bins: int
) -> BinSpec:
    """Bins from public ranges only: equal-width in asinh(x) between each feature's public
    bounds (the same grid shape as the sketch's), nothing computed from anyone's rows.
    ``feature_infos`` of the published model are these public ranges."""
    missing = [n for n in feature_names if n not in ranges]
    if missing:
        raise InvalidPrivacySettings(
            "private training needs a public range for every feature; none for "
            + ", ".join(missing[:5])
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    if not 2 <= max_bins <= MAX_PRIVATE_BINS:
        raise InvalidPrivacySettings(
            f"private training allows 2..{MAX_PRIVATE_BINS} bins per feature, got {max_bins}"
        )
    edges: list[npt.NDArray[np.float64]] = []
    for n in feature_names:
        r = ranges[n]
        if not (math.isfinite(r.lo) and math.isfinite(r.hi) and r.lo < r.hi):
            raise InvalidPrivacySettings(
                f"public range of {n} must be finite with lo < hi, got [{r.lo}, {r.hi}]"
            )
        steps = np.arange(1, max_bins) / max_bins
        if r.scale == "linear":
            inner = r.lo + (r.hi - r.lo) * steps
        else:
            ulo, uhi = math.asinh(r.lo), math.asinh(r.hi)
            inner = np.sinh(ulo + (uhi - ulo) * steps)
        edges.append(np.unique(inner.astype(np.float64)))
    return BinSpec(
        feature_names=tuple(feature_names),
        edges=tuple(edges),
        mins=tuple(ranges[n].lo for n in feature_names),
        maxs=tuple(ranges[n].hi for n in feature_names),
    )


# A bank's own node config for private training (never the coordinator's word), read by
# every data source: its copy of the public ranges, its per-training cap, a seed that
# replays its noise (tests only), private-only (refuse anything outside the private
# protocol), its cap over all trainings and the file that records them across runs.
BANK_PRIVACY_KEYS = (
    "public-ranges",
    "max-epsilon",
    "noise-seed",
    "private-only",
    "max-epsilon-total",
    "privacy-ledger",
)

# The DP sketch's default price, in histogram rounds (TrainSettings.sketch_rounds).
DEFAULT_SKETCH_ROUNDS = 1.0
# Cells per feature of the DP sketch: the public grid of this many cells (equal-width in
# each feature's public scale) on which banks count their rows, noised, for quantile bins.
SKETCH_CELLS_DP = MAX_PRIVATE_BINS


def sketch_grid(feature_names: Sequence[str], ranges: dict[str, PublicRange]) -> BinSpec:
    """The fine public grid of the DP sketch (``SKETCH_CELLS_DP`` cells per feature)."""
    return public_spec(feature_names, ranges, SKETCH_CELLS_DP)


def sketch_counts(grid: BinSpec, x: npt.ArrayLike) -> IntArray:
    """A bank's rows per cell of the fine public grid, shape (features, SKETCH_CELLS_DP);
    a missing value counts nowhere. One row adds 1 to at most one cell per feature
    (L2 sensitivity √F); summable over banks."""
    binned = grid.transform(x)
    out = np.zeros((grid.num_features, SKETCH_CELLS_DP), dtype=np.int64)
    for f in range(grid.num_features):
        nb = grid.num_bins(f)
        col = binned[:, f]
        out[f, :nb] = np.bincount(col[col < nb], minlength=nb)
    return out


def quantile_spec(
    feature_names: Sequence[str],
    ranges: dict[str, PublicRange],
    counts: npt.ArrayLike,
    max_bins: int,
) -> BinSpec:
    """Bins from the DP sketch: the one public rule the coordinator and every bank apply
    to the noisy aggregate counts (post-processing, no privacy cost). Per feature, the
    counts are clipped at 0 and the edges are the fine grid's cell bounds where the
    running sum first reaches k/max_bins of the total (k = 1..max_bins-1), merged when
    two fall on one bound. Thresholds stay on the public fine grid; ``feature_infos``
    are the public ranges. A feature whose clipped sum is 0 keeps the public grid."""
    grid = sketch_grid(feature_names, ranges)
    coarse = public_spec(feature_names, ranges, max_bins)
    c = np.asarray(counts)
    if c.shape != (len(feature_names), SKETCH_CELLS_DP) or not np.issubdtype(c.dtype, np.integer):
        raise CoordinatorDeviates(
            f"expected the sketch as integer counts of shape "
            f"({len(feature_names)}, {SKETCH_CELLS_DP}), got {c.dtype} {c.shape}"
        )
    edges: list[npt.NDArray[np.float64]] = []
    for f in range(len(feature_names)):
        nb = grid.num_bins(f)
        cum = np.cumsum(np.clip(c[f, :nb].astype(np.int64), 0, None))
        if nb < 2 or cum[-1] <= 0:
            edges.append(coarse.edges[f])
            continue
        targets = np.arange(1, max_bins, dtype=np.float64) * (float(cum[-1]) / max_bins)
        pos = np.unique(np.clip(np.searchsorted(cum, targets, side="left"), 0, nb - 2))
        edges.append(np.unique(grid.edges[f][pos]))
    return replace(coarse, edges=tuple(edges))


def parse_ranges(data: Any) -> dict[str, PublicRange]:
    """``{"feature": [lo, hi] or [lo, hi, "linear" | "asinh"], ...}`` (a public schema
    file) -> ranges."""
    if not isinstance(data, dict):
        raise InvalidPrivacySettings(
            f"a public range file maps feature -> [lo, hi]; got {type(data).__name__}"
        )
    out: dict[str, PublicRange] = {}
    for k, v in data.items():
        if not (isinstance(v, list | tuple) and len(v) in (2, 3)):
            raise InvalidPrivacySettings(
                f"public range of {k} must be [lo, hi] or [lo, hi, scale], got {v!r}"
            )
        scale = str(v[2]) if len(v) == 3 else "asinh"
        if scale not in SCALES:
            raise InvalidPrivacySettings(
                f"public range of {k}: scale must be one of {', '.join(SCALES)}, got {scale!r}"
            )
        try:
            out[str(k)] = PublicRange(float(v[0]), float(v[1]), scale)
        except (TypeError, ValueError):
            raise InvalidPrivacySettings(
                f"public range of {k} must be numbers, got {v!r}"
            ) from None
    return out


def catalog_ranges() -> dict[str, PublicRange]:
    """The public domain every feature of the department nodes' catalog declares
    (``node/catalog.py``: by unit, narrowed by the feature's window)."""
    from fedcredit.node.catalog import FEATURES

    return {f.name: PublicRange(*f.public_range) for f in FEATURES}


def load_ranges(where: str) -> dict[str, PublicRange]:
    """``where``: a public schema file, or ``catalog`` for the feature catalog's domains."""
    if where == CATALOG:
        return catalog_ranges()
    try:
        with open(where, encoding="utf-8") as f:
            return parse_ranges(json.load(f))
    except (OSError, ValueError) as exc:
        raise InvalidPrivacySettings(f"cannot read public ranges {where}: {exc}") from None


# -- accounting (OpenDP) ----------------------------------------------------------


def releases_per_run(params: GBDTParams) -> int:
    """Histogram rounds a run may take: one per level, ``max_depth`` levels per tree."""
    return params.num_trees * params.max_depth


# Share of each histogram release's budget (zCDP rho) per channel: gradient, hessian,
# count. Equal shares give every channel the same noise multiplier.
EQUAL_SHARES = (1 / 3, 1 / 3, 1 / 3)
# The default puts the budget where the model needs it: a cell's gradient sum is a small
# difference between the classes, while its hessian (about 0.17 per row) and count are
# large and only gate splits (min_data_in_leaf, min_sum_hessian_in_leaf) and scale the
# Newton step. FATE homo split, preset private, epsilon 4, 4 runs of seeded noise each
# (same seeds): equal shares AUC 0.7340, (0.6, 0.2, 0.2) 0.7389, (0.8, 0.1, 0.1) 0.7404,
# (0.9, 0.05, 0.05) 0.7426.
DEFAULT_SHARES = (0.9, 0.05, 0.05)


def channel_multipliers(
    multiplier: float, shares: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Noise multiplier of each channel: rho_c = shares_c * 3 / (2 z^2), so equal shares
    give z on every channel and any shares give the run the same total rho."""
    g, h, n = (multiplier / math.sqrt(3.0 * s) for s in shares)
    return g, h, n


def sketch_multiplier(multiplier: float, sketch_rounds: float) -> float:
    """Noise multiplier of the DP sketch that costs the zCDP budget of ``sketch_rounds``
    histogram releases: rho = 3 w / (2 z^2) = 1 / (2 z_s^2)."""
    return multiplier / math.sqrt(3.0 * sketch_rounds)


@lru_cache(maxsize=256)
def account(
    multiplier: float,
    releases: int,
    delta: float,
    shares: tuple[float, float, float] = EQUAL_SHARES,
    sketch_rounds: float = 0.0,
) -> float:
    """ε of a run (at ``delta``): 1 totals release (multiplier z) + 3 channels per
    histogram release (multipliers from ``shares``) + with ``sketch_rounds`` > 0 the DP
    sketch of the quantile bins, each a Gaussian mechanism (OpenDP's zCDP composition
    and zCDP → (ε, δ) conversion)."""
    return _epsilon(_mechanisms(multiplier, releases, shares, sketch_rounds), delta)


def _mechanisms(
    multiplier: float, releases: int, shares: tuple[float, float, float], sketch_rounds: float
) -> list[Any]:
    """One run's Gaussian mechanisms (OpenDP), distances in units of each release's Δ."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    # Distances are normalised by each release's sensitivity: d_in = 1 is one row.
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
    totals = dp.m.make_gaussian(*space, scale=multiplier)
    channels = [
        dp.m.make_gaussian(*space, scale=z) for z in channel_multipliers(multiplier, shares)
    ]
    sketch = (
        [dp.m.make_gaussian(*space, scale=sketch_multiplier(multiplier, sketch_rounds))]
        if sketch_rounds > 0.0
        else []
    )
    return [totals] + sketch + channels * releases


def _epsilon(mechanisms: list[Any], delta: float) -> float:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    composed = dp.c.make_composition(mechanisms)
    approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(composed), delta)
    eps, _ = approx.map(1.0)
    return float(eps)


def account_plans(plans: Sequence[NoisePlan], delta: float) -> float:
    """ε (at ``delta``) of several runs on the same rows, composed by OpenDP: what a bank
    has spent over every private training it released anything for."""
    mechs: list[Any] = []
    for p in plans:
        mechs += _mechanisms(p.multiplier, p.releases, p.shares, p.sketch_rounds)
    return _epsilon(mechs, delta) if mechs else 0.0


@dataclass(frozen=True)
class NoisePlan:
    """The noise of one private run, agreed before it starts and checked by every bank."""

    epsilon: float
    delta: float
    multiplier: float  # z: noise standard deviation per unit of sensitivity
    releases: int
    n_features: int
    banks: int
    # Budget share of (gradient, hessian, count) in each histogram release.
    shares: tuple[float, float, float] = EQUAL_SHARES
    # Features whose histograms one release carries (K <= n_features): sets Δ = √K.
    released_features: int = 0
    # The DP sketch of the quantile bins (all F features' counts on the public fine grid,
    # Δ = √F), priced as this many histogram releases; 0: no sketch, bins on the
    # public grid.
    sketch_rounds: float = 0.0

    def __post_init__(self) -> None:
        if self.banks < 1:
            # Each bank adds 1/sqrt(banks) of the noise: 0 or fewer shares is no plan.
            raise InvalidPrivacySettings(f"noise plan must split over >= 1 banks, got {self.banks}")
        if self.released_features == 0:
            object.__setattr__(self, "released_features", self.n_features)
        if not (math.isfinite(self.sketch_rounds) and self.sketch_rounds >= 0.0):
            raise InvalidPrivacySettings(
                f"sketch_rounds must be a finite number >= 0, got {self.sketch_rounds}"
            )

    @classmethod
    def calibrate(
        cls,
        params: GBDTParams,
        n_features: int,
        banks: int,
        epsilon: float,
        delta: float,
        shares: tuple[float, float, float] = DEFAULT_SHARES,
        sketch_rounds: float = 0.0,
    ) -> NoisePlan:
        """The smallest noise multiplier whose run costs at most (epsilon, delta);
        ``sketch_rounds`` > 0 prices a DP sketch for quantile bins in the same budget."""
        if not (0.0 < epsilon <= 100.0 and 0.0 < delta < 1e-3):
            raise InvalidPrivacySettings(
                f"expected 0 < epsilon <= 100 and 0 < delta < 1e-3, got epsilon={epsilon}, "
                f"delta={delta}"
            )
        if params.validation_fraction > 0.0:
            raise InvalidPrivacySettings(
                "private training releases no validation loss: set validation_fraction 0 "
                "and early_stopping_rounds 0"
            )
        check_shares(shares)
        if not (math.isfinite(sketch_rounds) and 0.0 <= sketch_rounds <= 100.0):
            raise InvalidPrivacySettings(
                f"expected sketch_rounds in [0, 100] (0: bins on the public grid), got "
                f"{sketch_rounds}"
            )
        rel = releases_per_run(params)
        lo, hi = 1e-3, 1e6
        for _ in range(60):  # bisection on OpenDP's map, monotone in the multiplier
            mid = math.sqrt(lo * hi)
            if account(mid, rel, delta, shares, sketch_rounds) > epsilon:
                lo = mid
            else:
                hi = mid
        k = params.released_features(n_features)
        return cls(epsilon, delta, hi, rel, n_features, banks, shares, k, sketch_rounds)

    @property
    def spent_epsilon(self) -> float:
        return account(self.multiplier, self.releases, self.delta, self.shares, self.sketch_rounds)

    def epsilon_if_colluding(self, colluding: int) -> float:
        """ε when ``colluding`` banks tell the coordinator their own noise shares."""
        left = self.banks - colluding
        if left <= 0:
            return math.inf
        return account(
            self.multiplier * math.sqrt(left / self.banks),
            self.releases,
            self.delta,
            self.shares,
            self.sketch_rounds,
        )

    def sigmas(self) -> tuple[float, float, float]:
        """Aggregate noise standard deviation of (gradient, hessian, count) cells, in lattice
        steps (2**-DP_GRID_BITS for gradients and hessians, 1 row for counts)."""
        root_f = math.sqrt(self.released_features)
        zg, zh, zn = channel_multipliers(self.multiplier, self.shares)
        return zg * root_f * GRID, zh * root_f * GRID / 4.0, zn * root_f

    def totals_sigma(self) -> float:
        return self.multiplier * math.sqrt(2.0)

    def sketch_sigma(self) -> float:
        """Aggregate noise standard deviation of each DP sketch cell, in rows (Δ = √F: a
        row adds 1 to one cell of every feature)."""
        if self.sketch_rounds <= 0.0:
            raise CoordinatorDeviates("this run's noise plan prices no DP sketch")
        return sketch_multiplier(self.multiplier, self.sketch_rounds) * math.sqrt(self.n_features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "multiplier": self.multiplier,
            "releases": self.releases,
            "n_features": self.n_features,
            "banks": self.banks,
            "shares": list(self.shares),
            "released_features": self.released_features,
            "sketch_rounds": self.sketch_rounds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoisePlan:
        try:
            return cls(
                epsilon=float(d["epsilon"]),
                delta=float(d["delta"]),
                multiplier=float(d["multiplier"]),
                releases=int(d["releases"]),
                n_features=int(d["n_features"]),
                banks=int(d["banks"]),
                shares=_shares(d.get("shares", EQUAL_SHARES)),
                released_features=int(d.get("released_features", 0)),
                sketch_rounds=float(d.get("sketch_rounds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidPrivacySettings(f"noise plan is malformed: {exc}") from None

    def check(self, max_epsilon: float, params: GBDTParams, n_features: int) -> None:
        """A bank's own check of the plan it is sent: its cost recomputed, under its cap."""
        if self.releases < releases_per_run(params) or self.n_features != n_features:
            raise CoordinatorDeviates(
                f"noise plan covers {self.releases} releases of {self.n_features} features; "
                f"this run needs {releases_per_run(params)} of {n_features}"
            )
        if self.released_features != params.released_features(n_features):
            raise CoordinatorDeviates(
                f"noise plan is calibrated for releases of {self.released_features} features' "
                f"histograms; this run's settings release "
                f"{params.released_features(n_features)} per tree"
            )
        eps = self.spent_epsilon
        if not eps <= max_epsilon * (1 + 1e-9) or self.delta > DEFAULT_DELTA * 10:
            raise PrivacyBudgetExceeded(
                f"the run would spend epsilon {eps:.3f} (delta {self.delta:g}); this bank "
                f"allows at most {max_epsilon:g}"
            )


def check_shares(shares: tuple[float, float, float]) -> None:
    if not (len(shares) == 3 and all(s > 0.0 for s in shares) and abs(sum(shares) - 1) < 1e-9):
        raise InvalidPrivacySettings(
            f"channel shares (gradient, hessian, count) must be 3 positive numbers summing "
            f"to 1, got {shares}"
        )


def _shares(v: Any) -> tuple[float, float, float]:
    s = tuple(float(x) for x in v)
    if len(s) != 3:
        raise ValueError(f"expected 3 channel shares, got {len(s)}")
    check_shares((s[0], s[1], s[2]))
    return s[0], s[1], s[2]


# -- noise ------------------------------------------------------------------------


def opendp_sampler(std: float, shape: tuple[int, ...], tag: tuple[int, int] = (0, 0)) -> IntArray:
    """Discrete Gaussian noise from OpenDP (its exact sampler over the OS's CSPRNG)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    size = int(np.prod(shape))
    if size == 0:
        return np.zeros(shape, dtype=np.int64)
    mech = _int_gaussian(round(std, 9))
    return np.asarray(mech([0] * size), dtype=np.int64).reshape(shape)


@lru_cache(maxsize=64)
def _int_gaussian(std: float) -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=std
    )


def seeded_sampler(seed: int) -> Sampler:
    """Reproducible noise for tests and replay (rounded normal from NumPy): NOT for use
    with real data, where the noise must come from a CSPRNG (``opendp_sampler``)."""

    def sample(std: float, shape: tuple[int, ...], tag: tuple[int, int] = (0, 0)) -> IntArray:
        rng = np.random.default_rng([seed, *tag])
        return np.rint(rng.normal(0.0, std, size=shape)).astype(np.int64)

    return sample


@dataclass
class BankNoise:
    """One bank's share of the aggregate noise."""

    plan: NoisePlan
    sampler: Sampler = opendp_sampler

    @property
    def _share(self) -> float:
        return 1.0 / math.sqrt(self.plan.banks)

    def noisy_histograms(self, hists: IntArray, seq: int) -> IntArray:
        sg, sh, sn = self.plan.sigmas()
        out = hists.copy()
        shape = hists.shape[:-1]
        out[..., 0] += GRID_UNIT * self.sampler(sg * self._share, shape, (seq, 0))
        out[..., 1] += GRID_UNIT * self.sampler(sh * self._share, shape, (seq, 1))
        out[..., 2] += self.sampler(sn * self._share, shape, (seq, 2))
        return out

    def noisy_sketch(self, counts: IntArray) -> IntArray:
        """This bank's DP sketch (its rows per fine public cell, ``sketch_counts``) with
        its share of the sketch's noise."""
        return counts + self.sampler(self.plan.sketch_sigma() * self._share, counts.shape, (0, 4))

    def noisy_totals(self, totals: IntArray) -> IntArray:
        out = totals.copy()
        out[:2] += self.sampler(self.plan.totals_sigma() * self._share, (2,), (0, 3))
        return out


def sketch_round(
    feature_names: Sequence[str],
    ranges: dict[str, PublicRange],
    max_bins: int,
    xs: Sequence[npt.ArrayLike],
    noises: Sequence[BankNoise],
) -> tuple[BinSpec, IntArray]:
    """The DP sketch round in one process (central replay, benchmarks): each bank's
    noisy sketch, summed as the secure sum does, and the quantile bins the coordinator
    and every bank derive from it."""
    grid = sketch_grid(feature_names, ranges)
    total = np.zeros((len(feature_names), SKETCH_CELLS_DP), dtype=np.int64)
    for x, noise in zip(xs, noises, strict=True):
        total += noise.noisy_sketch(sketch_counts(grid, x))
    return quantile_spec(feature_names, ranges, total, max_bins), total


def to_grid(values: npt.NDArray[np.float64]) -> IntArray:
    """Per-row values rounded to the DP lattice, in fixed-point units."""
    return np.rint(values * GRID).astype(np.int64) * GRID_UNIT


# -- the bank's check of every request ----------------------------------------------


class RequestGuard:
    """A bank's per-run state machine over the coordinator's requests.

    It refuses (one :class:`CoordinatorDeviates` with the reason named): a bin spec other
    than the public one; a request out of sequence or replayed; a split of a leaf that
    is not open, on a feature or bin outside the spec, or to a leaf id already used; a
    leaf asked for that is not a child of this round's splits, or both children of one
    split (the second is the parent minus the first); a tree deeper than agreed; more
    histogram rounds than the noise plan covers; features other than the tree's subset
    drawn from the committed seed (asked for, or split on).
    """

    def __init__(self, params: GBDTParams, spec: BinSpec, expected: BinSpec) -> None:
        if spec.to_dict() != expected.to_dict():
            diff = [
                n
                for n, a, b in zip(spec.feature_names, spec.edges, expected.edges, strict=False)
                if a.shape != b.shape or not np.array_equal(a, b)
            ]
            raise CoordinatorDeviates(
                "bin spec differs from the public one this bank computes"
                + (f" (features {', '.join(diff[:5])})" if diff else "")
            )
        if (
            params.released_features(spec.num_features) < spec.num_features
            and params.feature_seed is None
        ):
            raise CoordinatorDeviates(
                "trees on feature subsets but no committed feature seed to check them against"
            )
        self.params = params
        self.spec = spec
        self.seq = 0
        self.releases = 0
        self._tree = -1
        self._open: set[int] = set()
        self._depth: dict[int, int] = {}
        self._leaves = 0

    def export(self) -> str:
        """The state to keep between messages (a bank's ClientApp may be a new process)."""
        return json.dumps(
            {
                "seq": self.seq,
                "releases": self.releases,
                "tree": self._tree,
                "open": sorted(self._open),
                "depth": sorted(self._depth.items()),
                "leaves": self._leaves,
            }
        )

    def restore(self, text: str) -> None:
        d = json.loads(text)
        self.seq, self.releases, self._tree = int(d["seq"]), int(d["releases"]), int(d["tree"])
        self._open = {int(v) for v in d["open"]}
        self._depth = {int(k): int(v) for k, v in d["depth"]}
        self._leaves = int(d["leaves"])

    def _features(self, tree: int) -> tuple[int, ...]:
        return tree_features(self.params, self.spec.num_features, tree)

    def check(self, seq: int, tree: int, req: Any, max_releases: int) -> None:
        """Check one request (a booster ``Request``) before the bank answers it."""
        wanted = self._features(tree)
        asked = tuple(range(self.spec.num_features)) if req.features is None else req.features
        if tuple(asked) != wanted:
            raise CoordinatorDeviates(
                f"tree {tree} asks for the histograms of features {list(asked)[:8]}"
                f"{'...' if len(asked) > 8 else ''} ({len(asked)}); the committed feature "
                f"seed draws {list(wanted)[:8]}{'...' if len(wanted) > 8 else ''} "
                f"({len(wanted)})"
            )
        if seq != self.seq + 1:
            raise CoordinatorDeviates(
                f"request {seq} out of sequence: expected request {self.seq + 1} (replayed or "
                "skipped)"
            )
        if req.init_score is not None or req.finish_values is not None:
            if tree != self._tree + 1:
                raise CoordinatorDeviates(f"new tree {tree}, expected tree {self._tree + 1}")
            if tuple(req.leaves) not in ((0,), ()) or (req.splits and req.init_score is not None):
                raise CoordinatorDeviates("a new tree starts with its root's histogram only")
            self._check_splits(req)  # the finished tree's last splits
            self._tree = tree
            self._open = {0} if req.leaves else set()
            self._depth = {0: 0}
            self._leaves = 1
        else:
            if tree != self._tree:
                raise CoordinatorDeviates(f"request for tree {tree}, this bank is at {self._tree}")
            children = self._check_splits(req)
            asked = set(req.leaves)
            if len(asked) != len(req.leaves) or not asked <= children.keys():
                raise CoordinatorDeviates(
                    "asked for leaves that are not children of this round's splits "
                    f"(asked {sorted(req.leaves)})"
                )
            per_split = [children[leaf] for leaf in req.leaves]
            if len(set(per_split)) != len(per_split):
                raise CoordinatorDeviates(
                    "asked for both children of one split (the second is the parent minus "
                    "the first)"
                )
            # Open next: the leaves asked for and their siblings (parent minus child).
            self._open = {c for c, p in children.items() if p in per_split}
        if req.leaves:
            self.releases += 1
            if self.releases > max_releases:
                raise CoordinatorDeviates(
                    f"histogram round {self.releases} is beyond the {max_releases} the noise "
                    "plan covers"
                )
        self.seq = seq

    def _check_splits(self, req: Any) -> dict[int, int]:
        """Apply the splits to the bank's view of the tree: {new or split leaf: split index}."""
        children: dict[int, int] = {}
        for i, sp in enumerate(req.splits):
            if sp.leaf not in self._open or sp.leaf in children:
                raise CoordinatorDeviates(f"split of leaf {sp.leaf}, which is not an open leaf")
            if not 0 <= sp.feature < self.spec.num_features:
                raise CoordinatorDeviates(f"split on feature {sp.feature}: no such feature")
            if sp.feature not in self._features(max(self._tree, 0)):
                raise CoordinatorDeviates(
                    f"split on feature {sp.feature}, which is not in tree {self._tree}'s subset"
                )
            if not 0 <= sp.bin < self.spec.num_bins(sp.feature) - 1:
                raise CoordinatorDeviates(
                    f"split at bin {sp.bin} of feature {sp.feature}, outside its "
                    f"{self.spec.num_bins(sp.feature)} bins"
                )
            if sp.right_leaf != self._leaves:
                raise CoordinatorDeviates(
                    f"split into leaf {sp.right_leaf}, expected the next new leaf {self._leaves}"
                )
            depth = self._depth[sp.leaf] + 1
            if depth > self.params.max_depth:
                raise CoordinatorDeviates(f"split below the agreed depth {self.params.max_depth}")
            self._leaves += 1
            self._depth[sp.leaf] = self._depth[sp.right_leaf] = depth
            children[sp.leaf] = children[sp.right_leaf] = i
        self._open = set()
        return children
