"""The simulated year of applications: reproducible, consistent, parallel never slower."""

from __future__ import annotations

from fedcredit.world.policy_year import YearResult, simulate


def test_a_simulated_year_of_joint_approvals() -> None:
    y = simulate(per_policy=6, seed=3)
    assert y.applications == y.paid + y.rejected > 65
    assert len(y.parallel_days) == len(y.serial_days) == y.paid
    # Reviewing in parallel is never slower than one department after another.
    assert all(p <= s + 1e-9 for p, s in zip(y.parallel_days, y.serial_days, strict=True))
    # Every paid application waited at least its full public notice (5 days) + payment.
    assert min(y.parallel_days) >= 6.0
    assert YearResult.median(y.parallel_days) < YearResult.median(y.serial_days)
    assert simulate(per_policy=6, seed=3) == y
