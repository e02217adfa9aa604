"""Counting the uses of consent tokens at the authority.

A use is named by the bank's use id (one Score, one training fetch round). Every
disclosure under that use id, at any node or the coordinator, counts once: the first
verifier to :meth:`UseRecorder.reserve` it opens the use (the consent's count goes up,
checked against the STORED ``max_uses``), later ones under the same id join it. The
opener commits it when the answer is out or releases it when the work failed (the count
goes down again). A use matches a consent by jti AND enterprise AND bank.

A use is counted by a conditional UPDATE that re-checks the consent's state, so it is
atomic with revocation: a use either happens before a revoke commits or is refused,
with the reason read from the state that refused it.

A reservation is a lease: one never settled (the opener's process, or the consent
service, died mid-Score) is released by :meth:`UseRecorder.reap` once it is older than
``[consent] use_lease_s`` (default 300 s, far above any Score or fetch round), with a
ledgered ``use_released`` event, so a crash never burns a use for good; a commit that
still arrives later is counted again only while the consent has a use left
(``use_committed_late``), so no count ever exceeds the stored ``max_uses``; otherwise the
commit is refused (``CONSENT_USES_EXHAUSTED``). Verifiers commit BEFORE their answer
leaves the process and answer nothing when the commit fails, so a disclosure is never
left uncounted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from sqlalchemy import Connection

from fedcredit.common.errors import BatchTooLarge, FedcreditError, InvalidArgument
from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent.access import require
from fedcredit.consent.lifecycle import SYSTEM
from fedcredit.consent.outbox import EventOutbox
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.states import State
from fedcredit.consent.store import ConsentRow, ConsentStore, UseState
from fedcredit.consent.useref import Reservation, UseRef

log = logging.getLogger(__name__)

# A use id stays open this long after it was opened: verifiers joining it later (a slow
# node of the same Score, the next page of one training round) count under it; after
# that the id is spent and a new use needs a new id.
USE_WINDOW_S = 900
# Longest use id accepted (the column's width).
MAX_USE_ID = 128
# Roles that reserve (and settle) uses: the coordinator (a Score), a department node (a
# bank's or the coordinator's fetch), the consent service itself (in-process). Never a
# bank: the party a disclosure reaches must not decide to give its use back (a bank that
# opened a use, fetched from nodes under it -- they only join it -- and released it would
# be served without limit). A bank counts its own tokens with RecordUses (no release).
RESERVING_ROLES = ("coordinator", "department", "consent")


class BadUseId(InvalidArgument):
    reason = "INVALID_USE_ID"


class UseRecorder:
    """Counts uses in the store, token by token or a batch in one transaction."""

    def __init__(
        self,
        store: ConsentStore,
        settings: ConsentSettings,
        clock: Callable[[], float] = time.time,
        *,
        outbox: EventOutbox | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        """``outbox``: where lease releases and late commits are recorded (ledgered);
        ``after_commit``: called after such a commit (delivers the events)."""
        self.store = store
        self.settings = settings
        self._clock = clock
        self.outbox = outbox
        self.after_commit = after_commit

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
                if row is None or (actor.role == "bank" and row.bank != actor.org_id):
                    # Another bank's token is answered like a missing one: no owner named,
                    # no exists/not-exists oracle (issue 14, finding 7).
                    out[k] = E.ConsentNotFound(f"no consent token with jti {jti!r}", jti=jti)
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

    def _check_batch(self, actor: Identity, use_id: str, n: int) -> None:
        require(actor, *RESERVING_ROLES)
        if not use_id or len(use_id) > MAX_USE_ID:
            raise BadUseId(
                f"a use id is 1-{MAX_USE_ID} characters, got {len(use_id)}", got=len(use_id)
            )
        if n > self.settings.max_uses_batch:
            raise BatchTooLarge(
                f"at most {self.settings.max_uses_batch} uses per call, got {n}",
                max=self.settings.max_uses_batch,
                got=n,
            )

    def reserve(
        self, actor: Identity, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """Reserve use ``use_id`` of each token in one transaction (or join it where another
        verifier opened it within :data:`USE_WINDOW_S`); per token its reservation or the
        error that refused it.

        ``pin``: the caller discloses straight to the bank (a node serving a bank's own
        fetch). A use it joins is committed in the same transaction, so the opener's
        release (its own part failed) or the lease reaper cannot give back a use whose
        features did reach the bank. A coordinator's Score is not pinned: the nodes
        disclose to the coordinator, and a Score that fails reaches no bank."""
        self._check_batch(actor, use_id, len(refs))
        now = self.now()

        def work(conn: Connection) -> list[Reservation | FedcreditError]:
            out = self._reserve(conn, actor, use_id, refs, now)
            if pin:
                joined = [
                    ref.jti
                    for ref, r in zip(refs, out, strict=True)
                    if isinstance(r, Reservation) and not r.opened
                ]
                self.store.pin_uses(conn, use_id, joined)
            return out

        return self.store.write(work)

    def _reserve(
        self, conn: Connection, actor: Identity, use_id: str, refs: Sequence[UseRef], now: int
    ) -> list[Reservation | FedcreditError]:
        jtis = list(dict.fromkeys(r.jti for r in refs))
        # The rows and the open uses in one statement (one snapshot): a use visible here
        # has its count visible too. Narrow rows (UseState): no token read, no JSON parsed.
        rows, joined = self.store.use_view(conn, use_id, jtis)
        out: dict[int, Reservation | FedcreditError] = {}
        candidates: dict[str, UseState] = {}
        for k, ref in enumerate(refs):
            row = rows.get(ref.jti)
            if (
                row is None
                or row.enterprise != ref.enterprise
                or row.bank != ref.bank
                or (actor.role == "bank" and row.bank != actor.org_id)
            ):
                # Same answer whether the jti exists or not: nothing to learn from it.
                out[k] = E.ConsentNotFound(f"no consent token with jti {ref.jti!r}", jti=ref.jti)
            else:
                candidates[ref.jti] = row
        joined = {j: v for j, v in joined.items() if j in candidates}
        opening = [jti for jti in candidates if jti not in joined]
        opened = self.store.open_uses(conn, use_id, opening, actor.org_id, now)
        late = [jti for jti in opening if jti not in opened]
        if late:
            # A concurrent caller opened one of these uses while we waited on its row (or
            # the consent refused): join what is open, with the count it committed.
            more = self.store.uses_of(conn, use_id, late)
            joined.update(more)
            candidates.update(self.store.use_states(conn, list(more)))
        for k, ref in enumerate(refs):
            if k not in out:
                out[k] = self._reserved(
                    conn, use_id, ref.jti, candidates[ref.jti], opened, joined, now
                )
        return [out[k] for k in range(len(refs))]

    def _reserved(
        self,
        conn: Connection,
        use_id: str,
        jti: str,
        row: UseState,
        opened: dict[str, int],
        joined: dict[str, tuple[str, str, int]],
        now: int,
    ) -> Reservation | FedcreditError:
        """One token's answer: opened here, joined, or why neither."""
        if jti in opened:
            return Reservation(opened[jti], True)
        held = joined.get(jti)
        if held is None:  # could not open: say why, from the state that refused it
            return refusal(row, now) or self._why_not_counted(conn, jti, row, now)
        if now - held[2] > USE_WINDOW_S:
            return E.UsesExhausted(
                f"use {use_id!r} of consent {row.consent_id} was opened at {held[2]} and "
                f"closed {USE_WINDOW_S} s later; a new use needs a new use id",
                jti=jti,
                max_uses=row.max_uses,
            )
        # Joining an open use: only the consent's state can refuse it now.
        return _state_refusal(row, now) or Reservation(row.uses, False)

    def settle(self, actor: Identity, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> int:
        """Commit (the answer reached the bank) or release (the work failed) the uses
        ``actor`` opened under ``use_id``; how many were settled.

        A commit that arrives after the lease reaper released the use (the opener stalled
        past ``use_lease_s``) counts the use again if the consent has one left; either way
        it is ledgered (``use_committed_late``). A count never exceeds the stored
        ``max_uses``: with no use left the late commit raises ``UsesExhausted`` (after the
        event is stored), and the caller -- which commits BEFORE its answer leaves -- must
        not disclose."""
        self._check_batch(actor, use_id, len(refs))
        now = self.now()
        jtis = list(dict.fromkeys(r.jti for r in refs))

        def work(conn: Connection) -> tuple[int, int, list[str]]:
            done = self.store.settle_uses(conn, use_id, jtis, actor.org_id, commit=commit, now=now)
            late, uncounted = 0, list[str]()
            if commit and len(done) < len(jtis):
                left = [j for j in jtis if j not in set(done)]
                late, uncounted = self._commit_late(conn, actor, use_id, left, now)
            return len(done) + late, late, uncounted

        n, late, uncounted = self.store.write(work)
        if late and self.after_commit is not None:
            self.after_commit()  # deliver the use_committed_late events
        if uncounted:
            raise E.UsesExhausted(
                f"use {use_id!r} of {len(uncounted)} consent(s) was committed after its lease "
                f"of {self.settings.use_lease_s} s ran out and no use is left: not counted, "
                "so the answer must not be disclosed",
                jti=uncounted[0],
            )
        return n

    def _commit_late(
        self, conn: Connection, actor: Identity, use_id: str, jtis: Sequence[str], now: int
    ) -> tuple[int, list[str]]:
        """Commits of uses the reaper released (see :meth:`settle`); how many were seen
        (counted or, with no use left, ledgered as not counted) and the jtis not counted."""
        held = self.store.uses_of(conn, use_id, jtis)
        rows = self.store.get_by_jtis(conn, [j for j in jtis if j not in held])
        if not rows:
            return 0, []
        reaped = self.store.released_by_lease(conn, [r.consent_id for r in rows.values()])
        late = [j for j in rows if (j, use_id, actor.org_id) in reaped]
        counted = self.store.count_late_uses(conn, use_id, late, actor.org_id, now)
        for jti in late:
            row = rows[jti]
            if jti not in counted:
                log.warning(
                    "use %s of consent %s was committed after its lease ran out and the "
                    "consent has no use left (%d of %d): ledgered as not counted",
                    use_id, row.consent_id, row.uses, row.max_uses,
                )  # fmt: skip
            if self.outbox is not None:
                row = replace(row, uses=counted.get(jti, row.uses))
                self.outbox.add(
                    conn, row, "use_committed_late", actor, now,
                    use_id=use_id, counted=jti in counted, uses=row.uses,
                )  # fmt: skip
        return len(late), [j for j in late if j not in counted]

    def reap(self, *, limit: int = 500) -> int:
        """Release every use reserved more than ``use_lease_s`` ago and never settled (its
        opener crashed, or the consent service restarted in between), one ledgered
        ``use_released`` event each; how many were released. Safe against a concurrent
        settle: each reservation is released or settled once, never both."""
        now = self.now()
        cutoff = now - self.settings.use_lease_s

        def work(conn: Connection) -> int:
            found = self.store.expired_reservations(conn, cutoff, limit)
            if not found:
                return 0
            released = self.store.release_reservations(conn, found, cutoff, now)
            rows = self.store.get_by_jtis(conn, list({r[0] for r in released}))
            for jti, use_id, opener, opened_at in released:
                if self.outbox is not None and jti in rows:
                    self.outbox.add(
                        conn, rows[jti], "use_released", SYSTEM, now,
                        use_id=use_id, reserved_by=opener, reserved_at=opened_at,
                        reason="lease_expired", lease_s=self.settings.use_lease_s,
                        uses=rows[jti].uses,
                    )  # fmt: skip
            return len(released)

        n = self.store.write(work)
        if n:
            log.warning("released %d use(s) reserved over %d s ago and never settled",
                        n, self.settings.use_lease_s)  # fmt: skip
            if self.after_commit is not None:
                self.after_commit()
        return n

    def _why_not_counted(
        self, conn: Connection, jti: str, row: ConsentRow | UseState, now: int
    ) -> FedcreditError:
        """The row looked usable but the conditional update matched nothing: a concurrent
        revoke or pause committed in between. Read it again to name what happened."""
        fresh = self.store.get_by_jti(conn, jti)
        if fresh is not None and fresh.state != row.state:
            return refusal(fresh, now) or E.ConsentRevoked(
                f"consent {fresh.consent_id} has been {fresh.state.lower()}", jti=jti
            )
        return E.ConsentRevoked(f"consent {row.consent_id} can no longer be used", jti=jti)


def _state_refusal(row: ConsentRow | UseState, now: int) -> FedcreditError | None:
    """Why ``row`` may not be used at all now (its count aside), or None."""
    if row.uses < row.max_uses:
        return refusal(row, now)
    # All uses taken: joining one of them is still fine while the consent is active.
    return refusal(replace(row, uses=0), now)


def refusal(row: ConsentRow | UseState, now: int) -> FedcreditError | None:
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
