"""gRPC ConsentService: a thin layer over :class:`consent.authority.ConsentAuthority`.

The caller's identity always comes from the verified client certificate
(:func:`common.tls.peer_identity`). Streams (``WatchStatus``) hold a worker
thread each, so the server is built with a pool sized for every verifier of
the deployment plus the ordinary calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc

from fedcredit.common.errors import FedcreditError, RoleNotAllowed
from fedcredit.common.rpc import handle_errors
from fedcredit.common.server import build_server
from fedcredit.common.tls import TlsFiles, peer_identity
from fedcredit.common.wire import item_error
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.useref import UseRef
from fedcredit.consent.wire import consent_to_pb, terms_from_pb
from fedcredit.v1 import consent_pb2, consent_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
# Longest a WatchStatus stream stays silent: the list is re-sent at least this
# often, so a subscribed verifier's cache stays fresh without polling.
HEARTBEAT_MAX_S = 10.0


def refs_from_pb(uses: Any) -> list[UseRef]:
    return [UseRef(u.jti, u.sub, u.aud) for u in uses]


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, authority: ConsentAuthority) -> None:
        self.authority = authority
        self.heartbeat_s = min(HEARTBEAT_MAX_S, authority.settings.status_ttl_s / 2)

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
    def WatchStatus(
        self, request: consent_pb2.WatchStatusRequest, context: Any
    ) -> Iterator[consent_pb2.StatusList]:
        peer = peer_identity(context)
        status = self.authority.status
        last = request.after_seq
        log.info("status subscriber %s connected", peer)
        first = True
        while context.is_active() and not status.closed:
            # The current list at once on (re)connect: the subscriber knows the stream is
            # live and holds a fresh `exp` without waiting for a change or a heartbeat.
            seq = status.seq if first else status.wait(last, timeout=self.heartbeat_s)
            first = False
            if status.closed:
                return
            # Sent on change, and as a heartbeat (same seq) to keep caches fresh.
            yield consent_pb2.StatusList(token=status.token(), seq=seq)
            last = seq

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
        results = self.authority.reserve_uses(actor, request.use_id, refs_from_pb(request.uses))
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


def serve(
    authority: ConsentAuthority,
    *,
    address: str,
    tls: TlsFiles | None,
    insecure: bool = False,
    max_workers: int = 128,
) -> tuple[grpc.Server, int]:
    """Build and start the server (and the authority's background work); return it and its port."""
    servicer = ConsentServicer(authority)
    server, port = build_server(
        address=address,
        tls=tls,
        register=lambda s: consent_pb2_grpc.add_ConsentServiceServicer_to_server(servicer, s),
        service_names=[SERVICE_NAME],
        insecure=insecure,
        max_workers=max_workers,
    )
    authority.start()
    server.start()
    if authority.settings.public_address:  # JWKS and status list over HTTPS, no client cert
        from fedcredit.consent.public import PublicServer

        server.public = PublicServer(authority, authority.settings.public_address, tls).start()  # type: ignore[attr-defined]
    return server, port


def stop(server: grpc.Server, authority: ConsentAuthority, grace: float = 1.0) -> None:
    public = getattr(server, "public", None)
    if public is not None:
        public.close()
    authority.status.close()  # ends WatchStatus streams
    server.stop(grace).wait()
    authority.close()
