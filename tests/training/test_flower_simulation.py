"""Flower Simulation Engine: federated hist equals central hist, with and without SecAgg+;
the LightGBM baselines run; a bank dropping out is handled as stated."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedcredit.training.bank.data import concat, load_csv
from fedcredit.training.bank.source import CsvSource
from fedcredit.training.gbdt import GBDTParams, fit_bin_spec, train_central
from fedcredit.training.gbdt.metrics import auc
from fedcredit.training.run.simulation import simulate_many
from fedcredit.training.server.federation import BankDropped
from fedcredit.training.server.settings import TrainSettings
from fedcredit.training.server.strategies import TrainOutcome

# Ray (the Simulation Engine) start-up is heavy and times out when two start at once on two
# busy cores: every test that starts Ray runs in the same xdist worker, one after another.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

N_FEATURES = 8


def write_bank(path: Path, rng: np.random.Generator, n: int, shift: float, start_id: int) -> None:
    x = rng.normal(loc=shift, size=(n, N_FEATURES))
    x[rng.random(n) < 0.1, 3] = np.nan
    logit = x[:, 0] - 0.8 * x[:, 1] + 0.5 * np.nan_to_num(x[:, 3], nan=1.0) - shift
    y = (logit + rng.logistic(size=n) > 0).astype(int)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "y", *[f"x{i}" for i in range(N_FEATURES)]])
        for i in range(n):
            w.writerow([start_id + i, y[i], *["" if np.isnan(v) else f"{v:.17g}" for v in x[i]]])


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    d = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(42)
    paths = []
    for b, (n, shift) in enumerate([(900, -0.3), (1300, 0.0), (700, 0.4)]):
        p = d / f"bank{b}.csv"
        write_bank(p, rng, n, shift, 10_000 * (b + 1))
        paths.append(str(p))
    return tuple(paths)


PARAMS = GBDTParams(
    num_trees=4,
    max_depth=3,
    learning_rate=0.3,
    max_bins=32,
    early_stopping_rounds=10,
    validation_fraction=0.2,
)


def test_hist_plain_secagg_and_baselines(banks: tuple[str, ...]) -> None:
    runs = [
        TrainSettings(strategy="hist", params=PARAMS),
        TrainSettings(strategy="hist", params=PARAMS, secagg=True),
        TrainSettings(strategy="bagging", params=GBDTParams(num_trees=3, max_depth=3)),
        TrainSettings(strategy="cyclic", params=GBDTParams(num_trees=4, max_depth=3)),
        TrainSettings(strategy="hist", params=PARAMS, secagg=True, secure_protocol="secaggplus"),
    ]
    out = simulate_many(runs, CsvSource(banks), 3)
    assert all(isinstance(o, TrainOutcome) for o in out), out
    plain, sec, bag, cyc, secplus = (o for o in out if isinstance(o, TrainOutcome))

    # Central hist on the pooled rows: same bins (the sketch sums), same model, bit for bit.
    pooled = concat([load_csv(p) for p in banks])
    spec = fit_bin_spec(pooled.x, pooled.feature_names, PARAMS.max_bins)
    central = train_central(spec, pooled.x, pooled.y, PARAMS, pooled.ids)
    assert plain.model_text == central.to_lightgbm()
    # Secure sums change no split and no value: the one-round masks cancel exactly, and
    # Flower's SecAgg+ quantisation is exact on the limbs.
    assert sec.model_text == plain.model_text == secplus.model_text
    assert plain.valid_logloss == central.valid_logloss and len(plain.valid_logloss) == 5
    assert plain.trees == 4 and plain.tree_rounds == 4 * 3 + 1
    # One round trip per level either way with the masked sums; SecAgg+ takes four.
    assert sec.message_rounds == plain.message_rounds == 4 * 3 + 1
    assert secplus.message_rounds == 4 * plain.message_rounds
    assert secplus.bytes_up > sec.bytes_up  # SecAgg+'s key exchange and limbs cost bytes

    x, y = pooled.x, pooled.y
    model = lgb.Booster(model_str=plain.model_text)
    np.testing.assert_allclose(model.predict(x), central.predict(x), atol=1e-12)
    assert auc(y, model.predict(x)) > 0.75

    # Bagging: every bank adds one tree per round -> 3 banks x 3 rounds; cyclic: one per round.
    assert lgb.Booster(model_str=bag.model_text).num_trees() == 9
    assert lgb.Booster(model_str=cyc.model_text).num_trees() == 4
    for o in (bag, cyc):
        assert auc(y, lgb.Booster(model_str=o.model_text).predict(x)) > 0.7


def _dropout_mod(marks: Path) -> Any:
    """Bank partition 1 fails at message group 5 (tree 0, depth 2): in the plain run while
    building histograms; in the SecAgg+ run at the unmask stage, after sending its vector."""

    def mod(msg: Message, ctx: Context, call_next: Any) -> Message:
        if ctx.node_config.get("partition-id") == 1 and msg.metadata.group_id == "5":
            mtype = msg.metadata.message_type
            if mtype in ("train.hist", "train.masked"):
                (marks / mtype).touch()
                raise RuntimeError("bank 1 went away")
            if mtype == "train":
                cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
                if cfg is not None and cfg.get(Key.STAGE) == Stage.UNMASK:
                    (marks / "unmask").touch()
                    raise RuntimeError("bank 1 went away after masking")
        return call_next(msg, ctx)

    return mod


def test_bank_dropping_out(banks: tuple[str, ...], tmp_path: Path) -> None:
    params = GBDTParams(num_trees=2, max_depth=3)
    runs = [
        TrainSettings(strategy="hist", params=params),
        TrainSettings(strategy="hist", params=params, secagg=True, secure_protocol="secaggplus"),
        TrainSettings(strategy="hist", params=params, secagg=True),
    ]
    plain, sec, masked = simulate_many(
        runs, CsvSource(banks), 3, client_mods=[_dropout_mod(tmp_path)]
    )
    assert (tmp_path / "train.hist").exists() and (tmp_path / "unmask").exists()
    # Plain: the run stops with a clear error naming the round and the bank.
    assert isinstance(plain, BankDropped), plain
    assert "train.hist round 5: expected answers from all 3 banks, got 2" in plain.message
    # One-round masked sums: without the dropped bank's vector the masks do not cancel;
    # the run stops the same way, naming the bank (never a sum of part of the banks).
    assert isinstance(masked, BankDropped), masked
    assert "train.masked round 5: expected answers from all 3 banks, got 2" in masked.message
    assert "bank1.csv" in masked.message
    # SecAgg+: the bank had sent its masked vector; its mask is rebuilt from the
    # other banks' shares, the sum is complete and training goes on unchanged.
    assert isinstance(sec, TrainOutcome), sec
    pooled = concat([load_csv(p) for p in banks])
    spec = fit_bin_spec(pooled.x, pooled.feature_names, params.max_bins)
    assert (
        sec.model_text == train_central(spec, pooled.x, pooled.y, params, pooled.ids).to_lightgbm()
    )


# FATE's strong settings where they matter for SecAgg+: 255 bins (257 histogram slots per
# feature, so the limb vectors are large) and depth 6 (32 leaves at the last level).
STRONG = GBDTParams(
    num_trees=3,
    max_depth=6,
    learning_rate=0.05,
    max_bins=255,
    min_data_in_leaf=5,
    early_stopping_rounds=10,
    validation_fraction=0.2,
)


def test_secagg_at_255_bins_and_depth_6_is_the_plain_model(banks: tuple[str, ...]) -> None:
    plain, sec = simulate_many(
        [
            TrainSettings(strategy="hist", params=STRONG),
            TrainSettings(
                strategy="hist", params=STRONG, secagg=True, secure_protocol="secaggplus"
            ),
        ],
        CsvSource(banks),
        3,
    )
    assert isinstance(plain, TrainOutcome) and isinstance(sec, TrainOutcome), (plain, sec)
    pooled = concat([load_csv(p) for p in banks])
    spec = fit_bin_spec(pooled.x, pooled.feature_names, STRONG.max_bins)
    assert spec.slots == 256  # 255 bins and the NaN slot: the full-size histograms
    central = train_central(spec, pooled.x, pooled.y, STRONG, pooled.ids)
    assert plain.model_text == central.to_lightgbm()
    # Every tree is as in the plain run: the limbs carry the sums exactly, the sketch
    # gives the same edges and the validation sums are the same.
    assert sec.model_text == plain.model_text
    assert sec.valid_logloss == plain.valid_logloss and len(sec.valid_logloss) == 4
    assert sec.trees == plain.trees == 3 and sec.tree_rounds == plain.tree_rounds == 3 * 6 + 1
    model = lgb.Booster(model_str=sec.model_text)
    assert max(t["num_leaves"] for t in model.dump_model()["tree_info"]) > 8  # depth > 3 used
    np.testing.assert_allclose(model.predict(pooled.x), central.predict(pooled.x), atol=1e-12)


def _write_rare_bank(path: Path, rng: np.random.Generator, n: int, shift: float, start: int) -> int:
    """A small loan book with a few % defaults, as the city's banks have."""
    x = rng.normal(loc=shift, size=(n, 6))
    logit = -3.6 + x[:, 0] - 0.7 * x[:, 1] + 0.4 * x[:, 2]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "y", *[f"x{i}" for i in range(6)]])
        for i in range(n):
            w.writerow([start + i, y[i], *(f"{v:.17g}" for v in x[i])])
    return int(y.sum())


def test_bagging_with_seven_small_banks_learns(tmp_path: Path) -> None:
    """Seven non-IID banks of 400-1,300 rows with 2-8 % defaults (the synthetic city's
    shape). Appending every bank's full-size trees made the scores oscillate with growing
    amplitude until all predictions were 0 or 1 (AUC 0.5) and the banks stopped adding
    trees; each bank's step weighted by its share of the rows is one step per round."""
    rng = np.random.default_rng(7)
    sizes = [420, 470, 660, 1090, 610, 1310, 400]
    shifts = [-0.2, 0.1, 0.0, 0.2, -0.1, 0.0, 0.3]
    paths = []
    for b, (n, shift) in enumerate(zip(sizes, shifts, strict=True)):
        p = tmp_path / f"bank{b}.csv"
        positives = _write_rare_bank(p, rng, n, shift, 10_000 * (b + 1))
        assert 0.02 * n < positives < 0.09 * n
        paths.append(str(p))
    test = tmp_path / "test.csv"
    _write_rare_bank(test, rng, 5000, 0.0, 900_000)
    rounds = 10
    params = GBDTParams(num_trees=rounds, max_depth=3, max_bins=32, learning_rate=0.3)
    [bag] = simulate_many(
        [TrainSettings(strategy="bagging", params=params)],
        CsvSource(tuple(paths)),
        len(paths),
        actors=2,
    )
    assert isinstance(bag, TrainOutcome), bag
    model = lgb.Booster(model_str=bag.model_text)
    assert model.num_trees() == rounds * len(paths)  # no bank ran out of splits
    t = load_csv(test)
    scores = model.predict(t.x)
    raw = model.predict(t.x, raw_score=True)
    assert np.all(np.isfinite(raw)) and np.max(np.abs(raw)) < 20  # no runaway scores
    assert np.std(scores) > 0.01 and len(np.unique(scores)) > 50  # not constant
    assert auc(t.y, scores) > 0.75
    # The mean score is near the default rate, as a step of the configured size gets it.
    assert abs(float(np.mean(scores)) - float(np.mean(t.y))) < 0.02
