"""A successful Score moves the operators' series (issue 17): requests and consent
verifications. The services run
in-process here and share the process's metrics registry (each series carries its
``service`` label; in a deployment each process serves its own /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fedcredit.common.metrics import REGISTRY
from fedcredit.coordinator.client import CoordinatorClient

from .conftest import City, ConsentEnv, Coord, start_coordinator, stop_coordinator


@pytest.fixture(scope="module")
def coord(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coord]:
    c = start_coordinator(
        pki=pki, consent_env=consent_env, city=city, tmp=tmp_path_factory.mktemp("coord")
    )
    yield c
    stop_coordinator(c)


def _total(name: str, **labels: str) -> float:
    out = 0.0
    for fam in REGISTRY.collect():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out += s.value
    return out


def test_a_score_moves_requests_and_verifications(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City
) -> None:
    ent = city.codes[1]
    _, token = consent_env.grant(ent)
    before = {
        "score": _total("fedcredit_requests_total", method="Score"),
        "verified": _total("fedcredit_consent_verifications_total", result="ok"),
    }
    with CoordinatorClient(coord.target, pki.tls("bank-icbc-weihai"), timeout=20) as c:
        r = c.score(ent, token)
    assert r.rating in "ABCD"
    assert _total("fedcredit_requests_total", method="Score") == before["score"] + 1
    assert _total("fedcredit_consent_verifications_total", result="ok") > before["verified"]
    # (this fixture's nodes answer in-process, not over gRPC: tests/node/test_node_metrics.py
    # counts a node's disclosures)
