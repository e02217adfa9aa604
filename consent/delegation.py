"""Delegated sessions: how a service lets the portal act for a signed-in organisation
without the portal holding any power of its own.

The consent service, and only it, issues a **delegation ticket** after a verified passkey
sign-in (PasskeyService ``Delegate``, called with the portal's session ticket, which it
checks, passkey still registered included). The ticket is a compact JWS (RFC 7515),
EdDSA (RFC 8037), header ``typ`` = ``delegation+jwt`` (explicit typing, RFC 8725 §3.11:
signed with the consent service's published keys, the same JWKS as consent tokens, and
neither ever passes for the other: each verifier demands its own ``typ``). Claims:

``iss``          the consent service's issuer (as in consent tokens);
``sub``          the organisation signed in; ``role`` its role (enterprise, bank, ...);
``aud``          the one service it is for (that service's organisation id);
``passkey``      the credential id of the passkey the person signed in with;
``cnf``          ``{"x5t#S256": ...}`` the portal's certificate thumbprint (RFC 8705 §3.1):
                 only a call on the portal's own mTLS channel may carry it;
``org_x5t#S256`` a bank's own certificate thumbprint as the consent service knows it,
                 so the bank's consent tokens (bound to that certificate) hold for it;
``iat``/``nbf``/``exp``  a short life, :data:`TICKET_TTL_S`; ``jti`` a random id;
``act``          (step-up tickets only) the one act a fresh passkey assertion signed for:
                 ``{"action", "terms", "passkey", "statement_sha256", "assertion_sha256"}``
                 (an operator's ``activate_model`` with ``terms`` ``{"version",
                 "replaces"}``); such a ticket lives :data:`STEP_UP_TTL_S` and is spent by
                 its first use (:meth:`DelegationVerifier.spend`).

A service receiving a call from the portal's certificate (:func:`acting`) acts as the
named organisation only when the ticket in metadata :data:`METADATA_KEY` verifies here:
signature against the consent JWKS, ``typ``, ``iss``, ``exp`` (60 s leeway), ``aud`` =
this service, ``cnf`` = the caller's certificate, role allowed for the call; then the
passkey is asked after through the consent service's client (``PasskeyStatus``), the
answer cached for :data:`PASSKEY_CHECK_TTL_S`, so a removed passkey stops working within
that time (and every ticket within :data:`TICKET_TTL_S` in any case). Without a ticket the
portal's certificate has only its own narrow rights. Each refusal has its own reason
(``DELEGATION_*``, consent/passkey_errors.py).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from fedcredit.common.errors import FedcreditError, RoleNotAllowed
from fedcredit.common.tls import DELEGATION_METADATA_KEY, Identity
from fedcredit.consent import errors as E
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.token import check_header, decode_segment, decode_signature, split_jws

DELEGATION_TYP = "delegation+jwt"
METADATA_KEY = DELEGATION_METADATA_KEY
TICKET_TTL_S = 300  # short: a removed passkey or a signed-out person stops acting soon
STEP_UP_TTL_S = 60  # a step-up ticket is asked for right before its one act
STEP_UP_ACTIONS = ("activate_model",)  # the acts a sign-in alone does not authorise
PASSKEY_CHECK_TTL_S = 30.0  # how long a service trusts "this passkey is still registered"
LEEWAY_S = 60  # clock skew allowed on iat/nbf/exp
PORTAL_ROLE = "portal"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Delegation:
    """A verified ticket: who the portal acts for, with which passkey."""

    org: str
    role: str
    passkey: str
    org_cert_sha256: bytes  # a bank's own certificate thumbprint (b"" for other roles)
    jti: str
    expires_at: int
    act: dict[str, Any] | None = None  # a step-up ticket's signed act (module docstring)

    def identity(self) -> Identity:
        """The organisation, as the service treats its own callers (``via`` the portal)."""
        return Identity(self.org, self.role, self.org_cert_sha256, via=PORTAL_ROLE)


def ticket_claims(
    *,
    issuer: str,
    org: str,
    role: str,
    audience: str,
    passkey: str,
    portal_cert_sha256: bytes,
    org_cert_sha256: bytes | None,
    now: int,
    ttl_s: int = TICKET_TTL_S,
    act: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims of one ticket (the consent service signs them with ``typ`` above);
    ``act``: a step-up ticket's signed act (its life then :data:`STEP_UP_TTL_S` at most)."""
    if act is not None:
        ttl_s = min(ttl_s, STEP_UP_TTL_S)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": org,
        "role": role,
        "aud": audience,
        "passkey": passkey,
        "cnf": {"x5t#S256": b64url(portal_cert_sha256)},
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": secrets.token_hex(16),
    }
    if org_cert_sha256:
        claims["org_x5t#S256"] = b64url(org_cert_sha256)
    if act is not None:
        claims["act"] = act
    return claims


def _str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > 1400:
        raise P.DelegationMalformed(f"expected claim {name} as a non-empty string, got {value!r:.60}")  # fmt: skip
    return value


def _int(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise P.DelegationMalformed(f"expected claim {name} as a whole number, got {value!r:.40}")
    return value


def _thumb(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise P.DelegationMalformed("expected a SHA-256 certificate thumbprint (base64url)")
    return raw


class DelegationVerifier:
    """Checks tickets for one service (``audience``: its organisation id).

    ``lookup``: kid -> public key (:class:`consent.verify.KeyCache.lookup`);
    ``passkey_active``: (org, credential id) -> still registered, asked of the consent
    service (:meth:`consent.passkey_client.PasskeyClient.passkey_active`)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        lookup: Callable[[str], Any],
        passkey_active: Callable[[str, str], bool],
        check_ttl_s: float = PASSKEY_CHECK_TTL_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer, self.audience = issuer, audience
        self._lookup, self._active = lookup, passkey_active
        self.check_ttl_s, self._clock, self._monotonic = check_ttl_s, clock, monotonic
        self._checked: dict[tuple[str, str], float] = {}
        self._spent: dict[str, int] = {}  # step-up tickets used: jti -> exp
        self._lock = threading.Lock()

    def spend(self, d: Delegation) -> None:
        """Mark a step-up ticket used: its act is carried out once (in this process; the act
        itself is a compare-and-set too, so a replay elsewhere finds its terms stale)."""
        now = int(self._clock())
        with self._lock:
            if d.jti in self._spent:
                raise P.StepUpReplayed(f"this signed {d.act and d.act.get('action')} was used already; sign again")  # fmt: skip
            if len(self._spent) > 10_000:  # bounded: forget tickets past their life
                self._spent = {j: e for j, e in self._spent.items() if e + LEEWAY_S >= now}
            self._spent[d.jti] = d.expires_at

    def verify(self, ticket: str, caller: Identity) -> Delegation:
        claims = self._signed_claims(ticket)
        now = int(self._clock())
        if _str(claims, "iss") != self.issuer:
            raise P.DelegationSignatureInvalid(f"expected issuer {self.issuer!r}, got {claims['iss']!r:.80}")  # fmt: skip
        exp, nbf, iat = _int(claims, "exp"), _int(claims, "nbf"), _int(claims, "iat")
        if exp + LEEWAY_S < now:
            raise P.DelegationExpired(f"the delegated session expired at {exp} (now {now}); sign in again")  # fmt: skip
        if nbf - LEEWAY_S > now or iat - LEEWAY_S > now:
            raise P.DelegationExpired(
                f"the delegated session is not valid before {nbf} (now {now})"
            )
        if not 0 < exp - iat <= TICKET_TTL_S:  # RFC 8725 §3.10: the issuer's own bound, checked
            raise P.DelegationMalformed(f"expected a ticket life of at most {TICKET_TTL_S} s, got exp - iat = {exp - iat}")  # fmt: skip
        if claims.get("aud") != self.audience:
            raise P.DelegationWrongAudience(
                f"expected a ticket for {self.audience!r}, got one for {claims.get('aud')!r:.80}"
            )
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not isinstance(bound, str) or bound != caller.x5t_s256:
            raise P.DelegationWrongHolder(
                "the ticket is bound to another certificate than the caller's (RFC 8705 §3)"
            )
        org, role, passkey = _str(claims, "sub"), _str(claims, "role"), _str(claims, "passkey")
        org_cert = claims.get("org_x5t#S256")
        d = Delegation(org, role, passkey, _thumb(org_cert) if isinstance(org_cert, str) else b"",
                       _str(claims, "jti"), exp, _act(claims))  # fmt: skip
        self._check_passkey(org, passkey)
        return d

    def _signed_claims(self, ticket: str) -> dict[str, Any]:
        try:
            h64, p64, s64 = split_jws(ticket)
            kid = check_header(decode_segment(h64, "header"), typ=DELEGATION_TYP)
            claims = decode_segment(p64, "payload")
            sig = decode_signature(s64)
        except FedcreditError as exc:
            raise P.DelegationMalformed(f"not a delegation ticket: {exc.message}") from None
        try:
            key = self._lookup(kid)
        except E.KeysUnavailable as exc:  # the consent service is out of reach: fail closed
            raise P.DelegationUnverifiable(f"the consent service's keys are unavailable: {exc.message}") from None  # fmt: skip
        except FedcreditError as exc:
            raise P.DelegationSignatureInvalid(f"the ticket's key {kid!r} is not usable: {exc.message}") from None  # fmt: skip
        if not key.verifier.verify(sig, f"{h64}.{p64}".encode("ascii")):
            raise P.DelegationSignatureInvalid("the ticket's signature does not verify (forged or altered)")  # fmt: skip
        return claims

    def _check_passkey(self, org: str, passkey: str) -> None:
        now = self._monotonic()
        with self._lock:
            at = self._checked.get((org, passkey))
        if at is not None and now - at < self.check_ttl_s:
            return
        try:
            active = self._active(org, passkey)
        except FedcreditError as exc:
            raise P.DelegationUnverifiable(
                f"could not ask the consent service whether the passkey is registered: {exc.message}"
            ) from None
        if not active:
            with self._lock:
                self._checked.pop((org, passkey), None)
            raise P.DelegationPasskeyRemoved(
                f"the passkey {org} signed in with has been removed; sign in again"
            )
        with self._lock:
            if len(self._checked) > 50_000:  # bounded memory
                self._checked.clear()
            self._checked[(org, passkey)] = now


def _act(claims: dict[str, Any]) -> dict[str, Any] | None:
    act = claims.get("act")
    if act is None:
        return None
    if not isinstance(act, dict) or act.get("action") not in STEP_UP_ACTIONS or not isinstance(act.get("terms"), dict):  # fmt: skip
        raise P.DelegationMalformed(f"expected claim act as a signed act of {STEP_UP_ACTIONS}, got {act!r:.80}")  # fmt: skip
    if _int(claims, "exp") - _int(claims, "iat") > STEP_UP_TTL_S:
        raise P.DelegationMalformed(f"expected a step-up ticket life of at most {STEP_UP_TTL_S} s")
    return act


def step_up(d: Delegation | None, action: str, **must: str) -> dict[str, Any]:
    """The signed act of a step-up ticket when it is ``action`` and its terms hold each of
    ``must`` (an activation's ``version``, say); else the refusal naming why (no step-up;
    another act or other terms)."""
    if d is None or d.act is None:
        raise P.StepUpRequired(
            f"{action} through the portal needs a fresh passkey assertion naming it "
            "(a step-up ticket); a signed-in session alone is not enough"
        )
    terms = d.act["terms"]
    if d.act.get("action") != action or any(terms.get(k) != v for k, v in must.items()):
        got = f"{d.act.get('action')} of {terms!r:.200}"
        raise P.StepUpMismatch(f"expected a signed {action} of {must}, got {got}")
    return d.act


def ticket_from(metadata: Any) -> str:
    """The ticket in a call's invocation metadata ("" if none)."""
    for k, v in metadata or ():
        if k == METADATA_KEY and isinstance(v, str):
            return v
    return ""


def acting(
    caller: Identity,
    metadata: Any,
    verifier: DelegationVerifier | None,
    roles: Collection[str],
    what: str,
) -> Identity:
    """Who a call acts as: the caller itself, or for the portal's certificate the
    organisation its ticket names (and only then, and only in ``roles``)."""
    return acting_delegation(caller, metadata, verifier, roles, what)[0]


def acting_delegation(
    caller: Identity,
    metadata: Any,
    verifier: DelegationVerifier | None,
    roles: Collection[str],
    what: str,
) -> tuple[Identity, Delegation | None]:
    """:func:`acting`, with the verified ticket (None: the caller's own certificate)."""
    if caller.role != PORTAL_ROLE:
        if caller.role not in roles:
            raise RoleNotAllowed(
                f"{what} is for role(s) {', '.join(sorted(roles))}; the caller {caller.org_id} has role {caller.role}",
                role=caller.role,
            )
        return caller, None
    ticket = ticket_from(metadata)
    if not ticket:
        raise P.DelegationMissing(
            f"{what}: the portal acts for someone only with a delegated session ({METADATA_KEY}); "
            "its certificate alone has no such right"
        )
    if verifier is None:
        raise P.DelegationMissing(f"{what}: this service accepts no delegated sessions (no consent service configured)")  # fmt: skip
    d = verifier.verify(ticket, caller)
    who = d.identity()
    if who.role not in roles:
        raise RoleNotAllowed(
            f"{what} is for role(s) {', '.join(sorted(roles))}; {who.org_id} signed in as {who.role}",
            role=who.role,
        )
    return who, d


def unverified_claims(ticket: str) -> dict[str, Any]:
    """The claims without any check (the portal reads ``exp`` to know when to renew)."""
    try:
        out = json.loads(base64.urlsafe_b64decode(ticket.split(".")[1] + "=="))
    except (ValueError, IndexError):
        return {}
    return out if isinstance(out, dict) else {}
