"""The bootstrap interval every printed AUC carries (training/gbdt/metrics.auc_interval)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcredit.training.gbdt.metrics import auc, auc_interval, format_auc


def _scores(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(float)
    return y, y * 0.8 + rng.normal(size=n)


def _reference(y: np.ndarray, s: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """The textbook form: resample rows, sort, rank, AUC; same draws as auc_interval."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(resamples):
        idx = rng.integers(0, y.size, y.size)
        vals.append(auc(y[idx], s[idx]))
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


@pytest.mark.parametrize("rounded", [False, True])  # all scores distinct / many ties
def test_matches_the_textbook_bootstrap(rounded: bool) -> None:
    y, s = _scores(500)
    if rounded:
        s = np.round(s, 1)
    assert auc_interval(y, s, resamples=200, seed=7) == pytest.approx(
        _reference(y, s, 200, 7), abs=1e-12
    )


def test_interval_holds_the_estimate_and_narrows_with_rows() -> None:
    y, s = _scores(400)
    lo, hi = auc_interval(y, s)
    assert lo < auc(y, s) < hi
    y2, s2 = _scores(10_000)
    lo2, hi2 = auc_interval(y2, s2)
    assert hi2 - lo2 < (hi - lo) / 3  # ~ 1 / sqrt(25) of the width
    assert auc_interval(y, s) == (lo, hi)  # seeded: the same figures every run
    assert auc_interval(y, s, seed=1) != (lo, hi)


def test_edge_cases() -> None:
    y = np.array([0, 0, 1, 1.0])
    assert auc_interval(y, np.array([0.1, 0.2, 0.8, 0.9])) == (1.0, 1.0)
    lo, hi = auc_interval(np.zeros(5), np.arange(5.0))
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="as many scores as labels"):
        auc_interval(y, np.zeros(3))
    assert format_auc(0.77301, (0.76, 0.7858)) == "0.7730 (95 % CI 0.7600-0.7858)"
    assert format_auc(float("nan"), None) == "n/a"
