"""The three ways the ServerApp trains: `hist` (lossless, optionally SecAgg+),
and the LightGBM `bagging` and `cyclic` baselines a Flower user would build."""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedcredit.common.errors import FailedPrecondition, InvalidArgument
from fedcredit.training.flower import masking, sums
from fedcredit.training.gbdt.binning import SKETCH_CELLS, BinSpec, merge_ranges, spec_from_sketch
from fedcredit.training.gbdt.booster import Ensemble, HistServer, Totals
from fedcredit.training.gbdt.lgb_text import ModelParts
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.privacy import (
    SKETCH_CELLS_DP,
    NoisePlan,
    load_ranges,
    public_spec,
    quantile_spec,
)
from fedcredit.training.gbdt.schema import schema_difference
from fedcredit.training.server.federation import Federation

log = logging.getLogger(__name__)


class FeatureMismatch(InvalidArgument):
    reason = "BANK_FEATURES_MISMATCH"


class OneClassBank(FailedPrecondition):
    """bagging/cyclic: a bank whose rows all have the same label boosts a constant tree
    (leaf value about -34.5 for all-0) that drowns every other bank's trees."""

    reason = "BANK_HAS_ONE_CLASS"


class DegenerateModel(FailedPrecondition):
    """The trained model cannot rank borrowers: no tree splits, or a tree predicts one
    class with certainty."""

    reason = "MODEL_DEGENERATE"


# |leaf value| above this (in log-odds, learning rate applied) is a tree that predicts
# one class with certainty: exp(20) ~ 5e8 to 1. A one-class bank's LightGBM tree is about
# -34.5 (log 1e-15); a healthy first tree holding the base rate of even 1 default in a
# million rows is -13.8, and later trees at lr <= 1 stay far below.
MAX_LEAF_LOGODDS = 20.0


@dataclass
class TrainOutcome:
    strategy: str
    secagg: bool
    model_text: str
    banks: int
    bank_rows: int
    trees: int
    tree_rounds: int  # rounds of messages that built trees
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    messages: int
    feature_names: list[str]
    settings: dict[str, Any]
    valid_logloss: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0  # binning rounds before the first tree
    ensemble: Ensemble | None = None
    spec: BinSpec | None = None
    # The banks by id, in the order they were asked (cyclic: the order of their turns).
    bank_order: list[str] = field(default_factory=list)
    # Message round trips (server -> banks -> server) while building the trees.
    message_rounds: int = 0
    # Private runs: the noise plan and the (epsilon, delta) it spends, for the registry.
    privacy: dict[str, Any] | None = None

    @property
    def seconds_per_tree(self) -> float:
        return self.wall_seconds / max(self.trees, 1)

    @property
    def bytes_up_per_bank_per_tree(self) -> float:
        return self.bytes_up / max(self.banks, 1) / max(self.trees, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "secagg": self.secagg,
            "banks": self.banks,
            "rows": self.bank_rows,
            "trees": self.trees,
            "rounds": self.tree_rounds,
            "setup_seconds": round(self.setup_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "seconds_per_tree": round(self.seconds_per_tree, 4),
            "bytes_up_per_bank_per_tree": round(self.bytes_up_per_bank_per_tree),
            "bytes_down_total": self.bytes_down,
            "valid_logloss": self.valid_logloss,
            "bank_order": self.bank_order,
            "message_rounds_per_tree": round(self.message_rounds / max(self.trees, 1), 2),
            "privacy": self.privacy,
        }


def _cfg(**values: Any) -> RecordDict:
    return RecordDict({"config": ConfigRecord(values)})


def _setup(
    fed: Federation,
) -> tuple[list[str], np.ndarray, np.ndarray, int, list[np.ndarray] | None]:
    """Feature names, global finite ranges, total rows and, when the banks got them from
    the department nodes (city mode), the shared global bin edges."""
    s = fed.settings
    ask: dict[str, Any] = {"private": True} if s.private else {"max_bins": s.params.max_bins}
    infos = fed.ask("query.setup", partial(_cfg, **ask))
    fed.names = {nid: str(rd.config_records["info"]["bank"]) for nid, rd in infos.items()}
    _keys(fed, infos)
    if s.private:
        fed.nodes = sorted(fed.nodes, key=lambda n: fed.names[n])
        return _names(fed, infos), np.zeros(0), np.zeros(0), 0, None
    fed.positives = {
        nid: (int(cast(int, info["positives"])), int(cast(int, info["rows"])))
        for nid, rd in infos.items()
        for info in [rd.config_records["info"]]
    }
    # Banks in the order of their ids: deterministic, unlike Flower's random node ids.
    fed.nodes = sorted(fed.nodes, key=lambda n: fed.names[n])
    names: list[str] | None = None
    first = ""
    edges_json: str | None = None
    with_edges = 0
    los, his = [], []
    rows = 0
    for nid in fed.nodes:
        info = infos[nid].config_records["info"]
        these = [str(v) for v in cast(list[str], info["feature_names"])]
        if names is None:
            names, first = these, fed.names[nid]
        elif these != names:
            diff = schema_difference(names, these, reference=first, file=fed.names[nid])
            raise FeatureMismatch(
                diff or f"{fed.names[nid]}: the features come in another order than in {first}",
                bank=fed.names[nid],
            )
        if "edges" in info:
            e = str(info["edges"])
            if edges_json is not None and e != edges_json:
                raise FeatureMismatch(
                    f"{fed.bank(nid)} got different bin edges from the nodes than the others "
                    "(did a node reload its data during setup?)"
                )
            edges_json = e
            with_edges += 1
        rows += int(cast(int, info["rows"]))
        rng = infos[nid].array_records["range"]
        los.append(rng["lo"].numpy())
        his.append(rng["hi"].numpy())
    assert names is not None
    if with_edges not in (0, len(infos)):
        raise FeatureMismatch(
            f"{with_edges} of {len(infos)} banks have the nodes' bin edges; all or none must"
        )
    lo, hi = merge_ranges(los, his)
    edges = (
        [np.asarray(e, dtype=np.float64) for e in json.loads(edges_json)]
        if edges_json is not None
        else None
    )
    if edges is not None and len(edges) != len(names):
        raise FeatureMismatch(f"the nodes gave edges for {len(edges)} of {len(names)} features")
    return names, lo, hi, rows, edges


def _keys(fed: Federation, infos: dict[int, RecordDict]) -> None:
    """The banks' secure-sum keys and, from banks with an identity, their signatures."""
    fed.keys = {
        nid: cast(bytes, rd.config_records["info"]["public_key"])
        for nid, rd in infos.items()
        if "public_key" in rd.config_records["info"]
    }
    fed.key_proofs = {
        nid: masking.Entry(
            nid,
            cast(bytes, info["public_key"]),
            str(info["key_bank"]),
            str(info["key_certificate"]),
            cast(bytes, info["key_signature"]),
        )
        for nid, rd in infos.items()
        for info in [rd.config_records["info"]]
        if "key_signature" in info and "public_key" in info
    }


def _names(fed: Federation, infos: dict[int, RecordDict]) -> list[str]:
    names: list[str] | None = None
    first = ""
    for nid in fed.nodes:
        these = [
            str(v) for v in cast(list[str], infos[nid].config_records["info"]["feature_names"])
        ]
        if names is None:
            names, first = these, fed.names[nid]
        elif these != names:
            diff = schema_difference(names, these, reference=first, file=fed.names[nid])
            raise FeatureMismatch(
                diff or f"{fed.names[nid]}: the features come in another order than in {first}",
                bank=fed.names[nid],
            )
    assert names is not None
    return names


def _features(fed: Federation) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    names, lo, hi, rows, _ = _setup(fed)
    return names, lo, hi, rows


def _sum(replies: dict[int, RecordDict], key: str) -> np.ndarray:
    arrays = [sums.unpack(rd, key) for _, rd in sorted(replies.items())]
    return cast(np.ndarray, np.sum(arrays, axis=0, dtype=np.int64))


# Federated histogram boosting.
#
# Message round trips per tree at depth d (``TrainOutcome.message_rounds``, counted by
# the grid): d `hist` rounds, one per level, each carrying every open leaf (only the
# smaller child of each split; its sibling is the parent minus it); the finished
# tree's splits and leaf values reach the banks with the next tree's root request,
# which also brings back the validation-loss sums. Plain, that is d round trips, the
# floor of level-wise growth. With secure sums ("masked", the default) each level is
# still one round trip: the banks mask their vectors with pairwise keys agreed in the
# setup round. Flower's SecAgg+ workflow ("secaggplus") costs four per sum (set-up,
# share keys, collect masked vectors, unmask): 4 d round trips.
def _secure(fed: Federation, op: str, payload: dict[str, Any]) -> np.ndarray:
    if fed.settings.secure_protocol == "secaggplus":
        return fed.secure_sum(op, payload)
    return fed.masked_sum(op, payload)


def _binning(
    fed: Federation, names: list[str], lo: np.ndarray, hi: np.ndarray, node_edges: Any
) -> tuple[BinSpec, np.ndarray]:
    """Non-private runs: the shared sketch round -> (bin spec, summed totals)."""
    s = fed.settings
    p = s.params
    nf = len(names)
    # Summable fine-grid counts -> global quantile edges. With the nodes' edges (city
    # mode) one cell per feature is enough: only the totals are used.
    cells = 1 if node_edges is not None else SKETCH_CELLS
    sketch_cfg = {
        "lo": [float(v) for v in lo],
        "hi": [float(v) for v in hi],
        "cells": cells,
        "validation_fraction": p.validation_fraction,
    }
    if s.secagg:
        flat = _secure(fed, "sketch", sketch_cfg)
        counts = flat[: nf * cells].reshape(nf, cells)
        totals = flat[nf * cells :]
    else:
        replies = fed.ask("query.sketch", partial(_cfg, **sketch_cfg))
        counts = _sum(replies, "counts")
        totals = _sum(replies, "totals")
    if node_edges is not None:
        spec = BinSpec(
            feature_names=tuple(names),
            edges=tuple(node_edges),
            mins=tuple(float(v) for v in lo),
            maxs=tuple(float(v) for v in hi),
        )
    else:
        spec = spec_from_sketch(names, lo, hi, counts, p.max_bins)
    return spec, totals


def _private_start(
    fed: Federation, names: list[str]
) -> tuple[BinSpec, np.ndarray, GBDTParams, dict[str, Any]]:
    """Private runs: the noise plan calibrated for the budget; with ``sketch_rounds`` the
    DP sketch round and quantile bins from it, else bins from the public ranges; then
    the one totals release (which also hands every bank the spec, plan and sketch to
    check before it releases anything more)."""
    s = fed.settings
    p = s.params.with_feature_seed()  # committed here: every bank checks each tree's subset
    ranges = load_ranges(s.public_ranges)
    shares = len(fed.nodes) if s.secagg else 1  # without secure sums each bank adds it all
    plan = NoisePlan.calibrate(
        p, len(names), shares, s.epsilon, s.delta, sketch_rounds=s.sketch_rounds
    )
    blob: dict[str, Any] = {
        "params": p.to_dict(),
        "plan": plan.to_dict(),
        "training": uuid.uuid4().hex,
    }
    if plan.sketch_rounds > 0.0:
        cfg = {"privacy": json.dumps(blob)}
        if s.secagg:
            flat = _secure(fed, "dpsketch", cfg)
        else:
            flat = _sum(fed.ask("train.dpsketch", partial(_cfg, **cfg)), "sketch")
        counts = np.asarray(flat, dtype=np.int64).reshape(len(names), SKETCH_CELLS_DP)
        spec = quantile_spec(names, ranges, counts, p.max_bins)
        blob["sketch"] = counts.tolist()
    else:
        spec = public_spec(names, ranges, p.max_bins)
    first = {
        "spec": json.dumps(spec.to_dict()),
        "validation_fraction": 0.0,
        "privacy": json.dumps(blob),
    }
    if s.secagg:
        totals = _secure(fed, "totals", first)
    else:
        totals = _sum(fed.ask("train.totals", partial(_cfg, **first)), "totals")
    privacy = {
        "epsilon": plan.spent_epsilon,
        "delta": plan.delta,
        "epsilon_budget": s.epsilon,
        "noise_multiplier": plan.multiplier,
        "releases": plan.releases + 1 + (1 if plan.sketch_rounds > 0.0 else 0),
        "features_per_release": plan.released_features,
        "feature_seed": p.feature_seed,
        "noise_shares": shares,
        "epsilon_if_one_bank_colludes": plan.epsilon_if_colluding(1) if shares > 1 else None,
        "public_ranges": True,
        "bins": (
            f"quantiles of a DP sketch ({SKETCH_CELLS_DP} public cells per feature, the "
            f"budget of {plan.sketch_rounds:g} histogram rounds)"
            if plan.sketch_rounds > 0.0
            else "the public grid"
        ),
        "sketch_rounds": plan.sketch_rounds,
        "unit": "one borrower's row at one bank",
        "accountant": "OpenDP: zCDP composition, converted to (epsilon, delta)",
    }
    return spec, totals, p, privacy


def clamp_noisy_totals(totals: np.ndarray) -> np.ndarray:
    """Noisy [rows, positives, ...] into a range the initial score is defined on: rows
    >= 0, 1 <= positives <= rows - 1 (post-processing, no privacy cost). A federation
    with few defaults gets a noisy count that may fall to 0 or below; refusing it as
    "one class only" would blame the data for the noise."""
    out = np.array(totals, dtype=np.int64, copy=True)
    out[0] = max(int(out[0]), 0)
    out[1] = min(max(int(out[1]), 1), max(int(out[0]) - 1, 1))
    return out


def run_hist(fed: Federation) -> TrainOutcome:
    s = fed.settings
    p = s.params
    t0 = time.perf_counter()
    names, lo, hi, rows, node_edges = _setup(fed)
    privacy: dict[str, Any] | None = None
    if s.private:
        spec, totals, p, privacy = _private_start(fed, names)
        totals = clamp_noisy_totals(totals)
        rows = int(totals[0])
    else:
        spec, totals = _binning(fed, names, lo, hi, node_edges)
    server = HistServer(p, spec, Totals.from_array(totals))
    tree_start = time.perf_counter()
    up0, down0, trips0 = fed.traffic.up, fed.traffic.down, fed.traffic.rounds
    rounds = _grow(fed, server, spec, send_spec=not s.private)
    ens = server.ensemble()
    wall = time.perf_counter() - tree_start
    return TrainOutcome(
        strategy="hist",
        secagg=s.secagg,
        model_text=ens.to_lightgbm(),
        banks=len(fed.nodes),
        bank_rows=rows,
        trees=len(ens.trees),
        tree_rounds=rounds,
        wall_seconds=wall,
        bytes_up=fed.traffic.up - up0,
        bytes_down=fed.traffic.down - down0,
        messages=fed.traffic.messages,
        feature_names=names,
        settings=s.to_dict(),
        valid_logloss=ens.valid_logloss,
        setup_seconds=tree_start - t0,
        ensemble=ens,
        spec=spec,
        message_rounds=fed.traffic.rounds - trips0,
        privacy=privacy,
    )


def _grow(fed: Federation, server: HistServer, spec: BinSpec, *, send_spec: bool) -> int:
    """The tree rounds: one per level until the server is done; returns their number."""
    s = fed.settings
    nf = spec.num_features
    spec_json = json.dumps(spec.to_dict())
    rounds = 0
    first = send_spec
    while (req := server.next_request()) is not None:
        cfg: dict[str, Any] = {"request": json.dumps(req.to_config())}
        if first:
            cfg["spec"] = spec_json
            cfg["validation_fraction"] = s.params.validation_fraction
            first = False
        cols = nf if req.features is None else len(req.features)
        shape = (len(req.leaves), cols, spec.slots, 3)
        size = int(np.prod(shape))
        if s.secagg:
            flat = _secure(fed, "hist", cfg)
            hist = flat[:size].reshape(shape)
            valid = flat[size:] if req.want_valid else None
        else:
            replies = fed.ask("train.hist", partial(_cfg, **cfg))
            hist = _sum(replies, "hist") if req.leaves else np.zeros(shape, dtype=np.int64)
            valid = _sum(replies, "valid") if req.want_valid else None
        server.receive(hist, valid)
        rounds += 1
    return rounds


def lgb_params(p: GBDTParams, *, boost_from_average: bool) -> dict[str, Any]:
    """LightGBM settings equivalent to ours, for the baselines and the pooled reference."""
    return {
        "objective": "binary",
        "learning_rate": p.learning_rate,
        "max_depth": p.max_depth,
        "num_leaves": 2**p.max_depth,
        "max_bin": p.max_bins,
        "min_data_in_leaf": p.min_data_in_leaf,
        "min_sum_hessian_in_leaf": p.min_sum_hessian_in_leaf,
        "lambda_l2": p.lambda_l2,
        "min_gain_to_split": p.min_gain_to_split,
        "boost_from_average": boost_from_average,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
    }


def _boost_outcome(
    fed: Federation, strategy: str, text: str, rounds: int, wall: float, rows: int, names: list[str]
) -> TrainOutcome:
    return TrainOutcome(
        strategy=strategy,
        secagg=False,
        model_text=text,
        banks=len(fed.nodes),
        bank_rows=rows,
        trees=len(ModelParts.parse(text).trees),
        tree_rounds=rounds,
        wall_seconds=wall,
        bytes_up=fed.traffic.up,
        bytes_down=fed.traffic.down,
        messages=fed.traffic.messages,
        feature_names=names,
        settings=fed.settings.to_dict(),
        message_rounds=fed.traffic.rounds,
    )


def run_bagging(fed: Federation) -> TrainOutcome:
    """Each round every bank boosts ``local_rounds`` trees from the global model; the
    server appends all of them (Flower's FedXgbBagging, for LightGBM).

    Each bank boosts with the learning rate times its share of all the banks' rows
    (``total_rows``), so the trees the banks add in one round together make one step of
    the configured size: the row-weighted mean of the banks' steps (Flower's XGBoost
    example has the unweighted form as ``scaled_lr``: eta / number of clients).
    Appending the banks' full steps instead makes a step of ``banks`` x the learning
    rate per round: with 7 banks at 0.3 the scores oscillate with growing amplitude
    until every prediction is 0 or 1, no leaf has hessian left to split, and the banks
    stop adding trees (the synthetic city's AUC 0.5).
    """
    s = fed.settings
    names, _, _, rows = _features(fed)
    refuse_one_class(fed, "bagging")
    fed.traffic.up = fed.traffic.down = fed.traffic.messages = fed.traffic.rounds = 0
    start = time.perf_counter()
    params = json.dumps(lgb_params(s.params, boost_from_average=False))
    rounds = math.ceil(s.params.num_trees / s.local_rounds)
    global_parts: ModelParts | None = None
    for _ in range(rounds):
        model = global_parts.render() if global_parts is not None else ""
        replies = fed.ask(
            "train.bagging",
            partial(_cfg, model=model, lgb_params=params, rounds=s.local_rounds, total_rows=rows),
        )
        have = len(global_parts.trees) if global_parts is not None else 0
        new_trees: list[str] = []
        for _, rd in sorted(replies.items()):
            parts = ModelParts.parse(cast(str, rd.config_records["model"]["model"]))
            if global_parts is None:
                global_parts = ModelParts(parts.header, [], parts.tail)
            new_trees.extend(parts.trees[have:])
        assert global_parts is not None
        global_parts.trees.extend(new_trees)
    assert global_parts is not None
    text = global_parts.render()
    return _boost_outcome(fed, "bagging", text, rounds, time.perf_counter() - start, rows, names)


def run_cyclic(fed: Federation) -> TrainOutcome:
    """Banks take turns boosting ``local_rounds`` trees on the global model (FedXgbCyclic)."""
    s = fed.settings
    names, _, _, rows = _features(fed)
    refuse_one_class(fed, "cyclic")
    fed.traffic.up = fed.traffic.down = fed.traffic.messages = fed.traffic.rounds = 0
    start = time.perf_counter()
    params = json.dumps(lgb_params(s.params, boost_from_average=True))
    rounds = math.ceil(s.params.num_trees / s.local_rounds)
    model = ""
    # fed.nodes is sorted by bank id (_setup): the same order on every run, printed.
    log.info("cyclic order: %s", ", ".join(fed.names[n] for n in fed.nodes))
    for r in range(rounds):
        node = fed.nodes[r % len(fed.nodes)]
        replies = fed.ask(
            "train.cyclic",
            partial(_cfg, model=model, lgb_params=params, rounds=s.local_rounds),
            nodes=[node],
        )
        model = cast(str, replies[node].config_records["model"]["model"])
    return _boost_outcome(fed, "cyclic", model, rounds, time.perf_counter() - start, rows, names)


def refuse_one_class(fed: Federation, strategy: str) -> None:
    """bagging/cyclic boost on each bank's rows alone: a bank with one class cannot."""
    for n in fed.nodes:
        pos, rows = fed.positives[n]
        if pos in (0, rows):
            raise OneClassBank(
                f"{strategy}: {fed.bank(n)} has only label {0 if pos == 0 else 1} in all its "
                f"{rows} rows; a LightGBM model boosted on one class is a constant tree that "
                "drowns the other banks' trees. Leave the bank out, or use --strategy hist "
                "(which sums every bank's histograms)",
                bank=fed.names.get(n, str(n)),
            )


_LEAVES = re.compile(r"^num_leaves=(\d+)$", re.MULTILINE)
_LEAF_VALUES = re.compile(r"^leaf_value=(.*)$", re.MULTILINE)


def check_model(text: str, strategy: str) -> None:
    """Refuse a model that cannot rank borrowers: no tree splits, or a tree whose leaves
    predict one class with certainty (the mark of a bank with one class)."""
    trees = ModelParts.parse(text).trees
    if all(int(m.group(1)) <= 1 for t in trees for m in _LEAVES.finditer(t)):
        raise DegenerateModel(
            f"{strategy}: none of the {len(trees)} trees splits: the model gives every "
            "borrower the same score (too few rows, or one class only?)"
        )
    for i, t in enumerate(trees):
        for m in _LEAF_VALUES.finditer(t):
            worst = max((abs(float(v)) for v in m.group(1).split()), default=0.0)
            if worst > MAX_LEAF_LOGODDS:
                raise DegenerateModel(
                    f"{strategy}: tree {i} has a leaf value of magnitude {worst:.1f} (log-odds, "
                    f"expected at most {MAX_LEAF_LOGODDS:g}): it predicts one class with "
                    "certainty and no later tree can correct it"
                )


def run(fed: Federation) -> TrainOutcome:
    strategy = fed.settings.strategy
    out = {"hist": run_hist, "bagging": run_bagging, "cyclic": run_cyclic}[strategy](fed)
    check_model(out.model_text, strategy)
    out.bank_order = [fed.names.get(n, str(n)) for n in fed.nodes]
    return out
