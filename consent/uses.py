"""Counting the uses of consent tokens at the authority (the coordinator, once per score).

A use is counted by a conditional UPDATE that re-checks the consent's state, so it is
atomic with revocation: a use either happens before a revoke commits or is refused,
with the reason read from the state that refused it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from fedcredit.common.errors import BatchTooLarge, FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent.access import require
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.states import State
from fedcredit.consent.store import ConsentRow, ConsentStore


class UseRecorder:
    """Counts uses in the store, token by token or a batch in one transaction."""

    def __init__(
        self,
        store: ConsentStore,
        settings: ConsentSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    def record_use(self, actor: Identity, jti: str) -> int:
        """Count one use of a token (the coordinator, once per score); the count after it.

        Atomic with revocation: a use either happens before a revoke commits or is refused.
        """
        result = self.record_uses(actor, [jti])[0]
        if isinstance(result, FedcreditError):
            raise result
        return result

    def record_uses(self, actor: Identity, jtis: Sequence[str]) -> list[int | FedcreditError]:
        """Count one use of each token, in one transaction: per token the count after it,
        or the error that refused it (the others are counted all the same).

        Atomic with revocation, token by token, as :meth:`record_use`. A jti listed twice
        is counted twice.
        """
        require(actor, "coordinator", "bank")
        if len(jtis) > self.settings.max_uses_batch:
            raise BatchTooLarge(
                f"at most {self.settings.max_uses_batch} uses per call, got {len(jtis)}",
                max=self.settings.max_uses_batch,
                got=len(jtis),
            )
        now = self.now()

        def work(conn: Connection) -> list[int | FedcreditError]:
            return self._count(conn, actor, jtis, now)

        return self.store.write(work)

    def _count(
        self, conn: Connection, actor: Identity, jtis: Sequence[str], now: int
    ) -> list[int | FedcreditError]:
        """Count one use of each jti where its consent allows it, with a few statements for
        the whole batch: one read of the rows and one conditional update per round. The
        update re-checks the state, so a revoke committed meanwhile still wins."""
        out: list[int | FedcreditError | None] = [None] * len(jtis)
        # A jti listed twice is counted twice: round r holds each jti's r-th listing.
        rounds: list[list[int]] = []
        listed: dict[str, int] = {}
        for k, jti in enumerate(jtis):
            r = listed.get(jti, 0)
            listed[jti] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(k)
        for positions in rounds:
            rows = self.store.get_by_jtis(conn, [jtis[k] for k in positions])
            eligible: list[int] = []
            for k in positions:
                jti = jtis[k]
                row = rows.get(jti)
                if row is None:
                    out[k] = E.ConsentNotFound(f"no consent token with jti {jti!r}", jti=jti)
                elif actor.role == "bank" and row.bank != actor.org_id:
                    out[k] = E.NotYourConsent(
                        f"token {jti} is addressed to {row.bank}; you are {actor.org_id}"
                    )
                else:
                    eligible.append(k)
            counted = self.store.record_uses_many(conn, [jtis[k] for k in eligible], now, now)
            for k in eligible:
                jti = jtis[k]
                if jti in counted:
                    out[k] = counted[jti]
                else:  # refused: say why, from the state that refused it
                    out[k] = refusal(rows[jti], now) or self._why_not_counted(
                        conn, jti, rows[jti], now
                    )
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    def _why_not_counted(
        self, conn: Connection, jti: str, row: ConsentRow, now: int
    ) -> FedcreditError:
        """The row looked usable but the conditional update matched nothing: a concurrent
        revoke or pause committed in between. Read it again to name what happened."""
        fresh = self.store.get_by_jti(conn, jti)
        if fresh is not None and fresh.state != row.state:
            return refusal(fresh, now) or E.ConsentRevoked(
                f"consent {fresh.consent_id} has been {fresh.state.lower()}", jti=jti
            )
        return E.ConsentRevoked(f"consent {row.consent_id} can no longer be used", jti=jti)


def refusal(row: ConsentRow, now: int) -> FedcreditError | None:
    """Why a use of ``row`` is refused, or None if its state allows one."""
    jti = row.jti
    if row.state == State.PAUSED:
        return E.ConsentSuspended(f"consent {row.consent_id} is paused by the enterprise", jti=jti)
    if row.state in (State.REVOKED, State.REJECTED):
        return E.ConsentRevoked(f"consent {row.consent_id} has been revoked", jti=jti)
    if row.state == State.EXPIRED or row.expires_at <= now:
        return E.TokenExpired(
            f"consent {row.consent_id} expired at {row.expires_at}", expired_at=row.expires_at
        )
    if row.uses >= row.max_uses:
        return E.UsesExhausted(
            f"consent {row.consent_id} allows {row.max_uses} uses and all have been used",
            jti=jti,
            max_uses=row.max_uses,
        )
    if row.state != State.ACTIVE:
        return E.ConsentRevoked(
            f"consent {row.consent_id} is {row.state.lower()}, not active", jti=jti
        )
    return None
