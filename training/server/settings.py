"""Settings of a federated training run, with documented defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedcredit.common.errors import InvalidArgument
from fedcredit.training.flower.secure import MIN_BANKS as _SECURE_MIN_BANKS
from fedcredit.training.flower.secure import WHY_MIN_BANKS
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.privacy import DEFAULT_SKETCH_ROUNDS

STRATEGIES = ("hist", "bagging", "cyclic")
# How secure sums are made: "masked" (one round per sum, pairwise masks from keys agreed
# at setup: training/flower/masking.py) or "secaggplus" (Flower's SecAgg+ workflow, four
# rounds per sum; kept as the measured reference).
SECURE_PROTOCOLS = ("masked", "secaggplus")
# Without SecAgg+ the server sees each bank's histograms anyway, so one bank is a valid
# (if pointless) federation; 2 is the documented lower bound that is still a federation.
MIN_BANKS_PLAIN = 2
MIN_BANKS_SECAGG = _SECURE_MIN_BANKS


class InvalidTrainSettings(InvalidArgument):
    reason = "TRAINING_SETTINGS_INVALID"


@dataclass(frozen=True)
class TrainSettings:
    # hist (lossless federated histogram boosting), bagging or cyclic (LightGBM baselines)
    strategy: str = "hist"
    params: GBDTParams = field(default_factory=GBDTParams)
    # Sum the banks' histograms with Flower's SecAgg+ (hist only).
    secagg: bool = False
    # Fewest banks allowed in a run: 0 means the default, 3 with SecAgg+ (needed to hide
    # each bank's histograms in the sum) and MIN_BANKS_PLAIN without.
    min_banks: int = 0
    # Banks to wait for before starting; 0 means min_banks.
    num_banks: int = 0
    # Seconds to wait for the banks' SuperNodes to connect.
    wait_for_banks: float = 120.0
    # Seconds a round may take before the missing banks count as dropped.
    round_timeout: float = 600.0
    # bagging/cyclic: trees each bank boosts per round.
    local_rounds: int = 1
    label: str = "y"
    secure_protocol: str = "masked"
    # Differential privacy (hist only): 0 trains without noise; otherwise the whole run's
    # budget epsilon at delta, the noise calibrated by OpenDP before the first round.
    epsilon: float = 0.0
    delta: float = 1e-6
    # Private mode: the public schema file, {"feature": [lo, hi], ...}, or "catalog" (the
    # feature catalog's declared domains, city mode's default); bins come from these
    # ranges only (each bank checks them against its own copy).
    public_ranges: str = ""
    # Private mode: bins at the quantiles of a DP sketch of the banks' rows on the fine
    # public grid (one noisy secure sum before training, priced as this many histogram
    # rounds in the same budget; training/gbdt/privacy.py, quantile_spec); 0: bins on the
    # public grid of the ranges, no sketch. FATE homo split, epsilon 4: 1 round's worth
    # (about 3 % of the budget) buys quantile bins that beat the public grid.
    sketch_rounds: float = DEFAULT_SKETCH_ROUNDS

    @property
    def private(self) -> bool:
        return self.epsilon > 0.0

    def __post_init__(self) -> None:
        if self.secure_protocol not in SECURE_PROTOCOLS:
            raise InvalidTrainSettings(
                f"secure_protocol must be one of {', '.join(SECURE_PROTOCOLS)}, got "
                f"{self.secure_protocol!r}"
            )
        if not (math.isfinite(self.sketch_rounds) and 0.0 <= self.sketch_rounds <= 100.0):
            raise InvalidTrainSettings(
                f"sketch_rounds must be in [0, 100] (0: bins on the public grid), got "
                f"{self.sketch_rounds}"
            )
        if self.epsilon < 0.0:
            raise InvalidTrainSettings(f"--epsilon must be > 0 (0: no noise), got {self.epsilon}")
        if self.private and self.strategy != "hist":
            raise InvalidTrainSettings(
                f"{self.strategy} is a non-private baseline: it sends whole LightGBM models "
                "boosted on one bank's rows, which no noise on sums protects; use "
                "--strategy hist with --epsilon, or drop --epsilon"
            )
        if self.private and not self.public_ranges:
            raise InvalidTrainSettings(
                "private training needs --public-ranges FILE ({feature: [lo, hi]}): bins "
                "must come from public ranges, never from the banks' values"
            )
        if self.private and self.secagg and self.secure_protocol != "masked":
            raise InvalidTrainSettings(
                "private training adds noise inside the one-round masked sums; "
                "secure_protocol must be masked"
            )
        if self.strategy not in STRATEGIES:
            raise InvalidTrainSettings(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.secagg and self.strategy != "hist":
            raise InvalidTrainSettings(
                f"secure aggregation applies to the hist strategy only, got {self.strategy!r}"
            )
        if self.min_banks < 0:
            raise InvalidTrainSettings(f"--min-banks must be >= 1, got {self.min_banks}")
        if self.secagg and 0 < self.min_banks < MIN_BANKS_SECAGG:
            raise InvalidTrainSettings(
                f"--min-banks must be >= {MIN_BANKS_SECAGG} with SecAgg+, got {self.min_banks}: "
                f"{WHY_MIN_BANKS}"
            )
        if self.num_banks and self.num_banks < self.least_banks:
            why = f" with SecAgg+: {WHY_MIN_BANKS}" if self.secagg else " (--min-banks)"
            raise InvalidTrainSettings(
                f"expected at least {self.least_banks} banks{why}; got {self.num_banks}"
            )
        if self.local_rounds < 1:
            raise InvalidTrainSettings(f"local_rounds must be >= 1, got {self.local_rounds}")

    @property
    def least_banks(self) -> int:
        """The fewest banks this run accepts (``min_banks`` or its default)."""
        if self.min_banks:
            return self.min_banks
        return MIN_BANKS_SECAGG if self.secagg else MIN_BANKS_PLAIN

    @property
    def expected_banks(self) -> int:
        return self.num_banks or self.least_banks

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = self.params.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        d = dict(d)
        params = GBDTParams.from_dict(dict(d.pop("params", {})))
        known = set(cls.__dataclass_fields__) - {"params"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidTrainSettings(
                f"unknown training setting(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(known))}"
            )
        return cls(params=params, **d)
