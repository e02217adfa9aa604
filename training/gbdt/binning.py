"""Global bin edges, shared by every party.

Binning is lossless across parties only if everyone uses the same edges. The
edges come from a two-step sketch that can be summed (and so securely
aggregated): each party reports its finite min/max per feature, then counts of
its values on a fine grid between the global min and max; the sum of those
counts gives global quantiles. A central run computes the very same sketch on
pooled rows, so it gets identical edges.

The grid is equal-width in ``asinh(x)``, not in ``x``: linear near zero,
logarithmic for large magnitudes, defined for negatives. Credit features are
mostly heavy-tailed amounts (bills, payments, revenue); on an equal-width grid
most of their rows fall in a few cells, the quantile cuts collapse onto them,
and a 255-bin request got about 77 distinct bins per feature on the FATE
credit data. Measured there (central hist = federated hist, against pooled
LightGBM on the same test rows): AUC gap -0.0032 at 200 trees / depth 6 / 255
bins with the linear grid, +0.0006 with this one; +0.0031 and -0.0010 at
FATE's 30 trees / depth 3 / 32 bins. The sketch keeps its size.

A value ``x`` falls in bin ``b`` when ``edges[b-1] < x <= edges[b]`` — the
same comparison LightGBM makes with a split threshold (``x <= threshold`` goes
left). NaN has its own bin, the last slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.training.gbdt.errors import BinSpecMismatch, GbdtError

SKETCH_CELLS = 4096
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BinSpec:
    feature_names: tuple[str, ...]
    edges: tuple[FloatArray, ...]  # per feature, sorted upper bounds of all bins but the last
    mins: tuple[float, ...]
    maxs: tuple[float, ...]

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def num_bins(self, feature: int) -> int:
        return int(self.edges[feature].shape[0]) + 1

    @property
    def slots(self) -> int:
        """Histogram slots per feature: the most bins of any feature, plus the NaN slot."""
        return max((self.num_bins(f) for f in range(self.num_features)), default=1) + 1

    @property
    def nan_slot(self) -> int:
        return self.slots - 1

    def threshold(self, feature: int, bin_index: int) -> float:
        return float(self.edges[feature][bin_index])

    def transform(self, x: npt.ArrayLike) -> npt.NDArray[np.integer[Any]]:
        """Bin index of every value; NaN goes to the NaN slot."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.num_features:
            raise BinSpecMismatch(
                f"expected rows with {self.num_features} features, got an array of shape "
                f"{arr.shape}",
                expected=self.num_features,
            )
        dtype: type[np.integer[Any]] = np.uint8 if self.slots <= 256 else np.uint16
        out = np.empty(arr.shape, dtype=dtype)
        for f in range(self.num_features):
            col = arr[:, f]
            b = np.searchsorted(self.edges[f], col, side="left")
            b[np.isnan(col)] = self.nan_slot
            out[:, f] = b
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "edges": [e.tolist() for e in self.edges],
            "mins": list(self.mins),
            "maxs": list(self.maxs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinSpec:
        try:
            return cls(
                feature_names=tuple(str(n) for n in d["feature_names"]),
                edges=tuple(np.asarray(e, dtype=np.float64) for e in d["edges"]),
                mins=tuple(float(v) for v in d["mins"]),
                maxs=tuple(float(v) for v in d["maxs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GbdtError(f"bin specification is malformed: {exc}") from exc


def local_range(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Finite min and max per feature (NaN where a feature has no finite value)."""
    finite = np.where(np.isfinite(x), x, np.nan)
    with np.errstate(all="ignore"):
        if x.shape[0] == 0:
            nan = np.full(x.shape[1], np.nan)
            return nan, nan.copy()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)


def merge_ranges(
    mins: Sequence[FloatArray], maxs: Sequence[FloatArray]
) -> tuple[FloatArray, FloatArray]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(np.vstack(mins), axis=0), np.nanmax(np.vstack(maxs), axis=0)


def local_sketch(
    x: FloatArray, lo: FloatArray, hi: FloatArray, cells: int = SKETCH_CELLS
) -> IntArray:
    """Counts of finite values per fine cell (equal-width in asinh), shape (features, cells);
    summable across parties."""
    n_features = x.shape[1]
    out = np.zeros((n_features, cells), dtype=np.int64)
    for f in range(n_features):
        col = x[:, f]
        col = col[np.isfinite(col)]
        if col.size == 0 or not np.isfinite(lo[f]):
            continue
        if hi[f] <= lo[f]:
            out[f, 0] = col.size
            continue
        ulo, uhi = np.arcsinh(lo[f]), np.arcsinh(hi[f])
        idx = np.floor((np.arcsinh(col) - ulo) / (uhi - ulo) * cells).astype(np.int64)
        np.clip(idx, 0, cells - 1, out=idx)
        out[f] = np.bincount(idx, minlength=cells)
    return out


def spec_from_sketch(
    feature_names: Sequence[str],
    lo: FloatArray,
    hi: FloatArray,
    counts: IntArray,
    max_bins: int,
) -> BinSpec:
    """Equal-frequency edges from the summed sketch; few-valued features get one bin per value."""
    cells = counts.shape[1]
    edges: list[FloatArray] = []
    for f in range(len(feature_names)):
        c = counts[f]
        nonempty = np.flatnonzero(c)
        if nonempty.size <= 1 or not np.isfinite(lo[f]) or hi[f] <= lo[f]:
            edges.append(np.zeros(0, dtype=np.float64))
            continue
        ulo = float(np.arcsinh(lo[f]))
        width = (float(np.arcsinh(hi[f])) - ulo) / cells

        def upper(cell: int, ulo: float = ulo, width: float = width) -> float:
            return float(np.sinh(ulo + (cell + 1) * width))

        if nonempty.size <= max_bins:
            cut_cells = nonempty[:-1]
        else:
            cum = np.cumsum(c[nonempty])
            total = cum[-1]
            targets = np.arange(1, max_bins) * (total / max_bins)
            pos = np.searchsorted(cum, targets, side="left")
            pos = np.unique(np.clip(pos, 0, nonempty.size - 2))
            cut_cells = nonempty[pos]
        edges.append(np.unique(np.array([upper(int(k)) for k in cut_cells], dtype=np.float64)))
    return BinSpec(
        feature_names=tuple(feature_names),
        edges=tuple(edges),
        mins=tuple(float(v) for v in lo),
        maxs=tuple(float(v) for v in hi),
    )


def fit_bin_spec(x: npt.ArrayLike, feature_names: Sequence[str], max_bins: int) -> BinSpec:
    """Edges for pooled rows: the same sketch a federation of parties would sum."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(feature_names):
        raise BinSpecMismatch(
            f"expected rows with {len(feature_names)} features, got shape {arr.shape}"
        )
    lo, hi = local_range(arr)
    return spec_from_sketch(feature_names, lo, hi, local_sketch(arr, lo, hi), max_bins)
