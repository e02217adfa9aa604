"""Integer gradient/hessian/count histograms and split finding on them.

A histogram has shape (features, slots, 3): per feature and bin, the sums of
fixed-point gradients, fixed-point hessians and the row count. Sums of
integers are exact whatever the order, which is what makes the federated sum
equal the central one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.training.gbdt.params import FIXED_POINT_BITS, GBDTParams

IntArray = npt.NDArray[np.int64]
SCALE = float(2**-FIXED_POINT_BITS)


def to_fixed(values: npt.NDArray[np.float64]) -> IntArray:
    """Round to the fixed-point grid (2**-FIXED_POINT_BITS)."""
    return np.rint(values * float(2**FIXED_POINT_BITS)).astype(np.int64)


def build_histograms(
    binned: npt.NDArray[np.integer[Any]],
    grad: IntArray,
    hess: IntArray,
    leaf_of_row: IntArray,
    leaves: Sequence[int],
    slots: int,
) -> IntArray:
    """Histograms of the requested leaves, shape (len(leaves), features, slots, 3)."""
    n_features = binned.shape[1]
    k = len(leaves)
    out = np.zeros((k, n_features, slots, 3), dtype=np.int64)
    if k == 0 or binned.shape[0] == 0:
        return out
    lut = np.full(max(int(leaf_of_row.max(initial=0)), max(leaves)) + 1, -1, dtype=np.int64)
    lut[np.asarray(leaves, dtype=np.int64)] = np.arange(k)
    slot_of_row = lut[leaf_of_row]
    rows = np.flatnonzero(slot_of_row >= 0)
    if rows.size == 0:
        return out
    base = (slot_of_row[rows] * n_features)[:, None] + np.arange(n_features)[None, :]
    idx = (base * slots + binned[rows].astype(np.int64)).ravel()
    size = k * n_features * slots
    # float64 sums of integers below 2**53 are exact, whatever the order.
    g = np.bincount(
        idx, weights=np.repeat(grad[rows].astype(np.float64), n_features), minlength=size
    )
    h = np.bincount(
        idx, weights=np.repeat(hess[rows].astype(np.float64), n_features), minlength=size
    )
    c = np.bincount(idx, minlength=size)
    out[..., 0] = np.rint(g).astype(np.int64).reshape(k, n_features, slots)
    out[..., 1] = np.rint(h).astype(np.int64).reshape(k, n_features, slots)
    out[..., 2] = c.astype(np.int64).reshape(k, n_features, slots)
    return out


@dataclass(frozen=True)
class Stats:
    """Fixed-point sums of one node."""

    g: int
    h: int
    n: int

    @property
    def grad(self) -> float:
        return self.g * SCALE

    @property
    def hess(self) -> float:
        return self.h * SCALE


def leaf_output(s: Stats, params: GBDTParams) -> float:
    """Newton step -G/(H+lambda), not yet shrunk (LightGBM's leaf output without L1)."""
    denom = s.hess + params.lambda_l2
    out = 0.0 if denom <= 0.0 else -s.grad / denom
    cap = params.max_delta_step
    return max(-cap, min(cap, out)) if cap > 0.0 else out


@dataclass(frozen=True)
class SplitChoice:
    feature: int
    bin: int
    default_left: bool
    gain: float
    left: Stats
    right: Stats


def node_total(hist: IntArray) -> IntArray:
    """The node's (G, H, n) from its histogram (features, slots, 3).

    Every row lands in one slot of every feature, so each feature's histogram sums to
    the same totals; exact sums agree and the first is taken. Noisy (private) sums
    disagree: their mean over the F features is the same total with 1/F of the noise
    variance, for no extra privacy cost (post-processing)."""
    per_feature = hist.sum(axis=1)  # (F, 3)
    if (per_feature == per_feature[0]).all():
        return per_feature[0]
    return np.rint(per_feature.mean(axis=0)).astype(np.int64)


def node_stats(hist: IntArray) -> Stats:
    t = node_total(hist)
    return Stats(int(t[0]), int(t[1]), int(t[2]))


def best_split(
    hist: IntArray, num_bins: npt.NDArray[np.int64], params: GBDTParams
) -> SplitChoice | None:
    """Best split of one node from its histogram (features, slots, 3), or None.

    Gain as LightGBM/XGBoost without the 1/2: GL²/(HL+λ) + GR²/(HR+λ) − G²/(H+λ).
    Each threshold is tried with NaN going right, then (if the node has NaN) left;
    the first maximum in (direction, feature, bin) order wins, so ties are broken
    the same way on every run.
    """
    n_features, slots, _ = hist.shape
    nan = hist[:, slots - 1, :]  # (F, 3)
    cum = np.cumsum(hist[:, : slots - 1, :], axis=1)  # (F, S-1, 3)
    total = node_total(hist)  # (3,)
    left = np.stack([cum, cum + nan[:, None, :]])  # (2, F, S-1, 3)
    right = total[None, None, None, :] - left
    bins = np.arange(slots - 1)[None, :]
    ok = np.broadcast_to(bins < (num_bins[:, None] - 1), (2, n_features, slots - 1)).copy()
    ok[1] &= (nan[:, 2] > 0)[:, None]
    ok &= (left[..., 2] >= params.min_data_in_leaf) & (right[..., 2] >= params.min_data_in_leaf)
    hl = left[..., 1] * SCALE
    hr = right[..., 1] * SCALE
    ok &= (hl >= params.min_sum_hessian_in_leaf) & (hr >= params.min_sum_hessian_in_leaf)
    if not ok.any():
        return None
    gl = left[..., 0] * SCALE
    gr = right[..., 0] * SCALE
    g_tot = total[0] * SCALE
    h_tot = total[1] * SCALE
    lam = params.lambda_l2
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = gl * gl / (hl + lam) + gr * gr / (hr + lam) - g_tot * g_tot / (h_tot + lam)
    gain = np.where(ok & np.isfinite(gain), gain, -np.inf)
    flat = int(np.argmax(gain))
    best = float(gain.flat[flat])
    if not best > params.min_gain_to_split:
        return None
    direction, feature, b = np.unravel_index(flat, gain.shape)
    lv = left[direction, feature, b]
    rv = right[direction, feature, b]
    return SplitChoice(
        feature=int(feature),
        bin=int(b),
        default_left=bool(direction == 1),
        gain=best,
        left=Stats(int(lv[0]), int(lv[1]), int(lv[2])),
        right=Stats(int(rv[0]), int(rv[1]), int(rv[2])),
    )
