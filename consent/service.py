"""gRPC ConsentService: a thin layer over :class:`consent.authority.ConsentAuthority`.

The caller's identity always comes from the verified client certificate
(:func:`common.tls.peer_identity`). The server is a grpc.aio server on its own event
loop thread: the ordinary (synchronous) methods run in a thread pool, while
``WatchStatus`` streams are coroutines holding no thread — one broadcaster thread waits
for status changes (and heartbeats) and wakes every stream at once (heartbeats: spread
over a fraction of a second, :class:`StatusBroadcaster`). Streams are capped
per caller identity and service-wide (``TOO_MANY_WATCHERS``), so no certificate can take
the pool, the health checks or the scoring path down by opening streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from fedcredit.common.errors import FedcreditError, RoleNotAllowed
from fedcredit.common.rpc import handle_errors
from fedcredit.common.server import build_aio_server, mark_serving
from fedcredit.common.tls import TlsFiles, peer_identity
from fedcredit.common.wire import item_error
from fedcredit.consent import errors as E
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.useref import UseRef
from fedcredit.consent.wire import consent_to_pb, terms_from_pb
from fedcredit.v1 import consent_pb2, consent_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
# Longest a WatchStatus stream stays silent: the list is re-sent at least this
# often, so a subscribed verifier's cache stays fresh without polling.
HEARTBEAT_MAX_S = 10.0
# Open WatchStatus streams: per caller identity (a verifier needs one per process) and
# in all (each costs a little memory and a wake-up per broadcast, no thread).
WATCHERS_PER_IDENTITY = 16
WATCHERS_TOTAL = 20_000


def pending_call_limits(watchers_total: int) -> tuple[tuple[str, int], ...]:
    """gRPC core holds a call that arrived before the server's event loop asked for the
    next one as "pending", and past 1,000 pending calls starts cancelling new ones at
    random (all of them past 3,000). Every verifier opening its stream at once (a
    restart, a network blip) is such a burst: without room for it, thousands of streams
    are cancelled and must come back one retry at a time. Pending calls cost a little
    memory each; the watcher caps still bound how many are served."""
    n = watchers_total + 1_000  # the streams plus room for ordinary calls
    return (
        ("grpc.server.max_pending_requests", n),
        ("grpc.server.max_pending_requests_hard_limit", n),
    )


def refs_from_pb(uses: Any) -> list[UseRef]:
    return [UseRef(u.jti, u.sub, u.aud) for u in uses]


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(
        self,
        authority: ConsentAuthority,
        *,
        watchers_per_identity: int = WATCHERS_PER_IDENTITY,
        watchers_total: int = WATCHERS_TOTAL,
    ) -> None:
        self.authority = authority
        self.heartbeat_s = min(HEARTBEAT_MAX_S, authority.settings.status_ttl_s / 2)
        self.broadcaster = StatusBroadcaster(
            authority.status,
            heartbeat_s=self.heartbeat_s,
            per_identity=watchers_per_identity,
            total=watchers_total,
        )

    # --- banks ---------------------------------------------------------------

    @handle_errors
    def RequestConsent(
        self, request: consent_pb2.RequestConsentRequest, context: Any
    ) -> consent_pb2.Consent:
        view = self.authority.request(peer_identity(context), terms_from_pb(request.terms))
        return consent_to_pb(view)

    @handle_errors
    def GetToken(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Token:
        view = self.authority.token(peer_identity(context), request.consent_id)
        return consent_pb2.Token(consent=consent_to_pb(view), token=view.token or "")

    # --- enterprises -----------------------------------------------------------

    @handle_errors
    def GrantConsent(
        self, request: consent_pb2.GrantConsentRequest, context: Any
    ) -> consent_pb2.GrantConsentResponse:
        actor = peer_identity(context)
        views = self.authority.grant_many(actor, [terms_from_pb(g) for g in request.grants])
        return consent_pb2.GrantConsentResponse(consents=[consent_to_pb(v) for v in views])

    @handle_errors
    def ApproveConsent(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Consent:
        return consent_to_pb(self.authority.approve(peer_identity(context), request.consent_id))

    @handle_errors
    def RejectConsent(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Consent:
        return consent_to_pb(
            self.authority.reject(peer_identity(context), request.consent_id, request.reason)
        )

    @handle_errors
    def PauseConsent(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Consent:
        return consent_to_pb(self.authority.pause(peer_identity(context), request.consent_id))

    @handle_errors
    def ResumeConsent(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Consent:
        return consent_to_pb(self.authority.resume(peer_identity(context), request.consent_id))

    @handle_errors
    def RevokeConsent(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Consent:
        return consent_to_pb(
            self.authority.revoke(peer_identity(context), request.consent_id, request.reason)
        )

    @handle_errors
    def NarrowConsent(
        self, request: consent_pb2.NarrowConsentRequest, context: Any
    ) -> consent_pb2.NarrowConsentResponse:
        old, new = self.authority.narrow(
            peer_identity(context),
            request.consent_id,
            remove_categories=list(request.remove_categories),
            remove_nodes=list(request.remove_nodes),
        )
        return consent_pb2.NarrowConsentResponse(
            revoked=consent_to_pb(old), replacement=consent_to_pb(new)
        )

    # --- both ------------------------------------------------------------------

    @handle_errors
    def ListConsents(
        self, request: consent_pb2.ListConsentsRequest, context: Any
    ) -> consent_pb2.ListConsentsResponse:
        views = self.authority.list_consents(
            peer_identity(context),
            states=[consent_pb2.ConsentState.Name(s) for s in request.states],
            expiring_within_days=request.expiring_within_days or None,
            limit=request.limit or None,
        )
        return consent_pb2.ListConsentsResponse(consents=[consent_to_pb(v) for v in views])

    @handle_errors
    def GetConsent(self, request: consent_pb2.ConsentRef, context: Any) -> consent_pb2.Consent:
        return consent_to_pb(self.authority.get(peer_identity(context), request.consent_id))

    # --- verifiers ---------------------------------------------------------------

    @handle_errors
    def GetJwks(self, request: consent_pb2.GetJwksRequest, context: Any) -> consent_pb2.Jwks:
        peer_identity(context)
        return consent_pb2.Jwks(jwks_json=json.dumps(self.authority.jwks(), sort_keys=True))

    @handle_errors
    def GetStatusList(
        self, request: consent_pb2.GetStatusListRequest, context: Any
    ) -> consent_pb2.StatusList:
        peer_identity(context)
        seq = self.authority.status.seq
        return consent_pb2.StatusList(token=self.authority.status.token(), seq=seq)

    @handle_errors
    async def WatchStatus(
        self, request: consent_pb2.WatchStatusRequest, context: Any
    ) -> AsyncIterator[consent_pb2.StatusList]:
        peer = peer_identity(context)
        async for msg in self.broadcaster.watch(str(peer)):
            yield msg

    @handle_errors
    def RecordUse(
        self, request: consent_pb2.RecordUseRequest, context: Any
    ) -> consent_pb2.RecordUseResponse:
        actor = peer_identity(context)
        uses = self.authority.record_use(actor, request.jti)
        return consent_pb2.RecordUseResponse(uses=uses)

    @handle_errors
    def RecordUses(
        self, request: consent_pb2.RecordUsesRequest, context: Any
    ) -> consent_pb2.RecordUsesResponse:
        actor = peer_identity(context)
        jtis = list(request.jti)
        results = self.authority.record_uses(actor, jtis)
        return consent_pb2.RecordUsesResponse(
            results=[
                consent_pb2.UseCount(jti=j, error=item_error(r))
                if isinstance(r, FedcreditError)
                else consent_pb2.UseCount(jti=j, uses=r)
                for j, r in zip(jtis, results, strict=True)
            ]
        )

    @handle_errors
    def ReserveUses(
        self, request: consent_pb2.ReserveUsesRequest, context: Any
    ) -> consent_pb2.ReserveUsesResponse:
        actor = peer_identity(context)
        results = self.authority.reserve_uses(
            actor, request.use_id, refs_from_pb(request.uses), pin=request.pin
        )
        return consent_pb2.ReserveUsesResponse(
            results=[
                consent_pb2.Reservation(error=item_error(r))
                if isinstance(r, FedcreditError)
                else consent_pb2.Reservation(uses=r.uses, opened=r.opened)
                for r in results
            ]
        )

    @handle_errors
    def SettleUses(
        self, request: consent_pb2.SettleUsesRequest, context: Any
    ) -> consent_pb2.SettleUsesResponse:
        actor = peer_identity(context)
        n = self.authority.settle_uses(
            actor, request.use_id, refs_from_pb(request.uses), commit=request.commit
        )
        return consent_pb2.SettleUsesResponse(settled=n)

    # --- operator ------------------------------------------------------------------

    @handle_errors
    def RotateKeys(
        self, request: consent_pb2.RotateKeysRequest, context: Any
    ) -> consent_pb2.RotateKeysResponse:
        actor = peer_identity(context)
        if actor.role not in ("operator", "consent"):
            raise RoleNotAllowed(
                f"only the operator rotates signing keys; you are {actor.role} {actor.org_id}",
                role=actor.role,
            )
        new, changed = self.authority.rotate_keys(
            immediate=request.immediate, compromised=request.compromised
        )
        return consent_pb2.RotateKeysResponse(
            kid=new.kid, activate_at=new.activate_at, retired_kids=[k.kid for k in changed]
        )


class StatusBroadcaster:
    """One thread waits on the status list (change or heartbeat) and wakes the
    ``WatchStatus`` coroutines; each stream then sends the latest signed list (a stream that
    fell behind skips to it: lists are whole, ``seq`` only grows).

    A CHANGE (a new ``seq``: a revocation, a key rotation) wakes every stream at once. A
    HEARTBEAT (the same list re-signed with a later ``exp``) wakes them slot by slot over
    :attr:`spread_s`: sending to thousands of streams at once held the service's event loop
    for a few hundred milliseconds every heartbeat (bench_watchers: 5,000 idle streams cost
    ~21 ms of CPU per second, all of it in that burst), and every ordinary call arriving
    meanwhile (a Score's ReserveUses) waited behind it; in slots of a few streams each, a
    call waits behind one slot at most. A stream's slot is fixed, so it still hears a
    heartbeat every ``heartbeat_s``; only its first one after connecting comes up to
    ``spread_s`` later (heartbeat_s <= ttl / 2, so at most 3/4 of the list's ``ttl`` after
    the first list: verifier caches stay fresh). A change is never spread."""

    # Streams are dealt round-robin into this many slots; a heartbeat wakes one slot every
    # ``spread_s / SLOTS`` seconds (~20 ms at the default 10 s heartbeat).
    SLOTS = 256

    def __init__(self, status: Any, *, heartbeat_s: float, per_identity: int, total: int) -> None:
        self.status = status
        self.heartbeat_s = heartbeat_s
        self.spread_s = heartbeat_s / 2
        self.per_identity = per_identity
        self.total = total
        self.by_identity: dict[str, int] = {}
        self.open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest: consent_pb2.StatusList | None = None
        self._changed: list[asyncio.Event | None] = [None] * self.SLOTS
        self._next_slot = 0
        self._ended = False
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin broadcasting into ``loop`` (the server's)."""
        self._loop = loop
        self._latest = consent_pb2.StatusList(token=self.status.token(), seq=self.status.seq)
        self._thread = threading.Thread(target=self._run, name="consent-status-broadcast", daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self) -> None:
        status, loop = self.status, self._loop
        assert loop is not None
        last = status.seq
        while not status.closed:
            seq = status.wait(last, timeout=self.heartbeat_s)
            if status.closed:
                break
            # Sent on change, and as a heartbeat (same seq, later exp) to keep caches fresh:
            # signed once for every stream.
            msg = consent_pb2.StatusList(token=status.token(), seq=seq)
            last = seq
            try:
                loop.call_soon_threadsafe(self._publish, msg)
            except RuntimeError:  # the loop is closed: the server is gone
                return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._publish, None)

    def _publish(self, msg: consent_pb2.StatusList | None) -> None:
        prev = self._latest
        if msg is None:
            self._ended = True
        else:
            self._latest = msg
        if msg is not None and prev is not None and msg.seq == prev.seq and self.spread_s > 0:
            loop = asyncio.get_running_loop()
            step = self.spread_s / self.SLOTS
            for k in range(self.SLOTS):
                loop.call_later(k * step, self._wake, k)
            return
        for k in range(self.SLOTS):
            self._wake(k)

    def _wake(self, slot: int) -> None:
        """Wake the streams of ``slot`` (a heartbeat's late wake after a change finds
        nothing new to send: the streams go back to waiting)."""
        changed, self._changed[slot] = self._changed[slot], asyncio.Event()
        if changed is not None:
            changed.set()

    def _admit(self, who: str) -> None:
        mine = self.by_identity.get(who, 0)
        if mine >= self.per_identity:
            raise E.TooManyWatchers(
                f"{who} already holds {mine} status streams; at most {self.per_identity} per "
                "caller (one per verifier process is enough)",
                per_identity=self.per_identity,
            )
        if self.open >= self.total:
            raise E.TooManyWatchers(
                f"the consent service already serves {self.open} status streams, its maximum; "
                "poll GetStatusList instead or retry later",
                total=self.total,
            )
        self.by_identity[who] = mine + 1
        self.open += 1

    def _leave(self, who: str) -> None:
        self.open -= 1
        left = self.by_identity.get(who, 1) - 1
        if left:
            self.by_identity[who] = left
        else:
            self.by_identity.pop(who, None)

    async def watch(self, who: str) -> AsyncIterator[consent_pb2.StatusList]:
        """The stream of one watcher: the current list at once, then every broadcast."""
        self._admit(who)  # on the loop: counters need no lock
        log.debug("status subscriber %s connected (%d open)", who, self.open)
        slot, self._next_slot = self._next_slot, (self._next_slot + 1) % self.SLOTS
        try:
            sent: consent_pb2.StatusList | None = None
            while not self._ended:
                # Take the event BEFORE reading the latest list: a broadcast landing while
                # this stream is busy sending sets this very event, so it is never missed.
                changed = self._changed[slot]
                if changed is None:
                    changed = self._changed[slot] = asyncio.Event()
                msg = self._latest
                if msg is not None and msg is not sent:
                    sent = msg
                    yield msg
                    continue  # re-check: something may have been broadcast meanwhile
                await changed.wait()
        finally:
            self._leave(who)


class ConsentServer:
    """The consent service's grpc.aio server on its own event-loop thread, driven from
    synchronous code (``start``, ``stop(grace).wait()``, as a ``grpc.Server``)."""

    def __init__(
        self,
        servicer: ConsentServicer,
        *,
        address: str,
        tls: TlsFiles | None,
        insecure: bool,
        max_workers: int,
        passkeys: Any = None,
    ) -> None:
        """``passkeys``: a :class:`consent.passkey_service.PasskeyServicer` to serve too."""
        self.servicer = servicer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="consent-aio", daemon=True)  # fmt: skip
        self._thread.start()
        # The ordinary methods are synchronous (database, signing): they run here.
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="consent-rpc")

        async def build() -> tuple[grpc.aio.Server, int]:
            return build_aio_server(
                address=address,
                tls=tls,
                register=lambda s: _register(s, servicer, passkeys),
                service_names=[SERVICE_NAME] + ([PASSKEY_SERVICE] if passkeys else []),
                insecure=insecure,
                migration_thread_pool=self._pool,
                options=pending_call_limits(servicer.broadcaster.total),
            )

        self.server, self.port = self._call(build())

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        async def go() -> None:
            await self.server.start()
            await mark_serving(self.server)

        self._call(go())
        self.servicer.broadcaster.start(self._loop)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop serving (streams end, calls get ``grace`` s); the event returned is set."""
        done = threading.Event()
        try:
            if not self._loop.is_closed():
                self._call(self.server.stop(grace), timeout=(grace or 0) + 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._pool.shutdown(wait=False, cancel_futures=True)
            done.set()
        return done


PASSKEY_SERVICE = "fedcredit.v1.PasskeyService"


def _register(server: Any, servicer: ConsentServicer, passkeys: Any) -> None:
    consent_pb2_grpc.add_ConsentServiceServicer_to_server(servicer, server)
    if passkeys is not None:
        from fedcredit.v1 import passkey_pb2_grpc

        passkey_pb2_grpc.add_PasskeyServiceServicer_to_server(passkeys, server)


def serve(
    authority: ConsentAuthority,
    *,
    address: str,
    tls: TlsFiles | None,
    insecure: bool = False,
    max_workers: int = 32,
    watchers_per_identity: int = WATCHERS_PER_IDENTITY,
    watchers_total: int = WATCHERS_TOTAL,
    passkeys: Any = None,
) -> tuple[ConsentServer, int]:
    """Build and start the server (and the authority's background work); return it and its port.

    ``max_workers``: threads for the ordinary calls (status streams take none);
    ``watchers_per_identity`` / ``watchers_total``: caps on open ``WatchStatus`` streams;
    ``passkeys``: a :class:`consent.passkeys.PasskeyAuthority` to serve PasskeyService for."""
    servicer = ConsentServicer(
        authority, watchers_per_identity=watchers_per_identity, watchers_total=watchers_total
    )
    pk = None
    if passkeys is not None:
        from fedcredit.consent.passkey_service import PasskeyServicer

        pk = PasskeyServicer(passkeys)
    server = ConsentServer(
        servicer, address=address, tls=tls, insecure=insecure, max_workers=max_workers, passkeys=pk
    )
    authority.start()
    server.start()
    if authority.settings.public_address:  # JWKS and status list over HTTPS, no client cert
        from fedcredit.consent.public import PublicServer

        server.public = PublicServer(authority, authority.settings.public_address, tls).start()  # type: ignore[attr-defined]
    return server, server.port


def stop(server: ConsentServer, authority: ConsentAuthority, grace: float = 1.0) -> None:
    public = getattr(server, "public", None)
    if public is not None:
        public.close()
    authority.status.close()  # ends WatchStatus streams
    server.stop(grace).wait()
    authority.close()
