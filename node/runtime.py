"""Assemble a running node from a deployment file: store, engine, consent verifier,
disclosure log, checkpoint publisher, witness service and the gRPC server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcredit.common.config import Deployment
from fedcredit.common.errors import ConfigError
from fedcredit.common.evidence import EvidenceSink
from fedcredit.consent.verify import ConsentVerifier
from fedcredit.ledger.keys import load_or_create_signer
from fedcredit.ledger.log import Log
from fedcredit.node.disclosure import CheckpointPublisher, open_disclosure_log
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.policy import AccessPolicy
from fedcredit.node.service import FeatureServicer, NodeServer, build_node_server
from fedcredit.node.settings import NodeSettings, disclosure_url
from fedcredit.node.sigpool import SignaturePool
from fedcredit.node.store import NodeStore

log = logging.getLogger(__name__)


@dataclass
class NodeProcess:
    department: str
    org: str
    store: NodeStore
    engine: FeatureEngine
    disclosures: Log
    verifier: ConsentVerifier
    server: NodeServer
    publisher: CheckpointPublisher | None = None
    witness: Any = None
    notes: list[str] = field(default_factory=list)
    signatures: SignaturePool | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()
        if self.engine.warm_enabled:
            self.engine.start_warming()
        if self.publisher is not None:
            self.publisher.start()

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
            try:  # a last publication so the central ledger sees the final state
                self.publisher.publish_once()
            except Exception as exc:
                log.warning("final checkpoint publication failed: %s", exc)
        self.server.stop(2.0)
        if self.signatures is not None:
            self.signatures.close()
        self.disclosures.close()
        self.verifier.close()
        self.store.close()


def _remote_verifier(dep: Deployment, org: str) -> ConsentVerifier:
    from fedcredit.consent.settings import ConsentSettings
    from fedcredit.consent.verify import remote_verifier

    svc = dep.service("consent")
    return remote_verifier(
        consent_address=svc.address,
        tls=dep.tls(org),
        server_org=svc.org_id,
        issuer=ConsentSettings.from_deployment(dep).issuer,
    )


def _central_sink(dep: Deployment, org: str) -> tuple[EvidenceSink | None, str]:
    try:
        from fedcredit.clients.ledger_client import LedgerClient  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, "the central ledger client is not installed; checkpoints are not published"
    svc = dep.service("ledger")
    return LedgerClient(svc.address, dep.tls(org), server_org=svc.org_id), ""


def build_process(
    dep: Deployment,
    department: str,
    *,
    insecure: bool = False,
    address: str | None = None,
    verifier: ConsentVerifier | None = None,
    central: EvidenceSink | Callable[[], EvidenceSink | None] | None = None,
) -> NodeProcess:
    """Everything a node needs, from the deployment (``verifier``/``central`` may be
    injected, e.g. in tests)."""
    cfg = dep.node(department)
    settings = NodeSettings.from_deployment(dep)
    notes: list[str] = []
    store = NodeStore(cfg.database, department)
    store.create_schema()
    engine = FeatureEngine(
        store,
        cache_size=settings.cache_size,
        min_bin_count=settings.min_bin_count,
        warm=settings.warm_cache,
    )
    key_dir = Path(settings.log_key_dir) if settings.log_key_dir else dep.dir / "data"
    origin = f"{cfg.org_id}/disclosures"
    signer = load_or_create_signer(key_dir / f"{cfg.org_id}-disclosures.key", origin)
    disclosures: Log = open_disclosure_log(
        disclosure_url(cfg.database, settings), signer, origin, settings
    )
    v = verifier if verifier is not None else _remote_verifier(dep, cfg.org_id)
    workers = settings.signature_workers()
    signatures = SignaturePool(workers) if workers else None
    servicer = FeatureServicer(
        node_org=cfg.org_id,
        engine=engine,
        verifier=v,
        disclosures=disclosures,
        policy=AccessPolicy(banks=dep.banks or None),
        settings=settings,
        signatures=signatures,
    )
    extra: list[tuple[Any, str]] = []
    witness_box: list[Any] = []
    if settings.witness:
        from fedcredit.ledger.witness import WITNESS_SERVICE, mount_witness, register_witness

        # The ledger's one-call mount: the node's cosigning key and vkey under the
        # deployment's keys/, the ledger's key read from there (keys/ledger.vkey) when its
        # first checkpoint arrives — unless [node] ledger_verifier_key pins it.
        pinned = settings.ledger_verifier_key
        wdb = disclosure_url(cfg.database, settings)

        def mount(server: Any) -> None:
            if pinned:
                from fedcredit.ledger.keys import witness_signer

                w = register_witness(
                    server,
                    database=wdb,
                    signer=witness_signer(dep, cfg.org_id),
                    logs={pinned.split("+", 1)[0]: pinned},
                )
            else:
                w = mount_witness(server, dep, cfg.org_id, wdb)
            witness_box.append(w)

        extra.append((mount, WITNESS_SERVICE))
    else:
        notes.append("[node] witness = false: the witness service is not mounted")
    tls = None if insecure else dep.tls(cfg.org_id)
    server = build_node_server(
        servicer=servicer, address=address or cfg.address, tls=tls, insecure=insecure, extra=extra
    )
    sink = central() if callable(central) else central
    if sink is None and central is None:
        sink, note = _central_sink(dep, cfg.org_id)
        if note:
            notes.append(note)
    publisher = (
        CheckpointPublisher(
            disclosures,
            sink,
            node=cfg.org_id,
            origin=origin,
            interval=settings.checkpoint_publish_interval,
        )
        if sink is not None
        else None
    )
    if not cfg.address and address is None:
        raise ConfigError(f"no address for the {department} node")
    return NodeProcess(
        department, cfg.org_id, store, engine, disclosures, v, server, publisher,
        witness_box[0] if witness_box else None, notes, signatures,
    )  # fmt: skip
