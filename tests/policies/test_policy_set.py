"""The city's synthetic policy set: 64 automatic and 65 application policies, all valid."""

from __future__ import annotations

from collections import Counter

from fedcredit.policies import rules
from fedcredit.world.policies import policy_set


def test_the_policy_set_is_shaped_like_weihais_and_every_rule_checks() -> None:
    ps = policy_set()
    assert Counter(p.mode for p in ps) == {"automatic": 64, "application": 65}
    assert len({p.id for p in ps}) == len(ps)
    spaces: set[str] = set()
    for p in ps:
        checked = rules.validate(p)  # raises on any bad field or rule
        spaces |= set(checked.namespaces())
        assert p.amount_yuan <= p.budget_yuan
    # The set reads most departments, and the platform's own attributes.
    assert rules.PLATFORM in spaces and len(spaces - {rules.PLATFORM}) >= 9
    assert policy_set(seed=0) == ps  # reproducible
