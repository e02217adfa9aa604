"""kill -9 and SIGSTOP of a node, the consent service and the ledger during Score and
ScoreBatch (issue 17): each refusal is named (the organisation, never an address), comes
within a bounded time, counts no use (asked of the consent service), a recovered service is
used again within about 2 s, and a batch resumed after the fault equals an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.departments import BY_ID
from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.coordinator.scoring import ScoringSettings
from fedcredit.coordinator.settings import CoordinatorSettings
from fedcredit.coordinator.store import CoordinatorStore
from fedcredit.v1 import coordinator_pb2 as pb
from tests.coordinator.conftest import BANK, City, ConsentEnv, static_catalog

from .conftest import Federation, Proc

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults"), pytest.mark.timeout(600)]

# A refusal must come within this: the node deadline (1 s) or the consent deadline (2 s),
# plus room for a loaded 2-core machine; a frozen dependency used to cost 10-12 s a call.
BOUND_S = 6.0
SCOPE = ("judicial", "operations_tax", "social_security")


def start_coord(pki: Any, consent_env: ConsentEnv, city: City, fed: Federation, db: Path) -> Any:
    from fedcredit.consent.verify import remote_verifier
    from fedcredit.coordinator.daemon import CoordinatorServer
    from fedcredit.coordinator.nodes import GrpcNode
    from fedcredit.coordinator.registry import Registry
    from fedcredit.ledger.client import AsyncLedgerClient, LedgerClient

    tls = pki.tls("coordinator")
    ledger_sync = LedgerClient(fed.ledger_proxy.address, tls, server_org="ledger", timeout=5)
    store = CoordinatorStore.open(f"sqlite:///{db}")
    settings = CoordinatorSettings(scoring=ScoringSettings(node_deadline_s=1.0))
    if store.active_version() is None:
        reg = Registry(store, ledger_sync, shares=settings.shares)
        rec = reg.publish(city.model_text, trainer="operator", version="faults-v1", calibration_pds=city.pds)  # fmt: skip
        reg.activate(rec.version, actor="operator")
    verifier = remote_verifier(
        consent_address=fed.consent_proxy.address, tls=tls, server_org="consent-service",
        issuer=consent_env.authority.settings.issuer,
    )  # fmt: skip
    verifier.wait_connected(10.0)  # type: ignore[attr-defined]

    async def nodes() -> dict[str, Any]:
        return {
            BY_ID[dep].category: GrpcNode(
                org_id=BY_ID[dep].org_id, category=BY_ID[dep].category, address=p.address, tls=tls
            )
            for dep, p in fed.nodes.items()
        }

    server = CoordinatorServer(
        settings=settings, store=store, verifier=verifier, nodes=nodes,
        ledger=lambda: AsyncLedgerClient(fed.ledger_proxy.address, tls, server_org="ledger", timeout=5),
        ledger_sync=ledger_sync, tls=tls, catalog=static_catalog(city),
    ).start()  # fmt: skip
    return server, store


@pytest.fixture(scope="module")
def coord(
    pki: Any, consent_env: ConsentEnv, city: City, federation: Federation,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:  # fmt: skip
    server, store = start_coord(pki, consent_env, city, federation, tmp_path_factory.mktemp("c") / "coord.sqlite")  # fmt: skip
    yield server
    server.stop()
    store.close()


def client(pki: Any, coord: Any) -> CoordinatorClient:
    return CoordinatorClient(coord.target, pki.tls(BANK), timeout=30)


def uses(consent_env: ConsentEnv, cid: str) -> int:
    return consent_env.authority.get(consent_env.bank_ids[BANK], cid).uses


def settled(consent_env: ConsentEnv, cid: str, want: int, within: float = 5.0) -> int:
    end = time.monotonic() + within
    while (n := uses(consent_env, cid)) != want and time.monotonic() < end:
        time.sleep(0.05)
    return n


def refused(c: CoordinatorClient, code: str, token: str) -> tuple[FedcreditError, float]:
    t0 = time.monotonic()
    with pytest.raises(FedcreditError) as exc:
        c.score(code, token)
    return exc.value, time.monotonic() - t0


def first_success(c: CoordinatorClient, code: str, token: str, within: float) -> float:
    """Seconds until a Score of ``code`` is answered (polling)."""
    t0 = time.monotonic()
    while True:
        try:
            c.score(code, token)
            return time.monotonic() - t0
        except FedcreditError:
            if time.monotonic() - t0 > within:
                raise
            time.sleep(0.05)


def no_address(err: FedcreditError) -> None:
    assert "127.0.0.1" not in err.message and "ipv4:" not in err.message, err.message


@pytest.mark.parametrize("fault", ["sigstop", "kill9"])
def test_node_fault_during_score(
    pki: Any, coord: Any, consent_env: ConsentEnv, city: City, federation: Federation, fault: str
) -> None:
    node = federation.nodes["courts"]
    code = city.codes[400 if fault == "sigstop" else 401]
    cid, token = consent_env.grant(code, scope=SCOPE, max_uses=1)
    with client(pki, coord) as c:
        node.freeze() if fault == "sigstop" else node.kill9()
        try:
            for _ in range(3):  # not just the first call: every call is bounded
                err, took = refused(c, code, token)
                assert err.reason == "NODE_UNAVAILABLE", err
                assert err.metadata.get("node") == BY_ID["courts"].org_id
                assert BY_ID["courts"].org_id in err.message
                no_address(err)
                assert took < BOUND_S, took
            # Bounded by the bank's own deadline (0.8 s, under the node deadline of 1 s): the
            # refusal still names the node rather than the bank's clock running out.
            t0 = time.monotonic()
            with pytest.raises(FedcreditError) as short:
                c._call(c.scoring.Score, pb.ScoreRequest(enterprise=code, consent_token=token), 0.8)
            assert short.value.reason == "NODE_UNAVAILABLE", short.value
            assert time.monotonic() - t0 < 0.8
            assert settled(consent_env, cid, 0) == 0  # refused: the use went back
        finally:
            node.thaw() if fault == "sigstop" else node.start()
        # Back: used again within about 2 s (reconnect back-off capped at 1 s; the bound
        # also holds the Score itself on a loaded machine). It used to be ~14 s.
        assert first_success(c, code, token, within=10.0) < 4.0
    assert settled(consent_env, cid, 1) == 1


@pytest.mark.parametrize("fault", ["sigstop", "kill9"])
@pytest.mark.parametrize("service", ["consent", "ledger"])
def test_consent_or_ledger_fault_during_score(
    pki: Any, coord: Any, consent_env: ConsentEnv, city: City, federation: Federation,
    service: str, fault: str,
) -> None:  # fmt: skip
    proc: Proc = federation.consent_proxy if service == "consent" else federation.ledger_proxy
    k = {"consent": 410, "ledger": 420}[service] + (0 if fault == "sigstop" else 5)
    code = city.codes[k]
    cid, token = consent_env.grant(code, scope=SCOPE, max_uses=1)
    want = "CONSENT_SERVICE_UNAVAILABLE" if service == "consent" else "LEDGER_UNAVAILABLE"
    with client(pki, coord) as c:
        proc.freeze() if fault == "sigstop" else proc.kill9()
        try:
            for _ in range(2):
                err, took = refused(c, code, token)
                assert err.reason == want, err
                no_address(err)
                assert took < BOUND_S, (took, err)
        finally:
            proc.thaw() if fault == "sigstop" else proc.start()
        assert first_success(c, code, token, within=15.0) < 8.0
    # Exactly one use: the refused Scores counted none, the answered one counted one.
    assert settled(consent_env, cid, 1) == 1


def test_node_killed_during_a_batch_then_resumed_equals_uninterrupted(
    pki: Any, coord: Any, consent_env: ConsentEnv, city: City, federation: Federation
) -> None:
    codes = city.codes[430:470]
    granted = [consent_env.grant(code, scope=SCOPE, max_uses=1) for code in codes]
    items = [(code, tok, f"q{k}") for k, (code, (_, tok)) in enumerate(zip(codes, granted, strict=True))]  # fmt: skip
    node = federation.nodes["tax"]
    with client(pki, coord) as c:
        node.kill9()
        t0 = time.monotonic()
        first = list(c.score_batch(items, batch_id="faults-node-kill"))
        assert time.monotonic() - t0 < BOUND_S * 2
        assert {i.error.reason for i in first} == {"NODE_UNAVAILABLE"}
        for _, (cid, _) in zip(codes, granted, strict=True):
            assert settled(consent_env, cid, 0) == 0
        node.start()
        time.sleep(2.5)  # within the reconnect cap the node is asked again
        resumed = {i.request_id: i for i in c.score_batch(items, batch_id="faults-node-kill")}
        assert all(i.HasField("result") for i in resumed.values()), [i.error for i in resumed.values() if not i.HasField("result")][:2]  # fmt: skip
        # The same enterprises with fresh consents in one uninterrupted batch.
        fresh = [(code, consent_env.grant(code, scope=SCOPE, max_uses=1)[1], f"q{k}") for k, code in enumerate(codes)]  # fmt: skip
        whole = {i.request_id: i for i in c.score_batch(fresh, batch_id="faults-uninterrupted")}
    assert {k: (v.result.rating, v.result.probability_of_default) for k, v in resumed.items()} == {
        k: (v.result.rating, v.result.probability_of_default) for k, v in whole.items()
    }
    for cid, _ in granted:
        assert settled(consent_env, cid, 1) == 1


def test_coordinator_killed_mid_batch_is_resumed_without_a_second_use(
    pki: Any, consent_env: ConsentEnv, city: City, federation: Federation,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The coordinator dies with a batch half answered (its server stopped at once, the
    stream cut); a new coordinator on the same store replays what was answered and scores
    the rest: every consent counts exactly one use, every answer once in the ledger."""
    codes = city.codes[480:520]
    granted = [consent_env.grant(code, scope=SCOPE, max_uses=1) for code in codes]
    items = [(code, tok, f"z{k}") for k, (code, (_, tok)) in enumerate(zip(codes, granted, strict=True))]  # fmt: skip
    db = tmp_path / "coord.sqlite"
    server, store = start_coord(pki, consent_env, city, federation, db)
    got: list[Any] = []

    def slow_items() -> Iterator[tuple[str, str, str]]:
        for k, it in enumerate(items):
            if k == 20:
                while len(got) < 20:  # the first half answered, then the crash
                    time.sleep(0.01)
                server.stop(0)
            yield it

    with client(pki, server) as c:
        with pytest.raises(FedcreditError) as exc:
            for item in c.score_batch(slow_items(), batch_id="faults-coord-kill", timeout=60):
                got.append(item)
        assert exc.value.reason in ("UNAVAILABLE", "CANCELLED", "INTERNAL"), exc.value
    store.close()
    before = len(federation.ledger.entries("score_access"))
    server2, store2 = start_coord(pki, consent_env, city, federation, db)
    try:
        with client(pki, server2) as c:
            resumed = list(c.score_batch(items, batch_id="faults-coord-kill"))
    finally:
        server2.stop()
        store2.close()
    answered = {i.request_id for i in got if i.HasField("result")}
    assert len(answered) >= 20
    assert all(i.HasField("result") for i in resumed)
    assert {i.request_id for i in resumed if i.replayed} >= answered
    new = len(federation.ledger.entries("score_access")) - before
    assert new == len(items) - len({i.request_id for i in resumed if i.replayed})
    for cid, _ in granted:
        assert settled(consent_env, cid, 1) == 1


@pytest.mark.parametrize("fault", ["sigstop", "kill9"])
def test_coordinator_frozen_or_gone_mid_batch_is_found_in_seconds_and_resumed(
    pki: Any, coord: Any, consent_env: ConsentEnv, city: City, federation: Federation, fault: str
) -> None:
    """The bank's side of a coordinator that freezes (SIGSTOP) or dies (kill -9) mid-stream:
    the stream fails within seconds (keepalive; it used to block 91 s) and the batch is
    resumed with each consent used once. The bank reaches the coordinator through a
    forwarding process that takes the fault."""
    from .conftest import proxy

    base = 530 if fault == "sigstop" else 560
    codes = city.codes[base : base + 30]
    granted = [consent_env.grant(code, scope=SCOPE, max_uses=1) for code in codes]
    items = [(code, tok, f"f{k}") for k, (code, (_, tok)) in enumerate(zip(codes, granted, strict=True))]  # fmt: skip
    front = proxy(coord.port)
    got: list[Any] = []
    hit = [0.0]

    def trickle() -> Iterator[tuple[str, str, str]]:
        for k, it in enumerate(items):
            if k == 15:
                while len(got) < 15:
                    time.sleep(0.01)
                hit[0] = time.monotonic()  # before: the stream may fail while kill9 reaps
                front.freeze() if fault == "sigstop" else front.kill9()
            yield it

    bid = f"faults-coord-{fault}"
    try:
        with CoordinatorClient(front.address, pki.tls(BANK), timeout=30) as c:
            with pytest.raises(FedcreditError) as exc:
                for item in c.score_batch(trickle(), batch_id=bid, timeout=120):
                    got.append(item)
            found = time.monotonic() - hit[0]
        assert exc.value.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), exc.value
        assert found < 10.0, (
            found,
            exc.value,
            len(got),
        )  # keepalive: a ping every 2 s, 3 s to answer
    finally:
        front.close()
    with client(pki, coord) as c:
        resumed = list(c.score_batch(items, batch_id=bid))
    assert all(i.HasField("result") for i in resumed)
    assert {i.request_id for i in got if i.HasField("result")} <= {
        i.request_id for i in resumed if i.replayed
    }
    for cid, _ in granted:
        assert settled(consent_env, cid, 1) == 1
