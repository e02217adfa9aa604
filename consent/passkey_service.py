"""gRPC PasskeyService, served by the consent server beside ConsentService: a thin layer
over :class:`consent.passkeys.PasskeyAuthority` (the caller is always its certificate)."""

from __future__ import annotations

from typing import Any

from fedcredit.common.rpc import handle_errors
from fedcredit.common.tls import peer_identity
from fedcredit.consent.passkeys import Passkey, PasskeyAuthority
from fedcredit.consent.wire import consent_to_pb, terms_from_pb
from fedcredit.v1 import consent_pb2, passkey_pb2, passkey_pb2_grpc

SERVICE_NAME = passkey_pb2.DESCRIPTOR.services_by_name["PasskeyService"].full_name


def _info(p: Passkey) -> passkey_pb2.PasskeyInfo:
    return passkey_pb2.PasskeyInfo(
        org=p.org,
        role=p.role,
        credential_id=p.credential_id,
        label=p.label,
        created_at=p.created_at,
        last_used_at=p.last_used_at,
    )


class PasskeyServicer(passkey_pb2_grpc.PasskeyServiceServicer):
    def __init__(self, passkeys: PasskeyAuthority) -> None:
        self.passkeys = passkeys

    @handle_errors
    def IssueEnrolCode(self, request: Any, context: Any) -> passkey_pb2.EnrolCode:
        code, exp = self.passkeys.issue_enrol_code(
            peer_identity(context), request.org, request.role, request.expires_in_s
        )
        return passkey_pb2.EnrolCode(org=request.org, role=request.role, code=code, expires_at=exp)

    @handle_errors
    def BeginRegistration(self, request: Any, context: Any) -> passkey_pb2.RegistrationOptions:
        actor = peer_identity(context)
        by = None
        if request.HasField("authorised_by"):
            a = request.authorised_by
            by = self.passkeys.verify(actor, a.statement_json, a.assertion_json)
        ticket, options = self.passkeys.begin_registration(
            actor, request.org, code=request.enrol_code, authorised_by=by, label=request.label
        )
        return passkey_pb2.RegistrationOptions(ticket=ticket, options_json=options)

    @handle_errors
    def FinishRegistration(self, request: Any, context: Any) -> passkey_pb2.PasskeyInfo:
        p = self.passkeys.finish_registration(
            peer_identity(context), request.ticket, request.credential_json
        )
        return _info(p)

    @handle_errors
    def Challenge(self, request: Any, context: Any) -> passkey_pb2.Statement:
        st, options = self.passkeys.challenge(
            peer_identity(context),
            request.org,
            request.action,
            consent_id=request.consent_id,
            remove_categories=list(request.remove_categories),
            remove_nodes=list(request.remove_nodes),
            reason=request.reason,
            credential_id=request.credential_id,
            enrol_org=request.enrol_org,
            enrol_role=request.enrol_role,
            enrol_expires_in_s=request.enrol_expires_in_s,
            model_version=request.model_version,
            model_replaces=request.model_replaces,
        )
        return passkey_pb2.Statement(statement_json=st, options_json=options)

    @handle_errors
    def SignIn(self, request: Any, context: Any) -> passkey_pb2.SignInResult:
        v = self.passkeys.verify(
            peer_identity(context), request.statement_json, request.assertion_json
        )
        ticket, exp = self.passkeys.sign_in(v)
        return passkey_pb2.SignInResult(
            org=v.org,
            role=v.role,
            credential_id=v.credential_id,
            session=ticket,
            session_expires_at=exp,
        )

    @handle_errors
    def Decide(self, request: Any, context: Any) -> passkey_pb2.Decision:
        v = self.passkeys.verify(
            peer_identity(context), request.statement_json, request.assertion_json
        )
        view, replacement = self.passkeys.decide(v)
        out = passkey_pb2.Decision(consent=consent_to_pb(view), assertion_sha256=v.assertion_sha256)
        if replacement is not None:
            out.replacement.CopyFrom(consent_to_pb(replacement))
        return out

    @handle_errors
    def ListConsents(self, request: Any, context: Any) -> consent_pb2.ListConsentsResponse:
        views = self.passkeys.list_consents(
            peer_identity(context),
            request.session,
            [consent_pb2.ConsentState.Name(s) for s in request.states],
        )
        return consent_pb2.ListConsentsResponse(consents=[consent_to_pb(v) for v in views])

    @handle_errors
    def ListPasskeys(self, request: Any, context: Any) -> passkey_pb2.PasskeyList:
        org, _role = self.passkeys.session(peer_identity(context), request.session)
        return passkey_pb2.PasskeyList(
            passkeys=[_info(p) for p in self.passkeys.list_passkeys(org)]
        )

    @handle_errors
    def RemovePasskey(self, request: Any, context: Any) -> passkey_pb2.PasskeyList:
        v = self.passkeys.verify(
            peer_identity(context), request.statement_json, request.assertion_json
        )
        return passkey_pb2.PasskeyList(passkeys=[_info(p) for p in self.passkeys.remove_passkey(v)])

    @handle_errors
    def IssueEnrolCodeSigned(self, request: Any, context: Any) -> passkey_pb2.EnrolCode:
        v = self.passkeys.verify(
            peer_identity(context), request.statement_json, request.assertion_json
        )
        code, exp, org, role = self.passkeys.issue_enrol_code_signed(v)
        return passkey_pb2.EnrolCode(org=org, role=role, code=code, expires_at=exp)

    @handle_errors
    def RequestConsent(self, request: Any, context: Any) -> consent_pb2.Consent:
        view = self.passkeys.request_for_bank(
            peer_identity(context), request.session, terms_from_pb(request.terms)
        )
        return consent_to_pb(view)

    @handle_errors
    def GetBankToken(self, request: Any, context: Any) -> consent_pb2.Token:
        view = self.passkeys.token_for_bank(peer_identity(context), request.session, request.consent_id)  # fmt: skip
        return consent_pb2.Token(consent=consent_to_pb(view), token=view.token or "")

    @handle_errors
    def Delegate(self, request: Any, context: Any) -> passkey_pb2.DelegationTicket:
        actor = peer_identity(context)
        step_up = None
        if request.HasField("step_up"):  # a fresh assertion over the one act the ticket is for
            s = request.step_up
            step_up = self.passkeys.verify(actor, s.statement_json, s.assertion_json)
        ticket, exp = self.passkeys.delegate(actor, request.session, request.audience, step_up)
        return passkey_pb2.DelegationTicket(ticket=ticket, expires_at=exp)

    @handle_errors
    def PasskeyStatus(self, request: Any, context: Any) -> passkey_pb2.PasskeyStatusReply:
        active = self.passkeys.passkey_active(peer_identity(context), request.org, request.credential_id)  # fmt: skip
        return passkey_pb2.PasskeyStatusReply(active=active)

    @handle_errors
    def SignOut(self, request: Any, context: Any) -> passkey_pb2.SignOutReply:
        return passkey_pb2.SignOutReply(ended=self.passkeys.sign_out(peer_identity(context), request.session))  # fmt: skip
