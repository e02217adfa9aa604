"""Training settings of the histogram GBDT, validated once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from fedcredit.training.gbdt.errors import InvalidGbdtParams

# Gradients and hessians are sent as integers: value * 2**FIXED_POINT_BITS.
# |gradient| <= 1 and hessian <= 1/4 for logloss, so a sum over N rows stays
# below N * 2**28; exact in int64 and in float64 (< 2**53) up to 2**25 rows.
FIXED_POINT_BITS = 28
MAX_TOTAL_ROWS = 2**25


@dataclass(frozen=True)
class GBDTParams:
    """Settings; defaults follow LightGBM's where one exists."""

    num_trees: int = 30
    max_depth: int = 3
    learning_rate: float = 0.3
    max_bins: int = 32
    lambda_l2: float = 0.0
    min_data_in_leaf: int = 20
    min_sum_hessian_in_leaf: float = 1e-3
    min_gain_to_split: float = 0.0
    # 0 disables early stopping; otherwise stop when the banks' aggregated
    # validation logloss has not improved for this many trees.
    early_stopping_rounds: int = 0
    validation_fraction: float = 0.0
    # Leaf outputs (before the learning rate) are clipped to +-max_delta_step when > 0,
    # as LightGBM's max_delta_step: with noisy (private) sums a leaf whose hessian sum
    # came out small must not get a huge value.
    max_delta_step: float = 0.0
    # Features whose histograms each tree is grown on (0: all), as LightGBM's
    # feature_fraction / XGBoost's colsample_bytree but as a count: every tree draws a
    # public subset of this many features from ``feature_seed`` (see ``tree_features``).
    # In private mode a release carries fewer values at the same budget, so each gets
    # less noise. ``feature_seed`` None: the coordinator draws one when the run starts and
    # commits it with the settings every bank checks (each run another public draw).
    features_per_tree: int = 0
    feature_seed: int | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("num_trees", 1 <= self.num_trees <= 100_000, "an integer in 1..100000"),
            ("max_depth", 1 <= self.max_depth <= 16, "an integer in 1..16"),
            ("learning_rate", 0.0 < self.learning_rate <= 1.0, "a number in (0, 1]"),
            ("max_bins", 2 <= self.max_bins <= 255, "an integer in 2..255"),
            ("lambda_l2", self.lambda_l2 >= 0.0, "a number >= 0"),
            ("min_data_in_leaf", self.min_data_in_leaf >= 1, "an integer >= 1"),
            ("min_sum_hessian_in_leaf", self.min_sum_hessian_in_leaf >= 0.0, "a number >= 0"),
            ("min_gain_to_split", self.min_gain_to_split >= 0.0, "a number >= 0"),
            ("early_stopping_rounds", self.early_stopping_rounds >= 0, "an integer >= 0"),
            ("validation_fraction", 0.0 <= self.validation_fraction < 1.0, "a number in [0, 1)"),
            ("max_delta_step", self.max_delta_step >= 0.0, "a number >= 0"),
            ("features_per_tree", self.features_per_tree >= 0, "an integer >= 0 (0: all)"),
            (
                "feature_seed",
                self.feature_seed is None or 0 <= self.feature_seed < 2**63,
                "an integer in 0..2**63-1 or null (drawn at the start of the run)",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InvalidGbdtParams(
                    f"training setting {name} must be {expected}, got {getattr(self, name)!r}",
                    setting=name,
                )
        if self.early_stopping_rounds > 0 and self.validation_fraction <= 0.0:
            raise InvalidGbdtParams(
                "early_stopping_rounds > 0 needs validation_fraction > 0 "
                f"(got validation_fraction={self.validation_fraction})",
                setting="validation_fraction",
            )

    def released_features(self, n_features: int) -> int:
        """How many features' histograms one request carries."""
        k = self.features_per_tree
        return n_features if k == 0 or k >= n_features else k

    def with_feature_seed(self) -> GBDTParams:
        """These settings with a feature seed: the given one, or a fresh one if none was
        given and trees are grown on subsets (what the coordinator commits to)."""
        if self.feature_seed is not None or self.features_per_tree == 0:
            return self
        return replace(self, feature_seed=secrets.randbelow(2**63))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GBDTParams:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidGbdtParams(
                f"unknown training setting(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(known))}",
                setting=unknown[0],
            )
        return cls(**data)


def tree_features(params: GBDTParams, n_features: int, tree: int) -> tuple[int, ...]:
    """The features tree ``tree`` is grown on, ascending: all of them, or the
    ``features_per_tree`` whose SHA-256 of (seed, tree, feature) is smallest. Public and
    independent of any row; every bank recomputes it and refuses a request for another
    subset. A hash rather than a NumPy generator, so banks on another NumPy agree."""
    k = params.released_features(n_features)
    if k == n_features:
        return tuple(range(n_features))
    if params.feature_seed is None:
        raise InvalidGbdtParams(
            "features_per_tree needs a feature_seed: draw one (with_feature_seed) before "
            "the run starts",
            setting="feature_seed",
        )

    def key(f: int) -> bytes:
        return hashlib.sha256(f"{params.feature_seed}:{tree}:{f}".encode()).digest()

    return tuple(sorted(sorted(range(n_features), key=key)[:k]))
