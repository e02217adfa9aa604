"""The bank's side of bins from a DP sketch (issue 15): it releases its noisy sketch once
per private training and before it starts, and accepts only the bins the public
quantile rule gives on a sketch it released under the same settings and noise plan."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedcredit.training.bank.app import SPEC_STATE, _Bank
from fedcredit.training.bank.data import load_csv
from fedcredit.training.bank.source import CsvSource
from fedcredit.training.gbdt import GBDTParams
from fedcredit.training.gbdt.privacy import (
    SKETCH_CELLS_DP,
    BankNoise,
    CoordinatorDeviates,
    InvalidPrivacySettings,
    NoisePlan,
    PrivacyBudgetExceeded,
    parse_ranges,
    public_spec,
    quantile_spec,
    seeded_sampler,
    sketch_counts,
    sketch_grid,
)

from .test_flower_simulation import N_FEATURES, write_bank

PARAMS = GBDTParams(num_trees=3, max_depth=2, max_bins=6, min_data_in_leaf=50)
SEED = 11


@pytest.fixture
def bank(tmp_path: Path) -> tuple[_Bank, Context, Any, str]:
    csv = tmp_path / "bank0.csv"
    write_bank(csv, np.random.default_rng(3), 800, 0.0, 1)
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({f"x{i}": [-5, 5] for i in range(N_FEATURES)}))
    source = CsvSource((str(csv),), privacy=(("public-ranges", str(ranges)), ("noise-seed", SEED)))
    ctx = Context(1, 10, {"partition-id": 0}, RecordDict(), {})
    return _Bank(source), ctx, parse_ranges(json.loads(ranges.read_text())), str(csv)


def _blob(sketch_rounds: float = 1.0, **extra: Any) -> dict[str, Any]:
    plan = NoisePlan.calibrate(PARAMS, N_FEATURES, 3, 4.0, 1e-6, sketch_rounds=sketch_rounds)
    return {
        "params": PARAMS.to_dict(),
        "plan": plan.to_dict(),
        "training": uuid.uuid4().hex,
    } | extra


def _start(bank: _Bank, ctx: Context, blob: dict[str, Any], spec: Any) -> np.ndarray:
    cfg = {"spec": json.dumps(spec.to_dict()), "validation_fraction": 0.0}
    # As one of the 3 banks of a masked sum (the plan's shares; check_share).
    return bank.totals(ctx, cfg | {"privacy": json.dumps(blob)}, parties=3)


def test_bank_releases_its_noisy_sketch_once_and_checks_the_bins_from_it(
    bank: tuple[_Bank, Context, Any, str],
) -> None:
    b, ctx, ranges, csv = bank
    names = [f"x{i}" for i in range(N_FEATURES)]
    blob = _blob()
    out = b.dp_sketch(ctx, {"privacy": json.dumps(blob)}, parties=3)
    d = load_csv(csv)
    exact = sketch_counts(sketch_grid(names, ranges), d.x)
    plan = NoisePlan.from_dict(blob["plan"])
    # Its rows' counts with exactly its seeded noise share: never the counts in clear.
    want = BankNoise(plan, seeded_sampler(SEED)).noisy_sketch(exact)
    assert np.array_equal(out, want.ravel()) and not np.array_equal(out, exact.ravel())
    assert out.shape == (N_FEATURES * SKETCH_CELLS_DP,)
    with pytest.raises(CoordinatorDeviates, match="already released"):
        b.dp_sketch(ctx, {"privacy": json.dumps(blob)}, parties=3)

    counts = out.reshape(N_FEATURES, SKETCH_CELLS_DP) * 3  # what the sum may be
    good = quantile_spec(names, ranges, counts, PARAMS.max_bins)
    other = quantile_spec(names, ranges, counts[:, ::-1].copy(), PARAMS.max_bins)
    with pytest.raises(CoordinatorDeviates, match="bin spec differs"):
        # Edges not from the sketch it is shown (the bank drops out of that training).
        _start(b, ctx, blob | {"sketch": counts.tolist()}, other)
    fresh = _blob()
    b.dp_sketch(ctx, {"privacy": json.dumps(fresh)}, parties=3)
    totals = _start(b, ctx, fresh | {"sketch": counts.tolist()}, good)
    assert totals.shape == (4,)
    # After the training started, no second sketch under its id.
    with pytest.raises(CoordinatorDeviates, match="already released"):
        b.dp_sketch(ctx, {"privacy": json.dumps(fresh)}, parties=3)
    seen_only = _blob()
    b.new_training(ctx, {"privacy": json.dumps(seen_only)})  # started without a sketch
    with pytest.raises(CoordinatorDeviates, match="after the training started"):
        b.dp_sketch(ctx, {"privacy": json.dumps(seen_only)}, parties=3)


def test_bank_refuses_bins_from_a_sketch_it_did_not_release(
    bank: tuple[_Bank, Context, Any, str],
) -> None:
    b, ctx, ranges, _csv = bank
    names = [f"x{i}" for i in range(N_FEATURES)]
    counts = np.full((N_FEATURES, SKETCH_CELLS_DP), 10, dtype=np.int64)
    spec = quantile_spec(names, ranges, counts, PARAMS.max_bins)
    # Skipped sketch round: the coordinator makes up the aggregate.
    with pytest.raises(CoordinatorDeviates, match="did not release"):
        _start(b, ctx, _blob(sketch={"x": 1}) | {"sketch": counts.tolist()}, spec)
    # Sketch released under one plan, training started under another (a cheaper sketch
    # priced, a costlier one asked for).
    blob = _blob()
    b.dp_sketch(ctx, {"privacy": json.dumps(blob)}, parties=3)
    swapped = _blob(sketch_rounds=0.5) | {"training": blob["training"], "sketch": counts.tolist()}
    with pytest.raises(CoordinatorDeviates, match="did not release"):
        _start(b, ctx, swapped, spec)
    # A plan without a sketch gets no sketch.
    with pytest.raises(CoordinatorDeviates, match="prices no DP sketch"):
        b.dp_sketch(ctx, {"privacy": json.dumps(_blob(sketch_rounds=0.0))}, parties=3)
    # Malformed counts are refused by name.
    blob2 = _blob()
    b.dp_sketch(ctx, {"privacy": json.dumps(blob2)}, parties=3)
    with pytest.raises(CoordinatorDeviates, match="sketch"):
        _start(b, ctx, blob2 | {"sketch": [[1, 2]]}, spec)


def _roster(n: int) -> str:
    return json.dumps([[i, "00" * 32] for i in range(1, n + 1)])


def test_bank_adds_the_full_noise_unless_a_secure_sum_hides_its_share(
    bank: tuple[_Bank, Context, Any, str],
) -> None:
    """Each bank adds 1/sqrt(plan.banks) of the noise. A coordinator that claims more banks
    than the sum it asks for (any number in clear, where it sees each bank's vector; more
    than the roster in a masked sum) would get each bank's counts under a fraction of the
    noise the run is priced for: the bank refuses, for the sketch, the totals and the
    histograms alike, before it releases anything."""
    b, ctx, ranges, _csv = bank
    names = [f"x{i}" for i in range(N_FEATURES)]
    blob = _blob()  # priced for 3 banks' shares
    with pytest.raises(CoordinatorDeviates, match="3 banks"):
        b.dp_sketch(ctx, {"privacy": json.dumps(blob)}, parties=1)  # in clear
    with pytest.raises(CoordinatorDeviates, match="3 banks"):
        b.secure_vector(
            ctx,
            {
                "op": "dpsketch",
                "payload": json.dumps({"privacy": json.dumps(blob)}),
                "roster": _roster(2),
            },
        )
    assert b.dp_sketch(ctx, {"privacy": json.dumps(blob)}, parties=3).shape == (
        N_FEATURES * SKETCH_CELLS_DP,
    )
    counts = np.zeros((N_FEATURES, SKETCH_CELLS_DP), dtype=np.int64)
    spec = quantile_spec(names, ranges, counts, PARAMS.max_bins)
    cfg = {"spec": json.dumps(spec.to_dict()), "validation_fraction": 0.0}
    start = cfg | {"privacy": json.dumps(blob | {"sketch": counts.tolist()})}
    with pytest.raises(CoordinatorDeviates, match="3 banks"):
        b.totals(ctx, start)
    assert b.totals(ctx, start, parties=3).shape == (4,)
    # The histograms of that training (priced for 3 shares), asked in clear, are refused.
    with pytest.raises(CoordinatorDeviates, match="3 banks"):
        b.hist(ctx, {"request": "{}"})
    # A plan that splits the noise over no bank at all is malformed, not a crash.
    with pytest.raises(InvalidPrivacySettings, match="banks"):
        NoisePlan.from_dict(blob["plan"] | {"banks": 0})


def test_private_sums_refuse_the_secaggplus_path(
    bank: tuple[_Bank, Context, Any, str],
) -> None:
    """Flower's SecAgg+ unmasks the sum of whichever banks survive, so a bank's noise
    share would be summed with fewer shares than the plan's: private runs sum only
    through the masked protocol (which stops on any drop) and the bank refuses the other."""
    b, ctx, _ranges, _csv = bank
    blob = _blob()
    with pytest.raises(CoordinatorDeviates, match="masked"):
        b.check_share(ctx, {"privacy": json.dumps(blob)}, parties=None)


def test_a_private_only_bank_refuses_every_request_without_a_noise_plan(tmp_path: Path) -> None:
    """A malicious coordinator need not break the private protocol: it can ask as if
    the run were not private (setup with row counts, min and max; the fine-grid sketch
    with label totals; exact histograms; whole LightGBM models). A bank whose node
    config says ``private-only`` refuses all of them by name, and still answers the
    private protocol."""
    csv = tmp_path / "bank0.csv"
    write_bank(csv, np.random.default_rng(3), 400, 0.0, 1)
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({f"x{i}": [-5, 5] for i in range(N_FEATURES)}))
    privacy = (("public-ranges", str(ranges)), ("noise-seed", SEED), ("private-only", True))
    b = _Bank(CsvSource((str(csv),), privacy=privacy))
    ctx = Context(1, 10, {"partition-id": 0}, RecordDict(), {})
    names = [f"x{i}" for i in range(N_FEATURES)]
    spec = quantile_spec(
        names,
        parse_ranges(json.loads(ranges.read_text())),
        np.zeros((N_FEATURES, SKETCH_CELLS_DP), dtype=np.int64),
        PARAMS.max_bins,
    )
    plain = {"spec": json.dumps(spec.to_dict()), "validation_fraction": 0.0}
    refusals = {
        "setup": lambda: b.setup(ctx, {"max_bins": 6}),
        "sketch": lambda: b.sketch(
            ctx,
            {
                "lo": [-5] * N_FEATURES,
                "hi": [5] * N_FEATURES,
                "cells": 64,
                "validation_fraction": 0.0,
            },
        ),
        "hist": lambda: b.hist(ctx, plain | {"request": "{}"}),
        "totals": lambda: b.totals(ctx, plain),
        "boost": lambda: b.boost(ctx, {"lgb_params": "{}", "rounds": 1}),
    }
    for what, call in refusals.items():
        with pytest.raises(CoordinatorDeviates, match="private-only"):
            call()
        assert SPEC_STATE not in ctx.state.config_records, what  # nothing kept
    info = b.setup(ctx, {"private": True})["info"]
    assert set(info) == {"feature_names", "bank", "public_key"}
    plan = NoisePlan.calibrate(PARAMS, N_FEATURES, 1, 4.0, 1e-6, sketch_rounds=1.0)
    blob = {"params": PARAMS.to_dict(), "plan": plan.to_dict(), "training": uuid.uuid4().hex}
    assert b.dp_sketch(ctx, {"privacy": json.dumps(blob)}).shape == (N_FEATURES * SKETCH_CELLS_DP,)
    counts = np.zeros((N_FEATURES, SKETCH_CELLS_DP), dtype=np.int64)
    b.totals(ctx, plain | {"privacy": json.dumps(blob | {"sketch": counts.tolist()})})
    # Mid-training, a request that starts a new training without a plan is refused too.
    with pytest.raises(CoordinatorDeviates, match="private-only"):
        b.hist(ctx, plain | {"request": "{}"})


def test_a_bank_composes_every_private_training_under_its_lifetime_budget(
    tmp_path: Path,
) -> None:
    """Each private training is priced on its own (max-epsilon), but a coordinator can
    start as many as it likes, each with a fresh training id - in one run or in new runs
    - and average the banks' sketches and histograms. A bank with ``max-epsilon-total``
    composes (OpenDP) every training it released anything for, kept in its
    ``privacy-ledger`` file across runs, and refuses the one that would go over."""
    csv = tmp_path / "bank0.csv"
    write_bank(csv, np.random.default_rng(3), 400, 0.0, 1)
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({f"x{i}": [-5, 5] for i in range(N_FEATURES)}))
    ledger = tmp_path / "spent.json"
    privacy = (
        ("public-ranges", str(ranges)),
        ("noise-seed", SEED),
        ("max-epsilon-total", 5.0),
        ("privacy-ledger", str(ledger)),
    )
    b = _Bank(CsvSource((str(csv),), privacy=privacy))

    def blob() -> dict[str, Any]:
        plan = NoisePlan.calibrate(PARAMS, N_FEATURES, 1, 4.0, 1e-6, sketch_rounds=1.0)
        return {"params": PARAMS.to_dict(), "plan": plan.to_dict(), "training": uuid.uuid4().hex}

    ctx = Context(1, 10, {"partition-id": 0}, RecordDict(), {})
    first = blob()
    b.dp_sketch(ctx, {"privacy": json.dumps(first)})  # epsilon 4 of 5
    with pytest.raises(PrivacyBudgetExceeded, match="max-epsilon-total"):
        b.dp_sketch(ctx, {"privacy": json.dumps(blob())})  # a second one: 5.9 together
    # A new Flower run (fresh context) does not reset it: the ledger file keeps it.
    fresh = Context(2, 10, {"partition-id": 0}, RecordDict(), {})
    # Nor does replaying the first training's id in the new run (its sketch is released).
    with pytest.raises(CoordinatorDeviates, match="already released"):
        b.dp_sketch(fresh, {"privacy": json.dumps(first)})
    with pytest.raises(PrivacyBudgetExceeded, match="max-epsilon-total"):
        b.dp_sketch(fresh, {"privacy": json.dumps(blob())})
    counts = np.zeros((N_FEATURES, SKETCH_CELLS_DP), dtype=np.int64)
    names = [f"x{i}" for i in range(N_FEATURES)]
    spec = quantile_spec(names, parse_ranges(json.loads(ranges.read_text())), counts, 6)
    cfg = {"spec": json.dumps(spec.to_dict()), "validation_fraction": 0.0}
    no_sketch = blob()
    no_sketch["plan"] = NoisePlan.calibrate(PARAMS, N_FEATURES, 1, 4.0, 1e-6).to_dict()
    with pytest.raises(
        PrivacyBudgetExceeded, match="max-epsilon-total"
    ):  # a training without a sketch
        b.totals(
            fresh,
            {
                "spec": json.dumps(
                    public_spec(names, parse_ranges(json.loads(ranges.read_text())), 6).to_dict()
                ),
                "validation_fraction": 0.0,
                "privacy": json.dumps(no_sketch),
            },
        )
    # The training whose sketch was released is already counted: it may start.
    b.totals(ctx, cfg | {"privacy": json.dumps(first | {"sketch": counts.tolist()})})
    assert [t["stages"] for t in json.loads(ledger.read_text())["trainings"]] == [
        ["sketch", "start"]
    ]
    # Started again in a new run (this process keeps the party): refused by the ledger.
    again = Context(3, 10, {"partition-id": 0}, RecordDict(), {})
    with pytest.raises(CoordinatorDeviates, match="start was already released"):
        b.totals(again, cfg | {"privacy": json.dumps(first | {"sketch": counts.tolist()})})


def test_every_data_source_reads_every_bank_privacy_setting() -> None:
    """A bank's privacy settings come from its own node config in CSV and city mode
    alike (city mode's source kept its own list, which missed the newer settings)."""
    from fedcredit.training.bank.city import CitySource
    from fedcredit.training.bank.source import PRIVACY_KEYS

    nc = {k: f"v-{k}" for k in PRIVACY_KEYS if k != "noise-seed"}
    for source in (CitySource(), CsvSource()):
        got = source.privacy_config(nc)
        assert {k: got.get(k) for k in nc} == nc, type(source).__name__
    assert {"private-only", "max-epsilon-total", "privacy-ledger"} <= set(PRIVACY_KEYS)
