"""The consent lifecycle: request, grant, approve, reject, pause, resume, revoke, narrow,
expire, and the bank's token fetch (the states are :mod:`consent.states`).

Each step is one database transaction that changes the consent and writes its event
(:mod:`consent.outbox`), so no change exists without its event; after the commit,
``after_commit`` publishes the new status-list entries and gets the events delivered.
Concurrent grants share their statements (:meth:`ConsentStore.write_merged`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection

from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent.access import not_found, own_bank, own_enterprise, require
from fedcredit.consent.issuance import DAY, Issuer
from fedcredit.consent.outbox import EventOutbox, event_values
from fedcredit.consent.scope import TermsChecker
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.states import EVENT_OF, Action, State, next_state, sources_of
from fedcredit.consent.store import ConsentRow, ConsentStore
from fedcredit.consent.terms import ConsentTerms, ConsentView
from fedcredit.consent.token import decode_segment, split_jws

# The changes of a commit: (status index, new state) per consent.
Changes = Collection[tuple[int, State]]
SYSTEM = Identity(org_id="consent-service", role="consent", cert_sha256=b"")


class Lifecycle:
    def __init__(
        self,
        store: ConsentStore,
        settings: ConsentSettings,
        checker: TermsChecker,
        issuer: Issuer,
        outbox: EventOutbox,
        after_commit: Callable[[Changes], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.checker = checker
        self.issuer = issuer
        self.outbox = outbox
        self._after_commit = after_commit
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    def _load(self, conn: Connection, consent_id: str) -> ConsentRow:
        row = self.store.get(conn, consent_id, for_update=True)
        if row is None:
            raise not_found(consent_id)
        return row

    # --- new consents -------------------------------------------------------------

    def request(self, actor: Identity, terms: ConsentTerms) -> ConsentView:
        """A bank asks an enterprise for consent (PENDING)."""
        require(actor, "bank")
        if terms.bank != actor.org_id:
            raise E.NotYourConsent(
                f"a bank requests consent for itself only; you are {actor.org_id}, not {terms.bank}"
            )
        scope, nodes = self.checker.check(terms)
        now = self.now()

        def work(conn: Connection) -> ConsentRow:
            values = self.issuer.values(
                terms, scope, nodes, State.PENDING, actor, now, x5t=actor.x5t_s256
            )
            row = self.issuer.insert(conn, [values], State.PENDING)[0]
            via = {"via": actor.via} if actor.via else {}  # a person's portal session
            self.outbox.add(conn, row, "requested", actor, now, **via)
            return row

        row = self.store.write(work)
        self._after_commit(())
        return row.view()

    def grant(self, actor: Identity, terms: ConsentTerms) -> ConsentView:
        """An enterprise grants a bank consent directly (ACTIVE)."""
        require(actor, "enterprise")
        if terms.enterprise != actor.org_id:
            raise E.NotYourConsent(
                f"an enterprise grants consent for itself only; you are {actor.org_id}, not {terms.enterprise}"
            )
        return self.grant_many(actor, [terms])[0]

    def grant_many(self, actor: Identity, batch: Sequence[ConsentTerms]) -> list[ConsentView]:
        """Several direct grants by one enterprise in one transaction (all or nothing)."""
        require(actor, "enterprise")
        checked = []
        for t in batch:
            if t.enterprise != actor.org_id:
                raise E.NotYourConsent(
                    f"an enterprise grants consent for itself only; you are {actor.org_id}"
                )
            checked.append((t, *self.checker.check(t)))
        now = self.now()
        values = [
            self.issuer.values(
                t, scope, nodes, State.ACTIVE, actor, now, x5t=self.issuer.bank_x5t(t.bank)
            )
            for t, scope, nodes in checked
        ]
        rows = self.store.write_merged("grant", self._grant_rows, (actor, values))
        self._after_commit([(r.id, State.ACTIVE) for r in rows])
        return [r.view() for r in rows]

    def _grant_rows(
        self, conn: Connection, items: list[tuple[Identity, list[dict[str, Any]]]]
    ) -> list[list[ConsentRow]]:
        """Direct grants of one or several callers (merged by group commit): one INSERT,
        one token UPDATE and one event INSERT for all of them; each caller's rows back."""
        rows = self.issuer.insert(conn, [v for _, values in items for v in values], State.ACTIVE)
        out: list[list[ConsentRow]] = []
        events: list[dict[str, Any]] = []
        pos = 0
        for actor, values in items:
            mine = rows[pos : pos + len(values)]
            pos += len(values)
            events += [event_values(r, "granted", actor, r.created_at) for r in mine]
            out.append(mine)
        self.store.add_events(conn, events)
        return out

    # --- the enterprise's transitions ---------------------------------------------

    def transition(
        self, actor: Identity, consent_id: str, action: Action, **extra: Any
    ) -> ConsentView:
        """Approve, reject, pause, resume or revoke (``extra``: kept with the event)."""
        require(actor, "enterprise")  # before the lookup: a role refusal must not be an oracle
        now = self.now()

        def work(conn: Connection) -> tuple[ConsentRow, State]:
            row = self._load(conn, consent_id)
            own_enterprise(actor, row)
            new = next_state(State(row.state), action)
            values: dict[str, Any] = {"state": new.value, "updated_at": now}
            if action == Action.APPROVE:
                values["not_before"] = now
                values["expires_at"] = now + row.validity_days * DAY
            if not self.store.update_consent(conn, consent_id, from_states=[row.state], **values):
                raise E.TransitionNotAllowed(
                    f"consent {consent_id} changed concurrently; try again",
                    state=row.state,
                    action=action.value,
                )
            row = self._load(conn, consent_id)
            if action == Action.APPROVE and row.bank_x5t is not None:
                row = self.issuer.mint(conn, row, row.bank_x5t, now)
            self.outbox.add(conn, row, EVENT_OF[action], actor, now, **extra)
            return row, new

        row, new = self.store.write(work)
        self._after_commit([(row.id, new)])
        return row.view()

    def narrow(
        self,
        actor: Identity,
        consent_id: str,
        *,
        remove_categories: Sequence[str] = (),
        remove_nodes: Sequence[str] = (),
        **extra: Any,
    ) -> tuple[ConsentView, ConsentView]:
        """Revoke one category or node: the consent is revoked and replaced by a narrower one
        (``extra``: kept with both events, e.g. the passkey assertion that authorised it)."""
        if not remove_categories and not remove_nodes:
            raise E.NarrowingInvalid("say which categories or nodes to remove")
        require(actor, "enterprise")
        now = self.now()
        with self.store.begin() as conn:
            old = self._load(conn, consent_id)
            own_enterprise(actor, old)
            state = State(old.state)
            next_state(state, Action.NARROW)  # refuses PENDING and final states
            scope, nodes = self.checker.narrowed(
                consent_id, old.scope, old.nodes, remove_categories, remove_nodes
            )
            if old.max_uses - old.uses < 1:
                raise E.NarrowingInvalid(
                    f"consent {consent_id} has no uses left; revoke it instead"
                )
            old, new = self._replace(conn, actor, old, state, scope, nodes, now)
            self.outbox.add(
                conn,
                old,
                "revoked",
                actor,
                now,
                replaced_by=new.consent_id,
                removed_categories=sorted(remove_categories),
                removed_nodes=sorted(remove_nodes),
                **extra,
            )
            self.outbox.add(conn, new, "granted", actor, now, replaces=old.consent_id, **extra)
        self._after_commit([(old.id, State.REVOKED), (new.id, state)])
        return old.view(), new.view()

    def _replace(
        self,
        conn: Connection,
        actor: Identity,
        old: ConsentRow,
        state: State,
        scope: list[str],
        nodes: list[str],
        now: int,
    ) -> tuple[ConsentRow, ConsentRow]:
        """Revoke ``old`` and insert its replacement in ``state``, covering ``scope`` and
        ``nodes`` with the uses left, to the same end; both rows as they now are."""
        if not self.store.update_consent(
            conn, old.consent_id, from_states=[old.state], state=State.REVOKED.value, updated_at=now
        ):
            raise E.TransitionNotAllowed(
                f"consent {old.consent_id} changed concurrently; try again"
            )
        terms = ConsentTerms(
            enterprise=old.enterprise,
            bank=old.bank,
            purpose=old.purpose,
            scope=scope,
            nodes=nodes,
            validity_days=old.validity_days,
            max_uses=old.max_uses - old.uses,
            retention_days=old.retention_days,
            loan_term_days=old.loan_term_days,
        )
        values = self.issuer.values(
            terms, scope, nodes, state, actor, now,
            x5t=old.bank_x5t, replaces=old.consent_id,
            expires_at=old.expires_at, not_before=old.not_before,
        )  # fmt: skip
        new = self.issuer.insert(conn, [values], state)[0]
        self.store.update_consent(conn, old.consent_id, replaced_by=new.consent_id)
        return self._load(conn, old.consent_id), new

    def reissue(self, kids: Collection[str]) -> int:
        """Re-sign, under the key signing now, every live token signed by one of ``kids``
        (keys declared compromised): same jti, status entry, terms and ``exp`` — the rest of
        its term — with a fresh ``iat``; the enterprise's consent is unchanged. One
        ``reissued`` event each, ledgered like every consent event. Returns how many."""
        if not kids:
            return 0
        now = self.now()
        bad = set(kids)
        with self.store.begin() as conn:
            rows = self.store.list_consents(
                conn, states=[State.ACTIVE.value, State.PAUSED.value], limit=2**31 - 1
            )
            n = 0
            for row in rows:
                if row.token is None or row.bank_x5t is None or row.jti is None:
                    continue
                old_kid = token_kid(row.token)
                if old_kid not in bad:
                    continue
                new = self.issuer.sign(row, row.bank_x5t, now, jti=row.jti)
                assert new.token is not None
                self.store.set_token(
                    conn, row.consent_id, x5t=row.bank_x5t, jti=row.jti, token=new.token, now=now
                )
                self.outbox.add(
                    conn, new, "reissued", SYSTEM, now, reason="signing_key_compromised",
                    old_kid=old_kid, kid=token_kid(new.token),
                )  # fmt: skip
                n += 1
        if n:
            self._after_commit(())
        return n

    def expire_due(self, *, limit: int = 500) -> int:
        """Mark consents past their end as EXPIRED (one event each); return how many."""
        now = self.now()
        changes: list[tuple[int, State]] = []
        with self.store.begin() as conn:
            for consent_id in self.store.due(conn, now, limit):
                row = self._load(conn, consent_id)
                if self.store.update_consent(
                    conn,
                    consent_id,
                    from_states=sources_of(Action.EXPIRE),
                    state=State.EXPIRED.value,
                    updated_at=now,
                ):
                    self.outbox.add(conn, row, "expired", SYSTEM, now, expires_at=row.expires_at)
                    changes.append((row.id, State.EXPIRED))
        if changes:
            self._after_commit(changes)
        return len(changes)

    # --- the bank's token, and what each party sees -------------------------------

    def token(self, actor: Identity, consent_id: str) -> ConsentView:
        """The bank fetches its token; a consent granted without a known certificate is
        bound and signed now, to the certificate the bank connects with."""
        require(actor, "bank")
        now = self.now()
        with self.store.begin() as conn:
            row = self._load(conn, consent_id)
            own_bank(actor, row)
            if row.state not in (State.ACTIVE, State.PAUSED):
                raise E.TokenNotIssued(
                    f"consent {consent_id} is {row.state}; only an active or paused consent has a token",
                    state=row.state,
                )
            if row.bank_x5t is not None and row.bank_x5t != actor.x5t_s256:
                raise E.HolderMismatch(
                    f"consent {consent_id} is bound to certificate {row.bank_x5t}; you connected with "
                    f"{actor.x5t_s256}. Ask the enterprise for a new consent for your current certificate."
                )
            minted = row.token is None
            if minted:
                row = self.issuer.mint(conn, row, actor.x5t_s256, now)
                # the log must name every jti an access can cite (fedcredit audit coverage)
                self.outbox.add(conn, row, "token_issued", actor, now)
        if minted:
            self._after_commit(())
        return row.view(with_token=True)

    def list_consents(
        self,
        actor: Identity,
        *,
        states: Sequence[str] = (),
        expiring_within_days: int | None = None,
        limit: int | None = None,
    ) -> list[ConsentView]:
        require(actor, "enterprise", "bank")
        bad = [s for s in states if s not in State.__members__]
        if bad:
            raise E.InvalidStateFilter(
                f"unknown states {bad}; expected some of {', '.join(State.__members__)}"
            )
        limit = min(limit or self.settings.max_list, self.settings.max_list)
        expiring_before = None
        if expiring_within_days is not None:
            expiring_before = self.now() + expiring_within_days * DAY
            states = states or [State.ACTIVE.value, State.PAUSED.value]
        with self.store.begin() as conn:
            rows = self.store.list_consents(
                conn,
                enterprise=actor.org_id if actor.role == "enterprise" else None,
                bank=actor.org_id if actor.role == "bank" else None,
                states=states,
                expiring_before=expiring_before,
                limit=limit,
            )
        return [r.view() for r in rows]

    def get(self, actor: Identity, consent_id: str) -> ConsentView:
        require(actor, "enterprise", "bank")
        with self.store.begin() as conn:
            row = self._load(conn, consent_id)
        if actor.role == "enterprise":
            own_enterprise(actor, row)
        else:
            own_bank(actor, row)
        return row.view()


def token_kid(token: str) -> str | None:
    """The ``kid`` in the header of a token this service signed."""
    kid = decode_segment(split_jws(token)[0], "header").get("kid")
    return kid if isinstance(kid, str) else None
