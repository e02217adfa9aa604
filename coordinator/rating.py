"""A/B/C/D rating: thresholds on the probability of default, calibrated on a rated population.

The case study rates 120,000 enterprises with about 10,000 A, 10,000 D and
100,000 B and C together, so by default 1/12 of the population is A (lowest
probability of default), 1/12 is D (highest) and the rest is split between B
and C (evenly by default, configurable). Thresholds are computed once per
model version — when it is published or activated — and stored with it;
requests only compare against them. Everything here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedcredit.coordinator.errors import CalibrationTooSmall, InvalidPolicy

Grade = Literal["A", "B", "C", "D"]
GRADES: tuple[Grade, ...] = ("A", "B", "C", "D")

# Fewer rated enterprises than this give thresholds dominated by noise.
MIN_CALIBRATION_SIZE = 48


@dataclass(frozen=True, slots=True)
class GradeShares:
    """Target share of the rated population per grade."""

    a: float = 1 / 12
    d: float = 1 / 12
    b_of_rest: float = 0.5  # share of the non-A, non-D population that is B

    def __post_init__(self) -> None:
        if not (0 < self.a < 1 and 0 < self.d < 1 and self.a + self.d < 1):
            raise InvalidPolicy(
                f"grade shares A={self.a} and D={self.d} must each be in (0, 1) and sum to less than 1"
            )
        if not 0 <= self.b_of_rest <= 1:
            raise InvalidPolicy(f"b_of_rest must be in [0, 1], got {self.b_of_rest}")

    def cumulative(self) -> tuple[float, float, float]:
        """Cumulative population shares at the A|B, B|C and C|D boundaries."""
        rest = 1 - self.a - self.d
        return self.a, self.a + rest * self.b_of_rest, 1 - self.d


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Upper bounds (inclusive) of the probability of default for A, B and C; above ``c`` is D."""

    a: float
    b: float
    c: float

    def __post_init__(self) -> None:
        if not (0 <= self.a <= self.b <= self.c <= 1) or any(
            map(math.isnan, (self.a, self.b, self.c))
        ):
            raise InvalidPolicy(
                f"thresholds must satisfy 0 <= A <= B <= C <= 1, got A={self.a}, B={self.b}, C={self.c}"
            )

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Thresholds:
        return cls(a=float(data["a"]), b=float(data["b"]), c=float(data["c"]))


def calibrate(pds: Sequence[float] | np.ndarray, shares: GradeShares = GradeShares()) -> Thresholds:
    """Thresholds such that the rated population ``pds`` falls into grades with ``shares``.

    Each threshold is the empirical quantile of the population's probabilities
    of default at the cumulative share (numpy's ``inverted_cdf``: the value of
    an actual enterprise, so ``rate`` reproduces the split exactly when the
    probabilities are distinct).
    """
    arr = np.asarray(pds, dtype=np.float64)
    if arr.ndim != 1 or arr.size < MIN_CALIBRATION_SIZE:
        raise CalibrationTooSmall(
            f"calibration needs at least {MIN_CALIBRATION_SIZE} probabilities of default, got {arr.size}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise CalibrationTooSmall("calibration probabilities must be finite and in [0, 1]")
    qa, qb, qc = shares.cumulative()
    a, b, c = np.quantile(arr, [qa, qb, qc], method="inverted_cdf")
    return Thresholds(a=float(a), b=float(b), c=float(c))


def rate(pd: float, thresholds: Thresholds) -> Grade:
    """The grade of one probability of default."""
    if math.isnan(pd):
        raise ValueError("probability of default is NaN")
    if pd <= thresholds.a:
        return "A"
    if pd <= thresholds.b:
        return "B"
    if pd <= thresholds.c:
        return "C"
    return "D"


def grade_rank(grade: str) -> int:
    """0 for A ... 3 for D: a larger rank is a worse grade (used to detect downgrades)."""
    return GRADES.index(grade)  # type: ignore[arg-type]


def distribution(pds: Sequence[float] | np.ndarray, thresholds: Thresholds) -> dict[str, int]:
    """How many of ``pds`` fall into each grade."""
    out: dict[str, int] = dict.fromkeys(GRADES, 0)
    for p in np.asarray(pds, dtype=np.float64):
        out[rate(float(p), thresholds)] += 1
    return out
