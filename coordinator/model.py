"""A loaded credit model: LightGBM booster, its feature order, version and thresholds."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np

from fedcredit.coordinator.errors import InvalidModel
from fedcredit.coordinator.rating import Grade, Thresholds, rate


def model_sha256(model_text: str) -> str:
    return hashlib.sha256(model_text.encode("utf-8")).hexdigest()


def load_booster(model_text: str) -> lgb.Booster:
    """Parse LightGBM text format; refuse anything that is not a binary classifier."""
    if not model_text.strip():
        raise InvalidModel("the model text is empty; expected a LightGBM text model")
    try:
        booster = lgb.Booster(model_str=model_text)
    except Exception as exc:  # LightGBM raises its own LightGBMError with the parser message
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidModel(f"the model text is not a LightGBM model: {first}") from exc
    objective = ""
    for line in model_text.splitlines()[:40]:
        if line.startswith("objective="):
            objective = line.split("=", 1)[1]
            break
    if not objective.startswith(("binary", "cross_entropy", "xentropy")):
        raise InvalidModel(
            f"the model's objective is {objective or 'missing'!r}; expected a binary classifier "
            "(objective=binary) giving a probability of default"
        )
    if booster.num_model_per_iteration() != 1:
        raise InvalidModel(
            f"expected one tree per iteration (binary), got {booster.num_model_per_iteration()}"
        )
    return booster


@dataclass
class ScoringModel:
    version: str
    sha256: str
    thresholds: Thresholds
    booster: lgb.Booster = field(repr=False)

    @functools.cached_property
    def features(self) -> tuple[str, ...]:
        """The model's feature names, in its column order (read from the booster once: every
        Score needs them, and LightGBM copies them out through C buffers each time)."""
        return tuple(self.booster.feature_name())

    @classmethod
    def from_text(cls, version: str, model_text: str, thresholds: Thresholds) -> ScoringModel:
        return cls(version, model_sha256(model_text), thresholds, load_booster(model_text))

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities of default, one per row (NaN = missing, LightGBM's default direction)."""
        threads = 1 if matrix.shape[0] < 256 else 0
        return np.asarray(self.booster.predict(matrix, num_threads=threads), dtype=np.float64)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per-feature log-odds contributions plus the expected value (last column)."""
        threads = 1 if matrix.shape[0] < 256 else 0
        return np.asarray(
            self.booster.predict(matrix, pred_contrib=True, num_threads=threads), dtype=np.float64
        )

    def rate(self, pd: float) -> Grade:
        return rate(pd, self.thresholds)

    def check_features(self, known: Sequence[str]) -> list[str]:
        """Model features that no node's catalog publishes."""
        k = set(known)
        return [f for f in self.features if f not in k]
