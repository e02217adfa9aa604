"""Assemble a running node from a deployment file: store, engine, consent verifier,
disclosure log, checkpoint publisher, witness service and the gRPC server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fedcredit.common.config import Deployment, NodeConfig
from fedcredit.common.errors import ConfigError
from fedcredit.common.evidence import EvidenceSink
from fedcredit.consent.verify import TokenVerifier
from fedcredit.ledger.client import LedgerClient
from fedcredit.ledger.keys import load_or_create_signer
from fedcredit.ledger.log import Log
from fedcredit.ledger.witness import Witness
from fedcredit.ledger.witness_http import WitnessHTTPServer
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
    verifier: TokenVerifier
    server: NodeServer
    publisher: CheckpointPublisher | None = None
    witness: Witness | None = None
    notes: list[str] = field(default_factory=list)
    signatures: SignaturePool | None = None
    witness_http_address: str = ""  # [[nodes]] witness_http: the C2SP tlog-witness endpoint
    witness_http: WitnessHTTPServer | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()
        if self.witness is not None and self.witness_http_address:
            # The same witness (same key, same stored state) behind the standard protocol,
            # so a log outside the deployment can ask this node to cosign.
            self.witness_http = WitnessHTTPServer(self.witness, self.witness_http_address).start()
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
        if self.witness_http is not None:
            self.witness_http.close()
        self.server.stop(2.0)
        if self.signatures is not None:
            self.signatures.close()
        self.disclosures.close()
        self.verifier.close()
        self.store.close()


def _remote_verifier(dep: Deployment, org: str) -> TokenVerifier:
    from fedcredit.consent.settings import ConsentSettings
    from fedcredit.consent.verify import remote_verifier

    svc = dep.service("consent")
    return remote_verifier(
        consent_address=svc.address,
        tls=dep.tls(org),
        server_org=svc.org_id,
        issuer=ConsentSettings.from_deployment(dep).issuer,
    )


def _central_sink(dep: Deployment, org: str) -> EvidenceSink:
    svc = dep.service("ledger")
    return LedgerClient(svc.address, dep.tls(org), server_org=svc.org_id)


def _disclosure_origin(cfg: NodeConfig) -> str:
    return f"{cfg.org_id}/disclosures"


def _open_disclosures(dep: Deployment, cfg: NodeConfig, settings: NodeSettings) -> Log:
    """The node's local ledger, signed with the node's disclosure key (created once)."""
    key_dir = Path(settings.log_key_dir) if settings.log_key_dir else dep.dir / "data"
    origin = _disclosure_origin(cfg)
    signer = load_or_create_signer(key_dir / f"{cfg.org_id}-disclosures.key", origin)
    return open_disclosure_log(disclosure_url(cfg.database, settings), signer, origin, settings)


class WitnessMount:
    """Mounts the ledger's WitnessService on the node's server (``[node] witness``).

    The ledger's one-call mount: the node's cosigning key and vkey under the
    deployment's keys/, the ledger's key read from there (keys/ledger.vkey) when its
    first checkpoint arrives — unless ``[node] ledger_verifier_key`` pins it.
    """

    def __init__(self, dep: Deployment, cfg: NodeConfig, settings: NodeSettings) -> None:
        self.dep, self.org = dep, cfg.org_id
        self.pinned = settings.ledger_verifier_key
        self.database = disclosure_url(cfg.database, settings)
        self.witness: Witness | None = None

    def __call__(self, server: grpc.Server) -> None:
        from fedcredit.ledger.keys import witness_signer
        from fedcredit.ledger.witness import mount_witness, register_witness

        if self.pinned:
            self.witness = register_witness(
                server,
                database=self.database,
                signer=witness_signer(self.dep, self.org),
                logs={self.pinned.split("+", 1)[0]: self.pinned},
            )
        else:
            self.witness = mount_witness(server, self.dep, self.org, self.database)


def _publisher(
    dep: Deployment,
    cfg: NodeConfig,
    settings: NodeSettings,
    disclosures: Log,
    central: EvidenceSink | Callable[[], EvidenceSink | None] | None,
) -> CheckpointPublisher | None:
    """Publishes the local log's checkpoints to the central ledger: ``central`` (or what it
    returns), else the deployment's ledger; a callable returning None: not published."""
    sink = central() if callable(central) else central
    if sink is None and central is None:
        sink = _central_sink(dep, cfg.org_id)
    if sink is None:
        return None
    return CheckpointPublisher(
        disclosures,
        sink,
        node=cfg.org_id,
        origin=_disclosure_origin(cfg),
        interval=settings.checkpoint_publish_interval,
    )


def build_process(
    dep: Deployment,
    department: str,
    *,
    insecure: bool = False,
    address: str | None = None,
    verifier: TokenVerifier | None = None,
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
    disclosures = _open_disclosures(dep, cfg, settings)
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
    extra: list[tuple[Callable[[grpc.Server], None], str]] = []
    mount = WitnessMount(dep, cfg, settings) if settings.witness else None
    if mount is not None:
        from fedcredit.ledger.witness import WITNESS_SERVICE

        extra.append((mount, WITNESS_SERVICE))
    else:
        notes.append("[node] witness = false: the witness service is not mounted")
    tls = None if insecure else dep.tls(cfg.org_id)
    server = build_node_server(
        servicer=servicer, address=address or cfg.address, tls=tls, insecure=insecure, extra=extra
    )
    publisher = _publisher(dep, cfg, settings, disclosures, central)
    if not cfg.address and address is None:
        raise ConfigError(f"no address for the {department} node")
    if cfg.witness_http and mount is None:
        raise ConfigError(
            f"node {cfg.org_id}: witness_http is set but [node] witness = false; "
            "expected the witness on to serve its HTTP endpoint"
        )
    return NodeProcess(
        department, cfg.org_id, store, engine, disclosures, v, server, publisher,
        mount.witness if mount is not None else None, notes, signatures, cfg.witness_http,
    )  # fmt: skip
