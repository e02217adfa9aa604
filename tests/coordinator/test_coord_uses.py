"""Uses at the coordinator (issue 14, findings 1 and 5): one Score is one use, reserved
before any node is asked and joined by every node; a refused Score gives its use back;
a consent with no uses left makes no node disclose anything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.errors import LedgerUnavailable, NodeUnavailable

from .conftest import (
    BANK,
    City,
    ConsentEnv,
    Coord,
    RunningNode,
    start_coordinator,
    stop_coordinator,
)
from .test_coord_scoring import _own_nodes, client


@pytest.fixture(scope="module")
def nodes(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningNode]]:
    from .conftest import start_nodes

    ns = start_nodes(pki, consent_env, city, tmp_path_factory.mktemp("nodes"))
    yield ns
    for n in ns:
        n.close()


@pytest.fixture(scope="module")
def coord(
    pki: Any,
    consent_env: ConsentEnv,
    city: City,
    nodes: list[RunningNode],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Coord]:
    from .conftest import node_factory

    c = start_coordinator(
        pki=pki,
        consent_env=consent_env,
        city=city,
        tmp=tmp_path_factory.mktemp("coord"),
        nodes=node_factory(pki, nodes),
    )
    yield c
    stop_coordinator(c)


def uses(consent_env: ConsentEnv, consent_id: str) -> int:
    return consent_env.authority.get(consent_env.bank_ids[BANK], consent_id).uses


def settled(consent_env: ConsentEnv, consent_id: str, want: int, within: float = 3.0) -> int:
    """The use count once the coordinator's background commit/release has run."""
    deadline = time.monotonic() + within
    while (n := uses(consent_env, consent_id)) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def disclosed(nodes: list[RunningNode]) -> list[int]:
    return [n.log.size for n in nodes]


def test_one_score_is_one_use_whatever_nodes_it_asks(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    code = city.codes[70]
    cid, token = consent_env.grant(code, scope=("judicial", "operations_tax"), max_uses=2)
    before = disclosed(nodes)
    with client(pki, coord) as c:
        c.score(code, token)
    assert sum(disclosed(nodes)) - sum(before) >= 2  # several nodes answered...
    assert settled(consent_env, cid, 1) == 1  # ...under one use


def test_an_exhausted_consent_makes_no_node_disclose(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    """Finding 5: a Score refused for CONSENT_USES_EXHAUSTED is refused before the fan-out:
    no node discloses or logs the enterprise's features."""
    code = city.codes[71]
    cid, token = consent_env.grant(code, scope=("judicial", "operations_tax"), max_uses=1)
    with client(pki, coord) as c:
        c.score(code, token)
        assert settled(consent_env, cid, 1) == 1
        before = disclosed(nodes)
        for _ in range(3):
            with pytest.raises(FedcreditError) as exc:
                c.score(code, token)
            assert exc.value.reason == "CONSENT_USES_EXHAUSTED"
            assert exc.value.metadata["max_uses"] == "1"
    assert disclosed(nodes) == before
    assert uses(consent_env, cid) == 1


def test_a_score_refused_for_a_node_blip_gives_its_use_back(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    """Finding 5: NODE_UNAVAILABLE refuses the score and the use is released."""
    ns, c = _own_nodes(pki, consent_env, city, tmp_path, "refuse")
    try:
        code = city.codes[72]
        cid, token = consent_env.grant(code, scope=("judicial",), max_uses=1)
        courts = next(n for n in ns if n.department == "courts")
        courts.stop()
        with client(pki, c) as cl:
            for _ in range(3):
                with pytest.raises(NodeUnavailable):
                    cl.score(code, token)
        assert settled(consent_env, cid, 0) == 0
    finally:
        stop_coordinator(c)
        for n in ns:
            n.close()


def test_a_score_refused_for_a_ledger_outage_gives_its_use_back(
    pki: Any, consent_env: ConsentEnv, city: City, tmp_path: Path
) -> None:
    """Finding 5: LEDGER_UNAVAILABLE refuses the score (single and batch) and the use is
    released; with the ledger back the one use is still there to be had."""
    c = start_coordinator(pki=pki, consent_env=consent_env, city=city, tmp=tmp_path)
    try:
        code = city.codes[73]
        cid, token = consent_env.grant(code, max_uses=1)
        c.ledger.stop_service()
        with client(pki, c) as cl:
            for _ in range(3):
                with pytest.raises(LedgerUnavailable):
                    cl.score(code, token)
            out = list(cl.score_batch([(code, token, "b1")]))
            assert [o.error.reason for o in out] == ["LEDGER_UNAVAILABLE"]
        assert settled(consent_env, cid, 0) == 0
    finally:
        stop_coordinator(c)
