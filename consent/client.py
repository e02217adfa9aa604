"""Typed client of the ConsentService (mTLS); gRPC failures become typed fedcredit errors.

The SDK of banks, enterprises and verifiers: it speaks :mod:`consent.terms` and loads
neither the database nor the authority.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from fedcredit.common.client import AsyncServiceClient, ServiceClient
from fedcredit.common.errors import FedcreditError, Internal, from_rpc_error
from fedcredit.common.wire import item_exception
from fedcredit.consent.terms import ConsentTerms, ConsentView
from fedcredit.consent.useref import Reservation, UseRef
from fedcredit.consent.wire import consent_from_pb, states_to_pb, terms_to_pb
from fedcredit.v1 import consent_pb2
from fedcredit.v1.consent_pb2_grpc import ConsentServiceStub

DEFAULT_SERVER_ORG = "consent-service"


def _refs_pb(refs: Sequence[UseRef]) -> builtins.list[consent_pb2.UseRef]:
    return [consent_pb2.UseRef(jti=r.jti, sub=r.enterprise, aud=r.bank) for r in refs]


def _reservations(
    res: consent_pb2.ReserveUsesResponse, asked: int
) -> builtins.list[Reservation | FedcreditError]:
    if len(res.results) != asked:
        raise Internal(f"ReserveUses answered {len(res.results)} results for {asked} uses")
    return [
        item_exception(r.error) if r.HasField("error") else Reservation(r.uses, r.opened)
        for r in res.results
    ]


class ConsentClient(ServiceClient[ConsentServiceStub]):
    stub_type = ConsentServiceStub
    default_server_org = DEFAULT_SERVER_ORG

    # --- banks ---------------------------------------------------------------

    def request(self, terms: ConsentTerms) -> ConsentView:
        m = self._call(
            self._stub.RequestConsent, consent_pb2.RequestConsentRequest(terms=terms_to_pb(terms))
        )
        return consent_from_pb(m)

    def token(self, consent_id: str) -> ConsentView:
        m = self._call(self._stub.GetToken, consent_pb2.ConsentRef(consent_id=consent_id))
        return consent_from_pb(m.consent, token=m.token)

    # --- enterprises -----------------------------------------------------------

    def grant_many(self, grants: Sequence[ConsentTerms]) -> builtins.list[ConsentView]:
        m = self._call(
            self._stub.GrantConsent,
            consent_pb2.GrantConsentRequest(grants=[terms_to_pb(g) for g in grants]),
        )
        return [consent_from_pb(c) for c in m.consents]

    def grant(self, terms: ConsentTerms) -> ConsentView:
        return self.grant_many([terms])[0]

    def approve(self, consent_id: str) -> ConsentView:
        return consent_from_pb(
            self._call(self._stub.ApproveConsent, consent_pb2.ConsentRef(consent_id=consent_id))
        )

    def reject(self, consent_id: str, reason: str = "") -> ConsentView:
        return consent_from_pb(
            self._call(
                self._stub.RejectConsent,
                consent_pb2.ConsentRef(consent_id=consent_id, reason=reason),
            )
        )

    def pause(self, consent_id: str) -> ConsentView:
        return consent_from_pb(
            self._call(self._stub.PauseConsent, consent_pb2.ConsentRef(consent_id=consent_id))
        )

    def resume(self, consent_id: str) -> ConsentView:
        return consent_from_pb(
            self._call(self._stub.ResumeConsent, consent_pb2.ConsentRef(consent_id=consent_id))
        )

    def revoke(self, consent_id: str, reason: str = "") -> ConsentView:
        return consent_from_pb(
            self._call(
                self._stub.RevokeConsent,
                consent_pb2.ConsentRef(consent_id=consent_id, reason=reason),
            )
        )

    def narrow(
        self,
        consent_id: str,
        *,
        remove_categories: Sequence[str] = (),
        remove_nodes: Sequence[str] = (),
    ) -> tuple[ConsentView, ConsentView]:
        m = self._call(
            self._stub.NarrowConsent,
            consent_pb2.NarrowConsentRequest(
                consent_id=consent_id,
                remove_categories=list(remove_categories),
                remove_nodes=list(remove_nodes),
            ),
        )
        return consent_from_pb(m.revoked), consent_from_pb(m.replacement)

    # --- both ------------------------------------------------------------------

    def list(
        self, *, states: Sequence[str] = (), expiring_within_days: int = 0, limit: int = 0
    ) -> builtins.list[ConsentView]:
        m = self._call(
            self._stub.ListConsents,
            consent_pb2.ListConsentsRequest(
                states=states_to_pb(states),
                expiring_within_days=expiring_within_days,
                limit=limit,
            ),
        )
        return [consent_from_pb(c) for c in m.consents]

    def get(self, consent_id: str) -> ConsentView:
        return consent_from_pb(
            self._call(self._stub.GetConsent, consent_pb2.ConsentRef(consent_id=consent_id))
        )

    # --- verifiers ---------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        m = self._call(self._stub.GetJwks, consent_pb2.GetJwksRequest())
        doc = json.loads(m.jwks_json)
        assert isinstance(doc, dict)
        return doc

    def status_list(self) -> consent_pb2.StatusList:
        return self._call(self._stub.GetStatusList, consent_pb2.GetStatusListRequest())

    def status_list_token(self) -> str:
        return self.status_list().token

    def watch_status(
        self, after_seq: int = 0
    ) -> tuple[Iterator[consent_pb2.StatusList], Callable[[], None]]:
        """A stream of signed status lists (on change and as heartbeat) and a function that cancels it."""
        call = self._stub.WatchStatus(consent_pb2.WatchStatusRequest(after_seq=after_seq))

        def items() -> Iterator[consent_pb2.StatusList]:
            try:
                yield from call
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    return
                raise from_rpc_error(exc) from None

        return items(), call.cancel

    def record_use(self, jti: str) -> int:
        return self._call(self._stub.RecordUse, consent_pb2.RecordUseRequest(jti=jti)).uses

    def record_uses(self, jtis: Sequence[str]) -> builtins.list[int | FedcreditError]:
        """Count one use of each token in one call: per token its count or its error."""
        res = self._call(self._stub.RecordUses, consent_pb2.RecordUsesRequest(jti=list(jtis)))
        if len(res.results) != len(jtis):
            raise Internal(f"RecordUses answered {len(res.results)} results for {len(jtis)} tokens")
        return [item_exception(r.error) if r.HasField("error") else r.uses for r in res.results]

    def reserve_uses(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> builtins.list[Reservation | FedcreditError]:
        """Reserve (or join) use ``use_id`` of each token in one call: per token its
        reservation or its error (``pin``: see consent.uses.UseRecorder.reserve)."""
        res = self._call(
            self._stub.ReserveUses,
            consent_pb2.ReserveUsesRequest(use_id=use_id, uses=_refs_pb(refs), pin=pin),
        )
        return _reservations(res, len(refs))

    def settle_uses(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> int:
        """Commit or release the uses this caller opened under ``use_id``."""
        return self._call(
            self._stub.SettleUses,
            consent_pb2.SettleUsesRequest(use_id=use_id, uses=_refs_pb(refs), commit=commit),
        ).settled

    # --- operator ------------------------------------------------------------------

    def rotate_keys(
        self, *, immediate: bool = False, compromised: bool = False
    ) -> consent_pb2.RotateKeysResponse:
        return self._call(
            self._stub.RotateKeys,
            consent_pb2.RotateKeysRequest(immediate=immediate, compromised=compromised),
        )


class AsyncConsentClient(AsyncServiceClient[ConsentServiceStub]):
    """The grpc.aio client of the calls a verifier makes per request, for services that
    run on an event loop (the coordinator reserves and settles each Score's use with it,
    with no thread between the loop and the call)."""

    stub_type = ConsentServiceStub
    default_server_org = DEFAULT_SERVER_ORG

    async def reserve_uses(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> builtins.list[Reservation | FedcreditError]:
        """See :meth:`ConsentClient.reserve_uses`."""
        res = await self._call(
            self._stub.ReserveUses,
            consent_pb2.ReserveUsesRequest(use_id=use_id, uses=_refs_pb(refs), pin=pin),
        )
        return _reservations(res, len(refs))

    async def settle_uses(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> int:
        """See :meth:`ConsentClient.settle_uses`."""
        res = await self._call(
            self._stub.SettleUses,
            consent_pb2.SettleUsesRequest(use_id=use_id, uses=_refs_pb(refs), commit=commit),
        )
        return int(res.settled)
