"""Running the coordinator: wire store, consent verifier, nodes, ledger and servicers; serve.

``serve(config)`` is what ``fedcredit coordinator serve --config FILE`` runs.
:class:`CoordinatorServer` runs the same grpc.aio server on its own event
loop thread, for tests, benchmarks and the demo supervisor's in-process use.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc

from fedcredit.common.evidence import (
    AsyncBatchEvidenceSink,
    BatchEvidenceSink,
    EvidenceSink,
    NewEntry,
    Receipt,
)
from fedcredit.common.server import build_aio_server, mark_serving
from fedcredit.common.tls import TlsFiles
from fedcredit.consent.delegation import DelegationVerifier
from fedcredit.consent.passkey_client import RemoteDelegationVerifier
from fedcredit.consent.verify import TokenVerifier
from fedcredit.coordinator.fanout import Catalog, CatalogFeature, NodeFeatures
from fedcredit.coordinator.fund import ledger_decision_finder, recover_pending
from fedcredit.coordinator.service import SERVICE_NAMES, Coordinator, ScoringServicer, register
from fedcredit.coordinator.settings import CoordinatorSettings
from fedcredit.coordinator.store import CoordinatorStore
from fedcredit.coordinator.uses import AsyncUses

log = logging.getLogger(__name__)


class ThreadedSink:
    """An :class:`AsyncBatchEvidenceSink` over a blocking :class:`BatchEvidenceSink`
    (e.g. an embedded ledger.log.Log)."""

    def __init__(self, sink: BatchEvidenceSink) -> None:
        self.sink = sink

    async def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        return await asyncio.to_thread(self.sink.append, kind, subject, payload)

    async def append_many(self, items: Sequence[NewEntry]) -> list[Receipt]:
        return await asyncio.to_thread(self.sink.append_many, items)


async def load_catalog(nodes: Mapping[str, NodeFeatures], timeout: float) -> Catalog:
    """Every node's published catalog (GetCatalog); a node that does not answer is logged and skipped.

    The descriptions are what reasons show a loan officer; the categories
    decide which node is asked for which model feature.
    """
    entries: list[CatalogFeature] = []
    results = await asyncio.gather(
        *(n.catalog(timeout=timeout) for n in nodes.values()), return_exceptions=True
    )
    for node, res in zip(nodes.values(), results, strict=True):
        if isinstance(res, BaseException):
            log.warning("node %s did not give its catalog: %s", node.org_id, res)
            continue
        entries.extend(res)
    return Catalog.of(entries)


def static_catalog() -> Catalog:
    """The standard 66-feature catalog from node.catalog (fallback when a node is unreachable at start)."""
    from fedcredit.common.departments import BY_ID
    from fedcredit.node.catalog import FEATURES

    return Catalog.of(
        [CatalogFeature(f.name, BY_ID[f.department].category, f.description) for f in FEATURES]
    )


class CoordinatorServer:
    """The coordinator's grpc.aio server on a private event-loop thread.

    ``nodes``, ``ledger`` and ``uses`` are factories, called on that thread's event loop
    (where a grpc.aio client must be made).
    """

    def __init__(
        self,
        *,
        settings: CoordinatorSettings,
        store: CoordinatorStore,
        verifier: TokenVerifier,
        nodes: Callable[[], Awaitable[dict[str, NodeFeatures]]],
        ledger: Callable[[], AsyncBatchEvidenceSink],
        ledger_sync: EvidenceSink,
        tls: TlsFiles | None,
        address: str = "127.0.0.1:0",
        insecure: bool = False,
        catalog: Catalog | None = None,
        delegation: DelegationVerifier | None = None,
        uses: Callable[[], AsyncUses] | None = None,
    ) -> None:
        self._args = (settings, store, verifier, nodes, ledger, ledger_sync, catalog)
        self._uses = uses
        self.delegation = delegation
        self.tls = tls
        self.address = address
        self.insecure = insecure
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="coordinator-aio", daemon=True
        )
        self.app: Coordinator | None = None
        self.scoring: ScoringServicer | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def run(self, coro: Awaitable[Any], timeout: float | None = 60) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    async def _start(self) -> None:
        settings, store, verifier, make_nodes, ledger, ledger_sync, catalog = self._args
        nodes = await make_nodes()
        if catalog is None:
            catalog = await load_catalog(nodes, settings.scoring.node_deadline_s)
        self.app = Coordinator.build(
            settings=settings,
            store=store,
            verifier=verifier,
            nodes=nodes,
            catalog=catalog,
            ledger=ledger(),
            ledger_sync=ledger_sync,
            delegation=self.delegation,
            uses=None if self._uses is None else self._uses(),
        )
        holder: dict[str, ScoringServicer] = {}

        def reg(server: grpc.aio.Server) -> None:
            assert self.app is not None
            holder["scoring"] = register(server, self.app)

        self.server, self.port = build_aio_server(
            address=self.address,
            tls=self.tls,
            register=reg,
            service_names=SERVICE_NAMES,
            insecure=self.insecure,
        )
        self.scoring = holder["scoring"]
        await self.server.start()
        await mark_serving(self.server)

    def start(self) -> CoordinatorServer:
        self.thread.start()
        self.run(self._start())
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        if self.app is not None:
            await self.app.close()

    def stop(self, grace: float = 1.0) -> None:
        if self.thread.is_alive():
            try:
                self.run(self._stop(grace), timeout=grace + 10)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)

    def __enter__(self) -> CoordinatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def verifier_issuer(settings: CoordinatorSettings, dep: Any) -> str:
    from fedcredit.consent.settings import ConsentSettings

    return settings.consent_issuer or ConsentSettings.from_deployment(dep).issuer


def _delegation(dep: Any, org: str, issuer: str, insecure: bool) -> RemoteDelegationVerifier | None:  # fmt: skip
    """The checker of the portal's delegation tickets, when the deployment has a portal."""
    if "portal" not in dep.raw or insecure:
        return None
    consent = dep.service("consent")
    return RemoteDelegationVerifier(
        consent_address=consent.address, tls=dep.tls(org), server_org=consent.org_id,
        issuer=issuer, audience=org,
    )  # fmt: skip


def _use_counter(dep: Any, org: str) -> AsyncUses:
    """Uses reserved and settled at the consent service over grpc.aio, on the event loop
    (no thread hop per call; call on the loop that serves)."""
    from fedcredit.consent.client import AsyncConsentClient
    from fedcredit.consent.remote import AsyncRemoteUseCounter

    consent = dep.service("consent")
    return AsyncRemoteUseCounter(
        AsyncConsentClient(consent.address, dep.tls(org), server_org=consent.org_id)
    )


async def serve(
    config: Path, *, insecure: bool = False, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve the coordinator described by the deployment file until SIGINT/SIGTERM
    (``on_ready`` is called once it serves)."""
    from fedcredit.common.config import load_config
    from fedcredit.consent.verify import remote_verifier
    from fedcredit.coordinator.nodes import grpc_nodes
    from fedcredit.ledger.client import AsyncLedgerClient, LedgerClient

    dep = load_config(config)
    me = dep.service("coordinator")
    settings = CoordinatorSettings.from_sections(dep.section("coordinator"), dep.section("fund"))
    tls = None if insecure else dep.tls(me.org_id)
    consent = dep.service("consent")
    ledger_svc = dep.service("ledger")
    assert tls is not None or insecure
    verifier = remote_verifier(
        consent_address=consent.address,
        tls=dep.tls(me.org_id),
        server_org=consent.org_id,
        issuer=verifier_issuer(settings, dep),
    )
    store = CoordinatorStore.open(me.database)
    ledger_sync = LedgerClient(ledger_svc.address, dep.tls(me.org_id), server_org=ledger_svc.org_id)
    ledger_async = AsyncLedgerClient(
        ledger_svc.address, dep.tls(me.org_id), server_org=ledger_svc.org_id
    )
    finalized, abandoned = await asyncio.to_thread(
        recover_pending, store, ledger_decision_finder(ledger_sync)
    )
    if finalized or abandoned:
        log.warning(
            "settled guarantee applications left pending by a crash: final %s, undone %s",
            finalized,
            abandoned,
        )
    nodes = grpc_nodes(
        list(dep.nodes), dep.tls(me.org_id), timeout=settings.scoring.node_deadline_s
    )
    catalog = await load_catalog(nodes, settings.scoring.node_deadline_s)
    if len(catalog.features) < len(static_catalog().features):
        log.warning(
            "some nodes did not give their catalog at start; the standard catalog fills the gaps"
        )
        catalog = Catalog.of([*static_catalog().features.values(), *catalog.features.values()])
    delegation = _delegation(dep, me.org_id, verifier_issuer(settings, dep), insecure)
    app = Coordinator.build(
        settings=settings,
        store=store,
        verifier=verifier,
        nodes=nodes,
        catalog=catalog,
        ledger=ledger_async,
        ledger_sync=ledger_sync,
        delegation=delegation.verifier if delegation else None,
        uses=_use_counter(dep, me.org_id),
    )

    def reg(s: grpc.aio.Server) -> None:
        register(s, app)

    server, _port = build_aio_server(
        address=me.address, tls=tls, register=reg, service_names=SERVICE_NAMES, insecure=insecure
    )
    await server.start()
    await mark_serving(server)
    log.warning("coordinator %s serving on %s", me.org_id, me.address)
    if on_ready is not None:
        on_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(5)
    await app.close()
    if delegation is not None:
        delegation.close()
    store.close()
