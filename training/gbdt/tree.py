"""A regression tree in LightGBM's own layout, and prediction on raw or binned rows.

Layout (as in LightGBM's ``Tree``): internal nodes are numbered in the order
they were split; a child index ``>= 0`` is an internal node, ``< 0`` is leaf
``~child``. When leaf ``L`` splits, its left child keeps index ``L`` and the
right child becomes leaf ``num_leaves``. Missing values (NaN) follow each
split's default direction, like LightGBM's ``MissingType::NaN``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Tree:
    split_feature: list[int] = field(default_factory=list)
    split_bin: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    default_left: list[bool] = field(default_factory=list)
    split_gain: list[float] = field(default_factory=list)
    left_child: list[int] = field(default_factory=list)
    right_child: list[int] = field(default_factory=list)
    internal_value: list[float] = field(default_factory=list)
    internal_weight: list[float] = field(default_factory=list)
    internal_count: list[int] = field(default_factory=list)
    leaf_value: list[float] = field(default_factory=lambda: [0.0])
    leaf_weight: list[float] = field(default_factory=lambda: [0.0])
    leaf_count: list[int] = field(default_factory=lambda: [0])
    leaf_parent: list[int] = field(default_factory=lambda: [-1])
    leaf_depth: list[int] = field(default_factory=lambda: [0])
    shrinkage: float = 1.0

    @property
    def num_leaves(self) -> int:
        return len(self.leaf_value)

    def split(
        self,
        leaf: int,
        *,
        feature: int,
        split_bin: int,
        threshold: float,
        default_left: bool,
        gain: float,
        value: float,
        weight: float,
        count: int,
    ) -> tuple[int, int]:
        """Split ``leaf``; returns (new internal node index, new right leaf index)."""
        node = len(self.split_feature)
        right_leaf = self.num_leaves
        parent = self.leaf_parent[leaf]
        if parent >= 0:
            if self.left_child[parent] == ~leaf:
                self.left_child[parent] = node
            else:
                self.right_child[parent] = node
        self.split_feature.append(feature)
        self.split_bin.append(split_bin)
        self.threshold.append(threshold)
        self.default_left.append(default_left)
        self.split_gain.append(gain)
        self.left_child.append(~leaf)
        self.right_child.append(~right_leaf)
        self.internal_value.append(value)
        self.internal_weight.append(weight)
        self.internal_count.append(count)
        depth = self.leaf_depth[leaf] + 1
        self.leaf_parent[leaf] = node
        self.leaf_depth[leaf] = depth
        self.leaf_value.append(0.0)
        self.leaf_weight.append(0.0)
        self.leaf_count.append(0)
        self.leaf_parent.append(node)
        self.leaf_depth.append(depth)
        return node, right_leaf

    def leaf_index(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Leaf reached by every raw row (NaN takes the default direction)."""
        n = x.shape[0]
        if self.num_leaves == 1:
            return np.zeros(n, dtype=np.int64)
        node = np.zeros(n, dtype=np.int64)
        feat = np.asarray(self.split_feature, dtype=np.int64)
        thr = np.asarray(self.threshold, dtype=np.float64)
        dleft = np.asarray(self.default_left, dtype=bool)
        lch = np.asarray(self.left_child, dtype=np.int64)
        rch = np.asarray(self.right_child, dtype=np.int64)
        rows = np.arange(n)
        active = node >= 0
        while active.any():
            idx = rows[active]
            nd = node[idx]
            v = x[idx, feat[nd]]
            nan = np.isnan(v)
            go_left = np.where(nan, dleft[nd], v <= thr[nd])
            node[idx] = np.where(go_left, lch[nd], rch[nd])
            active = node >= 0
        return ~node

    def leaf_index_binned(
        self, b: npt.NDArray[np.integer[Any]], nan_slot: int
    ) -> npt.NDArray[np.int64]:
        """Leaf reached by every binned row; equals :meth:`leaf_index` on the raw rows."""
        n = b.shape[0]
        if self.num_leaves == 1:
            return np.zeros(n, dtype=np.int64)
        node = np.zeros(n, dtype=np.int64)
        feat = np.asarray(self.split_feature, dtype=np.int64)
        sbin = np.asarray(self.split_bin, dtype=np.int64)
        dleft = np.asarray(self.default_left, dtype=bool)
        lch = np.asarray(self.left_child, dtype=np.int64)
        rch = np.asarray(self.right_child, dtype=np.int64)
        rows = np.arange(n)
        active = node >= 0
        while active.any():
            idx = rows[active]
            nd = node[idx]
            v = b[idx, feat[nd]].astype(np.int64)
            go_left = np.where(v == nan_slot, dleft[nd], v <= sbin[nd])
            node[idx] = np.where(go_left, lch[nd], rch[nd])
            active = node >= 0
        return ~node

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(self.leaf_value, dtype=np.float64)[self.leaf_index(x)]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        return cls(**d)
