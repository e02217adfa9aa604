"""Witnesses: cosign a log's checkpoints only if they extend what was cosigned before.

C2SP tlog-witness semantics: the log sends (old size, consistency proof, new
signed checkpoint). The witness checks the log's signature with the key it
was configured with, that ``old size`` is the size it last cosigned (else it
answers WITNESS_SIZE_CONFLICT carrying its size, like the spec's 409), the
consistency proof, then stores the new size and root durably (compare-and-set,
so two concurrent requests cannot both advance) and returns a
tlog-cosignature/v1. It never cosigns a smaller tree, nor a different root at
the same size.

Department nodes mount the gRPC service with one call::

    register_witness(server, database=url, signer=key, logs={"fedcredit/ledger": vkey})
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    LargeBinary,
    MetaData,
    String,
    Table,
    select,
    update,
)

from fedcredit.common.db import make_engine
from fedcredit.common.rpc import handle_errors
from fedcredit.common.tls import peer_identity
from fedcredit.ledger.checkpoint import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    Note,
    NoteSignature,
    Signer,
    Verifier,
    cosign,
    open_checkpoint,
)
from fedcredit.ledger.errors import (
    CheckpointRollback,
    ProofSizesInvalid,
    WitnessConflict,
    WitnessUnknownLog,
)
from fedcredit.ledger.merkle import EMPTY_ROOT
from fedcredit.ledger.proofs import verify_consistency
from fedcredit.v1 import ledger_pb2, ledger_pb2_grpc

WITNESS_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["WitnessService"].full_name

witness_metadata = MetaData()

witness_logs = Table(
    "witness_logs",
    witness_metadata,
    Column("origin", String(200), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True)
class WitnessedState:
    origin: str
    size: int
    root: bytes


class WitnessStore:
    """The last cosigned (size, root) per log; only ever moves forward."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        witness_metadata.create_all(engine)

    @classmethod
    def open(cls, url: str | Engine) -> WitnessStore:
        return cls(url if isinstance(url, Engine) else make_engine(url))

    def get(self, origin: str) -> WitnessedState:
        with self.engine.connect() as conn:
            r = conn.execute(select(witness_logs).where(witness_logs.c.origin == origin)).first()
        if r is None:
            return WitnessedState(origin, 0, EMPTY_ROOT)
        return WitnessedState(origin, int(r.size), bytes(r.root))

    def all(self) -> list[WitnessedState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(witness_logs).order_by(witness_logs.c.origin)).all()
        return [WitnessedState(r.origin, int(r.size), bytes(r.root)) for r in rows]

    def advance(self, origin: str, old_size: int, new_size: int, new_root: bytes) -> bool:
        """Compare-and-set from ``old_size``; False if someone else moved it meanwhile."""
        now = time.time()
        with self.engine.begin() as conn:
            if old_size == 0:
                exists = conn.execute(
                    select(witness_logs.c.size).where(witness_logs.c.origin == origin)
                ).first()
                if exists is None:
                    conn.execute(
                        witness_logs.insert(),
                        {"origin": origin, "size": new_size, "root": new_root, "updated_at": now},
                    )
                    return True
            res = conn.execute(
                update(witness_logs)
                .where(witness_logs.c.origin == origin, witness_logs.c.size == old_size)
                .values(size=new_size, root=new_root, updated_at=now)
            )
            return bool(res.rowcount == 1)

    def close(self) -> None:
        self.engine.dispose()


class Witness:
    """The witness rules (pure but for the store)."""

    def __init__(
        self,
        signer: Signer,
        logs: Mapping[str, Verifier | str] | Callable[[], Mapping[str, Verifier | str]],
        store: WitnessStore,
    ) -> None:
        """``logs`` maps each witnessed log's origin to its key; a callable is re-read
        whenever an unknown origin shows up (keys published after the witness started)."""
        if signer.sig_type != SIG_COSIGNATURE_V1:
            raise ValueError("a witness signs with a cosignature (type 0x04) key")
        self.signer = signer
        self._provider = logs if callable(logs) else None
        self.logs: dict[str, Verifier] = {}
        self._refresh(logs if not callable(logs) else {})
        self.store = store
        self._lock = threading.Lock()

    def _refresh(self, logs: Mapping[str, Verifier | str]) -> None:
        self.logs = {
            o: (v if isinstance(v, Verifier) else Verifier.parse(v)) for o, v in logs.items()
        }

    @property
    def name(self) -> str:
        return self.signer.name

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    def add_checkpoint(self, old_size: int, proof: list[bytes], note_text: str) -> NoteSignature:
        note = Note.parse(note_text)
        cp = Checkpoint.parse_text(note.text)
        key = self.logs.get(cp.origin)
        if key is None and self._provider is not None:
            self._refresh(self._provider())
            key = self.logs.get(cp.origin)
        if key is None:
            raise WitnessUnknownLog(
                f"witness {self.name} does not witness log {cp.origin!r}; it knows {sorted(self.logs)}",
                origin=cp.origin,
            )
        open_checkpoint(note_text, key)
        if old_size > cp.size:
            raise ProofSizesInvalid(
                f"old size {old_size} is larger than the checkpoint size {cp.size}",
                old_size=old_size,
                new_size=cp.size,
            )
        with self._lock:
            state = self.store.get(cp.origin)
            if old_size != state.size:
                raise WitnessConflict(
                    f"witness {self.name} last cosigned {cp.origin} at size {state.size}, not {old_size}",
                    size=state.size,
                )
            if cp.size == state.size and cp.root != state.root:
                raise CheckpointRollback(
                    f"{cp.origin} presented a different root at size {cp.size} than the one "
                    f"witness {self.name} cosigned (split view)",
                    size=cp.size,
                )
            verify_consistency(state.size, cp.size, proof, state.root, cp.root)
            if cp.size > state.size and not self.store.advance(
                cp.origin, state.size, cp.size, cp.root
            ):
                now = self.store.get(cp.origin)
                raise WitnessConflict(
                    f"witness {self.name} moved to size {now.size} concurrently", size=now.size
                )
        return cosign(note.text, self.signer)


class WitnessServicer(ledger_pb2_grpc.WitnessServiceServicer):
    """Sync servicer (for grpc.server)."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    @handle_errors
    def AddCheckpoint(self, request: Any, context: Any) -> Any:
        peer_identity(context)  # any authenticated caller: the log signature is what counts
        sig = self.witness.add_checkpoint(
            request.old_size, list(request.consistency_proof), request.checkpoint
        )
        return ledger_pb2.AddCheckpointResponse(cosignature=sig.line())

    @handle_errors
    def GetWitnessInfo(self, request: Any, context: Any) -> Any:
        peer_identity(context)
        return _info(self.witness)


class AioWitnessServicer(ledger_pb2_grpc.WitnessServiceServicer):
    """grpc.aio servicer; the store work runs in a worker thread."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    @handle_errors
    async def AddCheckpoint(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        peer_identity(context)
        sig = await asyncio.to_thread(
            self.witness.add_checkpoint,
            request.old_size,
            list(request.consistency_proof),
            request.checkpoint,
        )
        return ledger_pb2.AddCheckpointResponse(cosignature=sig.line())

    @handle_errors
    async def GetWitnessInfo(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        peer_identity(context)
        return await asyncio.to_thread(_info, self.witness)


def _info(w: Witness) -> Any:
    return ledger_pb2.WitnessInfo(
        name=w.name,
        key=w.verifier.vkey,
        logs=[
            ledger_pb2.WitnessLog(origin=s.origin, size=s.size, root=s.root) for s in w.store.all()
        ],
    )


def register_witness(
    server: grpc.Server | grpc.aio.Server,
    *,
    database: str | Engine,
    signer: Signer,
    logs: Mapping[str, Verifier | str] | Callable[[], Mapping[str, Verifier | str]],
) -> Witness:
    """Mount WitnessService on ``server`` (sync or aio); add WITNESS_SERVICE to its service names."""
    witness = Witness(signer, logs, WitnessStore.open(database))
    servicer: Any = (
        AioWitnessServicer(witness)
        if isinstance(server, grpc.aio.Server)
        else WitnessServicer(witness)
    )
    ledger_pb2_grpc.add_WitnessServiceServicer_to_server(servicer, server)
    return witness


def mount_witness(
    server: grpc.Server | grpc.aio.Server, deployment: Any, org_id: str, database: str | Engine
) -> Witness:
    """The one call a department node makes: witness the deployment's central ledger.

    Creates (once) the node's cosigning key under ``<deployment dir>/keys/`` and
    publishes its vkey there; the ledger's key is read from the same folder
    when the first checkpoint arrives.
    """
    from fedcredit.ledger.keys import published_logs, witness_signer

    return register_witness(
        server,
        database=database,
        signer=witness_signer(deployment, org_id),
        logs=lambda: published_logs(deployment),
    )
