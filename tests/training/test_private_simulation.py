"""Private `hist` through Flower (issue 15): with the banks' noise seeded, the federated
model equals the in-process sum of the same parties, one round per level; nothing a bank
sends in private mode carries a value, range or count of its rows in clear."""

from __future__ import annotations

import json
import pickle
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message

from fedcredit.training.bank.data import load_csv
from fedcredit.training.bank.source import CsvSource
from fedcredit.training.flower import sums
from fedcredit.training.gbdt import GBDTParams
from fedcredit.training.gbdt.central import train_parties
from fedcredit.training.gbdt.party import Party
from fedcredit.training.gbdt.privacy import (
    BankNoise,
    NoisePlan,
    parse_ranges,
    public_spec,
    seeded_sampler,
    sketch_counts,
    sketch_grid,
    sketch_round,
)
from fedcredit.training.run.simulation import simulate_many
from fedcredit.training.server.federation import BankDropped
from fedcredit.training.server.settings import TrainSettings
from fedcredit.training.server.strategies import TrainOutcome

from .test_flower_simulation import N_FEATURES, write_bank

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

PARAMS = GBDTParams(
    num_trees=3,
    max_depth=2,
    max_bins=8,
    lambda_l2=20.0,
    max_delta_step=1.0,
    min_data_in_leaf=50,
    min_sum_hessian_in_leaf=5.0,
)
SEED = 100
# Each tree on a public subset of 3 of the 8 features, drawn from the committed seed.
SUB = replace(PARAMS, features_per_tree=3, feature_seed=5)


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[str, ...], str]:
    d = tmp_path_factory.mktemp("private-banks")
    rng = np.random.default_rng(7)
    paths = []
    for b, (n, shift) in enumerate([(900, -0.3), (1300, 0.0), (700, 0.4)]):
        p = d / f"bank{b}.csv"
        write_bank(p, rng, n, shift, 10_000 * (b + 1))
        paths.append(str(p))
    ranges = d / "ranges.json"
    ranges.write_text(json.dumps({f"x{i}": [-5, 5] for i in range(N_FEATURES)}))
    return tuple(paths), str(ranges)


def _capture(into: Path) -> Any:
    """Every reply a bank sends, as it leaves the ClientApp (written to ``into``: the
    banks run in Ray's worker processes)."""

    def mod(msg: Message, ctx: Context, call_next: Any) -> Message:
        reply = call_next(msg, ctx)
        if reply.has_content():
            got: dict[str, Any] = {}
            for name, rec in reply.content.config_records.items():
                got[name] = dict(rec)
            if sums.RECORD in reply.content.config_records:
                # The sums as they cross the wire (.npy bytes), read back as arrays.
                got[sums.RECORD] = {k: sums.unpack(reply.content, k) for k in got[sums.RECORD]}
            for name, arr in reply.content.array_records.items():
                got[name] = {k: arr[k].numpy() for k in arr}
            blob = pickle.dumps((msg.metadata.message_type, got))
            (into / f"{uuid.uuid4().hex}.pickle").write_bytes(blob)
        return reply

    return mod


def test_private_federated_equals_in_process_and_leaks_no_raw_value(
    banks: tuple[tuple[str, ...], str], tmp_path: Path
) -> None:
    paths, ranges = banks
    wire = tmp_path / "wire"
    wire.mkdir()
    # Banks that answer the private protocol only (private-only): every run below is it.
    source = CsvSource(
        paths,
        privacy=(("public-ranges", ranges), ("noise-seed", SEED), ("private-only", True)),
    )
    # Bins from the DP sketch (the default) with and without secure sums; bins on the
    # public grid (sketch_rounds 0) with feature subsets.
    runs = [
        TrainSettings(params=PARAMS, secagg=True, epsilon=4.0, public_ranges=ranges),
        TrainSettings(params=PARAMS, secagg=False, epsilon=4.0, public_ranges=ranges),
        # A bank allows at most epsilon 4: a coordinator asking for 8 is refused.
        TrainSettings(params=PARAMS, secagg=True, epsilon=8.0, public_ranges=ranges),
        TrainSettings(
            params=SUB, secagg=True, epsilon=4.0, public_ranges=ranges, sketch_rounds=0.0
        ),
    ]
    sec, plain, greedy, sub = simulate_many(runs, source, 3, client_mods=[_capture(wire)])
    seen = [pickle.loads(f.read_bytes()) for f in sorted(wire.iterdir())]
    assert isinstance(sec, TrainOutcome) and isinstance(plain, TrainOutcome), (sec, plain)

    data = [load_csv(p) for p in paths]
    names = list(data[0].feature_names)
    public = parse_ranges(json.loads(Path(ranges).read_text()))
    assert isinstance(sub, TrainOutcome), sub
    for out, shares, params, sk in ((sec, 3, PARAMS, 1.0), (plain, 1, PARAMS, 1.0), (sub, 3, SUB, 0.0)):  # fmt: skip
        plan = NoisePlan.calibrate(params, N_FEATURES, shares, 4.0, 1e-6, sketch_rounds=sk)
        noises = [BankNoise(plan, seeded_sampler(SEED + i)) for i in range(len(data))]
        if sk > 0.0:  # the sketch round replayed in process, with the banks' seeded noise
            spec, _ = sketch_round(names, public, params.max_bins, [d.x for d in data], noises)
            assert spec.to_dict() != public_spec(names, public, params.max_bins).to_dict()
        else:
            spec = public_spec(names, public, params.max_bins)
        assert out.spec is not None and out.spec.to_dict() == spec.to_dict()
        parties = [Party(spec, d.x, d.y, d.ids, noise=n) for d, n in zip(data, noises, strict=True)]
        assert out.model_text == train_parties(params, spec, parties).to_lightgbm()
        assert out.privacy is not None and out.privacy["epsilon"] <= 4.0
        assert out.privacy["sketch_rounds"] == sk
        assert out.message_rounds == out.trees * params.max_depth  # the floor: one per level
    assert sub.privacy is not None and sub.privacy["features_per_release"] == 3
    assert "feature_infos=" + " ".join(["[-5:5]"] * N_FEATURES) in sec.model_text

    assert isinstance(greedy, Exception) and "PRIVACY_BUDGET_EXCEEDED" in str(greedy), greedy

    # What left the banks in private mode: names, ids and keys at setup; then only sums,
    # noisy (plain) or masked. No per-bank row count, positives, min or max.
    setups = [got for mtype, got in seen if mtype == "query.setup"]
    assert len(setups) == 12
    for got in setups:
        assert set(got) == {"info"}
        assert set(got["info"]) == {"feature_names", "bank", "public_key"}
    rows = [d.rows for d in data]
    grid = sketch_grid(names, public)
    exact = [sketch_counts(grid, d.x).ravel() for d in data]
    sketches = [got["sums"]["sketch"] for mtype, got in seen if mtype == "train.dpsketch"]
    assert len(sketches) == 3  # the plain run's banks, each once
    for v in sketches:  # noisy counts, not any bank's own
        assert not any(np.array_equal(v, e) for e in exact)
    for mtype, got in seen:
        if mtype == "train.totals":
            t = got["sums"]["totals"]
            assert t[0] not in rows  # noisy, not the bank's count
        if mtype == "train.masked":
            assert set(got["sums"]) == {"masked"}
            v = got["sums"]["masked"]
            # masked with 64-bit uniform masks: no small integers (counts) in clear
            assert np.mean(np.abs(v) < 2**40) < 0.01


def test_masked_sums_are_refused_when_replayed(banks: tuple[tuple[str, ...], str]) -> None:
    """A coordinator that repeats a secure round (same seq) to difference two vectors
    masked alike is refused by the banks, and the run stops naming them."""
    paths, _ = banks
    replay: dict[str, Any] = {}

    def mod(msg: Message, ctx: Context, call_next: Any) -> Message:
        # Rewrite the 3rd masked request's seq to the 2nd's, as a replaying coordinator.
        if msg.metadata.message_type == "train.masked":
            cfg = msg.content.config_records["config"]
            if int(cfg["seq"]) == 3:
                cfg["seq"] = 2
                replay["done"] = True
        return call_next(msg, ctx)

    [out] = simulate_many(
        [TrainSettings(params=GBDTParams(num_trees=2, max_depth=2), secagg=True)],
        CsvSource(paths),
        3,
        client_mods=[mod],
    )
    assert isinstance(out, BankDropped), out
    assert "SECURE_ROUND_REPLAYED" in out.message and "bank0.csv" in out.message
