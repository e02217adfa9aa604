"""Passkeys (WebAuthn) at the consent service: an organisation's registered credentials,
the one-time enrol codes, the single-use challenges, and consent decisions the
enterprise signs with a passkey.

The portal relays ceremonies; it never holds a credential and cannot act without a fresh
assertion (it has no enterprise certificate either). Rules, in the order checked:

1. a challenge is issued here, stored by its nonce, valid for ``CHALLENGE_TTL_S`` and
   used at most once (consumed before the assertion is checked, so a replay fails even
   while the first use is in flight);
2. the statement handed back must be byte-for-byte the canonical JSON issued: its
   SHA-256 is the WebAuthn challenge (W3C WebAuthn Level 3 §13.4.3), so the assertion
   commits to the exact action and consent terms;
3. the assertion must verify (the ``webauthn`` library: RP id, origin, user presence
   and verification, signature, counter) against a passkey of the statement's
   organisation that is not removed;
4. a consent decision re-reads the consent: if its terms or state differ from the
   statement's, nothing changes (``PASSKEY_TERMS_CHANGED``);
5. the decision is made as the enterprise, and the consent event (the ledger entry)
   carries the SHA-256 of the assertion, the credential id and the statement's digest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from fedcredit.common.canonical import canonical_json
from fedcredit.common.db import create_schema
from fedcredit.common.errors import InvalidArgument, RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.common.uscc import validate
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.authority import ConsentAuthority
from fedcredit.consent.delegation import DELEGATION_TYP, STEP_UP_ACTIONS, ticket_claims
from fedcredit.consent.states import Action
from fedcredit.consent.terms import ConsentTerms, ConsentView

CHALLENGE_TTL_S = 300  # a person reads the terms, then touches the key
SESSION_MAX_S = 12 * 3600  # a ticket's absolute life; the portal's idle timeout is shorter
# A session nobody used for this long ends here too (the portal's ``idle_timeout_s`` from the
# deployment's [portal] table; its default): a session the portal forgot stays dead.
SESSION_IDLE_S = 900
SESSION_TOUCH_S = 5  # last_seen is written at most this often per session (fewer writes)
ENROL_MIN_S, ENROL_MAX_S = 60, 30 * 86400
# The services that accept delegated sessions and ask whether a passkey still stands.
CHECKER_ROLES = ("coordinator", "market", "ledger", "policy")
SIGN_IN_ROLES = ("enterprise", "bank", "department", "auditor", "operator")
DECISIONS = {
    "approve": Action.APPROVE,
    "reject": Action.REJECT,
    "pause": Action.PAUSE,
    "resume": Action.RESUME,
    "revoke": Action.REVOKE,
}
ACTIONS = ("sign_in", "add_passkey", "remove_passkey", "narrow", "issue_enrol_code", *DECISIONS, *STEP_UP_ACTIONS)  # fmt: skip
# Who may sign each step-up act (consent/delegation.py): the service that carries it out
# checks the role again; this refuses the statement before anyone is asked to sign it.
STEP_UP_ROLES = {"activate_model": "operator"}

metadata = MetaData()
credentials = Table(
    "passkey_credentials",
    metadata,
    Column("credential_id", String(1400), primary_key=True),  # base64url of <= 1,023 bytes
    Column("org", String(64), nullable=False, index=True),
    Column("role", String(32), nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("sign_count", Integer, nullable=False),
    Column("label", String(100), nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("last_used_at", Integer, nullable=False),
    Column("removed_at", Integer),
)
enrol_codes = Table(
    "passkey_enrol_codes",
    metadata,
    Column("code_sha256", String(64), primary_key=True),
    Column("org", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("used_at", Integer),
)
challenges = Table(
    "passkey_challenges",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("org", String(64), nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the statement (or challenge)
    Column("expires_at", Integer, nullable=False),
    Column("used_at", Integer),
    Column("data", Text, nullable=False),  # registration tickets: role, label, code hash
)
# One row per sign-in: the consent service's own record of a session, so that it ends here
# when the person signs out (SignOut), when nobody used it for ``session_idle_s``, and
# after SESSION_MAX_S; bound to the portal certificate that relayed the sign-in.
sessions = Table(
    "passkey_sessions",
    metadata,
    Column("sid", String(32), primary_key=True),  # random, in the HMAC'd ticket body
    Column("org", String(64), nullable=False, index=True),
    Column("portal_sha256", String(64), nullable=False),  # hex of the portal's certificate
    Column("created_at", Integer, nullable=False),
    Column("last_seen", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("ended_at", Integer),
)
secrets_table = Table(
    "passkey_secrets",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Passkey:
    credential_id: str
    org: str
    role: str
    label: str
    created_at: int
    last_used_at: int


@dataclass(frozen=True, slots=True)
class Verified:
    """An assertion that verified: who, with which passkey, over which statement."""

    statement: dict[str, Any]
    org: str
    role: str
    credential_id: str
    assertion_sha256: str
    statement_sha256: str
    portal_sha256: str = ""  # hex SHA-256 of the portal certificate that relayed it


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def consent_terms_of(v: ConsentView) -> dict[str, Any]:
    """The terms a consent statement commits to (what the enterprise reads and signs)."""
    return {
        "consent_id": v.consent_id,
        "enterprise": v.enterprise,
        "bank": v.bank,
        "purpose": v.purpose,
        "scope": sorted(v.scope),
        "nodes": sorted(v.nodes),
        "validity_days": v.validity_days,
        "max_uses": v.max_uses,
        "uses": v.uses,
        "retention_days": v.retention_days,
        "loan_term_days": v.loan_term_days,
        "state": v.state,
        "expires_at": v.expires_at,
    }


class PasskeyAuthority:
    """Passkeys and signed decisions over a :class:`ConsentAuthority`'s store.

    ``rp_id``: the WebAuthn relying-party id (the portal's host name); ``origins``: the
    portal origins an assertion may come from (``https://host:port``)."""

    def __init__(
        self,
        authority: ConsentAuthority,
        *,
        rp_id: str,
        origins: Sequence[str],
        rp_name: str = "fedcredit",
        clock: Callable[[], float] | None = None,
        session_idle_s: float = SESSION_IDLE_S,
    ) -> None:
        if not rp_id or not origins:
            raise InvalidArgument("passkeys need the portal's rp_id and at least one origin")
        self.authority = authority
        self.store = authority.store
        self.rp_id, self.rp_name, self.origins = rp_id, rp_name, list(origins)
        if not 1 <= session_idle_s <= SESSION_MAX_S:
            raise InvalidArgument(f"expected a session idle timeout of 1 s to {SESSION_MAX_S} s, got {session_idle_s}")  # fmt: skip
        self.session_idle_s = session_idle_s
        self._clock = clock or authority._clock
        create_schema(self.store.engine, metadata)
        self._session_key = self._secret("session")

    def now(self) -> int:
        return int(self._clock())

    def _secret(self, name: str) -> bytes:
        with self.store.begin() as conn:
            got = conn.execute(
                select(secrets_table.c.value).where(secrets_table.c.name == name)
            ).scalar()
            if got is None:
                got = secrets.token_bytes(32)
                conn.execute(insert(secrets_table).values(name=name, value=got))
        with self.store.begin() as conn:  # another process may have won the race
            value = conn.execute(
                select(secrets_table.c.value).where(secrets_table.c.name == name)
            ).scalar_one()
        return bytes(value)

    # --- enrol codes -------------------------------------------------------------------

    def check_org_role(self, org: str, role: str) -> None:
        if role not in SIGN_IN_ROLES:
            raise InvalidArgument(f"role {role!r} cannot sign in; expected one of {SIGN_IN_ROLES}")
        if role == "enterprise":
            validate(org)
        elif (
            role == "bank" and self.authority.banks is not None and org not in self.authority.banks
        ):
            raise InvalidArgument(f"{org!r} is not a bank of this deployment")
        elif role == "department" and org not in self.authority.node_categories:
            raise InvalidArgument(f"{org!r} is not a department node of this deployment")

    def issue_enrol_code(self, actor: Identity, org: str, role: str, expires_in_s: int) -> tuple[str, int]:  # fmt: skip
        """A one-time code for ``org``'s first passkey (the operator only): (code, expires_at)."""
        if actor.role != "operator":
            raise RoleNotAllowed(f"only the operator issues enrol codes; you are {actor.role}")
        self.check_org_role(org, role)
        if not ENROL_MIN_S <= expires_in_s <= ENROL_MAX_S:
            raise InvalidArgument(
                f"expected an enrol code lifetime of {ENROL_MIN_S} s to {ENROL_MAX_S // 86400} "
                f"days, got {expires_in_s} s"
            )
        code = base64.b32encode(secrets.token_bytes(15)).decode().rstrip("=")
        expires_at = self.now() + expires_in_s
        with self.store.begin() as conn:
            conn.execute(
                insert(enrol_codes).values(
                    code_sha256=_sha(code.encode()), org=org, role=role, expires_at=expires_at
                )
            )
        return code, expires_at

    def issue_enrol_code_signed(self, v: Verified) -> tuple[str, int, str, str]:
        """An enrol code the operator signed for from the portal: (code, expires_at, org, role)."""
        if v.statement["action"] != "issue_enrol_code":
            raise P.StatementInvalid(f"expected an issue_enrol_code statement, got {v.statement['action']}")  # fmt: skip
        e = v.statement["enrol"]
        code, exp = self.issue_enrol_code(Identity(v.org, v.role, b""), e["org"], e["role"], e["expires_in_s"])  # fmt: skip
        return code, exp, e["org"], e["role"]

    def _code(self, org: str, code: str) -> tuple[str, str]:
        """(code hash, role) of a usable code for ``org``; one refusal for every failure."""
        h = _sha(code.strip().upper().encode())
        with self.store.begin() as conn:
            row = conn.execute(select(enrol_codes).where(enrol_codes.c.code_sha256 == h)).first()
        if row is None or row.org != org or row.used_at is not None or row.expires_at < self.now():
            raise P.EnrolCodeInvalid(
                f"this enrol code is not valid for {org} (unknown, used or expired); ask the "
                "operator for a new one"
            )
        return h, row.role

    # --- challenges ------------------------------------------------------------------------

    def _store_challenge(self, nonce: str, org: str, digest: str, data: dict[str, Any]) -> None:
        with self.store.begin() as conn:
            if secrets.randbelow(64) == 0:  # now and then: forget challenges long expired
                conn.execute(
                    delete(challenges).where(challenges.c.expires_at < self.now() - CHALLENGE_TTL_S)
                )
            conn.execute(
                insert(challenges).values(
                    nonce=nonce,
                    org=org,
                    digest=digest,
                    expires_at=self.now() + CHALLENGE_TTL_S,
                    data=json.dumps(data),
                )
            )

    def _consume(self, nonce: str, digest: str, kind: str = "") -> dict[str, Any]:
        """Mark challenge ``nonce`` used (once); its data. Checks 1 and 2."""
        now = self.now()
        with self.store.begin() as conn:
            n = conn.execute(
                update(challenges)
                .where(
                    challenges.c.nonce == nonce,
                    challenges.c.digest == digest,
                    challenges.c.used_at.is_(None),
                    challenges.c.expires_at >= now,
                )
                .values(used_at=now)
            ).rowcount
            row = conn.execute(select(challenges.c.data).where(challenges.c.nonce == nonce)).first()
        if n != 1 or row is None or (kind and json.loads(row.data).get("kind") != kind):
            raise P.ChallengeInvalid(
                "this signing request was not issued here, was used already or has expired "
                f"(they last {CHALLENGE_TTL_S} s); start again"
            )
        data: dict[str, Any] = json.loads(row.data)
        return data

    def _passkeys(self, org: str) -> list[Any]:
        with self.store.begin() as conn:
            return list(
                conn.execute(
                    select(credentials).where(
                        credentials.c.org == org, credentials.c.removed_at.is_(None)
                    )
                )
            )

    def challenge(self, actor: Identity, org: str, action: str, **params: Any) -> tuple[str, str]:
        """A statement for ``org`` to sign and the WebAuthn request options over it."""
        _portal(actor)
        if action not in ACTIONS:
            raise P.StatementInvalid(f"expected an action of {', '.join(ACTIONS)}, got {action!r}")
        keys = self._passkeys(org)
        if not keys:
            raise P.NoPasskey(f"{org} has no passkey; enrol one with the operator's code")
        if action in STEP_UP_ROLES and keys[0].role != STEP_UP_ROLES[action]:
            raise RoleNotAllowed(f"only an {STEP_UP_ROLES[action]} signs {action}; {org} is {keys[0].role}")  # fmt: skip
        now = self.now()
        st: dict[str, Any] = {
            "v": 1,
            "action": action,
            "org": org,
            "role": keys[0].role,
            "rp_id": self.rp_id,
            "nonce": secrets.token_hex(16),
            "issued_at": now,
            "expires_at": now + CHALLENGE_TTL_S,
        }
        st.update(self._action_fields(org, action, params))
        body = canonical_json(st)
        digest = hashlib.sha256(body).digest()
        self._store_challenge(st["nonce"], org, digest.hex(), {"kind": "assert"})
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=digest,
            allow_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(k.credential_id)) for k in keys
            ],
            user_verification=UserVerificationRequirement.REQUIRED,
            timeout=CHALLENGE_TTL_S * 1000,
        )
        return body.decode(), options_to_json(options)

    def _action_fields(self, org: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        if action in DECISIONS or action == "narrow":
            view = self.authority.get(_enterprise(org), str(params.get("consent_id", "")))
            out: dict[str, Any] = {"consent": consent_terms_of(view)}
            if action in ("reject", "revoke"):
                out["reason"] = str(params.get("reason", ""))[:500]
            if action == "narrow":
                out["remove_categories"] = sorted(params.get("remove_categories") or [])
                out["remove_nodes"] = sorted(params.get("remove_nodes") or [])
                if not out["remove_categories"] and not out["remove_nodes"]:
                    raise P.StatementInvalid("say which categories or nodes to remove")
            return out
        if action == "remove_passkey":
            return {"credential_id": str(params.get("credential_id", ""))}
        if action == "activate_model":
            return {"model": _model_terms(params)}
        if action == "issue_enrol_code":
            org_, role_ = str(params.get("enrol_org", "")), str(params.get("enrol_role", ""))
            self.check_org_role(org_, role_)
            enrol = {"org": org_, "role": role_, "expires_in_s": int(params.get("enrol_expires_in_s") or 0)}  # fmt: skip
            return {"enrol": enrol}
        return {}

    # --- verification ------------------------------------------------------------------------

    def verify(self, actor: Identity, statement_json: str, assertion_json: str) -> Verified:
        """Checks 1-3 of the module docstring; the statement and who signed it."""
        _portal(actor)
        body = statement_json.encode()
        st = _parse_statement(body)
        digest = hashlib.sha256(body)
        self._consume(str(st["nonce"]), digest.hexdigest(), "assert")
        cred_id = _credential_id(assertion_json)
        row = next((k for k in self._passkeys(st["org"]) if k.credential_id == cred_id), None)
        if row is None:
            raise P.AssertionInvalid(f"the passkey used is not one of {st['org']}'s passkeys")
        try:
            checked = verify_authentication_response(
                credential=assertion_json,
                expected_challenge=digest.digest(),
                expected_rp_id=self.rp_id,
                expected_origin=self.origins,
                credential_public_key=bytes(row.public_key),
                credential_current_sign_count=row.sign_count,
                require_user_verification=True,
            )
        except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError) as exc:
            raise P.AssertionInvalid(f"the passkey assertion does not verify: {exc}") from None
        with self.store.begin() as conn:
            conn.execute(
                update(credentials)
                .where(credentials.c.credential_id == cred_id)
                .values(sign_count=checked.new_sign_count, last_used_at=self.now())
            )
        return Verified(
            st, st["org"], row.role, cred_id, _sha(assertion_json.encode()), digest.hexdigest(),
            actor.cert_sha256.hex(),
        )  # fmt: skip

    # --- registration ---------------------------------------------------------------------------

    def begin_registration(
        self, actor: Identity, org: str, *, code: str = "", authorised_by: Verified | None = None,
        label: str = "",
    ) -> tuple[str, str]:  # fmt: skip
        """(ticket, creation options) for a new passkey of ``org``."""
        _portal(actor)
        if authorised_by is not None:
            if authorised_by.statement["action"] != "add_passkey" or authorised_by.org != org:
                raise P.StatementInvalid("adding a passkey needs a signed add_passkey statement")
            code_hash, role = "", authorised_by.role
        else:
            code_hash, role = self._code(org, code)
        existing = self._passkeys(org)
        ticket = secrets.token_hex(16)
        challenge = secrets.token_bytes(32)
        label = (label.strip() or f"passkey {len(existing) + 1}")[:100]
        self._store_challenge(
            ticket,
            org,
            challenge.hex(),
            {"kind": "register", "role": role, "label": label, "code": code_hash},
        )
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_name=org,
            user_id=hashlib.sha256(b"fedcredit-user:" + org.encode()).digest()[:16],
            challenge=challenge,
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(k.credential_id))
                for k in existing
            ],
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            timeout=CHALLENGE_TTL_S * 1000,
        )
        return ticket, options_to_json(options)

    def finish_registration(self, actor: Identity, ticket: str, credential_json: str) -> Passkey:
        _portal(actor)
        with self.store.begin() as conn:
            row = conn.execute(select(challenges).where(challenges.c.nonce == ticket)).first()
        if row is None:
            raise P.ChallengeInvalid("unknown registration ticket; start again")
        data = self._consume(ticket, row.digest, "register")
        try:
            reg = verify_registration_response(
                credential=credential_json,
                expected_challenge=bytes.fromhex(row.digest),
                expected_rp_id=self.rp_id,
                expected_origin=self.origins,
                require_user_verification=True,
            )
        except (InvalidRegistrationResponse, ValueError, KeyError, TypeError) as exc:
            raise P.RegistrationInvalid(f"the new passkey does not verify: {exc}") from None
        now = self.now()
        if len(reg.credential_id) > 1023:  # W3C WebAuthn: credential ids are at most 1,023 bytes
            raise P.RegistrationInvalid(f"expected a credential id of at most 1,023 bytes, got {len(reg.credential_id)}")  # fmt: skip
        cred_id = bytes_to_base64url(reg.credential_id)
        with self.store.begin() as conn:
            if data["code"]:
                used = conn.execute(
                    update(enrol_codes)
                    .where(
                        enrol_codes.c.code_sha256 == data["code"], enrol_codes.c.used_at.is_(None)
                    )
                    .values(used_at=now)
                ).rowcount
                if used != 1:
                    raise P.EnrolCodeInvalid("this enrol code was used meanwhile")
            if conn.execute(select(credentials.c.org).where(credentials.c.credential_id == cred_id)).first():  # fmt: skip
                raise P.RegistrationInvalid("this passkey is registered already")
            conn.execute(
                insert(credentials).values(
                    credential_id=cred_id, org=row.org, role=data["role"],
                    public_key=reg.credential_public_key, sign_count=reg.sign_count,
                    label=data["label"], created_at=now, last_used_at=now,
                )
            )  # fmt: skip
        return Passkey(cred_id, row.org, data["role"], data["label"], now, now)

    def list_passkeys(self, org: str) -> list[Passkey]:
        return [
            Passkey(k.credential_id, k.org, k.role, k.label, k.created_at, k.last_used_at)
            for k in self._passkeys(org)
        ]

    def remove_passkey(self, v: Verified) -> list[Passkey]:
        if v.statement["action"] != "remove_passkey":
            raise P.StatementInvalid("removing a passkey needs a signed remove_passkey statement")
        target = v.statement["credential_id"]
        keys = self._passkeys(v.org)
        if target not in {k.credential_id for k in keys}:
            raise P.NoPasskey(f"{v.org} has no passkey {target!r}")
        if len(keys) == 1:
            raise P.LastPasskey("this is the last passkey; add another before removing it")
        with self.store.begin() as conn:
            conn.execute(
                update(credentials)
                .where(credentials.c.credential_id == target, credentials.c.org == v.org)
                .values(removed_at=self.now())
            )
        return self.list_passkeys(v.org)

    # --- sessions --------------------------------------------------------------------------------

    def sign_in(self, v: Verified) -> tuple[str, int]:
        """A session ticket (HMAC over a session id, org, role, passkey and expiry) for a
        signed sign_in; the session is recorded here, bound to the relaying portal."""
        if v.statement["action"] != "sign_in":
            raise P.StatementInvalid(f"expected a sign_in statement, got {v.statement['action']}")
        now = self.now()
        exp, sid = now + SESSION_MAX_S, secrets.token_hex(16)
        with self.store.begin() as conn:
            if secrets.randbelow(64) == 0:  # now and then: forget sessions long over
                conn.execute(delete(sessions).where(sessions.c.expires_at < now - SESSION_MAX_S))
            conn.execute(
                insert(sessions).values(
                    sid=sid, org=v.org, portal_sha256=v.portal_sha256, created_at=now,
                    last_seen=now, expires_at=exp,
                )
            )  # fmt: skip
        body = canonical_json({"sid": sid, "org": v.org, "role": v.role, "cred": v.credential_id, "exp": exp})  # fmt: skip
        mac = hmac.new(self._session_key, body, hashlib.sha256).digest()
        return f"{bytes_to_base64url(body)}.{bytes_to_base64url(mac)}", exp

    def session(self, actor: Identity, ticket: str) -> tuple[str, str]:
        """(org, role) of a valid session ticket whose passkey is still registered."""
        claims = self._session_claims(actor, ticket)
        return str(claims["org"]), str(claims["role"])

    def _ticket_claims(self, actor: Identity, ticket: str) -> dict[str, Any]:
        """The claims of a ticket this service issued (HMAC), unexpired; no session check."""
        _portal(actor)
        try:
            b64, mac_b64 = ticket.split(".")
            body, mac = base64url_to_bytes(b64), base64url_to_bytes(mac_b64)
            good = hmac.compare_digest(mac, hmac.new(self._session_key, body, hashlib.sha256).digest())  # fmt: skip
            claims = json.loads(body) if good else None
        except (ValueError, TypeError):
            claims = None
        if not isinstance(claims, dict) or not isinstance(claims.get("sid"), str) or claims.get("exp", 0) < self.now():  # fmt: skip
            raise P.SessionInvalid("the session ticket is not valid or has expired; sign in again")
        return claims

    def _session_claims(self, actor: Identity, ticket: str) -> dict[str, Any]:
        claims = self._ticket_claims(actor, ticket)
        now = self.now()
        with self.store.begin() as conn:
            row = conn.execute(select(sessions).where(sessions.c.sid == claims["sid"])).first()
            if row is None or row.ended_at is not None:
                raise P.SessionInvalid("this session was signed out; sign in again")
            if row.portal_sha256 != actor.cert_sha256.hex():
                raise P.SessionInvalid("this session was opened through another portal; sign in here")  # fmt: skip
            if now - row.last_seen > self.session_idle_s:
                raise P.SessionInvalid(f"this session ended after {self.session_idle_s:.0f} s idle; sign in again")  # fmt: skip
            if now - row.last_seen >= SESSION_TOUCH_S:
                conn.execute(update(sessions).where(sessions.c.sid == row.sid).values(last_seen=now))  # fmt: skip
        if claims["cred"] not in {k.credential_id for k in self._passkeys(claims["org"])}:
            raise P.SessionInvalid("the passkey of this session was removed; sign in again")
        return claims

    def sign_out(self, actor: Identity, ticket: str) -> bool:
        """End a session here (the portal's sign-out): no ticket, consent list or token is
        issued for it again. True if it was live, False if it had ended already."""
        claims = self._ticket_claims(actor, ticket)
        with self.store.begin() as conn:
            n = conn.execute(
                update(sessions)
                .where(
                    sessions.c.sid == claims["sid"],
                    sessions.c.portal_sha256 == actor.cert_sha256.hex(),
                    sessions.c.ended_at.is_(None),
                )
                .values(ended_at=self.now())
            ).rowcount
        return bool(n == 1)

    # --- delegated sessions (consent/delegation.py) -----------------------------------------

    def delegate(
        self, actor: Identity, ticket: str, audience: str, step_up: Verified | None = None
    ) -> tuple[str, int]:
        """A short-lived delegation ticket for ``audience``, for the organisation of a valid
        session (signed in with a passkey that is still registered), bound to the calling
        portal's certificate; (ticket, expires_at). ``step_up``: a verified assertion over a
        step-up act by the same organisation: the ticket carries that act (``act``) and
        lives 60 s (consent/delegation.py)."""
        claims = self._session_claims(actor, ticket)
        if not audience or len(audience) > 64 or not audience.replace("-", "").replace("_", "").replace(".", "").isalnum():  # fmt: skip
            raise InvalidArgument(f"expected a service's organisation id as audience, got {audience[:64]!r}")  # fmt: skip
        org, role = str(claims["org"]), str(claims["role"])
        org_cert = self.authority.bank_certs(org) if role == "bank" and self.authority.bank_certs else None  # fmt: skip
        if role == "bank" and org_cert is None:
            raise P.WrongOrganisation(f"the deployment has no certificate for bank {org}")
        body = ticket_claims(
            issuer=self.authority.settings.issuer, org=org, role=role, audience=audience,
            passkey=str(claims["cred"]), portal_cert_sha256=actor.cert_sha256,
            org_cert_sha256=org_cert, now=self.now(), act=_step_up_act(step_up, org, role),
        )  # fmt: skip
        return self.authority.keyring.signer().sign(body, typ=DELEGATION_TYP), int(body["exp"])

    def passkey_active(self, actor: Identity, org: str, credential_id: str) -> bool:
        """Whether ``org``'s passkey ``credential_id`` is registered (not removed): asked by
        the services that accept delegated sessions, never by the portal itself."""
        if actor.role not in CHECKER_ROLES:
            raise RoleNotAllowed(f"passkey status is for the services {CHECKER_ROLES}; you are {actor.role}")  # fmt: skip
        return credential_id in {k.credential_id for k in self._passkeys(org)}

    def token_for_bank(self, actor: Identity, ticket: str, consent_id: str) -> ConsentView:
        """A bank's consent token fetched from its portal session: bound to the bank's own
        certificate (as a direct fetch would be), never to the portal's."""
        org, role = self.session(actor, ticket)
        if role != "bank":
            raise RoleNotAllowed(f"only a bank fetches consent tokens; {org} is {role}")
        cert = self.authority.bank_certs(org) if self.authority.bank_certs else None
        if cert is None:
            raise P.WrongOrganisation(f"the deployment has no certificate for bank {org}")
        return self.authority.token(Identity(org, "bank", cert), consent_id)

    # --- decisions ----------------------------------------------------------------------------------

    def decide(self, v: Verified) -> tuple[ConsentView, ConsentView | None]:
        """Checks 4 and 5: carry out the signed consent decision as the enterprise."""
        st = v.statement
        action = st["action"]
        if action not in DECISIONS and action != "narrow":
            raise P.StatementInvalid(f"expected a consent decision, got {action!r}")
        if v.role != "enterprise":
            raise RoleNotAllowed(f"only an enterprise decides on its consents; {v.org} is {v.role}")
        me = _enterprise(v.org)
        cid = st["consent"]["consent_id"]
        if consent_terms_of(self.authority.get(me, cid)) != st["consent"]:
            raise P.TermsChanged(f"consent {cid} changed after this was signed; review it again")
        extra = {
            "via": "portal",
            "passkey_credential": v.credential_id,
            "passkey_assertion_sha256": v.assertion_sha256,
            "statement_sha256": v.statement_sha256,
        }
        if action == "narrow":
            return self.authority.lifecycle.narrow(
                me, cid, remove_categories=st["remove_categories"],
                remove_nodes=st["remove_nodes"], **extra,
            )  # fmt: skip
        if action in ("reject", "revoke") and st.get("reason"):
            extra["reason"] = st["reason"]
        return self.authority.lifecycle.transition(me, cid, DECISIONS[action], **extra), None

    def request_for_bank(self, actor: Identity, ticket: str, terms: ConsentTerms) -> ConsentView:
        """A bank's consent request made from its portal session, bound to its certificate."""
        org, role = self.session(actor, ticket)
        if role != "bank":
            raise RoleNotAllowed(f"only a bank requests consent; {org} is {role}")
        cert = self.authority.bank_certs(org) if self.authority.bank_certs else None
        if cert is None:
            raise P.WrongOrganisation(f"the deployment has no certificate for bank {org}")
        return self.authority.request(Identity(org, "bank", cert, via="portal"), terms)

    def list_consents(self, actor: Identity, ticket: str, states: Sequence[str]) -> list[ConsentView]:  # fmt: skip
        org, role = self.session(actor, ticket)
        if role not in ("enterprise", "bank"):
            raise RoleNotAllowed(f"{role} {org} has no consents")
        return self.authority.list_consents(Identity(org, role, b""), states=states)


def portal_origins(section: Any) -> tuple[str, list[str]] | None:
    """(rp_id, origins) from a deployment's ``[portal]`` table (None: no portal).

    ``rp_id`` defaults to ``localhost``; ``origins`` to the portal's own address under
    that host name (``https://`` with ``tls = true``, else ``http://``)."""
    if not isinstance(section, dict) or "address" not in section:
        return None
    rp_id = str(section.get("rp_id", "localhost"))
    origins = section.get("origins")
    if origins is None:
        port = str(section["address"]).rpartition(":")[2]
        scheme = "https" if section.get("tls") else "http"
        origins = [f"{scheme}://{rp_id}:{port}"]
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise InvalidArgument(f"[portal] origins must be a list of origins, got {origins!r}")
    return rp_id, origins


def _model_terms(params: dict[str, Any]) -> dict[str, str]:
    """An activate_model statement's terms: the version to activate and the one it replaces."""
    version, replaces = str(params.get("model_version", "")), str(params.get("model_replaces", ""))
    if not version or len(version) > 128 or len(replaces) > 128:
        raise P.StatementInvalid(f"expected a model version (1 to 128 characters) and the active one, got {version[:40]!r}")  # fmt: skip
    return {"version": version, "replaces": replaces}


def _step_up_act(v: Verified | None, org: str, role: str) -> dict[str, Any] | None:
    """The ``act`` claim of a step-up ticket: the signed act, by the session's organisation."""
    if v is None:
        return None
    action = v.statement["action"]
    if action not in STEP_UP_ACTIONS:
        raise P.StatementInvalid(f"expected a step-up statement ({', '.join(STEP_UP_ACTIONS)}), got {action}")  # fmt: skip
    if v.org != org or v.role != role or role != STEP_UP_ROLES[action]:
        raise P.WrongOrganisation(f"the {action} statement was signed by {v.org} ({v.role}), not by the session's {STEP_UP_ROLES[action]}")  # fmt: skip
    return {
        "action": action, "terms": v.statement["model"], "passkey": v.credential_id,
        "statement_sha256": v.statement_sha256, "assertion_sha256": v.assertion_sha256,
    }  # fmt: skip


def _portal(actor: Identity) -> None:
    if actor.role != "portal":
        raise RoleNotAllowed(f"only the portal relays passkey ceremonies; you are {actor.role}")


def _enterprise(org: str) -> Identity:
    return Identity(org, "enterprise", b"")


def _parse_statement(body: bytes) -> dict[str, Any]:
    try:
        st = json.loads(body)
    except ValueError:
        st = None
    if not isinstance(st, dict) or canonical_json(st) != body:
        raise P.StatementInvalid("expected the statement exactly as issued (canonical JSON)")
    if st.get("v") != 1 or st.get("action") not in ACTIONS or not isinstance(st.get("nonce"), str):
        raise P.StatementInvalid("the statement is not a version-1 statement of a known action")
    return st


def _credential_id(assertion_json: str) -> str:
    try:
        doc = json.loads(assertion_json)
        cred = doc["rawId"] if isinstance(doc, dict) else None
    except (ValueError, KeyError):
        cred = None
    if not isinstance(cred, str) or not cred:
        raise P.AssertionInvalid("expected a WebAuthn assertion (JSON with rawId)")
    return cred
