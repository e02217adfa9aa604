"""The node's disclosure log: what is written for every answer, and checkpoint publication.

Every answer is first appended to the node's own local ledger (``ledger.log.Log``):
one entry per enterprise served, kind ``feature_disclosure``, subject the enterprise's
credit code, payload = who asked (caller organisation and role), on whose behalf,
purpose, consent ``jti``, the feature *names* (never values), the request id, the
data version and, when the coordinator served a person's delegated session at the
portal, ``via: portal`` (provenance the coordinator vouches for; the node cannot check
it and decides nothing by it). Population aggregates (bin edges) are logged as ``aggregate_disclosure``.
Entries of one request are appended atomically; if that fails, nothing is answered.

:class:`CheckpointPublisher` publishes the log's latest signed checkpoint to the central
ledger (kind ``node_checkpoint``) every ``interval`` seconds when the log has grown, so
auditors can cross-check the node's disclosures against the coordinator's records.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from fedcredit.common.evidence import EvidenceSink, Receipt
from fedcredit.common.wire import via_field

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedcredit.ledger.checkpoint import Signer
    from fedcredit.ledger.log import Log, PreparedEntry
    from fedcredit.ledger.store import StoredCheckpoint
    from fedcredit.node.settings import NodeSettings

log = logging.getLogger(__name__)

KIND = "feature_disclosure"
AGGREGATE_KIND = "aggregate_disclosure"
CHECKPOINT_KIND = "node_checkpoint"


class DisclosureLog(Protocol):
    """What the node's servicer needs from its local ledger (``ledger.log.Log`` provides it).

    An answer's entries are validated and canonicalised in the servicer's thread
    (:meth:`prepare`; :meth:`prepare_each` for one entry per enterprise from a shared
    template), then queued as one atomic group (:meth:`submit_many`) while the answer is
    built; the future resolves once they are durable, and only then is anything sent.
    """

    def prepare(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> PreparedEntry:
        """Validate one entry and canonicalise its payload (raise if it is not valid)."""
        ...

    def prepare_each(
        self,
        kind: str,
        template: Mapping[str, Any],
        key: str,
        rows: Sequence[tuple[str | None, Any]],
    ) -> list[PreparedEntry]:
        """:meth:`prepare` of ``(kind, subject, {**template, key: value})`` for every
        ``(subject, value)`` of ``rows`` (the template canonicalised once)."""
        ...

    def submit_many(self, items: list[PreparedEntry]) -> Future[list[Receipt]]:
        """Queue prepared entries as one atomic group; the future resolves once they are
        durable (or raises: then none is)."""
        ...


def feature_payload(
    *,
    node: str,
    caller: str,
    caller_role: str,
    on_behalf_of: str,
    purpose: str,
    jti: str,
    features: Sequence[str],
    request_id: str,
    data_version: int,
    as_of: str,
    via: str = "",
) -> dict[str, Any]:
    return {
        "node": node,
        "caller": caller,
        "caller_role": caller_role,
        "on_behalf_of": on_behalf_of,
        "purpose": purpose,
        "consent_jti": jti,
        "features": list(features),
        "request_id": request_id,
        "data_version": data_version,
        "as_of": as_of,
        **via_field(via),
    }


def open_disclosure_log(
    url: str, signer: Signer | Ed25519PrivateKey, origin: str, settings: NodeSettings
) -> Log:
    """Open the node's local ledger (``ledger.log.Log``) with the node's settings
    (``log_checkpoint_interval``, ``log_max_delay``, ``disclosure_synchronous``)."""
    from sqlalchemy import event

    from fedcredit.common.db import is_sqlite, make_engine
    from fedcredit.ledger.log import Log
    from fedcredit.ledger.settings import LogSettings

    engine = make_engine(url)
    if is_sqlite(engine) and settings.disclosure_synchronous == "normal":

        @event.listens_for(engine, "connect")
        def _normal(dbapi_conn: Any, _rec: Any) -> None:  # runs after common.db's pragmas
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return Log.open(
        engine,
        signer,
        origin,
        settings=LogSettings(
            checkpoint_interval=settings.log_checkpoint_interval, max_delay=settings.log_max_delay
        ),
    )


class CheckpointSource(Protocol):
    """The local log's signed checkpoints (``ledger.log.Log`` provides them)."""

    def last_checkpoint(self) -> StoredCheckpoint | None: ...

    def checkpoint_note(self, cp: StoredCheckpoint) -> str: ...


class CheckpointPublisher:
    """Publish the local log's newest checkpoint to a central EvidenceSink periodically."""

    def __init__(
        self,
        source: CheckpointSource,
        sink: EvidenceSink,
        *,
        node: str,
        origin: str,
        interval: float = 10.0,
    ) -> None:
        self.source = source
        self.sink = sink
        self.node = node
        self.origin = origin
        self.interval = interval
        self.published_size = -1
        self.published = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_once(self) -> Receipt | None:
        """Publish if the log has a checkpoint newer than the last one published."""
        cp = self.source.last_checkpoint()
        if cp is None or cp.size <= self.published_size:
            return None
        receipt = self.sink.append(
            CHECKPOINT_KIND,
            None,
            {
                "node": self.node,
                "origin": self.origin,
                "size": cp.size,
                "root_hash": cp.root.hex(),
                "checkpoint": self.source.checkpoint_note(cp),
            },
        )
        self.published_size = cp.size
        self.published += 1
        return receipt

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish_once()
            except Exception as exc:  # retried at the next tick; a node keeps serving
                self.failures += 1
                log.warning("publishing the %s checkpoint failed: %s", self.origin, exc)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"checkpoint-publisher[{self.node}]", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
