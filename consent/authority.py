"""The consent authority: lifecycle, issuance, keys, status list and events.

Everything the gRPC servicer does goes through here (and the tests and the
benchmark use it directly). Who may act: an enterprise only on its own
consents (its certificate's org id is its credit code), a bank only on
consents addressed to it; the caller is always an :class:`~common.tls.Identity`
from the verified certificate, never a field of the request.

Each lifecycle step is one database transaction that changes the consent and
writes its event (outbox), so no change exists without its event. After the
commit the status list is updated in memory (subscribers are woken; the signed
list is re-signed lazily, when asked for after a change) and the pending events
are delivered to the evidence sink: at once when no background worker runs, else
by the worker in batches (one round per ``DELIVERY_LINGER_S`` at most), retried
until the sink takes them.

Throughput comes from sharing: concurrent callers share a commit (group commit,
:meth:`ConsentStore.write`), and concurrent grants also share their statements
(one multi-row INSERT, token UPDATE and event INSERT for all, see
:meth:`ConsentStore.write_merged`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection

from fedcredit.common import uscc
from fedcredit.common.departments import BY_CATEGORY, CATEGORIES, DEPARTMENTS
from fedcredit.common.errors import BatchTooLarge, FedcreditError, RoleNotAllowed
from fedcredit.common.evidence import EvidenceSink, Receipt
from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent import keys as K
from fedcredit.consent.lifecycle import (
    EVENT_OF,
    Action,
    State,
    next_state,
    sources_of,
    status_value,
)
from fedcredit.consent.policy import check_request
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.signing import Signer
from fedcredit.consent.statuslist import StatusArray, b64url, status_list_claims
from fedcredit.consent.store import ConsentRow, ConsentStore, StoreEvidenceSink
from fedcredit.consent.token import SCORE_ONLY, Grant, build_claims
from fedcredit.consent.verify import ConsentVerifier, KeyCache, StatusCache, UseCounter

log = logging.getLogger(__name__)

LEDGER_KIND = "consent_event"
# Events per delivery round (one sink call and one store transaction each).
DELIVERY_BATCH = 500
# Shortest time between two background delivery rounds (the events wait durably in the outbox).
DELIVERY_LINGER_S = 0.1
DAY = 86400


@dataclass(frozen=True)
class ConsentView:
    """A consent as its parties see it."""

    consent_id: str
    enterprise: str
    bank: str
    purpose: str
    scope: list[str]
    nodes: list[str]
    max_uses: int
    uses: int
    retention_days: int
    validity_days: int
    loan_term_days: int | None
    state: str
    created_at: int
    not_before: int | None
    expires_at: int
    jti: str | None
    status_idx: int
    replaces: str | None
    replaced_by: str | None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, row: ConsentRow, *, with_token: bool = False) -> ConsentView:
        return cls(
            consent_id=row.consent_id,
            enterprise=row.enterprise,
            bank=row.bank,
            purpose=row.purpose,
            scope=row.scope,
            nodes=row.nodes,
            max_uses=row.max_uses,
            uses=row.uses,
            retention_days=row.retention_days,
            validity_days=row.validity_days,
            loan_term_days=row.loan_term_days,
            state=row.state,
            created_at=row.created_at,
            not_before=row.not_before,
            expires_at=row.expires_at,
            jti=row.jti,
            status_idx=row.id,
            replaces=row.replaces,
            replaced_by=row.replaced_by,
            token=row.token if with_token else None,
        )

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "token"}
        if self.token is not None:
            d["token"] = self.token
        return d


@dataclass(frozen=True)
class ConsentTerms:
    """What is asked for (a request by a bank, or a direct grant by an enterprise)."""

    enterprise: str
    bank: str
    purpose: str
    scope: Sequence[str]  # category ids, or ["score_only"]
    nodes: Sequence[str] = ()  # empty: the nodes serving the scope (all, for score_only)
    validity_days: int = 30
    max_uses: int = 1
    retention_days: int = 30
    loan_term_days: int | None = None


def _require(actor: Identity, *roles: str) -> None:
    if actor.role not in roles:
        raise RoleNotAllowed(
            f"role {actor.role!r} ({actor.org_id}) may not do this; allowed: {', '.join(roles)}",
            role=actor.role,
        )


class StatusPublisher:
    """The in-memory status list, its signed form, and change notification."""

    def __init__(
        self, settings: ConsentSettings, signer: Callable[[], Signer], clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self._signer = signer
        self._clock = clock
        self._array = StatusArray()
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


class ConsentAuthority:
    def __init__(
        self,
        store: ConsentStore,
        settings: ConsentSettings | None = None,
        *,
        sink: EvidenceSink | None = None,
        banks: Collection[str] | None = None,
        bank_certs: Callable[[str], bytes | None] | None = None,
        node_categories: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``banks``: the deployment's bank org ids (None: any org id is accepted as a bank).
        ``bank_certs``: the SHA-256 of a bank's certificate, when the deployment knows it,
        so a direct grant can be bound and signed at once (else at the bank's first fetch).
        ``node_categories``: node org id -> category (default: the standard department table).
        """
        self.store = store
        self.settings = settings or ConsentSettings()
        self.sink: EvidenceSink = sink if sink is not None else StoreEvidenceSink(store)
        self.banks = frozenset(banks) if banks is not None else None
        self.bank_certs = bank_certs
        self.node_categories = dict(node_categories or {d.org_id: d.category for d in DEPARTMENTS})
        self.category_nodes: dict[str, list[str]] = {}
        for org, cat in self.node_categories.items():
            self.category_nodes.setdefault(cat, []).append(org)
        self._clock = clock
        self._keys: list[K.KeyRecord] = []
        self._signers: dict[str, Signer] = {}
        self._keys_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        store.create_schema()
        self.reload_keys()
        if K.signing_key(self._keys, self.now()) is None and not any(
            k.state(self.now()) == "next" for k in self._keys
        ):
            # First start: a key that signs at once (nobody can have cached a JWKS yet).
            self.rotate_keys(immediate=True)
        self.status = StatusPublisher(self.settings, self.signer, clock)
        with store.begin() as conn:
            self.status.load(store.status_entries(conn))

    def now(self) -> int:
        return int(self._clock())

    # --- keys -----------------------------------------------------------------

    def reload_keys(self) -> None:
        records = self.store.load_keys()
        with self._keys_lock:
            self._keys = records

    def keys(self) -> list[K.KeyRecord]:
        with self._keys_lock:
            return list(self._keys)

    def signer(self) -> Signer:
        with self._keys_lock:
            rec = K.signing_key(self._keys, self.now())
            if rec is None:
                raise E.NoSigningKey(
                    "no signing key is active; run `fedcredit consent rotate-keys` (or wait for the "
                    "published next key to activate)"
                )
            signer = self._signers.get(rec.kid)
            if signer is None:
                signer = self._signers[rec.kid] = Signer(rec)
            return signer

    def rotate_keys(self, *, immediate: bool = False) -> tuple[K.KeyRecord, list[K.KeyRecord]]:
        """Publish a new key; it signs after ``key_publish_lead_s`` (at once if ``immediate``)."""
        now = self.now()
        lead = 0 if immediate else self.settings.key_publish_lead_s
        new, changed = K.rotate(
            self.keys(),
            now=now,
            publish_lead=lead,
            retention=self.settings.key_retention_s,
            immediate=immediate,
        )
        with self.store.begin() as conn:
            self.store.save_keys(conn, [new], changed)
        self.reload_keys()
        return new, changed

    def jwks(self) -> dict[str, Any]:
        return K.jwks(self.keys(), self.now())

    # --- validation -----------------------------------------------------------

    def _resolve_scope(
        self, scope: Sequence[str], nodes: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        scope = list(dict.fromkeys(scope))
        if not scope:
            raise E.InvalidScope(
                f"scope is empty; give categories ({', '.join(CATEGORIES)}) or '{SCORE_ONLY}'"
            )
        if SCORE_ONLY in scope:
            if scope != [SCORE_ONLY]:
                raise E.InvalidScope(f"'{SCORE_ONLY}' stands alone; got {scope}")
            cats: list[str] = sorted(self.category_nodes)
        else:
            unknown = [c for c in scope if c not in BY_CATEGORY]
            if unknown:
                raise E.InvalidScope(
                    f"unknown categories {unknown}; expected some of {', '.join(CATEGORIES)} or '{SCORE_ONLY}'"
                )
            cats = sorted(scope)
        if nodes:
            nodes = list(dict.fromkeys(nodes))
            unknown = [n for n in nodes if n not in self.node_categories]
            if unknown:
                raise E.InvalidNodes(
                    f"unknown nodes {unknown}; known: {', '.join(sorted(self.node_categories))}"
                )
            outside = [n for n in nodes if self.node_categories[n] not in cats]
            if outside:
                raise E.InvalidNodes(
                    f"nodes {outside} serve categories outside the scope {scope}; drop them or widen the scope"
                )
        else:
            nodes = [n for c in cats for n in self.category_nodes.get(c, [])]
            if not nodes:
                raise E.InvalidNodes(f"no node in this deployment serves {cats}")
        return (scope if scope == [SCORE_ONLY] else cats), sorted(nodes)

    def _check_terms(self, t: ConsentTerms) -> tuple[list[str], list[str]]:
        uscc.validate(t.enterprise)
        if self.banks is not None and t.bank not in self.banks:
            raise E.InvalidBank(
                f"{t.bank!r} is not a bank of this deployment; known: {', '.join(sorted(self.banks))}"
            )
        if not t.bank:
            raise E.InvalidBank("the bank is empty")
        check_request(
            self.settings.caps,
            purpose=t.purpose,
            validity_days=t.validity_days,
            max_uses=t.max_uses,
            retention_days=t.retention_days,
            loan_term_days=t.loan_term_days,
        )
        return self._resolve_scope(t.scope, t.nodes)

    # --- transactions helpers -------------------------------------------------

    @staticmethod
    def _event_values(
        row: ConsentRow, event: str, actor: Identity, now: int, **extra: Any
    ) -> dict[str, Any]:
        payload = {
            "event": event,
            "consent_id": row.consent_id,
            "jti": row.jti,
            "bank": row.bank,
            "purpose": row.purpose,
            "scope": row.scope,
            "nodes": row.nodes,
            "actor": actor.org_id,
            "actor_role": actor.role,
            "at": now,
            **extra,
        }
        return {
            "consent_id": row.consent_id,
            "event": event,
            "actor": actor.org_id,
            "actor_role": actor.role,
            "subject": row.enterprise,
            "at": now,
            "payload": payload,
        }

    def _event(
        self, conn: Connection, row: ConsentRow, event: str, actor: Identity, now: int, **extra: Any
    ) -> None:
        self.store.add_events(conn, [self._event_values(row, event, actor, now, **extra)])

    def _mint(self, conn: Connection, row: ConsentRow, x5t: str, now: int) -> ConsentRow:
        """Sign the consent's token, bound to certificate thumbprint ``x5t``."""
        row = self._sign(row, x5t, now)
        assert row.jti is not None and row.token is not None
        self.store.set_token(conn, row.consent_id, x5t=x5t, jti=row.jti, token=row.token, now=now)
        return row

    def _sign(self, row: ConsentRow, x5t: str, now: int) -> ConsentRow:
        """The row with its token signed (not yet stored)."""
        assert row.not_before is not None
        jti = secrets.token_urlsafe(16)
        grant = Grant(
            purpose=row.purpose,
            categories=frozenset() if row.scope == [SCORE_ONLY] else frozenset(row.scope),
            score_only=row.scope == [SCORE_ONLY],
            nodes=frozenset(row.nodes),
            max_uses=row.max_uses,
            retention_days=row.retention_days,
        )
        claims = build_claims(
            issuer=self.settings.issuer,
            enterprise=row.enterprise,
            bank=row.bank,
            jti=jti,
            consent_id=row.consent_id,
            grant=grant,
            issued_at=now,
            not_before=row.not_before,
            expires_at=row.expires_at,
            bank_x5t=x5t,
            status_idx=row.id,
            status_uri=self.settings.status_uri,
        )
        token = self.signer().consent_token(claims)
        return replace(row, bank_x5t=x5t, jti=jti, token=token, updated_at=now)

    def _bank_x5t(self, bank: str) -> str | None:
        if self.bank_certs is None:
            return None
        digest = self.bank_certs(bank)
        return b64url(digest) if digest is not None else None

    def _load(self, conn: Connection, consent_id: str) -> ConsentRow:
        row = self.store.get(conn, consent_id, for_update=True)
        if row is None:
            raise E.ConsentNotFound(f"no consent {consent_id!r}", consent_id=consent_id)
        return row

    @staticmethod
    def _own_enterprise(actor: Identity, row: ConsentRow) -> None:
        _require(actor, "enterprise")
        if row.enterprise != actor.org_id:
            raise E.NotYourConsent(
                f"consent {row.consent_id} belongs to enterprise {row.enterprise}; you are {actor.org_id}"
            )

    @staticmethod
    def _own_bank(actor: Identity, row: ConsentRow) -> None:
        _require(actor, "bank")
        if row.bank != actor.org_id:
            raise E.NotYourConsent(
                f"consent {row.consent_id} is addressed to {row.bank}; you are {actor.org_id}"
            )

    def _after_commit(self, changes: Collection[tuple[int, State]]) -> None:
        self.status.set(changes)
        if self._worker is not None:
            self._wake.set()  # the background worker delivers the events
        else:
            self.deliver_events()

    # --- lifecycle --------------------------------------------------------------

    def request(self, actor: Identity, terms: ConsentTerms) -> ConsentView:
        """A bank asks an enterprise for consent (PENDING)."""
        _require(actor, "bank")
        if terms.bank != actor.org_id:
            raise E.NotYourConsent(
                f"a bank requests consent for itself only; you are {actor.org_id}, not {terms.bank}"
            )
        scope, nodes = self._check_terms(terms)
        now = self.now()

        def work(conn: Connection) -> ConsentRow:
            row = self._insert(
                conn, terms, scope, nodes, State.PENDING, actor, now, x5t=actor.x5t_s256
            )
            self._event(conn, row, "requested", actor, now)
            return row

        row = self.store.write(work)
        self._after_commit(())
        return ConsentView.of(row)

    def _values(
        self,
        t: ConsentTerms,
        scope: list[str],
        nodes: list[str],
        state: State,
        actor: Identity,
        now: int,
        *,
        x5t: str | None,
        replaces: str | None = None,
        expires_at: int | None = None,
        not_before: int | None = None,
    ) -> dict[str, Any]:
        if expires_at is None:
            expires_at = (
                now + self.settings.pending_ttl_days * DAY
                if state == State.PENDING
                else now + t.validity_days * DAY
            )
        if not_before is None and state != State.PENDING:
            not_before = now
        return {
            "consent_id": "c_" + secrets.token_urlsafe(12),
            "enterprise": t.enterprise,
            "bank": t.bank,
            "purpose": t.purpose,
            "scope": scope,
            "nodes": nodes,
            "max_uses": t.max_uses,
            "retention_days": t.retention_days,
            "validity_days": t.validity_days,
            "loan_term_days": t.loan_term_days,
            "state": state.value,
            "created_at": now,
            "updated_at": now,
            "not_before": not_before,
            "expires_at": expires_at,
            "bank_x5t": x5t,
            "replaces": replaces,
            "requested_by": actor.org_id,
        }

    def _insert(
        self,
        conn: Connection,
        t: ConsentTerms,
        scope: list[str],
        nodes: list[str],
        state: State,
        actor: Identity,
        now: int,
        *,
        x5t: str | None,
        replaces: str | None = None,
        expires_at: int | None = None,
        not_before: int | None = None,
    ) -> ConsentRow:
        values = self._values(
            t, scope, nodes, state, actor, now,
            x5t=x5t, replaces=replaces, expires_at=expires_at, not_before=not_before,
        )  # fmt: skip
        return self._insert_many(conn, [values], state)[0]

    def _insert_many(
        self, conn: Connection, values: Sequence[dict[str, Any]], state: State
    ) -> list[ConsentRow]:
        """Insert consents, and sign the tokens of those not PENDING with a known
        certificate: a fixed number of statements however many there are."""
        pks = self.store.insert_consents(conn, values)
        rows = [
            ConsentRow(id=pk, uses=0, jti=None, token=None, replaced_by=None, **v)
            for pk, v in zip(pks, values, strict=True)
        ]
        if state == State.PENDING:
            return rows
        signed = [
            self._sign(r, r.bank_x5t, r.created_at) if r.bank_x5t is not None else r for r in rows
        ]
        self.store.set_tokens(
            conn,
            [
                (r.consent_id, r.bank_x5t, r.jti, r.token, r.created_at)
                for r in signed
                if r.bank_x5t is not None and r.jti is not None and r.token is not None
            ],
        )
        return signed

    def grant(self, actor: Identity, terms: ConsentTerms) -> ConsentView:
        """An enterprise grants a bank consent directly (ACTIVE)."""
        _require(actor, "enterprise")
        if terms.enterprise != actor.org_id:
            raise E.NotYourConsent(
                f"an enterprise grants consent for itself only; you are {actor.org_id}, not {terms.enterprise}"
            )
        return self.grant_many(actor, [terms])[0]

    def grant_many(self, actor: Identity, batch: Sequence[ConsentTerms]) -> list[ConsentView]:
        """Several direct grants by one enterprise in one transaction (all or nothing)."""
        _require(actor, "enterprise")
        checked = []
        for t in batch:
            if t.enterprise != actor.org_id:
                raise E.NotYourConsent(
                    f"an enterprise grants consent for itself only; you are {actor.org_id}"
                )
            checked.append((t, *self._check_terms(t)))
        now = self.now()
        values = [
            self._values(t, scope, nodes, State.ACTIVE, actor, now, x5t=self._bank_x5t(t.bank))
            for t, scope, nodes in checked
        ]
        rows = self.store.write_merged("grant", self._grant_rows, (actor, values))
        self._after_commit([(r.id, State.ACTIVE) for r in rows])
        return [ConsentView.of(r) for r in rows]

    def _grant_rows(
        self, conn: Connection, items: list[tuple[Identity, list[dict[str, Any]]]]
    ) -> list[list[ConsentRow]]:
        """Direct grants of one or several callers (merged by group commit): one INSERT,
        one token UPDATE and one event INSERT for all of them; each caller's rows back."""
        rows = self._insert_many(conn, [v for _, values in items for v in values], State.ACTIVE)
        out: list[list[ConsentRow]] = []
        events: list[dict[str, Any]] = []
        pos = 0
        for actor, values in items:
            mine = rows[pos : pos + len(values)]
            pos += len(values)
            events += [self._event_values(r, "granted", actor, r.created_at) for r in mine]
            out.append(mine)
        self.store.add_events(conn, events)
        return out

    def _transition(
        self, actor: Identity, consent_id: str, action: Action, **extra: Any
    ) -> ConsentView:
        now = self.now()

        def work(conn: Connection) -> tuple[ConsentRow, State]:
            row = self._load(conn, consent_id)
            self._own_enterprise(actor, row)
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
                row = self._mint(conn, row, row.bank_x5t, now)
            self._event(conn, row, EVENT_OF[action], actor, now, **extra)
            return row, new

        row, new = self.store.write(work)
        self._after_commit([(row.id, new)])
        return ConsentView.of(row)

    def approve(self, actor: Identity, consent_id: str) -> ConsentView:
        return self._transition(actor, consent_id, Action.APPROVE)

    def reject(self, actor: Identity, consent_id: str, reason: str = "") -> ConsentView:
        return self._transition(actor, consent_id, Action.REJECT, reason=reason)

    def pause(self, actor: Identity, consent_id: str) -> ConsentView:
        return self._transition(actor, consent_id, Action.PAUSE)

    def resume(self, actor: Identity, consent_id: str) -> ConsentView:
        return self._transition(actor, consent_id, Action.RESUME)

    def revoke(self, actor: Identity, consent_id: str, reason: str = "") -> ConsentView:
        return self._transition(actor, consent_id, Action.REVOKE, reason=reason)

    def narrow(
        self,
        actor: Identity,
        consent_id: str,
        *,
        remove_categories: Sequence[str] = (),
        remove_nodes: Sequence[str] = (),
    ) -> tuple[ConsentView, ConsentView]:
        """Revoke one category or node: the consent is revoked and replaced by a narrower one."""
        if not remove_categories and not remove_nodes:
            raise E.NarrowingInvalid("say which categories or nodes to remove")
        now = self.now()
        with self.store.begin() as conn:
            old = self._load(conn, consent_id)
            self._own_enterprise(actor, old)
            new_state = State(old.state)
            next_state(new_state, Action.NARROW)  # refuses PENDING and final states
            score_only = old.scope == [SCORE_ONLY]
            missing = [c for c in remove_categories if c not in old.scope and not score_only]
            missing += [n for n in remove_nodes if n not in old.nodes]
            if missing:
                raise E.NarrowingInvalid(
                    f"{missing} are not covered by consent {consent_id}; nothing to remove"
                )
            drop_nodes = set(remove_nodes)
            for c in remove_categories:
                drop_nodes.update(self.category_nodes.get(c, []))
            nodes = [n for n in old.nodes if n not in drop_nodes]
            if score_only:
                scope = [SCORE_ONLY]
            else:
                kept_cats = {self.node_categories[n] for n in nodes}
                scope = [c for c in old.scope if c not in remove_categories and c in kept_cats]
            if not nodes or not scope:
                raise E.NarrowingInvalid(
                    f"removing {list(remove_categories) + list(remove_nodes)} leaves nothing; revoke the consent instead"
                )
            left = old.max_uses - old.uses
            if left < 1:
                raise E.NarrowingInvalid(
                    f"consent {consent_id} has no uses left; revoke it instead"
                )
            if not self.store.update_consent(
                conn, consent_id, from_states=[old.state], state=State.REVOKED.value, updated_at=now
            ):
                raise E.TransitionNotAllowed(
                    f"consent {consent_id} changed concurrently; try again"
                )
            terms = ConsentTerms(
                enterprise=old.enterprise,
                bank=old.bank,
                purpose=old.purpose,
                scope=scope,
                nodes=nodes,
                validity_days=old.validity_days,
                max_uses=left,
                retention_days=old.retention_days,
                loan_term_days=old.loan_term_days,
            )
            new = self._insert(
                conn,
                terms,
                scope,
                nodes,
                new_state,
                actor,
                now,
                x5t=old.bank_x5t,
                replaces=old.consent_id,
                expires_at=old.expires_at,
                not_before=old.not_before,
            )
            self.store.update_consent(conn, consent_id, replaced_by=new.consent_id)
            old = self._load(conn, consent_id)
            self._event(
                conn,
                old,
                "revoked",
                actor,
                now,
                replaced_by=new.consent_id,
                removed_categories=sorted(remove_categories),
                removed_nodes=sorted(remove_nodes),
            )
            self._event(conn, new, "granted", actor, now, replaces=old.consent_id)
        self._after_commit([(old.id, State.REVOKED), (new.id, new_state)])
        return ConsentView.of(old), ConsentView.of(new)

    def expire_due(self, *, limit: int = 500) -> int:
        """Mark consents past their end as EXPIRED (one event each); return how many."""
        now = self.now()
        system = Identity(org_id="consent-service", role="consent", cert_sha256=b"")
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
                    self._event(conn, row, "expired", system, now, expires_at=row.expires_at)
                    changes.append((row.id, State.EXPIRED))
        if changes:
            self._after_commit(changes)
        return len(changes)

    # --- bank side ----------------------------------------------------------------

    def token(self, actor: Identity, consent_id: str) -> ConsentView:
        """The bank fetches its token; a consent granted without a known certificate is
        bound and signed now, to the certificate the bank connects with."""
        now = self.now()
        with self.store.begin() as conn:
            row = self._load(conn, consent_id)
            self._own_bank(actor, row)
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
            if row.token is None:
                row = self._mint(conn, row, actor.x5t_s256, now)
        return ConsentView.of(row, with_token=True)

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
        _require(actor, "coordinator", "bank")
        if len(jtis) > self.settings.max_uses_batch:
            raise BatchTooLarge(
                f"at most {self.settings.max_uses_batch} uses per call, got {len(jtis)}",
                max=self.settings.max_uses_batch,
                got=len(jtis),
            )
        now = self.now()

        def work(conn: Connection) -> list[int | FedcreditError]:
            return self._use_many(conn, actor, jtis, now)

        return self.store.write(work)

    def _use_many(
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
                    out[k] = self._refusal(rows[jti], now) or self._why_not_counted(
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
            return self._refusal(fresh, now) or E.ConsentRevoked(
                f"consent {fresh.consent_id} has been {fresh.state.lower()}", jti=jti
            )
        return E.ConsentRevoked(f"consent {row.consent_id} can no longer be used", jti=jti)

    @staticmethod
    def _refusal(row: ConsentRow, now: int) -> FedcreditError | None:
        """Why a use of ``row`` is refused, or None if its state allows one."""
        jti = row.jti
        if row.state == State.PAUSED:
            return E.ConsentSuspended(
                f"consent {row.consent_id} is paused by the enterprise", jti=jti
            )
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

    # --- listing ------------------------------------------------------------------------

    def list_consents(
        self,
        actor: Identity,
        *,
        states: Sequence[str] = (),
        expiring_within_days: int | None = None,
        limit: int | None = None,
    ) -> list[ConsentView]:
        _require(actor, "enterprise", "bank")
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
        return [ConsentView.of(r) for r in rows]

    def get(self, actor: Identity, consent_id: str) -> ConsentView:
        with self.store.begin() as conn:
            row = self._load(conn, consent_id)
        if actor.role == "enterprise":
            self._own_enterprise(actor, row)
        else:
            self._own_bank(actor, row)
        return ConsentView.of(row)

    # --- evidence -------------------------------------------------------------------------

    def deliver_events(self) -> int:
        """Deliver pending events to the evidence sink, in order, in batches; return how many.

        The events are already durable in the store's outbox (written in the same
        transaction as the change). A failing sink leaves them pending, retried by
        the next call. The store's own sink moves events into its evidence chain in
        the same transaction that marks them delivered (exactly once); another sink
        may see a batch again if the process dies between its append and the mark
        (at least once, never lost).
        """
        delivered = 0
        with self._deliver_lock:
            sink = self.sink
            if isinstance(sink, StoreEvidenceSink) and sink.store is self.store:
                try:
                    # Another round only while rounds come back full (a backlog): events
                    # committed meanwhile wait for the next call, so a stream of commits
                    # does not keep this loop taking turns with the writers.
                    n = DELIVERY_BATCH
                    while n == DELIVERY_BATCH:
                        n = self.store.deliver_to_evidence(LEDGER_KIND, DELIVERY_BATCH)
                        delivered += n
                except Exception as exc:  # the change itself is committed; delivery retries
                    log.warning("consent events not yet delivered (will retry): %s", exc)
                return delivered
            append_many = getattr(sink, "append_many", None)
            while True:
                pending = self.store.pending_events(DELIVERY_BATCH)
                if not pending:
                    return delivered
                receipts: list[tuple[int, Receipt]] = []
                try:
                    if append_many is not None:
                        got = append_many([(LEDGER_KIND, ev.subject, ev.payload) for ev in pending])
                        if len(got) != len(pending):
                            raise RuntimeError(
                                f"the evidence sink returned {len(got)} receipts for {len(pending)} entries"
                            )
                        receipts = [(ev.seq, r) for ev, r in zip(pending, got, strict=True)]
                    else:
                        for ev in pending:
                            receipts.append(
                                (ev.seq, sink.append(LEDGER_KIND, ev.subject, ev.payload))
                            )
                except Exception as exc:
                    log.warning("evidence sink refused consent events (will retry): %s", exc)
                    self.store.mark_delivered(receipts)
                    return delivered + len(receipts)
                self.store.mark_delivered(receipts)
                delivered += len(receipts)
                if len(pending) < DELIVERY_BATCH:  # no backlog: the rest waits for the next call
                    return delivered

    # --- background work ------------------------------------------------------------------

    def start(self, *, group_commit: bool = True) -> None:
        """Deliver events, expire consents and pick up rotated keys in a background thread;
        with ``group_commit``, concurrent lifecycle calls share transactions."""
        if group_commit:
            self.store.start_group_commit()
        if self._worker is None:
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="consent-worker", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        interval = self.settings.expiry_sweep_s
        next_sweep = 0.0
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=interval)
            # Coalesce: under a stream of commits, one delivery round (one sink call,
            # one store transaction) per DELIVERY_LINGER_S rather than one per commit,
            # so delivery does not take turns with issuance for the database.
            linger = last + DELIVERY_LINGER_S - time.monotonic()
            if linger > 0:
                self._stop.wait(linger)
            self._wake.clear()
            last = time.monotonic()
            try:
                self.deliver_events()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + interval
                    self.reload_keys()
                    while self.expire_due() > 0:
                        pass
            except Exception:  # keep working; the next round retries
                log.exception("consent background work failed")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None
        self.store.stop_group_commit()
        self.deliver_events()
        self.status.close()


class AuthorityUseCounter:
    """A :class:`consent.verify.UseCounter` counting at the authority (in-process)."""

    def __init__(self, authority: ConsentAuthority, actor: Identity) -> None:
        self.authority = authority
        self.actor = actor

    def use(self, jti: str, max_uses: int, expires_at: int) -> int:
        return self.authority.record_use(self.actor, jti)

    def use_many(self, items: Sequence[tuple[str, int, int]]) -> list[int | FedcreditError]:
        n = self.authority.settings.max_uses_batch
        out: list[int | FedcreditError] = []
        for i in range(0, len(items), n):
            out += self.authority.record_uses(self.actor, [jti for jti, _, _ in items[i : i + n]])
        return out

    def check(self, jti: str, max_uses: int) -> None:
        with self.authority.store.begin() as conn:
            row = self.authority.store.get_by_jti(conn, jti)
        if row is not None and row.uses >= max_uses:
            raise E.UsesExhausted(
                f"consent {row.consent_id} allows {max_uses} uses and all have been used",
                jti=jti,
                max_uses=max_uses,
            )


class _LocalStatusCache(StatusCache):
    """Refetches (in-process, cheap) as soon as the authority's list changed."""

    def __init__(self, authority: ConsentAuthority, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._authority = authority

    def status(self, idx: int) -> int:
        if self._authority.status.seq != self.seq:
            self.refresh()
        return super().status(idx)


def local_verifier(
    authority: ConsentAuthority,
    *,
    counter: UseCounter | None = None,
    clock: Callable[[], float] | None = None,
    jwks_ttl: float | None = None,
) -> ConsentVerifier:
    """A verifier fed in-process by ``authority`` (tests, benchmarks, single-process use)."""
    clk = clock or authority._clock
    s = authority.settings
    keys = KeyCache(
        authority.jwks, ttl=jwks_ttl if jwks_ttl is not None else s.jwks_ttl_s, clock=clk
    )
    status = _LocalStatusCache(
        authority,
        authority.status.token,
        keys,
        uri=s.status_uri,
        issuer=s.issuer,
        max_ttl=s.status_ttl_s,
        clock=clk,
    )
    return ConsentVerifier(
        issuer=s.issuer, keys=keys, status=status, counter=counter, leeway=s.leeway_s, clock=clk
    )
