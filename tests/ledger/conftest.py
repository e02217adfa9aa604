"""Fixtures: a LedgerService and witnesses on loopback ports, over mTLS."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedcredit.common.server import build_aio_server, build_server, mark_serving
from fedcredit.common.tls import TlsFiles
from fedcredit.ledger.checkpoint import SIG_COSIGNATURE_V1, Signer
from fedcredit.ledger.log import Log
from fedcredit.ledger.service import LEDGER_SERVICE, LedgerServicer, register_ledger
from fedcredit.ledger.settings import LedgerSettings, LogSettings
from fedcredit.ledger.witness import WITNESS_SERVICE, Witness, register_witness


class AioServerThread:
    """A grpc.aio server running in its own event loop thread."""

    def __init__(self, register: Callable[[Any], None], tls: TlsFiles, names: list[str]) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._register, self._tls, self._names = register, tls, names
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        server, self.port = build_aio_server(
            address="127.0.0.1:0", tls=self._tls, register=self._register, service_names=self._names
        )
        await server.start()
        await mark_serving(server)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0.5)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@dataclass
class WitnessNode:
    org: str
    witness: Witness
    server: grpc.Server
    port: int


@dataclass
class LedgerEnv:
    log: Log
    signer: Signer
    server: AioServerThread
    witnesses: list[WitnessNode]
    pki: Any
    settings: LedgerSettings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, org: str) -> Any:
        from fedcredit.ledger.client import LedgerClient

        return LedgerClient(self.address, self.pki.tls(org), server_org="ledger")


ORIGIN = "fedcredit.test/ledger"
WITNESS_ORGS = ["dept-tax", "dept-courts"]


@pytest.fixture
def ledger_env(pki: Any, tmp_path: Path) -> Iterator[LedgerEnv]:
    from fedcredit.ledger.client import WitnessClient

    signer = Signer.generate(ORIGIN)
    nodes: list[WitnessNode] = []
    for org in WITNESS_ORGS:
        wsigner = Signer.generate(org, SIG_COSIGNATURE_V1)
        holder: dict[str, Witness] = {}

        def reg(
            server: Any,
            wsigner: Signer = wsigner,
            org: str = org,
            holder: dict[str, Witness] = holder,
        ) -> None:
            holder["w"] = register_witness(
                server,
                database=f"sqlite:///{tmp_path}/witness-{org}.sqlite",
                signer=wsigner,
                logs={ORIGIN: signer.verifier},
            )

        server, port = build_server(
            address="127.0.0.1:0",
            tls=pki.tls(org),
            register=reg,
            service_names=[WITNESS_SERVICE],
            max_workers=4,
        )
        server.start()
        nodes.append(WitnessNode(org, holder["w"], server, port))
    clients = [
        WitnessClient(
            n.org, n.witness.verifier, f"127.0.0.1:{n.port}", pki.tls("ledger"), server_org=n.org
        )
        for n in nodes
    ]
    settings = LedgerSettings(
        origin=ORIGIN, log=LogSettings(checkpoint_interval=0.2), max_append_batch=500
    )
    log = Log.open(
        f"sqlite:///{tmp_path}/ledger.sqlite",
        signer,
        ORIGIN,
        actor="ledger",
        settings=settings.log,
        witnesses=clients,
    )
    servicer = LedgerServicer(log, settings)
    srv = AioServerThread(
        lambda s: register_ledger(s, servicer), pki.tls("ledger"), [LEDGER_SERVICE]
    )
    env = LedgerEnv(log, signer, srv, nodes, pki, settings)
    yield env
    srv.stop()
    log.close()
    for n in nodes:
        n.server.stop(0)
    for c in clients:
        c.close()
