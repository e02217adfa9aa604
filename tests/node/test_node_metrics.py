"""A node's operator series (issue 17): each served enterprise is one disclosure for the
node and purpose; each token checked is one consent verification, by result."""

from __future__ import annotations

from pathlib import Path

from fedcredit.common.departments import BY_ID
from fedcredit.common.metrics import REGISTRY
from tests.node.conftest import Consents, NodeFactory, world_codes


def _total(name: str, **labels: str) -> float:
    return sum(
        s.value
        for fam in REGISTRY.collect()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_disclosures_and_verifications_are_counted(
    make_node: NodeFactory, consents: Consents, small_world: Path
) -> None:
    node = make_node("tax")
    org = BY_ID["tax"].org_id
    codes = world_codes(small_world)[20:25]
    items = [(x, consents.token(x)) for x in codes]
    items[1] = (codes[1], items[2][1])  # another enterprise's token: refused
    d0 = _total("fedcredit_disclosures_total", node=org)
    ok0 = _total("fedcredit_consent_verifications_total", result="ok")
    bad0 = _total("fedcredit_consent_verifications_total", result="CONSENT_ENTERPRISE_MISMATCH")
    with node.client() as c:
        res = c.get_features(items, ["revenue_12m"], **node.coordinator_kw())
    assert sum(1 for r in res if not r.error) == 4
    assert _total("fedcredit_disclosures_total", node=org) == d0 + 4
    assert _total("fedcredit_consent_verifications_total", result="ok") >= ok0 + 4
    bad = _total("fedcredit_consent_verifications_total", result="CONSENT_ENTERPRISE_MISMATCH")
    assert bad == bad0 + 1
