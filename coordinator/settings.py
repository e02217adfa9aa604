"""The coordinator's settings: the ``[coordinator]`` and ``[fund]`` tables of the deployment file.

``[coordinator]`` (all optional)::

    node_deadline_s = 2.0         # deadline of every call to a department node
    node_deadline_per_item_s = 0.02   # plus this per enterprise in a batch call
    ledger_deadline_s = 5.0       # deadline of every ledger append (no entry, no answer)
    on_node_failure = "refuse"    # or "score_missing": score with that category missing, say so
    batch_chunk = 500             # ScoreBatch: enterprises scored together
    batch_inflight = 8            # ScoreBatch: chunks being scored at once (CPU-bound beyond)
    watch_interval_s = 60         # WatchRatings: default rescoring interval
    watch_min_interval_s = 1      # the shortest interval a bank may ask for
    watch_max_subscriptions = 10000
    model_refresh_s = 2.0         # how often another process's activation is picked up
    verify_threads = 4            # threads verifying consent tokens
    grade_share_a = 0.0833333     # rating calibration (case study: 1/12 A, 1/12 D)
    grade_share_d = 0.0833333
    grade_b_of_rest = 0.5         # share of the rest that is B (C gets the remainder)
    consent_issuer = ""           # the consent service's `iss` (default: its organisation id)

``[fund]``: ``fund_size``, ``max_leverage``, ``min_amount``, ``max_amount``,
``min_term_months``, ``max_term_months`` and ``[fund.rules.A]`` ... ``[fund.rules.D]``
with ``eligible``, ``fund_share_bp``, ``no_collateral_limit``, ``collateral_ratio_bp``
(see :mod:`coordinator.policy` for the case-study defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedcredit.common.config import Section
from fedcredit.coordinator.policy import FundPolicy
from fedcredit.coordinator.rating import GradeShares
from fedcredit.coordinator.scoring import NodePolicy, ScoringSettings

KEYS = frozenset(
    {
        "node_deadline_s",
        "node_deadline_per_item_s",
        "ledger_deadline_s",
        "on_node_failure",
        "batch_chunk",
        "batch_inflight",
        "watch_interval_s",
        "watch_min_interval_s",
        "watch_max_subscriptions",
        "model_refresh_s",
        "verify_threads",
        "grade_share_a",
        "grade_share_d",
        "grade_b_of_rest",
        "consent_issuer",
    }
)
FUND_KEYS = frozenset(
    {
        "fund_size",
        "max_leverage",
        "min_amount",
        "max_amount",
        "min_term_months",
        "max_term_months",
        "rules",
    }
)


@dataclass
class CoordinatorSettings:
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    batch_chunk: int = 500
    batch_inflight: int = 8
    watch_interval_s: float = 60.0
    watch_min_interval_s: float = 1.0
    watch_max_subscriptions: int = 10_000
    model_refresh_s: float = 2.0
    shares: GradeShares = field(default_factory=GradeShares)
    fund: FundPolicy = field(default_factory=FundPolicy)
    consent_issuer: str = ""

    @classmethod
    def from_sections(cls, coord: Section, fund: Section) -> CoordinatorSettings:
        coord.check_keys(KEYS)
        fund.check_keys(FUND_KEYS)
        d = cls()
        policy: NodePolicy = coord.get_str(  # type: ignore[assignment]
            "on_node_failure", d.scoring.on_node_failure, choices=("refuse", "score_missing")
        )
        scoring = ScoringSettings(
            node_deadline_s=coord.get_float(
                "node_deadline_s", d.scoring.node_deadline_s, min=0.05, max=60
            ),
            node_deadline_per_item_s=coord.get_float(
                "node_deadline_per_item_s", d.scoring.node_deadline_per_item_s, min=0.0, max=1.0
            ),
            ledger_deadline_s=coord.get_float(
                "ledger_deadline_s", d.scoring.ledger_deadline_s, min=0.05, max=60
            ),
            on_node_failure=policy,
            verify_threads=coord.get_int("verify_threads", d.scoring.verify_threads, min=1, max=64),
        )
        shares = GradeShares(
            a=coord.get_float("grade_share_a", d.shares.a, min=0.0, max=1.0),
            d=coord.get_float("grade_share_d", d.shares.d, min=0.0, max=1.0),
            b_of_rest=coord.get_float("grade_b_of_rest", d.shares.b_of_rest, min=0.0, max=1.0),
        )
        raw_fund: dict[str, Any] = dict(fund.values)
        return cls(
            scoring=scoring,
            batch_chunk=coord.get_int("batch_chunk", d.batch_chunk, min=1, max=10_000),
            batch_inflight=coord.get_int("batch_inflight", d.batch_inflight, min=1, max=64),
            watch_interval_s=coord.get_float("watch_interval_s", d.watch_interval_s, min=0.1),
            watch_min_interval_s=coord.get_float(
                "watch_min_interval_s", d.watch_min_interval_s, min=0.0
            ),
            watch_max_subscriptions=coord.get_int(
                "watch_max_subscriptions", d.watch_max_subscriptions, min=1
            ),
            model_refresh_s=coord.get_float("model_refresh_s", d.model_refresh_s, min=0.1),
            shares=shares,
            fund=FundPolicy.from_dict(raw_fund),
            consent_issuer=coord.get_str("consent_issuer", d.consent_issuer),
        )
