"""Typed clients of the LedgerService and WitnessService (mTLS).

``LedgerClient`` and ``AsyncLedgerClient`` implement ``common.evidence.EvidenceSink`` /
``AsyncEvidenceSink``, so the coordinator and the consent service write to the
central ledger exactly as a node writes to its embedded ``ledger.log.Log``.
gRPC failures become the typed fedcredit errors the server raised.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcredit.common.client import AsyncServiceClient, ServiceClient
from fedcredit.common.evidence import Receipt
from fedcredit.common.tls import TlsFiles
from fedcredit.ledger.checkpoint import Verifier
from fedcredit.ledger.errors import StoreCorrupt
from fedcredit.ledger.export import Bundle, write_atomically, write_export
from fedcredit.v1 import ledger_pb2, ledger_pb2_grpc

if TYPE_CHECKING:
    from fedcredit.common.config import Deployment

DEFAULT_SERVER_ORG = "ledger"
DEFAULT_TIMEOUT = 30.0
STREAM_TIMEOUT = 600.0  # at least this long for a streamed read (entries, export)


def _new_entry(kind: str, subject: str | None, payload: Mapping[str, Any]) -> Any:
    data = json.dumps(dict(payload), ensure_ascii=False, allow_nan=False).encode()
    return (
        ledger_pb2.NewEntry(kind=kind, subject=subject, payload_json=data)
        if subject is not None
        else (ledger_pb2.NewEntry(kind=kind, payload_json=data))
    )


def _append_request(
    items: Sequence[tuple[str, str | None, Mapping[str, Any]]],
) -> ledger_pb2.AppendRequest:
    return ledger_pb2.AppendRequest(entries=[_new_entry(k, s, p) for k, s, p in items])


def _receipts(resp: ledger_pb2.AppendResponse) -> list[Receipt]:
    return [Receipt(int(r.index), bytes(r.leaf_hash)) for r in resp.receipts]


class LedgerClient(ServiceClient[ledger_pb2_grpc.LedgerServiceStub]):
    """Synchronous client; thread-safe (one channel)."""

    stub_type = ledger_pb2_grpc.LedgerServiceStub
    default_server_org = DEFAULT_SERVER_ORG
    default_timeout = DEFAULT_TIMEOUT

    @classmethod
    def from_deployment(cls, deployment: Deployment, org_id: str, **kw: Any) -> LedgerClient:
        svc = deployment.service("ledger")
        return cls(svc.address, deployment.tls(org_id), server_org=svc.org_id, **kw)

    def _read(self, fn: Callable[..., Any], request: Any) -> Iterator[Any]:
        """A streamed read: a long deadline (at least ``STREAM_TIMEOUT``)."""
        return self._stream(fn, request, max(self.timeout, STREAM_TIMEOUT))

    # --- EvidenceSink ---------------------------------------------------------

    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        return self.append_many([(kind, subject, payload)])[0]

    def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        return _receipts(self._call(self._stub.Append, _append_request(items)))

    # --- reading ----------------------------------------------------------------

    def checkpoint(self, min_cosignatures: int = 0) -> str:
        return str(
            self._call(
                self._stub.GetCheckpoint,
                ledger_pb2.GetCheckpointRequest(min_cosignatures=min_cosignatures),
            ).note
        )

    def sign_checkpoint(self) -> str:
        return str(self._call(self._stub.SignCheckpoint, ledger_pb2.SignCheckpointRequest()).note)

    def log_info(self) -> Any:
        return self._call(self._stub.GetLogInfo, ledger_pb2.GetLogInfoRequest())

    def entries(self, start: int, end: int = 0) -> Iterator[tuple[int, bytes]]:
        for page in self._read(
            self._stub.GetEntries, ledger_pb2.GetEntriesRequest(start=start, end=end)
        ):
            for e in page.entries:
                yield int(e.index), bytes(e.data)

    def inclusion_proof(self, index: int, tree_size: int = 0) -> Any:
        return self._call(
            self._stub.GetInclusionProof,
            ledger_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size),
        )

    def bundle(self, index: int, tree_size: int = 0) -> Bundle:
        """An offline proof bundle for one entry (verify with ``fedcredit audit verify-inclusion``)."""
        p = self.inclusion_proof(index, tree_size)
        return Bundle(
            int(p.index),
            int(p.tree_size),
            bytes(p.entry),
            [bytes(h) for h in p.hashes],
            p.checkpoint,
        )

    def consistency_proof(self, old_size: int, new_size: int = 0) -> list[bytes]:
        p = self._call(
            self._stub.GetConsistencyProof,
            ledger_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size),
        )
        return [bytes(h) for h in p.hashes]

    def list_by_subject(self, subject: str, min_cosignatures: int = 0) -> Iterator[Any]:
        yield from self._read(
            self._stub.ListBySubject,
            ledger_pb2.ListBySubjectRequest(subject=subject, min_cosignatures=min_cosignatures),
        )

    def export_pages(self, start: int = 0, end: int = 0) -> Iterator[Any]:
        """The Export stream's pages as they arrive (``ledger.export.export_chunks`` turns
        them into an export file's text without holding them all)."""
        return self._read(self._stub.Export, ledger_pb2.ExportRequest(start=start, end=end))

    def export(self, path: Path | str, start: int = 0, end: int = 0) -> int:
        """Write an offline export file atomically (no partial file on any failure);
        returns the number of entries."""
        pages = self._read(self._stub.Export, ledger_pb2.ExportRequest(start=start, end=end))
        first = next(pages)
        checkpoints: list[str] = list(first.checkpoints)
        origin, log_key = first.origin, first.log_key
        data: list[bytes] = []
        for page in (first, *pages):  # checkpoints come on the last page: entries first
            if page is not first:
                checkpoints.extend(page.checkpoints)
            for e in page.entries:
                if e.index != start + len(data):  # the ledger skipped one: it lost it
                    raise StoreCorrupt(
                        f"the ledger's export skipped entry {start + len(data)} "
                        f"(sent {e.index} next)",
                        index=start + len(data),
                    )
                data.append(bytes(e.data))
        return write_atomically(
            path,
            lambda fp: write_export(
                fp,
                origin=origin,
                log_key=log_key,
                checkpoints=checkpoints,
                entries=data,
                start=start,
            ),
        )


class AsyncLedgerClient(AsyncServiceClient["ledger_pb2_grpc.LedgerServiceAsyncStub"]):
    """grpc.aio client; implements AsyncEvidenceSink."""

    stub_type = ledger_pb2_grpc.LedgerServiceStub
    default_server_org = DEFAULT_SERVER_ORG
    default_timeout = DEFAULT_TIMEOUT

    @classmethod
    def from_deployment(cls, deployment: Deployment, org_id: str, **kw: Any) -> AsyncLedgerClient:
        svc = deployment.service("ledger")
        return cls(svc.address, deployment.tls(org_id), server_org=svc.org_id, **kw)

    async def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        return (await self.append_many([(kind, subject, payload)]))[0]

    async def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        return _receipts(await self._call(self._stub.Append, _append_request(items)))

    async def checkpoint(self, min_cosignatures: int = 0) -> str:
        r = await self._call(
            self._stub.GetCheckpoint,
            ledger_pb2.GetCheckpointRequest(min_cosignatures=min_cosignatures),
        )
        return str(r.note)

    async def inclusion_proof(self, index: int, tree_size: int = 0) -> Any:
        return await self._call(
            self._stub.GetInclusionProof,
            ledger_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size),
        )

    def list_by_subject(self, subject: str) -> AsyncIterator[Any]:
        """The subject's pages, without a deadline."""
        return self._stream(
            self._stub.ListBySubject,
            ledger_pb2.ListBySubjectRequest(subject=subject),
            None,
            bounded=False,
        )


class WitnessClient(ServiceClient[ledger_pb2_grpc.WitnessServiceStub]):
    """A remote witness, as the ledger's witnessing thread talks to it (ledger.log.WitnessEndpoint)."""

    stub_type = ledger_pb2_grpc.WitnessServiceStub
    default_timeout = 5.0

    def __init__(
        self,
        name: str,
        verifier: Verifier | Callable[[], Verifier],
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str | None = None,
        insecure: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            address, tls, server_org=server_org or name, insecure=insecure, timeout=timeout
        )
        self.name = name
        self._verifier = verifier

    @property
    def verifier(self) -> Verifier:
        v = self._verifier
        return v if isinstance(v, Verifier) else v()

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: str) -> str:
        req = ledger_pb2.AddCheckpointRequest(
            old_size=old_size, consistency_proof=list(proof), checkpoint=note
        )
        return str(self._call(self._stub.AddCheckpoint, req).cosignature)

    def info(self) -> Any:
        return self._call(self._stub.GetWitnessInfo, ledger_pb2.GetWitnessInfoRequest())
