"""Reason codes: the features that push an enterprise's risk up most.

LightGBM's ``predict(..., pred_contrib=True)`` gives, per row, one SHAP-style
contribution per feature plus the expected value (last column), in log-odds
for a binary model; they sum to the raw score. A positive contribution raises
the probability of default. The top reasons are the (up to) three features
with the largest positive contributions, named with the description the node
catalog publishes for them, so a loan officer reads "months in arrears on
social security contributions" rather than ``ss_arrears_months_12``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

TOP_N = 3


@dataclass(frozen=True, slots=True)
class Reason:
    feature: str
    description: str
    contribution: float  # log-odds added to the risk by this feature
    missing: bool  # the value was missing (no records, or category not available)

    def to_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "description": self.description,
            "contribution": self.contribution,
            "missing": self.missing,
        }


def top_reasons(
    contributions: Sequence[float] | np.ndarray,
    feature_names: Sequence[str],
    descriptions: Mapping[str, str],
    missing: Sequence[bool] | np.ndarray | None = None,
    n: int = TOP_N,
) -> list[Reason]:
    """The ``n`` features with the largest positive contribution, largest first.

    ``contributions`` is one row of ``pred_contrib`` (length ``len(feature_names)``,
    optionally followed by the expected-value column, which is ignored). Ties
    are broken by feature order so the result is deterministic.
    """
    contrib = np.asarray(contributions, dtype=np.float64)
    k = len(feature_names)
    if contrib.shape[0] not in (k, k + 1):
        raise ValueError(f"expected {k} or {k + 1} contributions, got {contrib.shape[0]}")
    contrib = contrib[:k]
    miss = np.zeros(k, dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    # Largest first; a stable sort keeps feature order among ties.
    order = np.argsort(-contrib, kind="stable")[:n].tolist()
    values = contrib.tolist()
    out: list[Reason] = []
    for i in order:
        if not values[i] > 0:  # also stops at NaN
            break
        name = feature_names[i]
        out.append(
            Reason(
                feature=name,
                description=descriptions.get(name, name.replace("_", " ")),
                contribution=values[i],
                missing=bool(miss[i]),
            )
        )
    return out
