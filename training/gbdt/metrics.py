"""AUC and KS of scores against binary labels (ties handled by average ranks)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def auc(y: npt.ArrayLike, score: npt.ArrayLike) -> float:
    ya = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    pos = ya == 1.0
    n_pos = int(pos.sum())
    n_neg = ya.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average rank over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ks(y: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Kolmogorov–Smirnov statistic: max gap between the score CDFs of positives and negatives."""
    ya = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = float((ya == 1.0).sum())
    n_neg = float(ya.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss, yy = s[order], ya[order]
    cpos = np.cumsum(yy == 1.0) / n_pos
    cneg = np.cumsum(yy != 1.0) / n_neg
    last = np.r_[ss[1:] != ss[:-1], True]  # evaluate only after each distinct score
    return float(np.max(np.abs(cpos[last] - cneg[last])))


# Resamples and seed of every printed interval: 1000 keeps the 2.5/97.5 % quantiles'
# own Monte Carlo error near 0.002 AUC; the fixed seed makes a run's figures repeatable.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def auc_interval(
    y: npt.ArrayLike,
    score: npt.ArrayLike,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC (rows resampled with replacement).

    The rows are sorted by score once; a resample is then a count per row (a bincount
    of the drawn indices), and its AUC the Mann-Whitney sum over the distinct scores
    (ties count one half): no sort per resample, about 1 s for 1000 x 40,000 rows.
    (nan, nan) when ``y`` lacks one of the classes."""
    ya = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if ya.size != s.size:
        raise ValueError(f"expected as many scores as labels, got {s.size} and {ya.size}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"expected a level between 0 and 1, got {level}")
    n = ya.size
    n_pos = int((ya == 1.0).sum())
    if n_pos == 0 or n_pos == n or resamples < 1:
        return float("nan"), float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    pos = (ya[order] == 1.0).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])  # distinct scores
    distinct = starts.size
    rng = np.random.default_rng(seed)
    values = np.empty(resamples, dtype=np.float64)
    for b in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n)[order]
        wp = w * pos
        g_neg = w - wp
        g_pos = wp
        if distinct < n:  # group tied scores
            g_pos, g_neg = np.add.reduceat(wp, starts), np.add.reduceat(g_neg, starts)
        n_p, n_n = int(g_pos.sum()), int(g_neg.sum())
        if n_p == 0 or n_n == 0:
            values[b] = np.nan
            continue
        below = np.cumsum(g_neg) - g_neg
        values[b] = float((g_pos * (below + 0.5 * g_neg)).sum()) / (n_p * n_n)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def format_auc(value: float | None, interval: tuple[float, float] | None, digits: int = 4) -> str:
    """``0.7730 (95 % CI 0.7601-0.7858)``: how every AUC is printed."""
    if value is None or value != value:
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval is not None and interval[0] == interval[0]:
        text += f" (95 % CI {interval[0]:.{digits}f}-{interval[1]:.{digits}f})"
    return text
