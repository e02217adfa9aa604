"""gRPC LedgerService (grpc.aio) over a ``ledger.log.Log``.

Who may do what is data in ``ledger.settings`` (append rights per kind, audit
roles); the caller's organisation and role come only from its verified
certificate. Store reads run in worker threads so the event loop keeps
accepting appends while an export streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from fedcredit.common.errors import BatchTooLarge, FedcreditError
from fedcredit.common.evidence import Receipt
from fedcredit.common.rpc import handle_errors
from fedcredit.common.tls import Identity, check_address, peer_identity, require_role
from fedcredit.consent.delegation import DelegationVerifier, acting
from fedcredit.ledger.client import WitnessClient
from fedcredit.ledger.entry import KIND_RE, canonical_payload, check_actor, check_subject
from fedcredit.ledger.errors import (
    IndexOutOfRange,
    InvalidEntry,
    KindNotAllowed,
    NoCheckpoint,
    ReadNotAllowed,
    SubjectNotAllowed,
)
from fedcredit.ledger.log import Log
from fedcredit.ledger.settings import LedgerSettings
from fedcredit.ledger.store import StoredCheckpoint
from fedcredit.v1 import ledger_pb2, ledger_pb2_grpc

LEDGER_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
SIGN_ROLES = ("operator", "coordinator")


def _pb_checkpoint(note: str, cp: StoredCheckpoint) -> Any:
    return ledger_pb2.SignedCheckpoint(note=note, size=cp.size, root=cp.root)


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(
        self,
        log: Log,
        settings: LedgerSettings,
        witness_keys: list[str] | None = None,
        delegation: DelegationVerifier | None = None,
    ) -> None:
        """``delegation``: the checker of the portal's delegation tickets
        (consent/delegation.py); None: the portal reads for no enterprise."""
        self.log = log
        self.settings = settings
        self.delegation = delegation
        self.witness_keys = witness_keys or []
        self._kinds_by_role: dict[str, frozenset[str]] = {}
        self._done_lock = threading.Lock()
        self._done: dict[
            asyncio.AbstractEventLoop,
            list[tuple[Future[list[Receipt]], asyncio.Future[list[Receipt]]]],
        ] = {}

    # --- helpers --------------------------------------------------------------

    def _require_audit(self, who: Identity, what: str) -> None:
        if not self.settings.may_read_all(who.role):
            raise ReadNotAllowed(
                f"{who.org_id} has role {who.role!r}; {what} is for roles "
                f"{', '.join(sorted(self.settings.audit_roles))}",
                role=who.role,
            )

    def _latest(self, min_cosignatures: int = 0) -> StoredCheckpoint:
        cp = (
            self.log.last_checkpoint()
            if min_cosignatures == 0
            else self.log.store.latest_cosigned_checkpoint(min_cosignatures)
        )
        if cp is None:
            raise NoCheckpoint(
                f"the ledger has no signed checkpoint{' with enough cosignatures' if min_cosignatures else ''} yet"
            )
        return cp

    def _size_or_latest(self, size: int) -> int:
        return size if size else self._latest().size

    # --- writing --------------------------------------------------------------

    def _appendable(self, role: str) -> frozenset[str]:
        """The kinds ``role`` may append whose names are valid (cached per role)."""
        kinds = self._kinds_by_role.get(role)
        if kinds is None:
            kinds = frozenset(
                k
                for k in self.settings.append_rights
                if self.settings.may_append(role, k) and KIND_RE.fullmatch(k)
            )
            self._kinds_by_role[role] = kinds
        return kinds

    def _durable(self, fut: Future[list[Receipt]]) -> asyncio.Future[list[Receipt]]:
        """An asyncio future for a sequencer future.

        The sequencer resolves a whole batch of futures at once; their results
        are handed to the event loop with one wake-up per batch instead of one
        ``call_soon_threadsafe`` per caller (``asyncio.wrap_future``).
        """
        loop = asyncio.get_running_loop()
        out: asyncio.Future[list[Receipt]] = loop.create_future()

        def done(f: Future[list[Receipt]]) -> None:  # in the sequencer thread
            with self._done_lock:
                queue = self._done.setdefault(loop, [])
                queue.append((f, out))
                if len(queue) > 1:
                    return  # a drain is already scheduled for this loop
            loop.call_soon_threadsafe(self._drain, loop)

        fut.add_done_callback(done)
        return out

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._done_lock:
            queue = self._done.pop(loop, [])
        for f, out in queue:
            if out.cancelled():
                continue
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(f.result())

    @handle_errors
    async def Append(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        who = peer_identity(context)
        entries = request.entries
        n = len(entries)
        if n == 0:
            raise InvalidEntry("an append request must carry at least one entry")
        if n > self.settings.max_append_batch:
            raise BatchTooLarge(
                f"an append carries at most {self.settings.max_append_batch} entries; got {n}",
                limit=self.settings.max_append_batch,
                got=n,
            )
        appendable = self._appendable(who.role)
        actor: str | None = None
        max_bytes = self.log.settings.max_payload_bytes
        prepared = []
        for i, e in enumerate(entries):
            kind = e.kind
            if kind not in appendable and not self.settings.may_append(who.role, kind):
                allowed = sorted(self.settings.append_rights.get(kind, ()))
                raise KindNotAllowed(
                    f"{who.org_id} (role {who.role}) may not append {kind!r} entries; "
                    + (
                        f"only {', '.join(allowed)} may"
                        if allowed
                        else "this kind is not configured"
                    ),
                    kind=kind,
                    role=who.role,
                    position=i,
                )
            try:
                payload = json.loads(e.payload_json)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidEntry(
                    f"entry {i}: payload_json is not valid JSON: {exc}", position=i
                ) from exc
            if type(payload) is not dict:
                raise InvalidEntry(
                    f"entry {i}: the payload must be a JSON object; got {type(payload).__name__}",
                    position=i,
                )
            subject = e.subject if e.HasField("subject") else None
            try:
                if kind in appendable:
                    # the kind is known valid; the checks run in Log.prepare's order
                    data = canonical_payload(payload, max_bytes)
                    if actor is None:
                        actor = check_actor(who.org_id)
                    prepared.append((kind, actor, check_subject(subject), data))
                else:  # an allowed kind with an invalid name: the full check names the error
                    prepared.append(self.log.prepare(kind, subject, payload, actor=who.org_id))
            except FedcreditError as exc:
                exc.metadata.setdefault("position", str(i))
                raise
        receipts = await self._durable(self.log.submit_many(prepared))
        resp = ledger_pb2.AppendResponse()
        add = resp.receipts.add
        for r in receipts:
            add(index=r.index, leaf_hash=r.leaf_hash)
        return resp

    @handle_errors
    async def SignCheckpoint(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        require_role(peer_identity(context), *SIGN_ROLES)
        cp = await asyncio.to_thread(self.log.checkpoint)
        note = await asyncio.to_thread(self.log.checkpoint_note, cp)
        return _pb_checkpoint(note, cp)

    # --- reading --------------------------------------------------------------

    @handle_errors
    async def GetCheckpoint(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        peer_identity(context)
        cp = await asyncio.to_thread(self._latest, request.min_cosignatures)
        note = await asyncio.to_thread(self.log.checkpoint_note, cp)
        return _pb_checkpoint(note, cp)

    @handle_errors
    async def GetLogInfo(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        peer_identity(context)
        keys = list(self.witness_keys)
        for w in self.log.witnesses:
            try:
                keys.append(w.verifier.vkey)
            except FedcreditError:  # a witness that has not published its key yet
                continue
        return ledger_pb2.LogInfo(
            origin=self.log.origin,
            log_key=self.log.verifier.vkey,
            witness_keys=keys,
            witness_quorum=self.settings.witness_quorum,
            size=self.log.size,
        )

    @handle_errors
    async def GetEntries(self, request: Any, context: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        who = peer_identity(context)
        self._require_audit(who, "reading entries in bulk")
        end = self._size_or_latest(request.end)
        self.log._check_size(end, "end index")
        step = self.settings.max_entries_per_call
        for lo in range(request.start, end, step):
            rows = await asyncio.to_thread(self.log.get_entries, lo, min(end, lo + step))
            yield ledger_pb2.EntryPage(
                entries=[ledger_pb2.Entry(index=r.index, data=r.data) for r in rows]
            )

    @handle_errors
    async def GetInclusionProof(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        who = peer_identity(context)
        note = ""
        if request.tree_size == 0:
            cp = self._latest()
            size, note = cp.size, await asyncio.to_thread(self.log.checkpoint_note, cp)
        else:
            size = request.tree_size
            stored = await asyncio.to_thread(self.log.store.checkpoint_at, size)
            if stored is not None:
                note = await asyncio.to_thread(self.log.checkpoint_note, stored)
        hashes = await asyncio.to_thread(self.log.inclusion_proof, request.index, size)
        entry = (await asyncio.to_thread(self.log.get_entries, request.index, request.index + 1))[0]
        data = entry.data if self._may_read(who, entry.data) else b""
        return ledger_pb2.InclusionProof(
            index=request.index, tree_size=size, hashes=hashes, checkpoint=note, entry=data
        )

    def _may_read(self, who: Identity, data: bytes) -> bool:
        if self.settings.may_read_all(who.role):
            return True
        from fedcredit.ledger.entry import Entry

        e = Entry.parse(data)
        return e.actor == who.org_id or (who.role == "enterprise" and e.subject == who.org_id)

    @handle_errors
    async def GetConsistencyProof(self, request: Any, context: Any) -> Any:  # type: ignore[override]
        peer_identity(context)
        new = self._size_or_latest(request.new_size)
        hashes = await asyncio.to_thread(self.log.consistency_proof, request.old_size, new)
        return ledger_pb2.ConsistencyProof(old_size=request.old_size, new_size=new, hashes=hashes)

    @handle_errors
    async def ListBySubject(self, request: Any, context: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        who = peer_identity(context)
        subject = request.subject
        if who.role == "enterprise":
            if subject != who.org_id:
                raise SubjectNotAllowed(
                    f"enterprise {who.org_id} may list only entries about itself; asked about {subject}",
                    subject=subject,
                )
        elif who.role == "portal":
            # The portal lists an enterprise's entries only for the enterprise its delegation
            # ticket names (signed in with a passkey); its certificate alone reads nothing.
            md = tuple(context.invocation_metadata() or ())
            ent = await asyncio.to_thread(acting, who, md, self.delegation, ("enterprise",), "ListBySubject")  # fmt: skip
            if subject != ent.org_id:
                raise SubjectNotAllowed(
                    f"enterprise {ent.org_id} may list only entries about itself; asked about {subject}",
                    subject=subject,
                )
        else:
            self._require_audit(who, "listing entries about an enterprise")
        cp = await asyncio.to_thread(self._latest, request.min_cosignatures)
        note = await asyncio.to_thread(self.log.checkpoint_note, cp)
        after = -1
        page = min(self.settings.max_entries_per_call, 500)
        sent = False
        while True:
            rows = await asyncio.to_thread(
                self.log.entries_by_subject, subject, cp.size, after, page
            )
            if not rows and sent:
                return
            # the page's proofs in one worker-thread call reading their shared nodes
            # together (was one thread hop and one store read per entry: an enterprise's
            # access page of 1,000 entries took 1,000 of each)
            indices = [r.index for r in rows]
            proofs = await asyncio.to_thread(self.log.inclusion_proofs, indices, cp.size)
            proven = [
                ledger_pb2.ProvenEntry(
                    entry=ledger_pb2.Entry(index=r.index, data=r.data), inclusion_proof=proof
                )
                for r, proof in zip(rows, proofs, strict=True)
            ]
            yield ledger_pb2.SubjectPage(checkpoint=note, tree_size=cp.size, entries=proven)
            sent = True
            if len(rows) < page:
                return
            after = rows[-1].index

    @handle_errors
    async def Export(self, request: Any, context: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        who = peer_identity(context)
        if who.role == "portal":
            # an auditor's export download from its portal page: only under the auditor's
            # delegation ticket; the portal's certificate alone exports nothing
            md = tuple(context.invocation_metadata() or ())
            await asyncio.to_thread(acting, who, md, self.delegation, self.settings.audit_roles, "Export")  # fmt: skip
        else:
            self._require_audit(who, "exporting the ledger")
        end = self._size_or_latest(request.end)
        if request.start > end:
            raise IndexOutOfRange(f"export start {request.start} is beyond its end {end}")
        self.log._check_size(end, "end index")
        step = self.settings.max_entries_per_call
        first = True
        for lo in range(request.start, end, step):
            rows = await asyncio.to_thread(self.log.get_entries, lo, min(end, lo + step))
            page = ledger_pb2.ExportPage(
                entries=[ledger_pb2.Entry(index=r.index, data=r.data) for r in rows]
            )
            if first:
                page.origin, page.log_key, first = self.log.origin, self.log.verifier.vkey, False
            yield page
        cps = await asyncio.to_thread(self.log.store.checkpoints_between, request.start, end)
        notes = [await asyncio.to_thread(self.log.checkpoint_note, c) for c in cps if c.size > 0]
        last = ledger_pb2.ExportPage(checkpoints=notes)
        if first:
            last.origin, last.log_key = self.log.origin, self.log.verifier.vkey
        yield last


def register_ledger(server: Any, servicer: LedgerServicer) -> None:
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)


# --- running the service --------------------------------------------------------------


def build_witness_clients(
    deployment: Any, settings: LedgerSettings, witness_orgs: list[str]
) -> list[WitnessClient]:
    """gRPC clients of the witnesses (department nodes) named in the deployment."""
    from fedcredit.common.errors import ConfigError
    from fedcredit.ledger.checkpoint import Verifier
    from fedcredit.ledger.keys import witness_verifier

    svc = deployment.service("ledger")
    by_org = {n.org_id: n for n in deployment.nodes}
    out = []
    for org in witness_orgs:
        node = by_org.get(org)
        if node is None:
            raise ConfigError(
                f"[ledger] witnesses names {org!r}, which is not a node of the deployment"
            )

        def verifier(org: str = org) -> Verifier:
            v = witness_verifier(deployment, org)
            if v is None:
                raise ConfigError(f"witness {org} has not published its key yet")
            return v

        out.append(
            WitnessClient(
                org,
                verifier,
                node.address,
                deployment.tls(svc.org_id),
                server_org=org,
                timeout=settings.log.witness_timeout,
            )
        )
    return out


def _delegation(dep: Any, org: str, insecure: bool) -> Any:
    """The checker of the portal's delegation tickets, when the deployment has a portal."""
    if "portal" not in dep.raw or insecure or "consent" not in dep.services:
        return None
    from fedcredit.consent.passkey_client import RemoteDelegationVerifier
    from fedcredit.consent.settings import ConsentSettings

    consent = dep.service("consent")
    return RemoteDelegationVerifier(
        consent_address=consent.address, tls=dep.tls(org), server_org=consent.org_id,
        issuer=ConsentSettings.from_deployment(dep).issuer, audience=org,
    )  # fmt: skip


async def serve(
    deployment: Any,
    *,
    address: str | None = None,
    insecure: bool = False,
    on_ready: Any = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the LedgerService until ``stop`` is set (or SIGINT/SIGTERM)."""
    import signal

    from fedcredit.common.server import build_aio_server, mark_serving
    from fedcredit.ledger.keys import log_signer
    from fedcredit.ledger.settings import load_settings

    section = deployment.section("ledger")
    settings = load_settings(section)
    svc = deployment.service("ledger")
    signer = log_signer(deployment, settings.origin)
    witness_orgs = section.get_list("witnesses", [n.org_id for n in deployment.nodes])
    witnesses = build_witness_clients(deployment, settings, witness_orgs)
    log = await asyncio.to_thread(
        Log.open,
        svc.database,
        signer,
        settings.origin,
        actor=svc.org_id,
        settings=settings.log,
        witnesses=witnesses,
    )
    delegation = _delegation(deployment, svc.org_id, insecure)
    servicer = LedgerServicer(
        log, settings, witness_keys=[], delegation=delegation.verifier if delegation else None
    )
    server, port = build_aio_server(
        # An empty --address is a mistake, not "the default": only None means the config's.
        address=svc.address if address is None else check_address(address),
        tls=None if insecure else deployment.tls(svc.org_id),
        register=lambda s: register_ledger(s, servicer),
        service_names=[LEDGER_SERVICE],
        insecure=insecure,
    )
    await server.start()
    await mark_serving(server)
    tiles = None
    if settings.tiles_address:  # the read-only C2SP tlog-tiles interface, beside gRPC
        from fedcredit.ledger.tiles_http import TilesHTTPServer

        # entry bundles only to a client certificate whose role reads every entry
        tiles = TilesHTTPServer(
            log,
            settings.tiles_address,
            None if insecure else deployment.tls(svc.org_id),
            settings,
        ).start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(port, log)
    try:
        await stop.wait()
    finally:
        await server.stop(2.0)
        if tiles is not None:
            await asyncio.to_thread(tiles.close)
        await asyncio.to_thread(log.close)
        for w in witnesses:
            w.close()
        if delegation is not None:
            delegation.close()
