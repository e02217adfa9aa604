"""What a verifier fed over gRPC needs from the consent service, besides the JWKS and the
signed status list it fetches with :class:`ConsentClient`: use counting at the service
and the pushed status changes (:func:`consent.verify.remote_verifier` assembles them).

:class:`StatusWatch` keeps a ``WatchStatus`` stream open in a daemon thread: every
revocation arrives as a new signed status list within milliseconds, and the verifier
refuses the token from then on. A broken stream (an error, the server ending it, or
silence past ``stall_s``) is reopened with back-off and logged; meanwhile the TTL
refetch still applies, and after the list's own ``exp`` the verifier fails closed. The
service's heartbeats re-send the list re-signed with a later ``exp`` (same ``seq``),
which the cache adopts, so a list nobody changes never expires under a verifier that
can reach the service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from fedcredit.common.errors import FedcreditError
from fedcredit.consent import errors as E
from fedcredit.consent.client import AsyncConsentClient, ConsentClient
from fedcredit.consent.useref import Reservation, UseRef

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
    """A :class:`consent.verify.UseCounter` counting at the consent service (RecordUse,
    RecordUses), atomically there with revocation."""

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

    def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """One ReserveUses call per ``MAX_USES_PER_CALL`` tokens; raises (fail closed)
        when the consent service cannot answer."""
        out: list[Reservation | FedcreditError] = []
        for i in range(0, len(refs), MAX_USES_PER_CALL):
            out += self.client.reserve_uses(use_id, refs[i : i + MAX_USES_PER_CALL], pin=pin)
        return out

    def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        for i in range(0, len(refs), MAX_USES_PER_CALL):
            self.client.settle_uses(use_id, refs[i : i + MAX_USES_PER_CALL], commit=commit)

    def check(self, jti: str, max_uses: int) -> None:
        # Only what this process learnt; counting happens where count_use=True.
        if jti in self._exhausted:
            raise E.UsesExhausted(
                f"consent {jti} allows {max_uses} uses and all have been used", jti=jti
            )


class AsyncRemoteUseCounter:
    """:class:`RemoteUseCounter`'s reserve and settle over grpc.aio (an asynchronous use
    counter: the coordinator awaits it on its event loop)."""

    def __init__(self, client: AsyncConsentClient) -> None:
        self.client = client

    async def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """See :meth:`RemoteUseCounter.reserve`."""
        out: list[Reservation | FedcreditError] = []
        for i in range(0, len(refs), MAX_USES_PER_CALL):
            out += await self.client.reserve_uses(use_id, refs[i : i + MAX_USES_PER_CALL], pin=pin)
        return out

    async def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        for i in range(0, len(refs), MAX_USES_PER_CALL):
            await self.client.settle_uses(use_id, refs[i : i + MAX_USES_PER_CALL], commit=commit)

    async def close(self) -> None:
        await self.client.close()


class StatusWatch:
    """The ``WatchStatus`` push stream feeding a status cache, reopened whenever it breaks.

    ``offer`` adopts a pushed signed list (:meth:`consent.verify.StatusCache.offer`);
    ``seq`` is the sequence number of the list held, so a reopened stream resumes there.
    """

    def __init__(
        self,
        client: ConsentClient,
        offer: Callable[[str], object],
        seq: Callable[[], int],
        *,
        stall_s: float = STALL_S,
    ) -> None:
        self.client = client
        self._offer = offer
        self._seq = seq
        self._stop = threading.Event()
        self._cancel: Callable[[], object] | None = None
        self._lock = threading.Lock()
        self._last_msg = time.monotonic()
        self.stall_s = stall_s
        self.reconnects = 0  # streams reopened after a break (for tests and logs)
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        """Open the stream (and its watchdog) in daemon threads."""
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
                items, cancel = self.client.watch_status(after_seq=self._seq())
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
                    self._offer(msg.token)
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

    def close(self) -> None:
        """Stop the stream and its watchdog (the client stays open: its owner closes it)."""
        self._stop.set()
        with self._lock:
            cancel = self._cancel
        if cancel is not None:
            cancel()
        for t in (self._thread, self._watchdog):
            if t is not None:
                t.join(timeout=2)
