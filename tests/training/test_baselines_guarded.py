"""The baselines cannot go silently wrong (issue 18): a bank with one class is refused by
`bagging` and `cyclic` inside the federation (named by its id, not a Flower node id), the
cyclic order is the banks' ids sorted and reported, a degenerate model is refused, and a
test file with its columns in another order is scored by name."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from fedcredit.training.bank.source import CsvSource
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.run.simulation import simulate_many
from fedcredit.training.server.federation import BankDropped
from fedcredit.training.server.settings import InvalidTrainSettings, TrainSettings
from fedcredit.training.server.strategies import (
    DegenerateModel,
    FeatureMismatch,
    OneClassBank,
    TrainOutcome,
    check_model,
)

FEATURES = ["a", "b", "c"]


def _bank(path: Path, seed: int, n: int, *, only: int | None = None) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] - x[:, 1] + rng.logistic(size=n) > 0).astype(int)
    if only is not None:
        y[:] = only
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "y", *FEATURES])
        for i in range(n):
            w.writerow([f"{path.stem}-{i}", y[i], *(f"{v:.17g}" for v in x[i])])
    return str(path)


# A LightGBM model of one tree with no split (what a one-class bank's cyclic turn gives
# when it goes first) and one whose leaf is the all-0 bank's -34.5.
_CONSTANT = """tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=2
objective=binary sigmoid:1
feature_names=a b c
feature_infos=none none none
tree_sizes=100

Tree=0
num_leaves=1
num_cat=0
split_feature=
split_gain=
threshold=
decision_type=
left_child=
right_child=
leaf_value=-1.25
leaf_weight=
leaf_count=
internal_value=
internal_weight=
internal_count=
is_linear=0
shrinkage=1


end of trees
"""


def test_check_model_refuses_constant_and_certain_trees() -> None:
    with pytest.raises(DegenerateModel, match="none of the 1 trees splits"):
        check_model(_CONSTANT, "cyclic")
    split = _CONSTANT.replace("num_leaves=1", "num_leaves=2").replace(
        "leaf_value=-1.25", "leaf_value=-34.538776394910684 0.2"
    )
    with pytest.raises(DegenerateModel, match=r"tree 0 has a leaf value of magnitude 34\.5"):
        check_model(split, "bagging")
    check_model(split.replace("-34.538776394910684", "-0.4"), "bagging")  # a healthy stump


def test_min_banks_defaults() -> None:
    assert TrainSettings().least_banks == 2
    assert TrainSettings(strategy="hist", secagg=True).least_banks == 3
    assert TrainSettings(min_banks=1, num_banks=1).expected_banks == 1
    with pytest.raises(InvalidTrainSettings, match=r"SecAgg\+.*subtract"):
        TrainSettings(secagg=True, num_banks=2)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_one_class_bank_refused_in_federation_and_cyclic_order(tmp_path: Path) -> None:
    # File names sort differently from the order given: the cyclic order must follow them.
    banks = (
        _bank(tmp_path / "zeta.csv", 1, 300),
        _bank(tmp_path / "alpha.csv", 2, 250),
        _bank(tmp_path / "mid.csv", 3, 200, only=0),
    )
    params = GBDTParams(num_trees=4, max_depth=2)
    runs = [
        TrainSettings(strategy="bagging", params=params),
        TrainSettings(strategy="cyclic", params=params),
    ]
    out = simulate_many(runs, CsvSource(banks), 3)
    for o, strategy in zip(out, ("bagging", "cyclic"), strict=True):
        assert isinstance(o, OneClassBank), o
        assert o.message.startswith(f"{strategy}: bank mid.csv has only label 0 in all its 200")
        assert o.metadata["bank"] == "mid.csv"

    good = (banks[0], banks[1], _bank(tmp_path / "beta.csv", 4, 200))
    res = simulate_many(
        [TrainSettings(strategy="cyclic", params=params), TrainSettings(params=params)],
        CsvSource(good),
        3,
    )
    cyc, hist = res
    assert isinstance(cyc, TrainOutcome), cyc
    assert cyc.bank_order == ["alpha.csv", "beta.csv", "zeta.csv"]
    assert cyc.trees == 4 and cyc.message_rounds == 4  # one bank's turn per tree
    # hist: one round trip per level carrying every open leaf (depth 2: 2 per tree)
    assert isinstance(hist, TrainOutcome), hist
    assert hist.trees == 4 and hist.message_rounds == 2 * 4


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_test_file_in_another_column_order_scores_the_same(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    banks = [_bank(tmp_path / f"bank{b}.csv", b, 300) for b in range(3)]
    test = _bank(tmp_path / "test.csv", 9, 400)
    with Path(test).open(newline="") as fh:
        rows = list(csv.reader(fh))
    order = [4, 0, 2, 1, 3]  # c, id, a, y, b
    with (tmp_path / "shuffled.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([[r[i] for i in order] for r in rows])
    runner = CliRunner()
    args = ["train", "--json", "--trees", "3", "--depth", "2", "--strategy", "cyclic"]
    args += [a for p in banks for a in ("--csv", p)]
    out = {}
    # As `fedcredit`'s main() does (logging.basicConfig): a root handler on stderr, which
    # Flower's logger propagates to unless the run keeps its log to itself.
    root_handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root_handler)
    try:
        for name in ("test.csv", "shuffled.csv"):
            res = runner.invoke(build_app(), [*args, "--test-csv", str(tmp_path / name)])
            assert res.exit_code == 0, res.output
            out[name] = json.loads(res.stdout[res.stdout.index("{") :])
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert out["test.csv"]["auc"] == out["shuffled.csv"]["auc"] > 0.6
    lo, hi = out["test.csv"]["auc_ci95"]
    assert lo < out["test.csv"]["auc"] < hi and hi - lo < 0.2
    assert out["test.csv"]["bank_order"] == ["bank0.csv", "bank1.csv", "bank2.csv"]
    captured = capfd.readouterr()
    assert "deprecated" not in captured.err + captured.out


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_banks_check_their_own_files_and_are_named_by_file(tmp_path: Path) -> None:
    """As in a real deployment (no CLI in front): each bank's ClientApp reads and checks
    its own file; the server's messages name banks by file, never by Flower node id."""
    good = [_bank(tmp_path / f"bank{b}.csv", b, 200) for b in range(2)]
    dropped = tmp_path / "bank2.csv"
    _bank(dropped, 2, 200)
    lines = dropped.read_text().splitlines()
    dropped.write_text("\n".join(",".join(ln.split(",")[:4]) for ln in lines) + "\n")
    broken = tmp_path / "bank3.csv"
    _bank(broken, 3, 200)
    lines = broken.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ",12k"
    broken.write_text("\n".join(lines) + "\n")
    s = TrainSettings(strategy="hist", params=GBDTParams(num_trees=2, max_depth=2))
    out = simulate_many([s], CsvSource((*good, str(dropped))), 3)[0]
    assert isinstance(out, FeatureMismatch), out
    assert out.message == ("bank2.csv:1: column 'c': expected as in bank0.csv, got none"), (
        out.message
    )
    out = simulate_many([s], CsvSource((*good, str(broken))), 3)[0]
    assert isinstance(out, BankDropped), out
    assert f"{broken}:5: column 'c': expected a number" in out.message, out.message
    assert "node" not in out.message.lower(), out.message
