"""A verifier fed over gRPC by the consent service, with pushed status changes.

It fetches the JWKS and the signed status list with :class:`ConsentClient`,
caches both with their TTLs, and keeps a ``WatchStatus`` stream open in a
daemon thread: every revocation arrives as a new signed status list within
milliseconds, and the verifier refuses the token from then on. A broken
stream (an error, the server ending it, or silence past ``stall_s``) is
reopened with back-off and logged; meanwhile the TTL refetch still applies,
and after the list's own ``exp`` the verifier fails closed. The service's
heartbeats re-send the list re-signed with a later ``exp`` (same ``seq``),
which the cache adopts, so a list nobody changes never expires under a
verifier that can reach the service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from fedcredit.clients.consent_client import ConsentClient
from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import TlsFiles
from fedcredit.consent import errors as E
from fedcredit.consent.verify import ConsentVerifier, KeyCache, StatusCache, UseCounter

log = logging.getLogger(__name__)

# Reopening a broken status stream: exponential back-off between these bounds.
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
# The service sends the list at least every consent.service.HEARTBEAT_MAX_S (10 s);
# a stream silent for this long is presumed dead and reopened.
STALL_S = 30.0
# Tokens per RecordUses call: the service's default `max_uses_batch`.
MAX_USES_PER_CALL = 1000


class RemoteUseCounter:
    """Counts uses at the consent service (RecordUse), atomically with revocation."""

    def __init__(self, client: ConsentClient) -> None:
        self.client = client
        self._exhausted: set[str] = set()

    def use(self, jti: str, max_uses: int, expires_at: int) -> int:
        try:
            return self.client.record_use(jti)
        except E.UsesExhausted:
            self._exhausted.add(jti)
            raise

    def use_many(self, items: Sequence[tuple[str, int, int]]) -> list[int | FedcreditError]:
        """One RecordUses call per ``MAX_USES_PER_CALL`` tokens."""
        out: list[int | FedcreditError] = []
        for i in range(0, len(items), MAX_USES_PER_CALL):
            chunk = [jti for jti, _, _ in items[i : i + MAX_USES_PER_CALL]]
            for jti, r in zip(chunk, self.client.record_uses(chunk), strict=True):
                if isinstance(r, E.UsesExhausted):
                    self._exhausted.add(jti)
                out.append(r)
        return out

    def check(self, jti: str, max_uses: int) -> None:
        # Only what this process learnt; counting happens where count_use=True.
        if jti in self._exhausted:
            raise E.UsesExhausted(
                f"consent {jti} allows {max_uses} uses and all have been used", jti=jti
            )


class RemoteVerifier(ConsentVerifier):
    def __init__(
        self,
        *,
        consent_address: str,
        tls: TlsFiles,
        server_org: str,
        issuer: str,
        jwks_ttl: float = 300.0,
        status_ttl: float = 60.0,
        min_refresh_interval: float = 10.0,
        leeway: int = 30,
        counter: UseCounter | None = None,
        subscribe: bool = True,
        insecure: bool = False,
        clock: Any = time.time,
        stall_s: float = STALL_S,
    ) -> None:
        self.client = ConsentClient(consent_address, tls, server_org=server_org, insecure=insecure)
        keys = KeyCache(
            self.client.jwks, ttl=jwks_ttl, min_refresh_interval=min_refresh_interval, clock=clock
        )
        status = StatusCache(
            self.client.status_list_token,
            keys,
            uri=f"{issuer}/statuslists/1",
            issuer=issuer,
            max_ttl=status_ttl,
            clock=clock,
        )
        super().__init__(
            issuer=issuer,
            keys=keys,
            status=status,
            counter=counter if counter is not None else RemoteUseCounter(self.client),
            leeway=leeway,
            clock=clock,
        )
        self._stop = threading.Event()
        self._cancel: Any = None
        self._lock = threading.Lock()
        self._last_msg = time.monotonic()
        self.stall_s = stall_s
        self.reconnects = 0  # streams reopened after a break (for tests and logs)
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        if subscribe:
            self._thread = threading.Thread(
                target=self._watch, name="consent-status-watch", daemon=True
            )
            self._thread.start()
            self._watchdog = threading.Thread(
                target=self._guard, name="consent-status-watchdog", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        backoff = BACKOFF_MIN_S
        failures = 0
        while not self._stop.is_set():
            received = 0
            try:
                items, cancel = self.client.watch_status(after_seq=self.status.seq)
                with self._lock:
                    self._cancel = cancel
                    self._last_msg = time.monotonic()
                if self._stop.is_set():
                    cancel()  # close() ran before the call could be cancelled
                for msg in items:
                    if self._stop.is_set():
                        break
                    with self._lock:
                        self._last_msg = time.monotonic()
                    self.status.offer(msg.token)
                    if received == 0 and failures:
                        log.info(
                            "status stream from the consent service re-established after %d "
                            "attempt(s)",
                            failures,
                        )
                    received += 1
                    failures = 0
                    self.connected.set()
                    backoff = BACKOFF_MIN_S
                if not self._stop.is_set():
                    # A server shutting down, or our watchdog cancelling a silent stream.
                    log.warning("status stream from the consent service ended; reopening it")
            except FedcreditError as exc:
                log.warning("status stream from the consent service broke: %s", exc)
            except Exception:
                log.exception("status stream failed")
            with self._lock:
                self._cancel = None
            self.connected.clear()
            if self._stop.is_set():
                break
            failures += 1
            self.reconnects += 1
            log.info("reopening the status stream in %.1f s", backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _guard(self) -> None:
        """Cancel a stream that went silent (the service heartbeats at least every 10 s).

        A half-open connection raises nothing; without this the stream would hang
        forever and only the on-demand TTL refetch would keep the list fresh.
        """
        period = max(0.05, min(1.0, self.stall_s / 4))
        while not self._stop.wait(period):
            with self._lock:
                cancel, silent = self._cancel, time.monotonic() - self._last_msg
            if cancel is not None and silent > self.stall_s:
                log.warning(
                    "status stream from the consent service silent for %.1f s; reopening it",
                    silent,
                )
                with self._lock:
                    self._last_msg = time.monotonic()
                cancel()

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """True once the push stream delivered its first list."""
        return self.connected.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            cancel = self._cancel
        if cancel is not None:
            cancel()
        for t in (self._thread, self._watchdog):
            if t is not None:
                t.join(timeout=2)
        self.client.close()
