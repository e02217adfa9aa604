"""The authority's status list: held in memory, signed on demand, changes announced.

Every committed change of a consent's state is set here after its transaction; the
signed ``statuslist+jwt`` is re-signed lazily, when asked for after a change (or past
half its lifetime), and ``WatchStatus`` streams wait on :meth:`StatusPublisher.wait`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.signing import Signer
from fedcredit.consent.states import State, status_value
from fedcredit.consent.statusidx import MIN_CAPACITY
from fedcredit.consent.statuslist import PER_BYTE, StatusArray, status_list_claims


class StatusPublisher:
    """The in-memory status list, its signed form, and change notification."""

    def __init__(
        self,
        settings: ConsentSettings,
        signer: Callable[[], Signer],
        clock: Callable[[], float],
        keys_epoch: Callable[[], str] | None = None,
    ) -> None:
        self.settings = settings
        self._signer = signer
        # Named in every signed list (claim "keys"): a verifier holding another key-set epoch
        # refetches the JWKS, so key changes travel with status pushes.
        self._keys_epoch = keys_epoch
        self._clock = clock
        # The whole index space at once: indexes are drawn at random from it
        # (consent.statusidx), and a list that only grew to the largest index so far would
        # leave a new token's index past its end until the next push.
        self._array = StatusArray(bytes(MIN_CAPACITY // PER_BYTE))
        self._cond = threading.Condition()
        self._seq = 0
        self._token: tuple[int, int, str] | None = None  # (seq, exp, token)
        self.closed = False

    @property
    def seq(self) -> int:
        return self._seq

    def load(self, entries: Collection[tuple[int, str]]) -> None:
        with self._cond:
            for idx, state in entries:
                self._array.set(idx, status_value(State(state)))
            self._bump()

    def _bump(self) -> None:
        # Monotonic across restarts: never below the wall clock in microseconds.
        self._seq = max(self._seq + 1, int(time.time() * 1_000_000))
        self._cond.notify_all()

    def touch(self) -> None:
        """Announce a new list without a status change (the key set changed)."""
        with self._cond:
            self._bump()

    def set(self, changes: Collection[tuple[int, State]]) -> None:
        if not changes:
            return
        with self._cond:
            for idx, state in changes:
                self._array.set(idx, status_value(state))
            self._bump()

    def get(self, idx: int) -> int:
        with self._cond:
            return self._array.get(idx) if idx < self._array.capacity else 0

    def token(self) -> str:
        """The current list as a signed ``statuslist+jwt`` (re-signed when it changed or ages)."""
        s = self.settings
        t = self._clock()
        now = int(t)
        with self._cond:
            cached = self._token
            # Handed out only with more than half its lifetime left (float time: with short
            # lifetimes, integer division and truncation would hand out a list about to expire).
            if (
                cached is not None
                and cached[0] == self._seq
                and cached[1] - t > s.status_lifetime_s / 2
            ):
                return cached[2]
            seq = self._seq
            claims = status_list_claims(
                uri=s.status_uri,
                iat=now,
                exp=now + s.status_lifetime_s,
                ttl=s.status_ttl_s,
                array=self._array,
            )
        claims["iss"] = s.issuer
        claims["seq"] = seq
        if self._keys_epoch is not None:
            claims["keys"] = self._keys_epoch()
        token = self._signer().status_list_token(claims)
        with self._cond:
            if self._token is None or self._token[0] <= seq:
                self._token = (seq, claims["exp"], token)
        return token

    def wait(self, after_seq: int, timeout: float) -> int:
        """Block until the list changes past ``after_seq`` (or timeout); return the current seq."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self.closed, timeout=timeout)
            return self._seq

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
