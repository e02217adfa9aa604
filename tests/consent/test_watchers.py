"""Status watchers without threads (issue 14, finding 6): WatchStatus streams are
coroutines on the consent service's event loop, capped per caller and in all; 130
streams from one enterprise certificate no longer stop health checks or other calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.common.server import check_health
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.service import serve, stop
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.store import ConsentStore
from tests.conftest import Pki
from tests.consent.conftest import BANK, OTHER_BANK, enterprise_code
from tests.consent.test_service import SERVER_ORG, terms

Streams = list[tuple[Iterator[Any], Callable[[], None]]]


def _start(pki: Pki, tmp_path: Path, **caps: int) -> tuple[ConsentAuthority, Any, str]:
    store = ConsentStore(f"sqlite:///{tmp_path}/consent.sqlite")
    bank_certs = {b: pki.tls(b).identity().cert_sha256 for b in (BANK, OTHER_BANK)}
    authority = ConsentAuthority(
        store, ConsentSettings(), banks=[BANK, OTHER_BANK], bank_certs=bank_certs.get
    )
    server, port = serve(authority, address="127.0.0.1:0", tls=pki.tls(SERVER_ORG), **caps)
    return authority, server, f"127.0.0.1:{port}"


def _open(client: ConsentClient, n: int) -> Streams:
    """``n`` streams, each past its first message (so the server holds it open)."""
    out: Streams = []
    for _ in range(n):
        items, cancel = client.watch_status()
        next(items)
        out.append((items, cancel))
    return out


def test_130_streams_from_one_certificate_block_nothing(pki: Pki, tmp_path: Path) -> None:
    authority, server, address = _start(pki, tmp_path, watchers_per_identity=200)
    ent = enterprise_code(7)
    attacker = ConsentClient(address, pki.issue(ent, "enterprise"), server_org=SERVER_ORG)
    streams: Streams = []
    try:
        streams = _open(attacker, 130)
        t0 = time.monotonic()
        assert check_health(address, pki.tls("dept-courts"), server_org=SERVER_ORG, timeout=2.0)
        with ConsentClient(address, pki.tls("dept-courts"), server_org=SERVER_ORG) as c:
            assert c.jwks()["keys"]
            assert c.status_list().token
        # The enterprise still grants, and a revocation reaches every stream.
        with ConsentClient(address, pki.issue(ent, "enterprise"), server_org=SERVER_ORG) as e:
            view = e.grant(terms(ent))
            seq = authority.status.seq
            e.revoke(view.consent_id)
        assert time.monotonic() - t0 < 3.0
        for items, _ in streams[::13]:
            while (msg := next(items)).seq <= seq:
                pass
            assert msg.seq > seq
    finally:
        for _, cancel in streams:
            cancel()
        attacker.close()
        stop(server, authority)


def test_the_per_identity_cap_refuses_with_its_reason(pki: Pki, tmp_path: Path) -> None:
    authority, server, address = _start(pki, tmp_path, watchers_per_identity=4, watchers_total=6)
    ent = enterprise_code(8)
    one = ConsentClient(address, pki.issue(ent, "enterprise"), server_org=SERVER_ORG)
    other = ConsentClient(address, pki.tls("dept-courts"), server_org=SERVER_ORG)
    streams: Streams = []
    try:
        streams = _open(one, 4)
        items, cancel = one.watch_status()
        with pytest.raises(FedcreditError) as exc:
            next(items)
        cancel()
        assert exc.value.reason == "TOO_MANY_WATCHERS"
        assert exc.value.code.name == "RESOURCE_EXHAUSTED"
        assert "at most 4 per caller" in exc.value.message
        # Another caller is not affected by this one's cap...
        streams += _open(other, 2)
        # ...until the service-wide cap.
        items, cancel = other.watch_status()
        with pytest.raises(FedcreditError) as exc:
            next(items)
        cancel()
        assert exc.value.reason == "TOO_MANY_WATCHERS" and "maximum" in exc.value.message
        # A closed stream frees its place.
        streams.pop(0)[1]()
        deadline = time.monotonic() + 3
        while True:
            items, cancel = one.watch_status()
            try:
                next(items)
                streams.append((items, cancel))
                break
            except FedcreditError:
                cancel()
                assert time.monotonic() < deadline, "the closed stream's place was not freed"
                time.sleep(0.05)
    finally:
        for _, cancel in streams:
            cancel()
        one.close()
        other.close()
        stop(server, authority)


class _Status:
    """Just what StatusBroadcaster reads of a status list before it starts its thread."""

    seq = 1
    closed = False

    def token(self) -> str:
        return "list"


def test_a_heartbeat_is_spread_over_slots_and_a_change_reaches_every_stream_at_once() -> None:
    """A heartbeat (same seq) wakes the streams slot by slot over ``spread_s`` (so thousands
    of idle streams never hold the event loop in one burst in front of a Score's calls);
    a change (new seq) wakes every stream at once."""
    import asyncio

    from fedcredit.consent.service import StatusBroadcaster
    from fedcredit.v1 import consent_pb2

    async def run() -> tuple[list[float], list[float], float]:
        b = StatusBroadcaster(_Status(), heartbeat_s=1.0, per_identity=1000, total=1000)
        b._loop = asyncio.get_running_loop()
        b._latest = consent_pb2.StatusList(token="list", seq=1)
        n = b.SLOTS + 44  # some slots hold two streams
        got: dict[int, list[tuple[int, float]]] = {k: [] for k in range(n)}

        async def watcher(k: int) -> None:
            async for msg in b.watch(f"w{k % 3}"):
                got[k].append((msg.seq, time.perf_counter()))

        tasks = [asyncio.create_task(watcher(k)) for k in range(n)]
        while any(not v for v in got.values()):  # every stream holds the first list
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        b._publish(consent_pb2.StatusList(token="list, re-signed", seq=1))  # heartbeat
        while any(len(v) < 2 for v in got.values()):
            await asyncio.sleep(0.01)
        beat = [v[1][1] - t0 for v in got.values()]
        t1 = time.perf_counter()
        b._publish(consent_pb2.StatusList(token="list, revoked", seq=2))  # change
        while any(v[-1][0] != 2 for v in got.values()):
            await asyncio.sleep(0.001)
        change = [next(t for s, t in v if s == 2) - t1 for v in got.values()]
        b._publish(None)
        await asyncio.gather(*tasks)
        assert b.open == 0 and b.by_identity == {}
        return beat, change, b.spread_s

    beat, change, spread = asyncio.run(run())
    assert spread == 0.5
    # Spread: the last slot wakes (SLOTS - 1) / SLOTS of the spread after the first.
    assert (
        max(beat) - min(beat)
        >= 0.9 * spread * (StatusBroadcaster.SLOTS - 1) / StatusBroadcaster.SLOTS
    )
    assert max(beat) < spread + 0.5
    # A change is not spread: every stream has it long before a heartbeat's last slot.
    assert max(change) < 0.25 * spread
