"""The consent authority: lifecycle, issuance, keys, status list and events.

Everything the gRPC servicer does goes through here (and the tests and the
benchmark use it directly). :class:`ConsentAuthority` composes the parts, each in its
own module:

- :class:`~consent.lifecycle.Lifecycle`: request, grant, approve ... narrow, expire,
  the bank's token; who may act is :mod:`consent.access`, what the terms may cover
  :mod:`consent.scope`, writing and signing :mod:`consent.issuance`;
- :class:`~consent.uses.UseRecorder`: use counting, atomic with revocation;
- :class:`~consent.outbox.EventOutbox`: the events, written with each change and
  delivered to the evidence sink after the commit;
- :class:`~consent.signing.KeyRing`: the signing keys, rotation and the JWKS;
- :class:`~consent.publisher.StatusPublisher`: the status list, signed lazily.

After a commit the status list is updated in memory (subscribers are woken) and the
pending events are delivered to the evidence sink: at once when no background worker
runs, else by the worker in batches (one round per ``DELIVERY_LINGER_S`` at most),
retried until the sink takes them.

Throughput comes from sharing: concurrent callers share a commit (group commit,
:meth:`ConsentStore.write`), and concurrent grants also share their statements
(one multi-row INSERT, token UPDATE and event INSERT for all, see
:meth:`ConsentStore.write_merged`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from fedcredit.common.departments import DEPARTMENTS
from fedcredit.common.errors import FedcreditError
from fedcredit.common.evidence import EvidenceSink
from fedcredit.common.tls import Identity
from fedcredit.consent import errors as E
from fedcredit.consent.issuance import Issuer
from fedcredit.consent.keys import KeyRecord, PublicKey
from fedcredit.consent.lifecycle import Changes, Lifecycle
from fedcredit.consent.outbox import EventOutbox
from fedcredit.consent.publisher import StatusPublisher
from fedcredit.consent.scope import TermsChecker
from fedcredit.consent.settings import ConsentSettings
from fedcredit.consent.signing import KeyRing, Signer
from fedcredit.consent.states import Action
from fedcredit.consent.store import ConsentStore
from fedcredit.consent.terms import ConsentTerms, ConsentView
from fedcredit.consent.uses import UseRecorder
from fedcredit.consent.verify import (
    ConsentVerifier,
    FetchNeeded,
    KeyCache,
    Reservation,
    StatusCache,
    UseCounter,
    UseRef,
)

log = logging.getLogger(__name__)

# Shortest time between two background delivery rounds (the events wait durably in the outbox).
DELIVERY_LINGER_S = 0.1
# How often the worker looks for keys rotated by another process (then pushes the change).
KEY_POLL_S = 0.25


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
        self.settings = s = settings or ConsentSettings()
        self.bank_certs = bank_certs
        self._clock = clock
        checker = TermsChecker(
            s.caps, banks, node_categories or {d.org_id: d.category for d in DEPARTMENTS}
        )
        self.banks = checker.banks
        self.node_categories = checker.node_categories
        self.category_nodes = checker.category_nodes
        self.outbox = EventOutbox(store, sink)
        store.create_schema()
        self.keyring = KeyRing(store, s, clock)
        self.status = StatusPublisher(s, self.keyring.signer, clock, self.keyring.epoch)
        self._keys_epoch = self.keyring.epoch()
        with store.begin() as conn:
            self.status.load(store.status_entries(conn))
        issuer = Issuer(store, s, self.keyring.signer, bank_certs)
        self.lifecycle = Lifecycle(
            store, s, checker, issuer, self.outbox, self._after_commit, clock
        )
        self.uses = UseRecorder(
            store, s, clock, outbox=self.outbox, after_commit=lambda: self._after_commit(())
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def now(self) -> int:
        return int(self._clock())

    @property
    def sink(self) -> EvidenceSink:
        """Where the consent events go (default: the store's own evidence chain)."""
        return self.outbox.sink

    @sink.setter
    def sink(self, sink: EvidenceSink) -> None:
        self.outbox.sink = sink

    # --- keys -----------------------------------------------------------------

    def reload_keys(self) -> None:
        self.keyring.reload()

    def keys(self) -> list[KeyRecord]:
        return self.keyring.keys()

    def signer(self) -> Signer:
        return self.keyring.signer()

    def rotate_keys(
        self, *, immediate: bool = False, compromised: bool = False
    ) -> tuple[KeyRecord, list[KeyRecord]]:
        """Publish a new key; it signs after ``key_publish_lead_s`` (at once if ``immediate``).

        ``compromised``: the old keys are withdrawn from the JWKS at once, the change is
        pushed to every subscribed verifier with a new status list (whose ``keys`` claim
        makes them refetch the JWKS), and the live tokens they signed are re-issued under
        the new key (:meth:`Lifecycle.reissue`)."""
        new, changed = self.keyring.rotate(immediate=immediate, compromised=compromised)
        self.keys_changed()
        if compromised:
            self.lifecycle.reissue([k.kid for k in changed if k.compromised_at is not None])
        return new, changed

    @property
    def keys_epoch(self) -> str:
        """:func:`consent.keys.jwks_epoch` of the key set last published (and pushed)."""
        return self._keys_epoch

    def keys_changed(self) -> bool:
        """Push a new status list if the published key set changed (rotated here or by
        another process: the background worker calls this every ``KEY_POLL_S``)."""
        epoch = self.keyring.epoch()
        if epoch == self._keys_epoch:
            return False
        self._keys_epoch = epoch
        self.status.touch()
        return True

    def jwks(self) -> dict[str, Any]:
        return self.keyring.jwks()

    # --- lifecycle --------------------------------------------------------------

    def request(self, actor: Identity, terms: ConsentTerms) -> ConsentView:
        """A bank asks an enterprise for consent (PENDING)."""
        return self.lifecycle.request(actor, terms)

    def grant(self, actor: Identity, terms: ConsentTerms) -> ConsentView:
        """An enterprise grants a bank consent directly (ACTIVE)."""
        return self.lifecycle.grant(actor, terms)

    def grant_many(self, actor: Identity, batch: Sequence[ConsentTerms]) -> list[ConsentView]:
        """Several direct grants by one enterprise in one transaction (all or nothing)."""
        return self.lifecycle.grant_many(actor, batch)

    def approve(self, actor: Identity, consent_id: str) -> ConsentView:
        return self.lifecycle.transition(actor, consent_id, Action.APPROVE)

    def reject(self, actor: Identity, consent_id: str, reason: str = "") -> ConsentView:
        return self.lifecycle.transition(actor, consent_id, Action.REJECT, reason=reason)

    def pause(self, actor: Identity, consent_id: str) -> ConsentView:
        return self.lifecycle.transition(actor, consent_id, Action.PAUSE)

    def resume(self, actor: Identity, consent_id: str) -> ConsentView:
        return self.lifecycle.transition(actor, consent_id, Action.RESUME)

    def revoke(self, actor: Identity, consent_id: str, reason: str = "") -> ConsentView:
        return self.lifecycle.transition(actor, consent_id, Action.REVOKE, reason=reason)

    def narrow(
        self,
        actor: Identity,
        consent_id: str,
        *,
        remove_categories: Sequence[str] = (),
        remove_nodes: Sequence[str] = (),
    ) -> tuple[ConsentView, ConsentView]:
        """Revoke one category or node: the consent is revoked and replaced by a narrower one."""
        return self.lifecycle.narrow(
            actor, consent_id, remove_categories=remove_categories, remove_nodes=remove_nodes
        )

    def expire_due(self, *, limit: int = 500) -> int:
        """Mark consents past their end as EXPIRED (one event each); return how many."""
        return self.lifecycle.expire_due(limit=limit)

    # --- bank side, uses and listing ----------------------------------------------

    def token(self, actor: Identity, consent_id: str) -> ConsentView:
        """The bank fetches its token (bound and signed now if it was not yet)."""
        return self.lifecycle.token(actor, consent_id)

    def record_use(self, actor: Identity, jti: str) -> int:
        """Count one use of a token (the coordinator, once per score); the count after it."""
        return self.uses.record_use(actor, jti)

    def reserve_uses(
        self, actor: Identity, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """Reserve (or join) use ``use_id`` of each token (:meth:`UseRecorder.reserve`)."""
        return self.uses.reserve(actor, use_id, refs, pin=pin)

    def settle_uses(
        self, actor: Identity, use_id: str, refs: Sequence[UseRef], *, commit: bool
    ) -> int:
        """Commit or release the uses ``actor`` opened (:meth:`UseRecorder.settle`)."""
        return self.uses.settle(actor, use_id, refs, commit=commit)

    def reap_uses(self, *, limit: int = 500) -> int:
        """Release uses reserved over ``use_lease_s`` ago and never settled (:meth:`UseRecorder.reap`)."""
        return self.uses.reap(limit=limit)

    def record_uses(self, actor: Identity, jtis: Sequence[str]) -> list[int | FedcreditError]:
        """Count one use of each token, in one transaction: per token its count or its error."""
        return self.uses.record_uses(actor, jtis)

    def list_consents(
        self,
        actor: Identity,
        *,
        states: Sequence[str] = (),
        expiring_within_days: int | None = None,
        limit: int | None = None,
    ) -> list[ConsentView]:
        return self.lifecycle.list_consents(
            actor, states=states, expiring_within_days=expiring_within_days, limit=limit
        )

    def get(self, actor: Identity, consent_id: str) -> ConsentView:
        return self.lifecycle.get(actor, consent_id)

    # --- evidence and background work -----------------------------------------------------

    def deliver_events(self) -> int:
        """Deliver pending events to the evidence sink (see :meth:`EventOutbox.deliver`)."""
        return self.outbox.deliver()

    def _after_commit(self, changes: Changes) -> None:
        self.status.set(changes)
        if self._worker is not None:
            self._wake.set()  # the background worker delivers the events
        else:
            self.deliver_events()

    def start(self, *, group_commit: bool = True) -> None:
        """Deliver events, expire consents, release lapsed use reservations and pick up
        rotated keys in a background thread;
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
            self._wake.wait(timeout=min(interval, KEY_POLL_S))
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
                # Keys rotated by another process (the CLI on the store) are pushed within
                # KEY_POLL_S: one small SELECT per round.
                self.reload_keys()
                self.keys_changed()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + interval
                    while self.expire_due() > 0:
                        pass
                    # Uses whose opener died mid-Score come back after their lease.
                    while self.reap_uses() > 0:
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


# Who an in-process verifier counts uses as, unless told.
LOCAL_VERIFIER = Identity("local-verifier", "coordinator", b"\x00" * 32)


class AuthorityUseCounter(UseCounter):
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

    def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        out: list[Reservation | FedcreditError] = []
        n = self.authority.settings.max_uses_batch
        for i in range(0, len(refs), n):
            out += self.authority.reserve_uses(self.actor, use_id, refs[i : i + n], pin=pin)
        return out

    def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        n = self.authority.settings.max_uses_batch
        for i in range(0, len(refs), n):
            self.authority.settle_uses(self.actor, use_id, refs[i : i + n], commit=commit)

    def check(self, jti: str, max_uses: int) -> None:
        with self.authority.store.begin() as conn:
            row = self.authority.store.get_by_jti(conn, jti)
        if row is not None and row.uses >= max_uses:
            raise E.UsesExhausted(
                f"consent {row.consent_id} allows {max_uses} uses and all have been used",
                jti=jti,
                max_uses=max_uses,
            )


class _LocalKeyCache(KeyCache):
    """The authority's JWKS, refetched (in-process) as soon as its key set changed: a key
    declared compromised stops verifying at the next lookup, not at the TTL."""

    def __init__(self, authority: ConsentAuthority, ttl: float, clock: Callable[[], float]):
        super().__init__(authority.jwks, ttl=ttl, clock=clock)
        self._authority = authority
        self._seen = authority.keys_epoch

    def lookup(self, kid: str, *, fetch: bool = True) -> PublicKey:
        epoch = self._authority.keys_epoch  # an attribute read: the hot path stays cheap
        if epoch != self._seen:
            if not fetch:
                raise FetchNeeded("the authority's key set changed")
            self._seen = epoch
            self.refresh(force=True)
        return super().lookup(kid, fetch=fetch)


class _LocalStatusCache(StatusCache):
    """The authority's signed list, refetched (in-process, cheap) as soon as it changed."""

    def __init__(
        self, authority: ConsentAuthority, keys: KeyCache, clock: Callable[[], float]
    ) -> None:
        s = authority.settings
        super().__init__(
            authority.status.token,
            keys,
            uri=s.status_uri,
            issuer=s.issuer,
            max_ttl=s.status_ttl_s,
            clock=clock,
        )
        self._authority = authority

    def status(self, idx: int, *, fetch: bool = True) -> int:
        if self._authority.status.seq != self.seq:
            if not fetch:
                raise FetchNeeded("the authority's status list changed")
            self.refresh()
        return super().status(idx, fetch=fetch)


def local_verifier(
    authority: ConsentAuthority,
    *,
    counter: UseCounter | None = None,
    clock: Callable[[], float] | None = None,
    jwks_ttl: float | None = None,
    actor: Identity | None = None,
) -> ConsentVerifier:
    """A verifier fed in-process by ``authority`` (tests, benchmarks, single-process use).

    Uses are counted at the authority (``counter`` default) on behalf of ``actor`` (the
    node or coordinator holding the verifier; default an in-process coordinator)."""
    clk = clock or authority._clock
    s = authority.settings
    keys = _LocalKeyCache(authority, jwks_ttl if jwks_ttl is not None else s.jwks_ttl_s, clk)
    return ConsentVerifier(
        issuer=s.issuer,
        keys=keys,
        status=_LocalStatusCache(authority, keys, clk),
        counter=counter
        if counter is not None
        else AuthorityUseCounter(authority, actor or LOCAL_VERIFIER),
        leeway=s.leeway_s,
        clock=clk,
        caps=s.caps,
    )
