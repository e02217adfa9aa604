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
from typing import Any, TypeVar

import grpc

from fedcredit.common.errors import from_rpc_error
from fedcredit.common.evidence import Receipt
from fedcredit.common.tls import TlsFiles, channel
from fedcredit.ledger.checkpoint import Verifier
from fedcredit.ledger.export import Bundle, write_export
from fedcredit.v1 import ledger_pb2, ledger_pb2_grpc

T = TypeVar("T")

DEFAULT_SERVER_ORG = "ledger"


def _new_entry(kind: str, subject: str | None, payload: Mapping[str, Any]) -> Any:
    data = json.dumps(dict(payload), ensure_ascii=False, allow_nan=False).encode()
    return (
        ledger_pb2.NewEntry(kind=kind, subject=subject, payload_json=data)
        if subject is not None
        else (ledger_pb2.NewEntry(kind=kind, payload_json=data))
    )


class LedgerClient:
    """Synchronous client; thread-safe (one channel)."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str = DEFAULT_SERVER_ORG,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = channel(address, tls, server_org=server_org, insecure=insecure)
        self._stub = ledger_pb2_grpc.LedgerServiceStub(self._channel)

    @classmethod
    def from_deployment(cls, deployment: Any, org_id: str, **kw: Any) -> LedgerClient:
        svc = deployment.service("ledger")
        return cls(svc.address, deployment.tls(org_id), server_org=svc.org_id, **kw)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def _stream(self, fn: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from fn(request, timeout=max(self.timeout, 600.0))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # --- EvidenceSink ---------------------------------------------------------

    def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        return self.append_many([(kind, subject, payload)])[0]

    def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        req = ledger_pb2.AppendRequest(entries=[_new_entry(k, s, p) for k, s, p in items])
        resp = self._call(self._stub.Append, req)
        return [Receipt(int(r.index), bytes(r.leaf_hash)) for r in resp.receipts]

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
        for page in self._stream(
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
        yield from self._stream(
            self._stub.ListBySubject,
            ledger_pb2.ListBySubjectRequest(subject=subject, min_cosignatures=min_cosignatures),
        )

    def export(self, path: Path | str, start: int = 0, end: int = 0) -> int:
        """Write an offline export file; returns the number of entries."""
        pages = self._stream(self._stub.Export, ledger_pb2.ExportRequest(start=start, end=end))
        first = next(pages)
        checkpoints: list[str] = list(first.checkpoints)
        origin, log_key = first.origin, first.log_key

        def entries() -> Iterator[bytes]:
            for e in first.entries:
                yield bytes(e.data)
            for page in pages:
                checkpoints.extend(page.checkpoints)
                for e in page.entries:
                    yield bytes(e.data)

        # checkpoints come on the last page: collect entries first
        data = list(entries())
        with open(path, "w", encoding="utf-8") as fp:
            return write_export(
                fp,
                origin=origin,
                log_key=log_key,
                checkpoints=checkpoints,
                entries=data,
                start=start,
            )


class AsyncLedgerClient:
    """grpc.aio client; implements AsyncEvidenceSink."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str = DEFAULT_SERVER_ORG,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self._channel = channel(address, tls, server_org=server_org, insecure=insecure, aio=True)
        self._stub = ledger_pb2_grpc.LedgerServiceStub(self._channel)

    @classmethod
    def from_deployment(cls, deployment: Any, org_id: str, **kw: Any) -> AsyncLedgerClient:
        svc = deployment.service("ledger")
        return cls(svc.address, deployment.tls(org_id), server_org=svc.org_id, **kw)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., Any], request: Any) -> Any:
        try:
            return await fn(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def append(self, kind: str, subject: str | None, payload: Mapping[str, Any]) -> Receipt:
        return (await self.append_many([(kind, subject, payload)]))[0]

    async def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Receipt]:
        req = ledger_pb2.AppendRequest(entries=[_new_entry(k, s, p) for k, s, p in items])
        resp = await self._call(self._stub.Append, req)
        return [Receipt(int(r.index), bytes(r.leaf_hash)) for r in resp.receipts]

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

    async def list_by_subject(self, subject: str) -> AsyncIterator[Any]:
        try:
            async for page in self._stub.ListBySubject(
                ledger_pb2.ListBySubjectRequest(subject=subject)
            ):
                yield page
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


class WitnessClient:
    """A remote witness, as the ledger's witnessing thread talks to it (ledger.log.WitnessEndpoint)."""

    def __init__(
        self,
        name: str,
        verifier: Verifier | Callable[[], Verifier],
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str | None = None,
        insecure: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.name = name
        self._verifier = verifier
        self.timeout = timeout
        self._channel = channel(address, tls, server_org=server_org or name, insecure=insecure)
        self._stub = ledger_pb2_grpc.WitnessServiceStub(self._channel)

    @property
    def verifier(self) -> Verifier:
        v = self._verifier
        return v if isinstance(v, Verifier) else v()

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: str) -> str:
        req = ledger_pb2.AddCheckpointRequest(
            old_size=old_size, consistency_proof=list(proof), checkpoint=note
        )
        try:
            return str(self._stub.AddCheckpoint(req, timeout=self.timeout).cosignature)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def info(self) -> Any:
        try:
            return self._stub.GetWitnessInfo(
                ledger_pb2.GetWitnessInfoRequest(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        self._channel.close()
