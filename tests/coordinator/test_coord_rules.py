"""Unit tests of the coordinator's pure rules: rating, fund policy, reasons."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.coordinator.errors import CalibrationTooSmall, InvalidLoan, InvalidPolicy
from fedcredit.coordinator.policy import (
    BP,
    FundPolicy,
    FundState,
    GradeRule,
    collateral_required,
    decide,
    payout,
)
from fedcredit.coordinator.rating import (
    GradeShares,
    Thresholds,
    calibrate,
    distribution,
    grade_rank,
    rate,
)
from fedcredit.coordinator.reasons import top_reasons

FULL = FundState(balance=200_000_000, exposure=0)


# ---------------------------------------------------------------- rating
def test_calibration_follows_case_study_split() -> None:
    rng = np.random.default_rng(1)
    pds = rng.beta(1, 30, size=120_000)
    th = calibrate(pds)
    dist = distribution(pds, th)
    assert dist["A"] == 10_000
    assert dist["D"] == 10_000
    assert dist["B"] == 50_000
    assert dist["C"] == 50_000


def test_calibration_configurable_b_c_split() -> None:
    pds = np.linspace(0.001, 0.5, 1200)
    th = calibrate(pds, GradeShares(b_of_rest=0.7))
    dist = distribution(pds, th)
    assert (dist["A"], dist["B"], dist["C"], dist["D"]) == (100, 700, 300, 100)


def test_rate_boundaries_inclusive() -> None:
    th = Thresholds(0.01, 0.03, 0.1)
    assert rate(0.0, th) == "A"
    assert rate(0.01, th) == "A"
    assert rate(0.010001, th) == "B"
    assert rate(0.03, th) == "B"
    assert rate(0.1, th) == "C"
    assert rate(0.1000001, th) == "D"
    assert rate(1.0, th) == "D"
    with pytest.raises(ValueError):
        rate(float("nan"), th)


def test_calibration_refuses_small_or_bad_population() -> None:
    with pytest.raises(CalibrationTooSmall):
        calibrate([0.1] * 10)
    with pytest.raises(CalibrationTooSmall):
        calibrate([0.1] * 100 + [1.5])
    with pytest.raises(CalibrationTooSmall):
        calibrate([0.1] * 100 + [float("nan")])


def test_bad_shares_and_thresholds_refused() -> None:
    with pytest.raises(InvalidPolicy):
        GradeShares(a=0.6, d=0.5)
    with pytest.raises(InvalidPolicy):
        GradeShares(b_of_rest=1.5)
    with pytest.raises(InvalidPolicy):
        Thresholds(0.2, 0.1, 0.3)


def test_grade_rank_orders_worse_grades_higher() -> None:
    assert [grade_rank(g) for g in "ABCD"] == [0, 1, 2, 3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=48, max_size=400))
def test_calibration_is_monotone_and_rate_is_monotone(pds: list[float]) -> None:
    th = calibrate(pds)
    assert th.a <= th.b <= th.c
    ranks = [grade_rank(rate(p, th)) for p in sorted(pds)]
    assert ranks == sorted(ranks)


def test_thresholds_roundtrip() -> None:
    th = Thresholds(0.01, 0.02, 0.3)
    assert Thresholds.from_dict(th.to_dict()) == th


# ---------------------------------------------------------------- fund policy
@pytest.mark.parametrize(
    ("grade", "fund_bp", "bank_bp"),
    [("A", 8000, 2000), ("B", 6000, 4000), ("C", 4000, 6000)],
)
def test_grade_shares_follow_case_study(grade: str, fund_bp: int, bank_bp: int) -> None:
    d = decide(
        FundPolicy(),
        grade=grade,
        amount=500_000,
        term_months=12,
        collateral_offered=10**7,
        state=FULL,
    )
    assert d.approved and d.reason == "APPROVED"
    assert (d.fund_share_bp, d.bank_share_bp) == (fund_bp, bank_bp)
    assert d.fund_amount == 500_000 * fund_bp // BP


def test_d_refused() -> None:
    d = decide(
        FundPolicy(),
        grade="D",
        amount=100_000,
        term_months=12,
        collateral_offered=10**8,
        state=FULL,
    )
    assert not d.approved and d.reason == "GRADE_NOT_ELIGIBLE" and d.fund_amount == 0


def test_a_five_million_boundary() -> None:
    p = FundPolicy()
    at = decide(p, grade="A", amount=5_000_000, term_months=12, collateral_offered=0, state=FULL)
    assert at.approved and at.collateral_required == 0 and at.fund_amount == 4_000_000
    above = decide(p, grade="A", amount=5_000_001, term_months=12, collateral_offered=0, state=FULL)
    assert not above.approved and above.reason == "COLLATERAL_REQUIRED"
    assert above.collateral_required == collateral_required(p.rules["A"], 5_000_001) > 0
    with_coll = decide(
        p,
        grade="A",
        amount=5_000_001,
        term_months=12,
        collateral_offered=above.collateral_required,
        state=FULL,
    )
    assert with_coll.approved


def test_capacity_exhausted() -> None:
    p = FundPolicy(fund_size=1_000_000, max_leverage=2)
    state = FundState(balance=1_000_000, exposure=1_700_000)  # capacity 300,000
    ok = decide(p, grade="A", amount=375_000, term_months=12, collateral_offered=0, state=state)
    assert ok.approved and ok.fund_amount == 300_000
    no = decide(p, grade="A", amount=375_002, term_months=12, collateral_offered=0, state=state)
    assert not no.approved and no.reason == "FUND_CAPACITY_EXCEEDED"


def test_fund_never_above_80_percent() -> None:
    with pytest.raises(InvalidPolicy):
        FundPolicy.from_dict({"rules": {"A": {"fund_share_bp": 8001}}})
    assert payout(9000, 1_000_000) == 800_000
    assert payout(6000, 1_000_000) == 600_000


def test_policy_from_dict_overrides_and_refuses_unknown_grade() -> None:
    p = FundPolicy.from_dict({"fund_size": 5, "rules": {"B": {"no_collateral_limit": 0}}})
    assert (
        p.fund_size == 5
        and p.rules["B"].no_collateral_limit == 0
        and p.rules["A"].fund_share_bp == 8000
    )
    assert FundPolicy.from_dict(p.to_dict()) == p
    with pytest.raises(InvalidPolicy):
        FundPolicy.from_dict({"rules": {"E": {}}})
    with pytest.raises(InvalidPolicy):
        FundPolicy(rules={"A": GradeRule(True, 8000)})


def test_loan_terms_checked() -> None:
    p = FundPolicy()
    for amount, term, coll in [(0, 12, 0), (10**9, 12, 0), (100_000, 0, 0), (100_000, 12, -1)]:
        with pytest.raises(InvalidLoan):
            decide(
                p, grade="A", amount=amount, term_months=term, collateral_offered=coll, state=FULL
            )


# ---------------------------------------------------------------- reasons
def test_top_reasons_picks_largest_positive() -> None:
    names = ["a", "b", "c", "d", "e"]
    desc = {"a": "alpha", "b": "beta", "c": "gamma", "d": "delta"}
    r = top_reasons(
        [0.1, -0.5, 0.7, 0.3, 0.0, -2.0], names, desc, missing=[False, False, True, False, False]
    )
    assert [x.feature for x in r] == ["c", "d", "a"]
    assert r[0].description == "gamma" and r[0].missing
    assert r[2].description == "alpha"


def test_top_reasons_only_risk_increasing() -> None:
    r = top_reasons([-0.1, 0.2, -0.3], ["x_y", "z_w", "q"], {})
    assert [x.feature for x in r] == ["z_w"]
    assert r[0].description == "z w"
    with pytest.raises(ValueError):
        top_reasons([0.1], ["a", "b", "c"], {})


# ---------------------------------------------------------------- settings
def test_settings_from_sections_and_errors() -> None:
    from fedcredit.common.config import Section
    from fedcredit.common.errors import ConfigError
    from fedcredit.coordinator.settings import CoordinatorSettings

    s = CoordinatorSettings.from_sections(
        Section("coordinator", {"on_node_failure": "score_missing", "grade_b_of_rest": 0.6}),
        Section("fund", {"fund_size": 1_000_000, "rules": {"C": {"eligible": False}}}),
    )
    assert s.scoring.on_node_failure == "score_missing" and s.shares.b_of_rest == 0.6
    assert s.fund.fund_size == 1_000_000 and not s.fund.rules["C"].eligible
    with pytest.raises(ConfigError, match="nope"):
        CoordinatorSettings.from_sections(Section("coordinator", {"nope": 1}), Section("fund", {}))
    with pytest.raises(ConfigError, match="on_node_failure"):
        CoordinatorSettings.from_sections(
            Section("coordinator", {"on_node_failure": "maybe"}), Section("fund", {})
        )
    with pytest.raises(InvalidPolicy):
        CoordinatorSettings.from_sections(
            Section("coordinator", {}), Section("fund", {"rules": {"A": {"fund_share_bp": 9000}}})
        )


# --- the feature hash: the direct writer gives the RFC 8785 bytes ------------------------


def _reference_hash(version: str, code: str, jti: str, row: np.ndarray) -> str:
    import hashlib

    from fedcredit.common.canonical import canonical_json

    doc = {
        "model_version": version,
        "enterprise": code,
        "jti": jti,
        "features": [None if np.isnan(v) else float(v) for v in row],
    }
    return hashlib.sha256(canonical_json(doc)).hexdigest()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_infinity=False), st.just(float("nan"))), min_size=0, max_size=40
    )
)
def test_feature_hash_equals_the_canonical_json_hash(values: list[float]) -> None:
    from fedcredit.coordinator.scoring import feature_hash

    row = np.array(values, dtype=np.float64)
    args = ("fed-hist-20261203-064640-cc3bc956", "91371083MAA4H58A8U", "b3f1c2-jti_9.x")
    assert feature_hash(*args, row) == _reference_hash(*args, row)


@pytest.mark.parametrize("jti", ['quote"inside', "tab\there", "é-non-ascii", ""])
def test_feature_hash_of_unusual_strings_takes_the_library_path(jti: str) -> None:
    from fedcredit.coordinator.scoring import feature_hash

    row = np.array([1.0, np.nan, 2.5e-9])
    assert feature_hash("v1", "91371083MAA4H58A8U", jti, row) == _reference_hash(
        "v1", "91371083MAA4H58A8U", jti, row
    )


def test_top_reasons_ties_keep_feature_order() -> None:
    r = top_reasons([0.2, 0.5, 0.2, 0.2, -1.0], ["a", "b", "c", "d", "e"], {})
    assert [x.feature for x in r] == ["b", "a", "c"]
    assert [x.contribution for x in r] == [0.5, 0.2, 0.2]
