"""The portal's routes: sign-in and enrolment, the enterprise's consents and access log,
passkey management, the bank's desk, and a home for the other roles."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from fedcredit.common.errors import FedcreditError, InvalidArgument, ResourceExhausted
from fedcredit.common.wire import VIA_VALUES
from fedcredit.portal.security import Session
from fedcredit.portal.web import (
    HOME,
    Portal,
    call,
    delegation,
    dumps,
    json_ok,
    page,
    post,
    terms_from_form,
)

log = logging.getLogger(__name__)


class RateLimited(ResourceExhausted):
    reason = "RATE_LIMITED"


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


# --- public pages -----------------------------------------------------------------------


@page()
async def index(portal: Portal, request: Request, s: Session) -> Response:
    target = HOME.get(s.role, "/home") if s.signed_in else "/signin"
    return portal.finish(RedirectResponse(target, 303), s)


@page()
async def signin_page(portal: Portal, request: Request, s: Session) -> Response:
    return portal.render(request, s, "signin.html")


@page()
async def enrol_page(portal: Portal, request: Request, s: Session) -> Response:
    return portal.render(request, s, "enrol.html")


@page("__any__")
async def home(portal: Portal, request: Request, s: Session) -> Response:
    return portal.render(request, s, "home.html")


# --- sign-in and enrolment ------------------------------------------------------------------


@post
async def signin_begin(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    org = str(data.get("org", "")).strip()
    if not org:
        raise InvalidArgument("enter your organisation id")
    for limiter, key in ((portal.by_address, _client(request)), (portal.by_org, org)):
        ok, wait = limiter.allow(key)
        if not ok:
            raise RateLimited(f"too many sign-in attempts; try again in {wait} s", retry_after_s=wait)  # fmt: skip
    st, options = await call(portal.backend.passkeys.challenge, org, "sign_in")
    s.pending["statement"] = st
    return json_ok(portal, s, {"statement": st, "options": options})


@post
async def signin_finish(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    st = s.pending.pop("statement", "")
    got = await call(portal.backend.passkeys.sign_in, st, str(data.get("assertion", "")))
    s = portal.sessions.rotate(s)
    s.org, s.role, s.credential_id, s.ticket = got.org, got.role, got.credential_id, got.ticket
    s.consent_seen = time.monotonic()
    return json_ok(portal, s, {"redirect": HOME.get(s.role, "/home")})


@post
async def enrol_begin(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    org = str(data.get("org", "")).strip()
    ok, wait = portal.by_address.allow(_client(request))
    if not ok:
        raise RateLimited(f"too many attempts; try again in {wait} s", retry_after_s=wait)
    ticket, options = await call(
        portal.backend.passkeys.begin_registration,
        org,
        enrol_code=str(data.get("code", "")),
        label=str(data.get("label", "")),
    )
    s.pending["ticket"] = ticket
    return json_ok(portal, s, {"options": options})


@post
async def enrol_finish(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    ticket = s.pending.pop("ticket", "")
    await call(portal.backend.passkeys.finish_registration, ticket, str(data.get("credential", "")))  # fmt: skip
    s.flash.append("enrolled")
    return json_ok(portal, s, {"redirect": "/passkeys" if s.signed_in else "/signin"})


@post
async def signout(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    portal.sessions.drop(s)
    if s.ticket:  # end it at the consent service too: the ticket buys nothing from now on
        try:
            await call(portal.backend.passkeys.sign_out, s.ticket)
        except FedcreditError as exc:  # signed out here anyway; it ends there when idle
            log.warning("the consent service did not end %s's session: %s", s.org, exc)
        s.ticket, s.delegations = "", {}
    s2 = portal.sessions.new(s.lang)
    s2.flash.append("signed_out")
    return portal.finish(RedirectResponse("/signin", 303), s2)


# --- signed statements (consent decisions, passkeys) ------------------------------------------


@post
async def challenge(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    if not s.signed_in:
        raise InvalidArgument("sign in first")
    cats = data.get("remove_categories") or []
    st, options = await call(
        portal.backend.passkeys.challenge,
        s.org,
        str(data.get("action", "")),
        consent_id=str(data.get("consent_id", "")),
        remove_categories=[str(c) for c in cats] if isinstance(cats, list) else [str(cats)],
        reason=str(data.get("reason", "")),
        credential_id=str(data.get("credential_id", "")),
        enrol_org=str(data.get("enrol_org", "")),
        enrol_role=str(data.get("enrol_role", "")),
        enrol_expires_in_s=_seconds(data.get("enrol_expires", "")),
        model_version=str(data.get("model_version", "")),
        model_replaces=str(data.get("model_replaces", "")),
    )
    s.pending["statement"] = st
    return json_ok(portal, s, {"statement": st, "options": options})


@post
async def decide(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    st = s.pending.pop("statement", "")
    assertion = str(data.get("assertion", ""))
    view, repl, digest = await call(portal.backend.passkeys.decide, st, assertion)
    return json_ok(
        portal,
        s,
        {"state": view.state, "assertion_sha256": digest, "redirect": "/enterprise",
         "replacement": repl.consent_id if repl else None},
    )  # fmt: skip


@post
async def passkey_add(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    st = s.pending.pop("statement", "")
    ticket, options = await call(
        portal.backend.passkeys.begin_registration,
        s.org,
        authorised_by=(st, str(data.get("assertion", ""))),
        label=str(data.get("label", "")),
    )
    s.pending["ticket"] = ticket
    return json_ok(portal, s, {"options": options})


@post
async def passkey_remove(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    st = s.pending.pop("statement", "")
    await call(portal.backend.passkeys.remove_passkey, st, str(data.get("assertion", "")))
    return json_ok(portal, s, {"redirect": "/passkeys"})


# --- role pages ---------------------------------------------------------------------------------


@page("enterprise")
async def enterprise(portal: Portal, request: Request, s: Session) -> Response:
    consents = await call(portal.backend.passkeys.list_consents, s.ticket)
    pending = [c for c in consents if c.state == "PENDING"]
    return portal.render(request, s, "enterprise.html", pending=pending, consents=consents)


@page("enterprise")
async def access(portal: Portal, request: Request, s: Session) -> Response:
    got = await call(portal.backend.entries_about, s.org, await delegation(portal, s, "ledger"))
    rows = [access_row(e) for e in got.entries]
    proofs = dumps({"checkpoint": got.checkpoint, "tree_size": got.tree_size,
                    "log_key": got.log_key, "entries": got.entries})  # fmt: skip
    return portal.render(request, s, "access.html", rows=rows, proofs=proofs, cp=got)


def access_row(e: dict[str, Any]) -> dict[str, Any]:
    """One ledger entry as the enterprise reads it: what happened, by whom, when (the
    page verifies the entry's bytes; this is only the label)."""
    try:
        body = json.loads(e["data"])
    except ValueError:
        body = {}
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
    kind = str(body.get("kind", "?"))
    what = f"{kind}: {payload['event']}" if kind == "consent_event" and "event" in payload else kind
    if kind == "score_access" and "rating" in payload:
        what += f" ({payload['rating']})"
    who = payload.get("bank") if kind == "score_access" else payload.get("actor")
    # how the act reached the service ("portal": a person's session there), as ledgered;
    # the nodes' disclosure entries for a score carry the same (node/disclosure.py)
    via = payload.get("via") if payload.get("via") in VIA_VALUES else ""
    return {**e, "kind": what, "actor": who or body.get("actor", "?"), "via": via,
            "at": body.get("time") or payload.get("at")}  # fmt: skip


@page("__any__")
async def passkeys(portal: Portal, request: Request, s: Session) -> Response:
    keys = await call(portal.backend.passkeys.list_passkeys, s.ticket)
    return portal.render(request, s, "passkeys.html", keys=keys)


@page("bank")
async def bank(portal: Portal, request: Request, s: Session) -> Response:
    consents = await call(portal.backend.passkeys.list_consents, s.ticket)
    return portal.render(request, s, "bank.html", consents=consents)


@page("bank")
async def bank_rows(portal: Portal, request: Request, s: Session) -> Response:
    """The bank's consent rows (htmx refreshes them every few seconds)."""
    consents = await call(portal.backend.passkeys.list_consents, s.ticket)
    return portal.render(request, s, "_bank_rows.html", consents=consents)


@post
async def bank_request(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    if s.role != "bank":
        raise InvalidArgument("only a bank requests consent")
    await call(portal.backend.passkeys.request_consent, s.ticket, terms_from_form(s.org, data))
    s.flash.append("requested")
    return portal.finish(RedirectResponse("/bank", 303), s)


async def healthz(request: Request) -> Response:
    """Liveness for `fedcredit up`/`status` (no session, no service call)."""
    return PlainTextResponse("ok")


def _seconds(text: Any) -> int:
    """``30m``, ``12h``, ``7d`` or seconds; 0 when empty (the consent service refuses it)."""
    from fedcredit.portal.durations import parse_duration

    return parse_duration(str(text)) if str(text).strip() else 0


@page("operator")
async def operator(portal: Portal, request: Request, s: Session) -> Response:
    return portal.render(request, s, "operator.html")


@post
async def operator_enrol(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    """An enrol code the operator signed for with a passkey (shown once, to the operator)."""
    st = s.pending.pop("statement", "")
    got = await call(portal.backend.passkeys.issue_enrol_code_signed, st, str(data.get("assertion", "")))  # fmt: skip
    return json_ok(portal, s, {"org": got.org, "role": got.role, "code": got.code, "expires_at": got.expires_at})  # fmt: skip


ROUTES = [
    Route("/healthz", healthz),
    Route("/", index),
    Route("/signin", signin_page),
    Route("/enrol", enrol_page),
    Route("/home", home),
    Route("/signin/begin", signin_begin, methods=["POST"]),
    Route("/signin/finish", signin_finish, methods=["POST"]),
    Route("/enrol/begin", enrol_begin, methods=["POST"]),
    Route("/enrol/finish", enrol_finish, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
    Route("/challenge", challenge, methods=["POST"]),
    Route("/decide", decide, methods=["POST"]),
    Route("/passkeys/add", passkey_add, methods=["POST"]),
    Route("/passkeys/remove", passkey_remove, methods=["POST"]),
    Route("/enterprise", enterprise),
    Route("/enterprise/access", access),
    Route("/passkeys", passkeys),
    Route("/bank", bank),
    Route("/bank/consents", bank_rows),
    Route("/operator", operator),
    Route("/operator/enrol", operator_enrol, methods=["POST"]),
    Route("/bank/request", bank_request, methods=["POST"]),
]
