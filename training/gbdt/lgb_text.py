"""LightGBM's text model format: write our ensembles, split and merge LightGBM's own.

The format (LightGBM ``GBDT::SaveModelToString`` / ``Tree::ToString``, v4): a
header (``version``, ``num_class``, ``max_feature_idx``, ``objective``,
``feature_names``, ``feature_infos``, ``tree_sizes``), one ``Tree=i`` block per
tree, ``end of trees``, ``feature_importances:``, ``parameters:`` and
``pandas_categorical``. ``tree_sizes`` are the byte lengths of the tree
blocks; LightGBM uses them to parse trees in parallel, so they must be exact.

Prediction and TreeSHAP contributions need, per tree: ``split_feature``,
``threshold`` (go left when ``x <= threshold``), ``decision_type`` (bit 1:
default left; bits 2-3: missing type, 2 = NaN), ``left_child``/``right_child``
(``~leaf`` for leaves), ``leaf_value``, and the counts ``leaf_count`` /
``internal_count`` that weight TreeSHAP's paths and the expected value.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedcredit.training.gbdt.binning import BinSpec
from fedcredit.training.gbdt.errors import InvalidModelText
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.tree import Tree

DEFAULT_LEFT_MASK = 2
MISSING_NAN = 2 << 2
_NAME_OK = re.compile(r"^[^\s\[\]{}:,\"]+$")


def _f(v: float) -> str:
    return format(float(v), ".17g")


def _g(v: float) -> str:
    return format(float(v), "g")


def _join(values: Iterable[str]) -> str:
    return " ".join(values)


def tree_block(index: int, t: Tree) -> str:
    lines = [
        f"Tree={index}",
        f"num_leaves={t.num_leaves}",
        "num_cat=0",
        "split_feature=" + _join(str(v) for v in t.split_feature),
        "split_gain=" + _join(_g(v) for v in t.split_gain),
        "threshold=" + _join(_f(v) for v in t.threshold),
        "decision_type="
        + _join(str(MISSING_NAN | (DEFAULT_LEFT_MASK if d else 0)) for d in t.default_left),
        "left_child=" + _join(str(v) for v in t.left_child),
        "right_child=" + _join(str(v) for v in t.right_child),
        "leaf_value=" + _join(_f(v) for v in t.leaf_value),
        "leaf_weight=" + _join(_f(v) for v in t.leaf_weight),
        "leaf_count=" + _join(str(v) for v in t.leaf_count),
        "internal_value=" + _join(_g(v) for v in t.internal_value),
        "internal_weight=" + _join(_g(v) for v in t.internal_weight),
        "internal_count=" + _join(str(v) for v in t.internal_count),
        "is_linear=0",
        f"shrinkage={_g(t.shrinkage)}",
    ]
    return "\n".join(lines) + "\n\n\n"


def check_feature_names(names: Sequence[str]) -> None:
    for n in names:
        if not _NAME_OK.match(n):
            raise InvalidModelText(
                f"feature name {n!r} cannot be written to a LightGBM model: "
                "expected no spaces, brackets, braces, colons, commas or quotes"
            )


def model_text(spec: BinSpec, params: GBDTParams, trees: Sequence[Tree]) -> str:
    """An ensemble's trees in LightGBM's text format (``Ensemble.to_lightgbm``)."""
    check_feature_names(spec.feature_names)
    infos = []
    for f in range(spec.num_features):
        lo, hi = spec.mins[f], spec.maxs[f]
        infos.append("none" if not (lo == lo and hi == hi) or lo >= hi else f"[{_f(lo)}:{_f(hi)}]")
    blocks = [tree_block(i, t) for i, t in enumerate(trees)]
    p = params
    header = [
        "tree",
        "version=v4",
        "num_class=1",
        "num_tree_per_iteration=1",
        "label_index=0",
        f"max_feature_idx={spec.num_features - 1}",
        "objective=binary sigmoid:1",
        "feature_names=" + " ".join(spec.feature_names),
        "feature_infos=" + " ".join(infos),
        "tree_sizes=" + " ".join(str(len(b.encode())) for b in blocks),
    ]
    used: Counter[int] = Counter(f for t in trees for f in t.split_feature)
    importances = [
        f"{spec.feature_names[f]}={c}"
        for f, c in sorted(used.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    settings = [
        "[boosting: gbdt]",
        "[objective: binary]",
        "[tree_learner: fedcredit_hist]",
        f"[num_iterations: {len(trees)}]",
        f"[learning_rate: {_g(p.learning_rate)}]",
        f"[num_leaves: {2**p.max_depth}]",
        f"[max_depth: {p.max_depth}]",
        f"[min_data_in_leaf: {p.min_data_in_leaf}]",
        f"[min_sum_hessian_in_leaf: {_g(p.min_sum_hessian_in_leaf)}]",
        f"[lambda_l2: {_g(p.lambda_l2)}]",
        f"[min_gain_to_split: {_g(p.min_gain_to_split)}]",
        f"[max_bin: {p.max_bins}]",
        "[use_missing: 1]",
        "[zero_as_missing: 0]",
    ]
    return (
        "\n".join(header)
        + "\n\n"
        + "".join(blocks)
        + "end of trees\n\nfeature_importances:\n"
        + "".join(line + "\n" for line in importances)
        + "\nparameters:\n"
        + "".join(line + "\n" for line in settings)
        + "end of parameters\n\npandas_categorical:null\n"
    )


@dataclass
class ModelParts:
    """A LightGBM text model cut at its tree blocks (for the bagging baseline's merge)."""

    header: list[str]
    trees: list[str]  # each block without its "Tree=i" line
    tail: str

    @classmethod
    def parse(cls, text: str) -> ModelParts:
        head, sep, rest = text.partition("\nTree=")
        if not sep:
            raise InvalidModelText("no tree found in the LightGBM model text")
        body, sep2, tail = ("Tree=" + rest).partition("end of trees")
        if not sep2:
            raise InvalidModelText("the LightGBM model text has no 'end of trees' line")
        blocks = re.split(r"^Tree=\d+\n", body, flags=re.MULTILINE)
        trees = [b for b in blocks if b.strip()]
        header = [ln for ln in head.strip().splitlines() if not ln.startswith("tree_sizes=")]
        return cls(header=header, trees=trees, tail="end of trees" + tail)

    def render(self) -> str:
        blocks = [f"Tree={i}\n" + b.rstrip("\n") + "\n\n\n" for i, b in enumerate(self.trees)]
        sizes = "tree_sizes=" + " ".join(str(len(b.encode())) for b in blocks)
        return "\n".join([*self.header, sizes]) + "\n\n" + "".join(blocks) + self.tail
