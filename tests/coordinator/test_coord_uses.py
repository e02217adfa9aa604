"""Uses at the coordinator (issue 14, findings 1 and 5): one Score is one use, reserved
before any node is asked and joined by every node; a refused Score gives its use back;
a consent with no uses left makes no node disclose anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
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


@pytest.fixture(scope="module", params=["aio", "threads"])
def coord(
    request: pytest.FixtureRequest,
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
        # Both ways of counting: over grpc.aio (as `coordinator serve`) and a blocking
        # counter in the scorer's threads (a verifier's own).
        aio_uses=request.param == "aio",
    )
    yield c
    stop_coordinator(c)


def _counter(coord: Coord) -> tuple[Any, Any]:
    """The scorer's use counter (over grpc.aio, or the blocking one in threads: either way
    awaited on the coordinator's loop) and its real ``settle``, for a test to replace."""
    app = coord.server.app
    assert app is not None
    counter = app.scorer._uses
    assert counter is not None
    return counter, counter.settle


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


def _reap_all(consent_env: ConsentEnv) -> int:
    """Run the lease reaper as if every open reservation had outlived ``use_lease_s``."""
    uses_ = consent_env.authority.uses
    real = uses_.settings
    uses_.settings = replace(real, use_lease_s=-1)
    try:
        return consent_env.authority.reap_uses()
    finally:
        uses_.settings = real


def _outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except FedcreditError as exc:
        return exc.reason
    return "scored"


def test_no_score_leaves_before_its_use_is_committed(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    """The commit of the use fails (the consent service drops out after the reservation):
    Score and ScoreBatch answer CONSENT_SERVICE_UNAVAILABLE and no score -- one answered
    first and committed in the background would be given back by the lease reaper,
    uncounted. The uses are released; the enterprise's one use is intact afterwards."""
    codes = city.codes[74:77]
    grants = [consent_env.grant(code, scope=("judicial",), max_uses=1) for code in codes]
    counter, real = _counter(coord)

    async def fails(use_id: str, refs: Any, *, commit: bool) -> Any:
        if commit:
            raise ConnectionError("consent service unreachable")
        return await real(use_id, refs, commit=commit)

    counter.settle = fails  # type: ignore[method-assign]
    try:
        with client(pki, coord) as c:
            single = _outcome(lambda: c.score(codes[0], grants[0][1]))
            batch = list(c.score_batch([(codes[k], grants[k][1], f"b{k}") for k in (1, 2)]))
    finally:
        counter.settle = real  # type: ignore[method-assign]
    for cid, _ in grants:
        settled(consent_env, cid, 0)  # the background release, if any
    _reap_all(consent_env)
    for (cid, _), answered in zip(
        grants, [single == "scored"] + [not o.HasField("error") for o in batch], strict=True
    ):
        assert not answered or uses(consent_env, cid) == 1, "scored, use given back"
    assert single == "CONSENT_SERVICE_UNAVAILABLE"
    assert [o.error.reason for o in batch] == ["CONSENT_SERVICE_UNAVAILABLE"] * 2
    assert [uses(consent_env, cid) for cid, _ in grants] == [0, 0, 0]
    with client(pki, coord) as c:
        c.score(codes[0], grants[0][1])
    assert uses(consent_env, grants[0][0]) == 1


def test_a_score_committed_after_its_lease_ran_out_is_refused(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    """The coordinator stalls past the lease before committing; the reaper gives the use
    back and another Score takes it. The late commit finds no use left: the stalled Score
    is refused (CONSENT_USES_EXHAUSTED), never a score beyond max_uses."""
    code = city.codes[77]
    cid, token = consent_env.grant(code, scope=("judicial",), max_uses=1)
    counter, real = _counter(coord)
    taken: list[str] = []
    reaped: list[int] = []

    def another_score() -> None:
        reaped.append(_reap_all(consent_env))
        with client(pki, coord) as c2:
            taken.append(_outcome(lambda: c2.score(code, token)))

    async def stalls(use_id: str, refs: Any, *, commit: bool) -> Any:
        if commit and not reaped:
            # Another Score takes the use the reaper gave back (its own commit is real);
            # from a thread: the coordinator's event loop must answer it meanwhile.
            counter.settle = real  # type: ignore[method-assign]
            await asyncio.to_thread(another_score)
        return await real(use_id, refs, commit=commit)

    counter.settle = stalls  # type: ignore[method-assign]
    try:
        with client(pki, coord) as c:
            first = _outcome(lambda: c.score(code, token))
    finally:
        counter.settle = real  # type: ignore[method-assign]
    assert reaped and reaped[0] >= 1
    assert taken == ["scored"]
    assert first == "CONSENT_USES_EXHAUSTED"
    assert settled(consent_env, cid, 1) == 1


def test_no_guarantee_decision_leaves_before_its_use_is_committed(
    pki: Any, coord: Coord, consent_env: ConsentEnv, city: City, nodes: list[RunningNode]
) -> None:
    """The guarantee path (the decision carries the rating): a failed commit refuses the
    application with CONSENT_SERVICE_UNAVAILABLE, and no decision is ledgered or kept."""
    code = city.codes[78]
    cid, token = consent_env.grant(code, purpose="guarantee", max_uses=1)
    counter, real = _counter(coord)

    async def fails(use_id: str, refs: Any, *, commit: bool) -> Any:
        if commit:
            raise ConnectionError("consent service unreachable")
        return await real(use_id, refs, commit=commit)

    def apply() -> Any:
        with client(pki, coord) as c:
            return c.apply(
                application_id="g-commit", enterprise=code, token=token, amount_yuan=100_000,
                term_months=12, collateral_yuan=10**7,
            )  # fmt: skip

    counter.settle = fails  # type: ignore[method-assign]
    try:
        got = _outcome(apply)
    finally:
        counter.settle = real  # type: ignore[method-assign]
    settled(consent_env, cid, 0)
    _reap_all(consent_env)
    decided = got == "scored"
    assert not decided or uses(consent_env, cid) == 1, "decided, use given back"
    assert got == "CONSENT_SERVICE_UNAVAILABLE"
    assert coord.store.get_guarantee(BANK, "g-commit") is None
    assert uses(consent_env, cid) == 0
    apply()
    assert uses(consent_env, cid) == 1
