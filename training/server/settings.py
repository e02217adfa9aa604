"""Settings of a federated training run, with documented defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedcredit.common.errors import InvalidArgument
from fedcredit.training.gbdt.params import GBDTParams

STRATEGIES = ("hist", "bagging", "cyclic")


class InvalidTrainSettings(InvalidArgument):
    reason = "TRAINING_SETTINGS_INVALID"


@dataclass(frozen=True)
class TrainSettings:
    # hist (lossless federated histogram boosting), bagging or cyclic (LightGBM baselines)
    strategy: str = "hist"
    params: GBDTParams = field(default_factory=GBDTParams)
    # Sum the banks' histograms with Flower's SecAgg+ (hist only).
    secagg: bool = False
    # Fewest banks allowed in a run (SecAgg+ needs at least 3 to hide each bank).
    min_banks: int = 3
    # Banks to wait for before starting; 0 means min_banks.
    num_banks: int = 0
    # Seconds to wait for the banks' SuperNodes to connect.
    wait_for_banks: float = 120.0
    # Seconds a round may take before the missing banks count as dropped.
    round_timeout: float = 600.0
    # bagging/cyclic: trees each bank boosts per round.
    local_rounds: int = 1
    label: str = "y"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidTrainSettings(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.secagg and self.strategy != "hist":
            raise InvalidTrainSettings(
                f"secure aggregation applies to the hist strategy only, got {self.strategy!r}"
            )
        if self.min_banks < 1:
            raise InvalidTrainSettings(f"min_banks must be >= 1, got {self.min_banks}")
        if self.secagg and self.min_banks < 3:
            raise InvalidTrainSettings(
                f"secure aggregation needs min_banks >= 3, got {self.min_banks}"
            )
        if self.num_banks and self.num_banks < self.min_banks:
            raise InvalidTrainSettings(
                f"num_banks ({self.num_banks}) is below min_banks ({self.min_banks})"
            )
        if self.local_rounds < 1:
            raise InvalidTrainSettings(f"local_rounds must be >= 1, got {self.local_rounds}")

    @property
    def expected_banks(self) -> int:
        return self.num_banks or self.min_banks

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
