"""The histogram GBDT core: LightGBM text output, losslessness, NaN handling, early stopping."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcredit.training.gbdt import (
    GBDTParams,
    HistServer,
    InvalidGbdtParams,
    NoSplitPossible,
    Party,
    fit_bin_spec,
    train_central,
)
from fedcredit.training.gbdt.binning import (
    local_range,
    local_sketch,
    merge_ranges,
    spec_from_sketch,
)
from fedcredit.training.gbdt.booster import Ensemble, Totals
from fedcredit.training.gbdt.lgb_text import ModelParts
from fedcredit.training.gbdt.metrics import auc, ks

NAMES = [f"f{i}" for i in range(6)]


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with NaN in two features: in f2 NaN means 'high', in f3 NaN means 'low'."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x[:, 4] = rng.integers(0, 4, size=n)  # few distinct values
    signal = x[:, 0] + 0.8 * x[:, 2] - 0.7 * x[:, 3] + 0.3 * x[:, 4]
    miss2 = rng.random(n) < 0.15
    miss3 = rng.random(n) < 0.15
    signal[miss2] += 1.5
    signal[miss3] += 1.5
    x[miss2, 2] = np.nan
    x[miss3, 3] = np.nan
    y = (signal + rng.normal(size=n) > 0.8).astype(float)
    ids = np.arange(n) + 1000 * seed
    return x, y, ids


def federated(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], params: GBDTParams, max_bins: int
) -> Ensemble:
    """The federated protocol in-process: each party bins with the summed sketch, server sums."""
    xs = [p[0] for p in parts]
    ranges = [local_range(x) for x in xs]
    lo, hi = merge_ranges([r[0] for r in ranges], [r[1] for r in ranges])
    sketch = sum(local_sketch(x, lo, hi) for x in xs)
    spec = spec_from_sketch(NAMES, lo, hi, sketch, max_bins)
    parties = [Party(spec, x, y, ids, params.validation_fraction) for x, y, ids in parts]
    totals = Totals.from_array(sum(p.totals().to_array() for p in parties))
    server = HistServer(params, spec, totals)
    while (req := server.next_request()) is not None:
        replies = [p.respond(req) for p in parties]
        hist = sum(r[0] for r in replies)
        valid = sum(r[1] for r in replies) if req.want_valid else None
        server.receive(hist, valid)
    return server.ensemble()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_data(4000, 0)


def test_lightgbm_loads_model_and_predicts_the_same(data: tuple) -> None:
    x, y, _ = data
    spec = fit_bin_spec(x, NAMES, 32)
    ens = train_central(spec, x, y, GBDTParams(num_trees=12, max_depth=4, learning_rate=0.2))
    booster = lgb.Booster(model_str=ens.to_lightgbm())
    assert booster.num_trees() == len(ens.trees) == 12
    x_test, _, _ = make_data(2000, 7)
    for rows in (x, x_test):
        np.testing.assert_allclose(booster.predict(rows), ens.predict(rows), rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            booster.predict(rows, raw_score=True), ens.predict_raw(rows), rtol=0, atol=1e-9
        )
    # Both default directions occur, and NaN rows really take them in LightGBM too.
    dirs = {d for t in ens.trees for d in t.default_left}
    assert dirs == {True, False}
    all_nan = np.full((1, 6), np.nan)
    assert booster.predict(all_nan)[0] == pytest.approx(ens.predict(all_nan)[0], abs=1e-12)


def test_pred_contrib_sums_to_raw_score(data: tuple) -> None:
    x, y, _ = data
    spec = fit_bin_spec(x, NAMES, 32)
    ens = train_central(spec, x, y, GBDTParams(num_trees=8, max_depth=3))
    booster = lgb.Booster(model_str=ens.to_lightgbm())
    contrib = booster.predict(x[:500], pred_contrib=True)
    assert contrib.shape == (500, 7)
    np.testing.assert_allclose(contrib.sum(axis=1), ens.predict_raw(x[:500]), atol=1e-9)
    # The expected value (last column) is the count-weighted mean of leaf values.
    expected = sum(
        float(np.dot(t.leaf_value, t.leaf_count)) / t.internal_count[0] for t in ens.trees
    )
    assert contrib[0, -1] == pytest.approx(expected, abs=1e-9)
    # An unused feature gets no contribution.
    used = {f for t in ens.trees for f in t.split_feature}
    for f in set(range(6)) - used:
        assert np.all(contrib[:, f] == 0.0)


def test_binned_routing_equals_raw_routing(data: tuple) -> None:
    x, y, _ = data
    spec = fit_bin_spec(x, NAMES, 16)
    ens = train_central(spec, x, y, GBDTParams(num_trees=5, max_depth=4))
    x_test, _, _ = make_data(1000, 3)
    b = spec.transform(x_test)
    for t in ens.trees:
        np.testing.assert_array_equal(t.leaf_index(x_test), t.leaf_index_binned(b, spec.nan_slot))
        # leaf counts are the training rows that reach each leaf
        counts = np.bincount(t.leaf_index(x), minlength=t.num_leaves)
        assert counts.tolist() == t.leaf_count


def test_federated_equals_central_bit_for_bit(data: tuple) -> None:
    x, y, ids = data
    params = GBDTParams(num_trees=10, max_depth=4, learning_rate=0.3, max_bins=32)
    # three unequal, non-IID parts: sorted by the first feature
    order = np.argsort(x[:, 0])
    cuts = np.split(order, [700, 2500])
    parts = [(x[c], y[c], ids[c]) for c in cuts]
    fed = federated(parts, params, 32)
    central = train_central(fit_bin_spec(x, NAMES, 32), x, y, params, ids)
    assert fed.to_lightgbm() == central.to_lightgbm()
    x_test, _, _ = make_data(2000, 11)
    np.testing.assert_array_equal(fed.predict(x_test), central.predict(x_test))


def test_early_stopping_truncates_to_best_iteration(data: tuple) -> None:
    x, y, ids = data
    params = GBDTParams(
        num_trees=200,
        max_depth=6,
        learning_rate=0.8,
        min_data_in_leaf=2,
        early_stopping_rounds=3,
        validation_fraction=0.25,
    )
    ens = train_central(fit_bin_spec(x, NAMES, 64), x, y, params, ids)
    assert len(ens.valid_logloss) < 200  # stopped early
    assert ens.best_iteration == int(np.argmin(ens.valid_logloss))
    assert len(ens.trees) == ens.best_iteration
    assert len(ens.valid_logloss) - 1 - ens.best_iteration == 3
    # same run federated: same stop, same model
    order = np.arange(len(y))
    parts = [(x[c], y[c], ids[c]) for c in np.array_split(order, 3)]
    fed = federated(parts, params, 64)
    assert fed.to_lightgbm() == ens.to_lightgbm()
    assert fed.valid_logloss == ens.valid_logloss


def test_accuracy_close_to_lightgbm_on_same_data(data: tuple) -> None:
    x, y, _ = data
    x_test, y_test, _ = make_data(3000, 5)
    params = GBDTParams(num_trees=30, max_depth=3, learning_rate=0.3, max_bins=32)
    ours = train_central(fit_bin_spec(x, NAMES, 32), x, y, params)
    ref = lgb.train(
        {
            "objective": "binary",
            "max_depth": 3,
            "num_leaves": 8,
            "learning_rate": 0.3,
            "max_bin": 32,
            "verbose": -1,
        },
        lgb.Dataset(x, y),
        num_boost_round=30,
    )
    a_ours = auc(y_test, ours.predict(x_test))
    a_ref = auc(y_test, ref.predict(x_test))
    assert abs(a_ours - a_ref) < 0.01, (a_ours, a_ref)


def test_auc_and_ks_match_reference() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.3).astype(float)
    s = np.round(y * 0.5 + rng.normal(size=3000), 1)  # ties on purpose
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    grid = np.unique(s)
    ref = np.max(
        np.abs(
            np.searchsorted(pos, grid, side="right") / pos.size
            - np.searchsorted(neg, grid, side="right") / neg.size
        )
    )
    assert ks(y, s) == pytest.approx(ref, abs=1e-12)


def test_bad_settings_and_data_are_refused_precisely() -> None:
    with pytest.raises(InvalidGbdtParams, match=r"max_depth must be an integer in 1\.\.16, got 0"):
        GBDTParams(max_depth=0)
    with pytest.raises(InvalidGbdtParams, match="validation_fraction"):
        GBDTParams(early_stopping_rounds=5)
    with pytest.raises(InvalidGbdtParams, match="unknown training setting"):
        GBDTParams.from_dict({"depth": 3})
    x = np.random.default_rng(0).normal(size=(100, 6))
    spec = fit_bin_spec(x, NAMES, 8)
    with pytest.raises(NoSplitPossible, match="constant"):
        train_central(spec, x, np.zeros(100), GBDTParams())
    with pytest.raises(NoSplitPossible, match="need at least 40 training rows"):
        train_central(spec, x[:30], np.r_[np.zeros(15), np.ones(15)], GBDTParams())


def test_bin_edges_few_values_and_quantiles() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 5, 5000), rng.exponential(size=5000), np.full(5000, 2.0)])
    spec = fit_bin_spec(x, ["a", "b", "c"], 32)
    assert spec.num_bins(0) == 5  # one bin per distinct value
    assert spec.num_bins(2) == 1  # constant feature cannot split
    counts = np.bincount(spec.transform(x)[:, 1], minlength=spec.num_bins(1))
    assert spec.num_bins(1) >= 28
    assert counts.max() < 3 * 5000 / 32  # roughly equal frequency on a skewed feature


def test_model_parts_round_trip(data: tuple) -> None:
    x, y, _ = data
    ref = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1},
        lgb.Dataset(x, y),
        num_boost_round=3,
    )
    text = ref.model_to_string()
    parts = ModelParts.parse(text)
    assert len(parts.trees) == 3
    parts.trees = parts.trees + parts.trees[1:]
    merged = lgb.Booster(model_str=parts.render())
    assert merged.num_trees() == 5
