"""The portal's web layer (Starlette, Jinja2 templates, htmx; no inline script): the
sessions, the page and POST wrappers every route goes through.

Pages render on the server; the WebAuthn ceremonies and the proof checks run in
``static/portal.js``. Every POST checks the session's CSRF token first and changes
nothing without it; sign-in is rate-limited per client address and per organisation.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from fedcredit.common.errors import FedcreditError
from fedcredit.common.uscc import validate
from fedcredit.consent.terms import ConsentTerms
from fedcredit.portal import i18n
from fedcredit.portal.backend import Backend
from fedcredit.portal.batches import Jobs
from fedcredit.portal.jobstore import JobStore, WatchChecks
from fedcredit.portal.security import (
    SECURITY_HEADERS,
    BodyTooLarge,
    RateLimiter,
    Session,
    Sessions,
    csrf_ok,
    too_large_response,
)
from fedcredit.portal.settings import PortalSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
COOKIE = "fc_session"
HOME = {"enterprise": "/enterprise", "bank": "/bank", "auditor": "/audit", "operator": "/operator",
        "department": "/department"}  # fmt: skip
Handler = Callable[[Request], Awaitable[Response]]


class Portal:
    """The application and its state (sessions, limits, the services' clients)."""

    def __init__(
        self,
        settings: PortalSettings,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = Sessions(
            idle_s=settings.idle_timeout_s, absolute_s=settings.session_max_s, clock=clock
        )
        burst, rate = settings.signin_burst, settings.signin_per_minute
        self.by_address = RateLimiter(burst=burst, per_minute=rate)
        self.by_org = RateLimiter(burst=burst, per_minute=rate)
        # the banks' batch uploads (portal/bank_pages.py), kept in the portal's database when
        # it has one (``[portal] database``; a deployment always does)
        store = JobStore(settings.database) if settings.database else None
        self.jobs = Jobs(store=store)
        # each bank's last watch-list check (enterprise -> rating), to flag a downgrade at
        # the next one (kept in the same database: a restart does not forget it)
        self.watch_checks = WatchChecks(store)
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            # the templates ship with the package and do not change while serving: no
            # stat() of each template (and of each include) on every render
            auto_reload=False,
        )

    # --- sessions ---------------------------------------------------------------------

    def session(self, request: Request) -> tuple[Session, bool]:
        """The request's session (a new anonymous one if none) and whether one expired."""
        s, expired = self.sessions.get(request.cookies.get(COOKIE))
        if s is None:
            s = self.sessions.new()
        lang = request.query_params.get("lang")
        if lang in i18n.LANGS:
            s.lang = lang
        if expired:
            s.flash.append("session_expired")
        return s, expired

    def finish(self, response: Response, s: Session) -> Response:
        response.set_cookie(
            COOKIE, s.id, httponly=True, secure=True, samesite="strict", path="/",
            max_age=int(self.settings.session_max_s),
        )  # fmt: skip
        for k, v in SECURITY_HEADERS.items():
            response.headers[k] = v
        return response

    def render(
        self, request: Request, s: Session, template: str, *, status: int = 200, **ctx: Any
    ) -> Response:
        lang = s.lang
        flash = [i18n.tr(k, lang) if k in i18n.T else k for k in s.flash]
        s.flash.clear()
        html = self.env.get_template(template).render(
            t=lambda k: i18n.tr(k, lang),
            purpose=lambda p: i18n.word(i18n.PURPOSES, p, lang),
            state=lambda st: i18n.word(i18n.STATES, st, lang),
            category=lambda c: i18n.word(i18n.CATEGORIES, c, lang),
            node=lambda n: i18n.word(i18n.NODES, n, lang),
            when=_when,
            lang=lang,
            s=s,
            flash=flash,
            path=request.url.path,
            **ctx,
        )
        return self.finish(HTMLResponse(html, status), s)


def _when(ts: int | str | None) -> str:
    if not ts:
        return "—"
    if isinstance(ts, str):  # the ledger's RFC 3339 time
        return ts
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + " UTC"


async def form_or_json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
    return dict(await request.form())


def post(handler: Callable[[Portal, Request, Session, dict[str, Any]], Awaitable[Response]]) -> Handler:  # fmt: skip
    """A state-changing endpoint: the session's CSRF token first, then the handler; a
    service error becomes a JSON or page answer that names its reason and changes nothing."""

    async def endpoint(request: Request) -> Response:
        portal: Portal = request.app.state.portal
        s, _ = portal.session(request)
        try:
            data = await form_or_json(request)
        except BodyTooLarge as exc:  # refused unread (security.BodyLimit), nothing changed
            return too_large_response(exc)
        sent = request.headers.get("x-csrf-token") or str(data.get("csrf", ""))
        wants_json = "application/json" in request.headers.get("accept", "")
        if not csrf_ok(s, sent):
            msg = i18n.tr("csrf_failed", s.lang)
            if wants_json:
                return portal.finish(JSONResponse({"error": "CSRF_FAILED", "message": msg}, 403), s)  # fmt: skip
            return portal.finish(HTMLResponse(msg, 403), s)
        try:
            await keep_alive(portal, s)
            return await handler(portal, request, s, data)
        except FedcreditError as exc:
            body = {"error": exc.reason, "message": str(exc)}
            if exc.reason == "PASSKEY_SESSION_INVALID" and s.signed_in:  # ended there: here too
                s = ended(portal, s)
                status = 401
                if not wants_json:
                    return portal.finish(RedirectResponse("/signin", 303), s)
                return portal.finish(JSONResponse(body, status), s)
            status = 429 if exc.reason == "RATE_LIMITED" else 409 if "CHANGED" in exc.reason else 400  # fmt: skip
            if wants_json:
                return portal.finish(JSONResponse(body, status), s)
            s.flash.append(f"{i18n.tr('error', s.lang)}: {exc} — {i18n.tr('nothing_changed', s.lang)}")  # fmt: skip
            # back home (never to a Referer: that could name another site)
            return portal.finish(RedirectResponse("/", 303), s)

    return endpoint


def page(role: str | None = None) -> Callable[[Callable[[Portal, Request, Session], Awaitable[Response]]], Handler]:  # fmt: skip
    """A GET page; ``role``: only for organisations of this role (others go home)."""

    def wrap(fn: Callable[[Portal, Request, Session], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            portal: Portal = request.app.state.portal
            s, _ = portal.session(request)
            if role is not None and not s.signed_in:
                s.flash.append("need_sign_in")
                return portal.finish(RedirectResponse("/signin", 303), s)
            if role not in (None, "__any__") and s.role != role:
                s.flash.append("wrong_role")
                return portal.finish(RedirectResponse("/home", 303), s)
            t0 = time.perf_counter()
            waited = [0.0]
            SERVICE_WAIT.set(waited)
            try:
                await keep_alive(portal, s)
                resp = await fn(portal, request, s)
                # the page's server time (W3C Server Timing), read by bench/bench_portal.py:
                # all of it, and the part spent waiting for service calls
                resp.headers["Server-Timing"] = (
                    f"app;dur={(time.perf_counter() - t0) * 1000:.2f}, svc;dur={waited[0] * 1000:.2f}"
                )
                return resp
            except FedcreditError as exc:
                if exc.reason == "PASSKEY_SESSION_INVALID":
                    return portal.finish(RedirectResponse("/signin", 303), ended(portal, s))
                code = 400 if exc.code.name == "INVALID_ARGUMENT" else 403 if exc.code.name in ("PERMISSION_DENIED", "UNAUTHENTICATED") else 409 if exc.code.name == "FAILED_PRECONDITION" else 404 if exc.code.name == "NOT_FOUND" else 503  # fmt: skip
                return portal.render(request, s, "error.html", status=code, error=exc)

        return endpoint

    return wrap


def ended(portal: Portal, s: Session) -> Session:
    """The session ended at the consent service (signed out, idle, passkey removed): end
    it here too; a fresh anonymous one that says so."""
    portal.sessions.drop(s)
    s2 = portal.sessions.new(s.lang)
    s2.flash.append("session_expired")
    return s2


# Seconds a page has waited for its service calls so far (reported in its Server-Timing).
SERVICE_WAIT: contextvars.ContextVar[list[float]] = contextvars.ContextVar("service_wait")


async def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """A blocking gRPC call, off the event loop."""
    t0 = time.perf_counter()
    try:
        return await run_in_threadpool(fn, *args, **kw)
    finally:
        waited = SERVICE_WAIT.get(None)
        if waited is not None:
            waited[0] += time.perf_counter() - t0


RENEW_BEFORE_S = 60  # a delegation ticket is renewed this long before it expires
KEEP_ALIVE_S = 60.0  # a session in use here is shown to the consent service this often


async def keep_alive(portal: Portal, s: Session) -> None:
    """The consent service ends a session nobody used there for the portal's idle timeout
    (consent/passkeys.py); a person using pages that ask it nothing (batch progress, the
    auditor's pages) is still active: a cheap call now and then says so. A session that
    ended there raises PASSKEY_SESSION_INVALID (the page wrapper signs the person out)."""
    if not s.ticket or time.monotonic() - s.consent_seen < KEEP_ALIVE_S:
        return
    await call(portal.backend.passkeys.list_passkeys, s.ticket)
    s.consent_seen = time.monotonic()


async def delegation(portal: Portal, s: Session, service: str) -> str:
    """The session's delegation ticket for ``service`` (``ledger``, ``market``,
    ``coordinator``), renewed at the consent service when it is near its end: the consent
    service checks the session and its passkey again each time."""
    got = s.delegations.get(service)
    if got is None or got[1] - RENEW_BEFORE_S < time.time():
        audience = portal.backend.audiences.get(service, service)
        got = await call(portal.backend.passkeys.delegate, s.ticket, audience)
        s.delegations[service] = got
    return got[0]


def terms_from_form(bank: str, data: dict[str, Any]) -> ConsentTerms:
    """A bank's request form as terms; the consent service checks them again (caps,
    categories, nodes), this only refuses what is not even well formed."""
    from fedcredit.common.departments import PURPOSES
    from fedcredit.common.errors import InvalidArgument

    ent = str(data.get("enterprise", "")).strip()
    validate(ent)
    purpose = str(data.get("purpose", "credit_assessment"))
    if purpose not in PURPOSES:
        raise InvalidArgument(f"expected a purpose of {', '.join(PURPOSES)}, got {purpose!r}")
    scope = str(data.get("scope") or "score_only")

    def number(key: str, default: int) -> int:
        text = str(data.get(key, default)).strip()
        if not text.isdigit() or len(text) > 6:
            raise InvalidArgument(f"expected a whole number of at most 6 digits for {key}, got {text!r}")  # fmt: skip
        return int(text)

    return ConsentTerms(
        enterprise=ent,
        bank=bank,
        purpose=purpose,
        scope=[x.strip() for x in scope.split(",") if x.strip()],
        validity_days=number("validity_days", 30),
        max_uses=number("max_uses", 3),
        retention_days=number("retention_days", 30),
    )


def json_ok(portal: Portal, s: Session, body: dict[str, Any]) -> Response:
    return portal.finish(JSONResponse(body), s)


def dumps(obj: Any) -> str:
    """JSON for a ``<script type="application/json">`` block: ``<``, ``>`` and ``&`` escaped,
    so no entry's text can close the block (HTML: script data state)."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
