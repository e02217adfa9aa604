"""Sessions, CSRF tokens, sign-in rate limits and the security headers.

Sessions live on the server (the cookie carries a random id only): HttpOnly, Secure,
SameSite=Strict, an idle timeout and an absolute one. Every visitor gets a session
before signing in, so the sign-in and enrol forms carry a CSRF token too; signing in
replaces the session id (no fixation). CSRF tokens are per session, compared in constant
time, and required on every state-changing request (form field ``csrf`` or header
``X-CSRF-Token``, which htmx sends).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedcredit.common.errors import InvalidArgument

# Content-Security-Policy: scripts and styles from the portal only, no inline code, no
# framing, forms post to the portal only (W3C CSP Level 3).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}


@dataclass
class Session:
    id: str
    csrf: str
    created: float
    seen: float
    lang: str = "zh"
    org: str = ""
    role: str = ""
    credential_id: str = ""
    ticket: str = ""  # the consent service's session ticket (never sent to the browser)
    # delegation tickets per service (consent/delegation.py): (ticket, expires_at)
    delegations: dict[str, tuple[str, int]] = field(default_factory=dict)
    flash: list[str] = field(default_factory=list)
    # the last answers shown on the bank's pages (score, guarantee, watch check)
    data: dict[str, Any] = field(default_factory=dict)
    # per-ceremony state: registration ticket, the statement being signed
    pending: dict[str, str] = field(default_factory=dict)
    # when the consent service last saw this session (time.monotonic): it ends a session
    # idle there on its own (web.keep_alive keeps a session in use alive there too)
    consent_seen: float = 0.0

    @property
    def signed_in(self) -> bool:
        return bool(self.org)


# Every visitor gets a session before signing in (for the sign-in form's CSRF token), so
# a spray of cookie-less requests makes sessions: at most this many anonymous ones are
# kept, the oldest forgotten first (a signed-in session is never evicted by them).
MAX_ANONYMOUS_SESSIONS = 20_000


class Sessions:
    """The portal's sessions, in memory (a restart signs everyone out)."""

    def __init__(
        self, *, idle_s: float, absolute_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.idle_s, self.absolute_s, self.clock = idle_s, absolute_s, clock
        self._by_id: dict[str, Session] = {}
        self._anonymous: OrderedDict[str, None] = OrderedDict()  # ids, oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self, lang: str = "zh") -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now, lang)
        with self._lock:
            self._sweep(now)
            self._by_id[s.id] = s
            self._anonymous[s.id] = None
            while len(self._anonymous) > MAX_ANONYMOUS_SESSIONS:
                old, _ = self._anonymous.popitem(last=False)
                self._by_id.pop(old, None)
        return s

    def get(self, sid: str | None) -> tuple[Session | None, bool]:
        """(the live session, whether a session of this id just expired)."""
        if not sid:
            return None, False
        now = self.clock()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None, False
            if now - s.seen > self.idle_s or now - s.created > self.absolute_s:
                del self._by_id[sid]
                self._anonymous.pop(sid, None)
                return None, s.signed_in
            s.seen = now
            return s, False

    def rotate(self, s: Session) -> Session:
        """The same session under a new id and CSRF token (after signing in)."""
        with self._lock:
            self._by_id.pop(s.id, None)
            self._anonymous.pop(s.id, None)  # signed in from now on: never evicted
            s.id, s.csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            s.created = s.seen = self.clock()
            self._by_id[s.id] = s
        return s

    def drop(self, s: Session) -> None:
        with self._lock:
            self._by_id.pop(s.id, None)
            self._anonymous.pop(s.id, None)

    def _sweep(self, now: float) -> None:
        if len(self._by_id) % 256 == 0:
            for sid in [k for k, v in self._by_id.items() if now - v.seen > self.idle_s]:
                del self._by_id[sid]
                self._anonymous.pop(sid, None)


def csrf_ok(s: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(s.csrf.encode(), (sent or "").encode())


class RateLimiter:
    """Token buckets per key (client address, organisation): ``burst`` attempts, refilled
    at ``per_minute``; ``allow`` answers (allowed, seconds until the next attempt)."""

    def __init__(
        self, *, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.rate, self.clock = burst, per_minute / 60.0, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, int]:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False, max(1, int((1.0 - tokens) / self.rate) + 1)
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # bounded memory under a spray of keys
                self._buckets.clear()
            return True, 0


# The largest request body the portal reads: a batch CSV (2 MiB) or a policy application's
# attachments (1 MB) with their multipart framing. Checked before anything is parsed (and
# so before the CSRF check, which may need the form): a bigger body is refused unread.
MAX_BODY_BYTES = 3 * 1024 * 1024


class BodyTooLarge(InvalidArgument):
    """A request body over :data:`MAX_BODY_BYTES` (HTTP 413); nothing was read or changed."""

    reason = "PORTAL_REQUEST_TOO_LARGE"


def _too_large(got: str) -> BodyTooLarge:
    return BodyTooLarge(f"expected a request body of at most {MAX_BODY_BYTES:,} bytes, got {got}")


def too_large_response(exc: BodyTooLarge) -> JSONResponse:
    return JSONResponse({"error": exc.reason, "message": exc.message}, 413, headers=SECURITY_HEADERS)  # fmt: skip


class BodyLimit:
    """ASGI middleware: a declared ``Content-Length`` over the limit is answered 413 at
    once; an undeclared (chunked) body raises :class:`BodyTooLarge` from ``receive`` as
    soon as it passes the limit, which the POST wrapper answers the same way."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared and (not declared.isdigit() or int(declared) > self.max_bytes):
            got = f"{int(declared):,}" if declared.isdigit() else f"{declared[:20]!r}"
            await too_large_response(_too_large(got))(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _too_large(f"more ({seen:,} so far)")
            return msg

        await self.app(scope, limited, send)
