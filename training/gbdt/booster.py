"""The server side of `hist` boosting: a state machine that asks parties for
histograms one depth level at a time, sums nothing itself (it is handed sums),
chooses splits and sets leaf values.

The same machine drives the central trainer (one party holding the pooled
rows) and the federated one (Flower rounds, histograms summed across banks,
optionally through SecAgg+), which is why the two give the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.training.gbdt.binning import BinSpec
from fedcredit.training.gbdt.errors import NoSplitPossible, ProtocolError
from fedcredit.training.gbdt.histogram import (
    IntArray,
    Stats,
    best_split,
    leaf_output,
    node_stats,
)
from fedcredit.training.gbdt.lgb_text import model_text
from fedcredit.training.gbdt.params import MAX_TOTAL_ROWS, GBDTParams, tree_features
from fedcredit.training.gbdt.tree import Tree

# Validation logloss is summed as integers too: value * 2**LOGLOSS_BITS per row.
LOGLOSS_BITS = 20


@dataclass(frozen=True)
class SplitOp:
    """Split ``leaf`` on ``feature`` at ``bin``; rows going right move to ``right_leaf``."""

    leaf: int
    feature: int
    bin: int
    default_left: bool
    right_leaf: int


@dataclass(frozen=True)
class Request:
    """What every party is asked in one round."""

    tree: int
    init_score: float | None = None
    splits: tuple[SplitOp, ...] = ()
    finish_values: tuple[float, ...] | None = None  # leaf values of the tree just finished
    leaves: tuple[int, ...] = ()  # histograms wanted, in this order
    want_valid: bool = False
    seq: int = 0  # 1, 2, ... per run: banks refuse a replayed or skipped request
    # The features whose histograms are wanted (this tree's subset, ascending); None: all.
    features: tuple[int, ...] | None = None

    def to_config(self) -> dict[str, Any]:
        """Flat scalars and lists, as a Flower ConfigRecord holds them."""
        cfg: dict[str, Any] = {
            "tree": self.tree,
            "split_leaf": [s.leaf for s in self.splits],
            "split_feature": [s.feature for s in self.splits],
            "split_bin": [s.bin for s in self.splits],
            "split_default_left": [int(s.default_left) for s in self.splits],
            "split_right_leaf": [s.right_leaf for s in self.splits],
            "leaves": list(self.leaves),
            "want_valid": self.want_valid,
            "seq": self.seq,
        }
        if self.init_score is not None:
            cfg["init_score"] = self.init_score
        if self.finish_values is not None:
            cfg["finish_values"] = list(self.finish_values)
        if self.features is not None:
            cfg["features"] = list(self.features)
        return cfg

    @classmethod
    def from_config(cls, cfg: Any) -> Request:
        try:
            splits = tuple(
                SplitOp(int(a), int(b), int(c), bool(d), int(e))
                for a, b, c, d, e in zip(
                    cfg["split_leaf"],
                    cfg["split_feature"],
                    cfg["split_bin"],
                    cfg["split_default_left"],
                    cfg["split_right_leaf"],
                    strict=True,
                )
            )
            return cls(
                tree=int(cfg["tree"]),
                init_score=float(cfg["init_score"]) if "init_score" in cfg else None,
                splits=splits,
                finish_values=(
                    tuple(float(v) for v in cfg["finish_values"])
                    if "finish_values" in cfg
                    else None
                ),
                leaves=tuple(int(v) for v in cfg["leaves"]),
                want_valid=bool(cfg["want_valid"]),
                seq=int(cfg.get("seq", 0)),
                features=(tuple(int(v) for v in cfg["features"]) if "features" in cfg else None),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed training request: {exc}") from exc


@dataclass(frozen=True)
class Totals:
    """Summable row counts: training rows, positives, validation rows, validation positives."""

    n_train: int
    positives: int
    n_valid: int = 0
    valid_positives: int = 0

    @classmethod
    def from_array(cls, a: npt.ArrayLike) -> Totals:
        v = [int(x) for x in np.asarray(a, dtype=np.int64).ravel()]
        return cls(*v[:4])

    def to_array(self) -> IntArray:
        return np.array(
            [self.n_train, self.positives, self.n_valid, self.valid_positives], dtype=np.int64
        )


def sigmoid(raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-raw))
    return out


@dataclass
class Ensemble:
    """The trained model; tree 0's values include the initial score, as in LightGBM."""

    spec: BinSpec
    params: GBDTParams
    trees: list[Tree]
    init_score: float
    valid_logloss: list[float] = field(default_factory=list)
    best_iteration: int = 0

    def predict_raw(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        arr = np.asarray(x, dtype=np.float64)
        raw = np.zeros(arr.shape[0], dtype=np.float64)
        for t in self.trees:
            raw += t.predict(arr)
        return raw

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return sigmoid(self.predict_raw(x))

    def to_lightgbm(self) -> str:
        return model_text(self.spec, self.params, self.trees)


@dataclass
class _Open:
    leaf: int
    stats: Stats | None  # None only for the root before its histogram arrives


class HistServer:
    """Drive one training run: ``next_request()`` → parties → ``receive(sum)`` → ..."""

    def __init__(self, params: GBDTParams, spec: BinSpec, totals: Totals) -> None:
        if totals.n_train + totals.n_valid > MAX_TOTAL_ROWS:
            raise ProtocolError(
                f"at most {MAX_TOTAL_ROWS} rows in total are supported by the fixed-point "
                f"encoding, got {totals.n_train + totals.n_valid}"
            )
        if totals.n_train < 2 * params.min_data_in_leaf:
            raise NoSplitPossible(
                f"need at least {2 * params.min_data_in_leaf} training rows "
                f"(2 x min_data_in_leaf), got {totals.n_train}"
            )
        if totals.positives <= 0 or totals.positives >= totals.n_train:
            raise NoSplitPossible(
                f"the label is constant over all {totals.n_train} training rows "
                f"({totals.positives} positives): nothing to learn"
            )
        self.params = params = params.with_feature_seed()
        self.spec = spec
        self.totals = totals
        p = totals.positives / totals.n_train
        self.init_score = math.log(p / (1.0 - p))
        self.num_bins = np.array(
            [spec.num_bins(f) for f in range(spec.num_features)], dtype=np.int64
        )
        self.trees: list[Tree] = []
        self.valid_logloss: list[float] = []
        self.best_iteration = 0
        self.done = False
        self._tree = Tree()
        self._stats: dict[int, Stats] = {}
        self._open: list[_Open] = [_Open(0, None)]
        self._hist: dict[int, IntArray] = {}
        self._derive: list[tuple[int, int, int]] = []  # (target, parent_leaf_hist_key, sibling)
        self._pending_splits: tuple[SplitOp, ...] = ()
        self._pending_finish: tuple[float, ...] | None = None
        self._first = True
        self._request: Request | None = None
        self._want_valid = params.early_stopping_rounds > 0 and totals.n_valid > 0
        self._make_request()

    # -- protocol ---------------------------------------------------------------

    def next_request(self) -> Request | None:
        return None if self.done else self._request

    def receive(self, hists: IntArray | None, valid: IntArray | None = None) -> None:
        req = self._request
        if req is None or self.done:
            raise ProtocolError("training is finished; no reply expected")
        if req.want_valid:
            if valid is None:
                raise ProtocolError("expected the validation sums with this reply")
            self._record_valid(valid)
        if req.leaves:
            if hists is None or hists.shape[0] != len(req.leaves):
                got = None if hists is None else hists.shape
                raise ProtocolError(f"expected histograms for {len(req.leaves)} leaves, got {got}")
            expected = (len(self._columns(req)), self.spec.slots, 3)
            if hists.shape[1:] != expected:
                raise ProtocolError(
                    f"expected histograms of shape {expected}, got {hists.shape[1:]}"
                )
        if self.done:  # early stopping decided by the validation sums
            return
        if not req.leaves and self._finished_after_valid:
            self.done = True
            return
        assert hists is not None
        for i, leaf in enumerate(req.leaves):
            self._hist[leaf] = hists[i]
        for target, parent_key, sibling in self._derive:
            self._hist[target] = self._hist.pop(parent_key) - self._hist[sibling]
        self._grow_level(self._columns(req))
        self._make_request()

    # -- internals --------------------------------------------------------------

    _finished_after_valid = False

    def _record_valid(self, valid: IntArray) -> None:
        v = np.asarray(valid, dtype=np.int64).ravel()
        n = int(v[1])
        loss = float(v[0]) * 2.0**-LOGLOSS_BITS / max(n, 1)
        self.valid_logloss.append(loss)
        k = len(self.valid_logloss) - 1  # number of trees in the model that was scored
        if loss < self.valid_logloss[self.best_iteration]:
            self.best_iteration = k
        rounds = self.params.early_stopping_rounds
        if rounds > 0 and k - self.best_iteration >= rounds:
            self.trees = self.trees[: max(self.best_iteration, 1)]
            self.done = True

    def _columns(self, req: Request) -> tuple[int, ...]:
        """The features of ``req``'s histograms: their index in the spec, in order."""
        if req.features is None:
            return tuple(range(self.spec.num_features))
        return req.features

    def _request_features(self, tree: int) -> tuple[int, ...] | None:
        """The features asked for in tree ``tree``: None (all) without subsampling."""
        if self.params.released_features(self.spec.num_features) == self.spec.num_features:
            return None
        return tree_features(self.params, self.spec.num_features, tree)

    def _grow_level(self, columns: tuple[int, ...]) -> None:
        p = self.params
        num_bins = self.num_bins[list(columns)]
        splits: list[SplitOp] = []
        next_open: list[_Open] = []
        for op in sorted(self._open, key=lambda o: o.leaf):
            hist = self._hist[op.leaf]
            stats = node_stats(hist)
            self._set_leaf(op.leaf, stats)
            choice = best_split(hist, num_bins, p)
            if choice is None:
                continue
            choice = replace(choice, feature=columns[choice.feature])
            _node, right = self._tree.split(
                op.leaf,
                feature=choice.feature,
                split_bin=choice.bin,
                threshold=self.spec.threshold(choice.feature, choice.bin),
                default_left=choice.default_left,
                gain=choice.gain,
                value=leaf_output(stats, p) * p.learning_rate,
                weight=stats.hess,
                count=stats.n,
            )
            self._set_leaf(op.leaf, choice.left)
            self._set_leaf(right, choice.right)
            splits.append(SplitOp(op.leaf, choice.feature, choice.bin, choice.default_left, right))
            depth = self._tree.leaf_depth[op.leaf]
            for leaf, s in ((op.leaf, choice.left), (right, choice.right)):
                if (
                    depth < p.max_depth
                    and s.n >= 2 * p.min_data_in_leaf
                    and s.hess >= 2 * p.min_sum_hessian_in_leaf
                ):
                    next_open.append(_Open(leaf, s))
        # Histograms of the next level: ask for the smaller child, derive its
        # sibling as parent minus child (exact on integers).
        wanted: list[int] = []
        derive: list[tuple[int, int, int]] = []
        open_ids = {o.leaf for o in next_open}
        parent_hists: dict[int, IntArray] = {}
        for sp in splits:
            left, right = sp.leaf, sp.right_leaf
            l_open, r_open = left in open_ids, right in open_ids
            if l_open and r_open:
                ls = self._leaf_stats(left)
                rs = self._leaf_stats(right)
                small, big = (left, right) if ls.n <= rs.n else (right, left)
                wanted.append(small)
                key = -1 - left  # the parent's histogram, kept under a key no leaf uses
                parent_hists[key] = self._hist[left]
                derive.append((big, key, small))
            elif l_open:
                wanted.append(left)
            elif r_open:
                wanted.append(right)
        self._hist = parent_hists
        self._open = next_open
        self._wanted = tuple(sorted(wanted))
        self._derive = derive
        self._pending_splits = tuple(splits)
        if not next_open:
            self._finish_tree()

    def _leaf_stats(self, leaf: int) -> Stats:
        return self._stats[leaf]

    def _set_leaf(self, leaf: int, s: Stats) -> None:
        t = self._tree
        p = self.params
        self._stats[leaf] = s
        t.leaf_value[leaf] = leaf_output(s, p) * p.learning_rate
        t.leaf_weight[leaf] = s.hess
        t.leaf_count[leaf] = s.n

    def _finish_tree(self) -> None:
        t = self._tree
        if t.num_leaves == 1:
            if not self.trees:
                raise NoSplitPossible(
                    "the first tree found no split meeting min_data_in_leaf="
                    f"{self.params.min_data_in_leaf}, min_sum_hessian_in_leaf="
                    f"{self.params.min_sum_hessian_in_leaf}"
                )
            self._stop_now()
            return
        t.shrinkage = self.params.learning_rate
        finish = tuple(t.leaf_value)
        if not self.trees:
            # LightGBM keeps the initial score inside the first tree.
            t.leaf_value = [v + self.init_score for v in t.leaf_value]
            t.internal_value = [v + self.init_score for v in t.internal_value]
        self.trees.append(t)
        self._pending_finish = finish
        self._tree = Tree()
        self._stats = {}
        self._open = [_Open(0, None)]
        self._wanted = (0,)
        self._derive = []
        self._hist = {}
        if len(self.trees) >= self.params.num_trees:
            self._stop_now()

    def _stop_now(self) -> None:
        if self._want_valid and self._pending_finish is not None:
            # One more round for the validation loss of the final model.
            self._finished_after_valid = True
            self._open = []
            self._wanted = ()
        else:
            self.done = True

    _wanted: tuple[int, ...] = (0,)

    def _make_request(self) -> None:
        if self.done:
            self._request = None
            return
        if self._first:
            self._request = Request(
                tree=0,
                init_score=self.init_score,
                leaves=(0,),
                want_valid=self._want_valid,
                seq=1,
                features=self._request_features(0),
            )
            self._first = False
            return
        if not self._open and not self._finished_after_valid:
            self.done = True
            self._request = None
            return
        self._request = Request(
            tree=len(self.trees),
            splits=self._pending_splits,
            finish_values=self._pending_finish,
            leaves=self._wanted,
            want_valid=self._want_valid and self._pending_finish is not None,
            seq=self._request.seq + 1 if self._request is not None else 1,
            features=self._request_features(len(self.trees)),
        )
        self._pending_splits = ()
        self._pending_finish = None

    def ensemble(self) -> Ensemble:
        if not self.done:
            raise ProtocolError("training has not finished yet")
        return Ensemble(
            spec=self.spec,
            params=self.params,
            trees=list(self.trees),
            init_score=self.init_score,
            valid_logloss=list(self.valid_logloss),
            best_iteration=self.best_iteration if self.valid_logloss else len(self.trees),
        )
