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
