"""The typed client of PasskeyService (served by the consent service): what the portal
calls to relay WebAuthn ceremonies and signed consent decisions."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedcredit.common.client import ServiceClient
from fedcredit.common.config import Deployment
from fedcredit.consent import passkey_errors as passkey_errors  # registers PASSKEY_* reasons
from fedcredit.consent.terms import ConsentTerms, ConsentView
from fedcredit.consent.wire import consent_from_pb, states_to_pb, terms_to_pb
from fedcredit.v1 import passkey_pb2, passkey_pb2_grpc


@dataclass(frozen=True, slots=True)
class Session:
    org: str
    role: str
    credential_id: str
    ticket: str
    expires_at: int


class PasskeyClient(ServiceClient[passkey_pb2_grpc.PasskeyServiceStub]):
    stub_type = passkey_pb2_grpc.PasskeyServiceStub
    default_server_org = "consent-service"

    @classmethod
    def from_deployment(cls, dep: Deployment, org_id: str, **kw: Any) -> PasskeyClient:
        svc = dep.service("consent")
        return cls(svc.address, dep.tls(org_id), server_org=svc.org_id, **kw)

    def issue_enrol_code(self, org: str, role: str, expires_in_s: int) -> passkey_pb2.EnrolCode:
        return self._call(
            self._stub.IssueEnrolCode,
            passkey_pb2.IssueEnrolCodeRequest(org=org, role=role, expires_in_s=expires_in_s),
        )

    def begin_registration(
        self,
        org: str,
        *,
        enrol_code: str = "",
        authorised_by: tuple[str, str] | None = None,
        label: str = "",
    ) -> tuple[str, str]:
        req = passkey_pb2.BeginRegistrationRequest(org=org, enrol_code=enrol_code, label=label)
        if authorised_by is not None:
            req.authorised_by.CopyFrom(_signed(*authorised_by))
        m = self._call(self._stub.BeginRegistration, req)
        return m.ticket, m.options_json

    def finish_registration(self, ticket: str, credential_json: str) -> passkey_pb2.PasskeyInfo:
        return self._call(
            self._stub.FinishRegistration,
            passkey_pb2.FinishRegistrationRequest(ticket=ticket, credential_json=credential_json),
        )

    def challenge(self, org: str, action: str, **params: Any) -> tuple[str, str]:
        """(statement JSON, WebAuthn request options JSON) for ``org`` to sign."""
        m = self._call(
            self._stub.Challenge, passkey_pb2.ChallengeRequest(org=org, action=action, **params)
        )
        return m.statement_json, m.options_json

    def sign_in(self, statement_json: str, assertion_json: str) -> Session:
        m = self._call(self._stub.SignIn, _signed(statement_json, assertion_json))
        return Session(m.org, m.role, m.credential_id, m.session, m.session_expires_at)

    def decide(
        self, statement_json: str, assertion_json: str
    ) -> tuple[ConsentView, ConsentView | None, str]:
        """Carry out a signed decision: the consent, its replacement (narrow), the
        assertion's SHA-256 as recorded in the ledger."""
        m = self._call(self._stub.Decide, _signed(statement_json, assertion_json))
        repl = consent_from_pb(m.replacement) if m.HasField("replacement") else None
        return consent_from_pb(m.consent), repl, m.assertion_sha256

    def list_consents(self, session: str, states: Sequence[str] = ()) -> builtins.list[ConsentView]:
        m = self._call(
            self._stub.ListConsents,
            passkey_pb2.SessionRequest(session=session, states=states_to_pb(states)),
        )
        return [consent_from_pb(c) for c in m.consents]

    def list_passkeys(self, session: str) -> builtins.list[passkey_pb2.PasskeyInfo]:
        m = self._call(self._stub.ListPasskeys, passkey_pb2.SessionRequest(session=session))
        return list(m.passkeys)

    def remove_passkey(
        self, statement_json: str, assertion_json: str
    ) -> builtins.list[passkey_pb2.PasskeyInfo]:
        m = self._call(self._stub.RemovePasskey, _signed(statement_json, assertion_json))
        return list(m.passkeys)

    def issue_enrol_code_signed(self, statement_json: str, assertion_json: str) -> passkey_pb2.EnrolCode:  # fmt: skip
        return self._call(self._stub.IssueEnrolCodeSigned, _signed(statement_json, assertion_json))

    def request_consent(self, session: str, terms: ConsentTerms) -> ConsentView:
        m = self._call(
            self._stub.RequestConsent,
            passkey_pb2.PortalRequestConsent(session=session, terms=terms_to_pb(terms)),
        )
        return consent_from_pb(m)

    def bank_token(self, session: str, consent_id: str) -> ConsentView:
        """A bank's consent with its token (bound to the bank's own certificate)."""
        m = self._call(
            self._stub.GetBankToken,
            passkey_pb2.SessionConsentRef(session=session, consent_id=consent_id),
        )
        return dataclasses.replace(consent_from_pb(m.consent), token=m.token or None)

    def delegate(
        self, session: str, audience: str, step_up: tuple[str, str] | None = None
    ) -> tuple[str, int]:
        """A delegation ticket for service ``audience``: (ticket, expires_at). ``step_up``:
        (statement JSON, assertion JSON) of a step-up act (activate_model): the ticket is
        for that one act (consent/delegation.py)."""
        req = passkey_pb2.DelegateRequest(session=session, audience=audience)
        if step_up is not None:
            req.step_up.CopyFrom(_signed(*step_up))
        m = self._call(self._stub.Delegate, req)
        return m.ticket, int(m.expires_at)

    def sign_out(self, session: str) -> bool:
        """End the session at the consent service; False if it had ended already."""
        m = self._call(self._stub.SignOut, passkey_pb2.SessionRequest(session=session))
        return bool(m.ended)

    def passkey_active(self, org: str, credential_id: str) -> bool:
        """Whether ``org``'s passkey is still registered (for the services' ticket checks)."""
        m = self._call(
            self._stub.PasskeyStatus,
            passkey_pb2.PasskeyStatusRequest(org=org, credential_id=credential_id),
        )
        return bool(m.active)


def _signed(statement_json: str, assertion_json: str) -> passkey_pb2.SignedStatement:
    return passkey_pb2.SignedStatement(statement_json=statement_json, assertion_json=assertion_json)


class RemoteDelegationVerifier:
    """A service's checker of delegation tickets (consent/delegation.py), fed over gRPC by
    the consent service: its JWKS (cached, :class:`consent.verify.KeyCache`) and its
    answer whether a passkey is still registered (cached ``check_ttl_s``)."""

    def __init__(
        self,
        *,
        consent_address: str,
        tls: Any,
        server_org: str,
        issuer: str,
        audience: str,
        check_ttl_s: float = 30.0,
        insecure: bool = False,
    ) -> None:
        from fedcredit.consent.client import ConsentClient
        from fedcredit.consent.delegation import DelegationVerifier
        from fedcredit.consent.verify import KeyCache

        self._consent = ConsentClient(consent_address, tls, server_org=server_org, insecure=insecure)  # fmt: skip
        self._passkeys = PasskeyClient(consent_address, tls, server_org=server_org, insecure=insecure, timeout=5.0)  # fmt: skip
        keys = KeyCache(self._consent.jwks)
        self.verifier = DelegationVerifier(
            issuer=issuer, audience=audience, lookup=keys.lookup,
            passkey_active=self._passkeys.passkey_active, check_ttl_s=check_ttl_s,
        )  # fmt: skip

    def close(self) -> None:
        self._consent.close()
        self._passkeys.close()
