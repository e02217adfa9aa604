"""The marketplace: products, needs, grab orders, consented release, loans and the fund's book.

Every mutating call carries the caller's request id: the state change and its ledger event
are one transaction (``market.store``), the event is in the central ledger before the call
answers ("no ledger entry, no answer"), and a retry with the same id is answered from the
store with the same result and no second entry. Identity and score reach a bank only
through :meth:`Marketplace.reveal`, under a ``marketplace`` consent the enterprise released
to that bank, verified against the calling bank's own certificate.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Connection, insert, select, update

from fedcredit.common.errors import FedcreditError
from fedcredit.common.evidence import EvidenceSink
from fedcredit.common.tls import Identity
from fedcredit.consent.verify import TokenVerifier
from fedcredit.coordinator.policy import FundPolicy
from fedcredit.market import rules
from fedcredit.market.errors import (
    ClaimWindowLapsed,
    ConsentNotReleased,
    GradeBelowFloor,
    IllegalTransition,
    InvalidMarketRequest,
    InvalidNeed,
    LedgerUnavailable,
    NeedAlreadyClaimed,
    NeedNotFound,
    NoMatchingProduct,
    NotYourNeed,
    ProductNotFound,
)
from fedcredit.market.rules import GuaranteeLookup
from fedcredit.market.store import Event, MarketStore, Stored, loans, needs, products, profiles

MARKETPLACE_PURPOSE = "marketplace"


@dataclass(frozen=True, slots=True)
class MarketSettings:
    """The marketplace's timers (seconds), documented where they are defined."""

    claim_window_s: int = 3600  # a claim's exclusivity: the bank reviews within 1 h (SLA)
    offer_validity_s: int = 3 * 86400  # an offer stands 3 days, then the need reopens
    review_sla_s: int = 3600  # case study: "review in 1 hour"
    disbursement_sla_s: int = 86400  # case study: "money in 1 day"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(10)}"


def _key(actor: str, request_id: str) -> str:
    if not request_id or len(request_id) > 128 or not request_id.isprintable():
        raise InvalidMarketRequest(
            f"request id must be 1-128 printable characters, got {request_id!r}"
        )
    return f"{actor}:{request_id}"


class Marketplace:
    def __init__(
        self,
        store: MarketStore,
        sink: EvidenceSink,
        *,
        verifier: TokenVerifier | None = None,
        guarantees: GuaranteeLookup | None = None,
        fund: FundPolicy | None = None,
        settings: MarketSettings | None = None,
        clock: Callable[[], float] = time.time,
        defer_publish: bool = False,
    ) -> None:
        """``defer_publish``: for an in-process batch driver only (``world simulate``): events
        wait in the outbox until :meth:`flush` publishes them in batches. A served
        marketplace never defers: nothing is answered before its ledger entry."""
        self.defer_publish = defer_publish
        self.store = store
        self.sink = sink
        self.verifier = verifier
        self.guarantees = guarantees
        self.fund = fund or FundPolicy()
        self.settings = settings or MarketSettings()
        self.clock = clock
        self._publish_lock = threading.Lock()

    def now(self) -> int:
        return int(self.clock())

    # ------------------------------------------------------------ ledger first

    def publish(self, stored: Stored) -> int:
        """Put ``stored``'s event into the ledger (once) and return its index."""
        if stored.ledger_index is not None:
            return stored.ledger_index
        with self._publish_lock:
            pending = self.store.unpublished([stored.seq])
            if not pending:
                index = self.store.ledger_index(stored.seq)
                assert index is not None
                return index
            seq, kind, subject, payload = pending[0]
            try:
                receipt = self.sink.append(kind, subject, payload)
            except FedcreditError as exc:
                raise LedgerUnavailable(
                    f"the ledger did not take the {kind} entry ({exc.reason}); retry with the "
                    "same request id — nothing is answered without a ledger entry"
                ) from exc
            except Exception as exc:
                raise LedgerUnavailable(
                    f"the ledger did not take the {kind} entry ({type(exc).__name__}); retry "
                    "with the same request id"
                ) from exc
            self.store.mark_published([(seq, receipt.index)])
            return receipt.index

    def flush(self, batch: int = 500) -> int:
        """Publish every event still in the outbox (a crash, a ledger outage, a deferring
        driver), in order, ``batch`` per ledger call when the sink takes batches; how many."""
        many = getattr(self.sink, "append_many", None)
        n = 0
        with self._publish_lock:
            pending = self.store.unpublished()
            for i in range(0, len(pending), batch if many else 1):
                chunk = pending[i : i + (batch if many else 1)]
                items = [(kind, subject, payload) for _, kind, subject, payload in chunk]
                try:
                    receipts = many(items) if many else [self.sink.append(*items[0])]
                except Exception as exc:
                    raise LedgerUnavailable(
                        f"the ledger did not take {len(items)} pending marketplace entries "
                        f"({type(exc).__name__}); they stay in the outbox"
                    ) from exc
                self.store.mark_published(
                    [(c[0], r.index) for c, r in zip(chunk, receipts, strict=True)]
                )
                n += len(chunk)
        return n

    def _change(
        self,
        actor: str | Identity,
        request_id: str,
        params: Mapping[str, Any],
        apply: Callable[[Connection], Event],
    ) -> dict[str, Any]:
        """Run ``apply`` once per request id, in one transaction with its event; ledger it.
        An organisation acting through the portal (``actor.via``) is ledgered so: the event
        carries ``"via": "portal"`` (a person's delegated session, not its own certificate)."""
        org = actor if isinstance(actor, str) else actor.org_id
        via = "" if isinstance(actor, str) else actor.via
        key = _key(org, request_id)
        with self.store.tx() as c:
            stored = self.store.replay(c, key, params)
            if stored is None:
                ev = apply(c)
                if via:
                    ev = replace(ev, payload={**ev.payload, "via": via})
                stored = self.store.record(c, key, params, ev)
        index = 0 if self.defer_publish else self.publish(stored)
        return {**stored.result, "ledger_index": index, "replayed": stored.replayed}

    # ------------------------------------------------------------ products

    def publish_product(
        self, bank: Identity, request_id: str, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        product = product_from(bank.org_id, spec)
        product.check(self.fund)

        def apply(c: Connection) -> Event:
            c.execute(
                insert(products).values(
                    product_id=product.product_id, bank=bank.org_id, spec=product_spec(product)
                )
            )
            return Event(
                "market_product",
                None,
                {"event": "product_published", **product_spec(product)},
                {"product_id": product.product_id},
            )

        return self._change(bank, request_id, {"product": dict(spec)}, apply)

    def products(
        self, bank: str | None = None, conn: Connection | None = None
    ) -> list[rules.Product]:
        q = select(products.c.spec).where(products.c.active.is_(True))
        if bank is not None:
            q = q.where(products.c.bank == bank)
        if conn is not None:
            return [
                product_from(s["bank"], s)
                for (s,) in conn.execute(q.order_by(products.c.product_id))
            ]
        with self.store.tx() as c:
            return self.products(bank, c)

    # ------------------------------------------------------------ needs

    def profile(self, c: Connection, enterprise: str) -> rules.Profile | None:
        row = (
            c.execute(select(profiles).where(profiles.c.enterprise == enterprise))
            .mappings()
            .first()
        )
        if row is None:
            return None
        return rules.Profile(
            row["enterprise"],
            row["industry"],
            row["region"],
            row["headcount"],
            row["grade"],
            row["pd_ppm"],
        )

    def post_need(
        self, enterprise: Identity, request_id: str, amount: int, term_months: int, purpose: str
    ) -> dict[str, Any]:
        need = rules.Need(amount, term_months, purpose)
        need.check()
        need_id = new_id("need")

        def apply(c: Connection) -> Event:
            if self.profile(c, enterprise.org_id) is None:
                raise InvalidNeed(
                    "the platform holds no profile of this enterprise yet (registration data "
                    "from market regulation); it is created by the platform's rating run"
                )
            c.execute(
                insert(needs).values(
                    need_id=need_id,
                    enterprise=enterprise.org_id,
                    amount=amount,
                    term_months=term_months,
                    purpose=purpose,
                    state="OPEN",
                    declined_by=[],
                    channel="grab",
                    created_at=self.now(),
                )
            )
            payload = {"event": "need_posted", "need_id": need_id, "amount": amount,
                       "term_months": term_months, "purpose": purpose}  # fmt: skip
            return Event("market_need", enterprise.org_id, payload, {"need_id": need_id})

        params = {"amount": amount, "term": term_months, "purpose": purpose}
        return self._change(enterprise, request_id, params, apply)

    def open_needs(self, bank: Identity, limit: int = 100) -> list[dict[str, Any]]:
        """What a bank sees of the needs it may claim: bands only (see module docstring)."""
        now = self.now()
        q = (
            select(
                needs,
                profiles.c.industry,
                profiles.c.region,
                profiles.c.headcount,
                profiles.c.grade,
            )
            .join(profiles, profiles.c.enterprise == needs.c.enterprise)
            .where(
                (needs.c.state == "OPEN")
                | ((needs.c.state.in_(["CLAIMED", "OFFERED"])) & (needs.c.claim_until < now))
            )
            .order_by(needs.c.created_at, needs.c.need_id)
            .limit(max(1, min(limit, 1000)))
        )
        with self.store.tx() as c:
            rows = c.execute(q).mappings().all()
        return [need_view(dict(r)) for r in rows if bank.org_id not in (r["declined_by"] or [])]

    def need_for(self, who: Identity, need_id: str) -> dict[str, Any]:
        """A need as its enterprise sees it (everything) or its winning bank (bands + offer)."""
        with self.store.tx() as c:
            row = self._need_row(c, need_id)
            prof = self.profile(c, row["enterprise"])
        if who.role == "enterprise" and who.org_id == row["enterprise"]:
            return {k: row[k] for k in ("need_id", "enterprise", "amount", "term_months",
                                        "purpose", "state", "bank", "offer", "claim_until")}  # fmt: skip
        if who.role == "bank" and row["bank"] == who.org_id:
            assert prof is not None
            view = need_view({**row, **asdict(prof)})
            # the offer is on the need's exact amount, which the bank learns only by reveal
            view["offer"] = {k: v for k, v in (row["offer"] or {}).items() if k != "amount"}
            view["consent_id"] = row["consent_id"] or ""
            return view
        raise NotYourNeed(f"need {need_id} is neither yours nor claimed by you")

    def needs_of(self, who: Identity, limit: int = 200) -> list[dict[str, Any]]:
        """The caller's own needs, newest first, each as :meth:`need_for` shows it: an
        enterprise's needs (everything), or the needs a bank holds a claim on (bands and
        its offer; nothing more than it sees of each need by id)."""
        col = needs.c.enterprise if who.role == "enterprise" else needs.c.bank
        q = (
            select(needs.c.need_id)
            .where(col == who.org_id)
            .order_by(needs.c.created_at.desc(), needs.c.need_id)
            .limit(max(1, min(limit, 1000)))
        )
        with self.store.tx() as c:
            ids = [str(r[0]) for r in c.execute(q)]
        out = []
        for need_id in ids:
            try:
                out.append(self.need_for(who, need_id))
            except NotYourNeed:  # the claim lapsed and another bank took it meanwhile
                continue
        return out

    def _need_row(self, c: Connection, need_id: str, lock: bool = False) -> Mapping[str, Any]:
        q = select(needs).where(needs.c.need_id == need_id)
        row = c.execute(self.store.for_update(c, q) if lock else q).mappings().first()
        if row is None:
            raise NeedNotFound(f"no need {need_id!r}")
        return dict(row)

    # ------------------------------------------------------------ grab orders

    def claim(self, bank: Identity, request_id: str, need_id: str) -> dict[str, Any]:
        """Claim a need: exactly one bank wins, for the exclusivity window."""

        def apply(c: Connection) -> Event:
            row = self._need_row(c, need_id)
            prof = self.profile(c, row["enterprise"])
            assert prof is not None
            self._check_claimable(c, bank.org_id, row, prof)
            now = self.now()
            until = now + self.settings.claim_window_s
            won = c.execute(
                update(needs)
                .where(
                    needs.c.need_id == need_id,
                    (needs.c.state == "OPEN")
                    | (needs.c.state.in_(["CLAIMED", "OFFERED"]) & (needs.c.claim_until < now)),
                )
                .values(
                    state="CLAIMED",
                    bank=bank.org_id,
                    claim_until=until,
                    claimed_at=now,
                    offer=None,
                    offered_at=None,
                    consent_id=None,
                )
            ).rowcount
            if won != 1:
                raise NeedAlreadyClaimed(
                    f"need {need_id} was claimed by another bank first; it reopens if that bank "
                    "does not make an offer the enterprise accepts"
                )
            payload = {"event": "need_claimed", "need_id": need_id, "bank": bank.org_id,
                       "from": row["state"], "claim_until": until}  # fmt: skip
            return Event("market_need", row["enterprise"], payload,
                         {"need_id": need_id, "state": "CLAIMED", "claim_until": until})  # fmt: skip

        return self._change(bank, request_id, {"claim": need_id}, apply)

    def _check_claimable(
        self, c: Connection, bank: str, row: Mapping[str, Any], prof: rules.Profile
    ) -> None:
        if row["state"] in ("ACCEPTED", "WITHDRAWN"):
            raise IllegalTransition(
                f"the need is {row['state']}; it can no longer be claimed",
                state=row["state"], event="claim",
            )  # fmt: skip
        if bank in (row["declined_by"] or []):
            raise NeedAlreadyClaimed("the enterprise declined this bank's offer on this need")
        mine = self.products(bank, c)
        if not any(rules.matches(p, prof, row["amount"], row["term_months"]) for p in mine):
            as_a = rules.Profile(prof.enterprise, prof.industry, prof.region, prof.headcount, "A")
            if any(rules.matches(p, as_a, row["amount"], row["term_months"]) for p in mine):
                raise GradeBelowFloor("the need's grade is below every matching product's floor")
            raise NoMatchingProduct(
                "none of this bank's products covers the need (grade, industry, region, amount, term)"
            )

    def offer(
        self, bank: Identity, request_id: str, need_id: str, product_id: str, rate_bp: int
    ) -> dict[str, Any]:
        def apply(c: Connection) -> Event:
            row = self._need_row(c, need_id, lock=True)
            self._own_live_claim(bank.org_id, row)
            nxt = rules.next_need_state(row["state"], "offer")
            prod = self._product(c, bank.org_id, product_id)
            prof = self.profile(c, row["enterprise"])
            assert prof is not None
            if not rules.matches(prod, prof, row["amount"], row["term_months"]):
                raise NoMatchingProduct(f"product {product_id} does not cover this need")
            if not prod.rate_min_bp <= rate_bp <= prod.rate_max_bp:
                raise InvalidMarketRequest(
                    f"rate must be within the product's {prod.rate_min_bp}-{prod.rate_max_bp} bp, got {rate_bp}"
                )
            now = self.now()
            offer = {"product_id": product_id, "rate_bp": rate_bp, "amount": row["amount"],
                     "term_months": row["term_months"], "fund_guaranteed": prod.fund_guaranteed,
                     "valid_until": now + self.settings.offer_validity_s}  # fmt: skip
            c.execute(
                update(needs).where(needs.c.need_id == need_id).values(
                    state=nxt, offer=offer, offered_at=now, claim_until=offer["valid_until"])
            )  # fmt: skip
            payload = {"event": "offer_made", "need_id": need_id, "bank": bank.org_id, **offer}
            return Event(
                "market_need", row["enterprise"], payload, {"need_id": need_id, "state": nxt}
            )

        params = {"offer": need_id, "product": product_id, "rate": rate_bp}
        return self._change(bank, request_id, params, apply)

    def _own_live_claim(self, bank: str, row: Mapping[str, Any]) -> None:
        if row["bank"] != bank or row["state"] not in ("CLAIMED", "OFFERED"):
            raise NotYourNeed(f"need {row['need_id']} is not claimed by {bank}")
        if row["claim_until"] is not None and row["claim_until"] < self.now():
            raise ClaimWindowLapsed(
                f"the claim on need {row['need_id']} lapsed; the need is open to every bank again"
            )

    def _product(self, c: Connection, bank: str, product_id: str) -> rules.Product:
        spec = c.execute(
            select(products.c.spec).where(
                products.c.product_id == product_id, products.c.bank == bank
            )
        ).scalar()
        if spec is None:
            raise ProductNotFound(f"bank {bank} has no product {product_id!r}")
        return product_from(bank, spec)

    def release_consent(
        self, enterprise: Identity, request_id: str, need_id: str, consent_id: str
    ) -> dict[str, Any]:
        """The enterprise names the ``marketplace`` consent it granted the winning bank."""

        def apply(c: Connection) -> Event:
            row = self._need_row(c, need_id, lock=True)
            if row["enterprise"] != enterprise.org_id:
                raise NotYourNeed(f"need {need_id} is not yours")
            if row["state"] not in ("CLAIMED", "OFFERED", "ACCEPTED") or not row["bank"]:
                raise IllegalTransition(
                    f"the need is {row['state']}; consent is released to the bank holding the claim",
                    state=row["state"], event="release_consent",
                )  # fmt: skip
            c.execute(update(needs).where(needs.c.need_id == need_id).values(consent_id=consent_id))
            payload = {"event": "consent_released", "need_id": need_id, "bank": row["bank"],
                       "consent_id": consent_id}  # fmt: skip
            return Event(
                "market_need", enterprise.org_id, payload, {"need_id": need_id, "bank": row["bank"]}
            )

        return self._change(enterprise, request_id, {"release": need_id, "c": consent_id}, apply)

    def reveal(self, bank: Identity, need_id: str, token: str) -> dict[str, Any]:
        """Identity and score, to the claim's bank, under the enterprise's marketplace consent
        (``token``: the one the consent service issued to this bank for this enterprise)."""
        if self.verifier is None:
            raise ConsentNotReleased("this marketplace has no consent verifier configured")
        with self.store.tx() as c:
            row = self._need_row(c, need_id)
            prof = self.profile(c, row["enterprise"])
        if row["bank"] != bank.org_id or row["state"] not in ("CLAIMED", "OFFERED", "ACCEPTED"):
            raise NotYourNeed(f"need {need_id} is not claimed by {bank.org_id}")
        if not row["consent_id"]:
            raise ConsentNotReleased(
                f"the enterprise has not released a marketplace consent to {bank.org_id} for this need"
            )
        v = self.verifier.verify(
            token,
            bank_org=bank.org_id,
            bank_cert_sha256=bank.cert_sha256,
            enterprise=row["enterprise"],
            purposes=[MARKETPLACE_PURPOSE],
            count_use=True,
        )
        assert prof is not None
        if v.consent_id != row["consent_id"]:
            raise ConsentNotReleased(
                f"the token is for consent {v.consent_id}; the enterprise released {row['consent_id']} for this need"
            )
        result = {"need_id": need_id, "enterprise": row["enterprise"], "grade": prof.grade or "",
                  "pd_ppm": prof.pd_ppm or 0, "amount": row["amount"], "jti": v.jti}  # fmt: skip
        ev = Event("market_reveal", row["enterprise"],
                   {"event": "identity_released", "need_id": need_id, "bank": bank.org_id,
                    "jti": v.jti, "released": ["enterprise", "grade", "pd"]}, result)  # fmt: skip
        key = f"{bank.org_id}:reveal:{need_id}:{v.jti}:{v.uses}"
        with self.store.tx() as c:
            stored = self.store.record(c, key, {"reveal": need_id}, ev)
        self.publish(stored)  # the disclosure is in the ledger before it is answered
        return result

    def answer(
        self, enterprise: Identity, request_id: str, need_id: str, accept: bool, why: str = ""
    ) -> dict[str, Any]:
        """The enterprise accepts the offer (a loan is opened) or declines it (the need reopens)."""

        def apply(c: Connection) -> Event:
            row = self._need_row(c, need_id, lock=True)
            if row["enterprise"] != enterprise.org_id:
                raise NotYourNeed(f"need {need_id} is not yours")
            nxt = rules.next_need_state(row["state"], "accept" if accept else "decline")
            if row["claim_until"] is not None and row["claim_until"] < self.now():
                raise ClaimWindowLapsed("the offer lapsed; the need is open again")
            result: dict[str, Any] = {"need_id": need_id, "state": nxt}
            values: dict[str, Any] = {"state": nxt}
            if accept:
                result["loan_id"] = self._open_loan(c, row)
                values["closed_at"] = self.now()
            else:
                values.update(bank=None, offer=None, claim_until=None, consent_id=None,
                              declined_by=[*(row["declined_by"] or []), row["bank"]])  # fmt: skip
            c.execute(update(needs).where(needs.c.need_id == need_id).values(**values))
            payload = {"event": "offer_accepted" if accept else "offer_declined",
                       "need_id": need_id, "bank": row["bank"], "why": why[:200], **result}  # fmt: skip
            return Event("market_need", enterprise.org_id, payload, result)

        params = {"answer": need_id, "accept": accept}
        return self._change(enterprise, request_id, params, apply)

    def _open_loan(self, c: Connection, row: Mapping[str, Any]) -> str:
        offer = row["offer"]
        loan_id = new_id("loan")
        times = {"posted": row["created_at"], "claimed": row["claimed_at"],
                 "offered": row["offered_at"], "ACCEPTED": self.now()}  # fmt: skip
        c.execute(
            insert(loans).values(
                loan_id=loan_id, need_id=row["need_id"], bank=row["bank"],
                enterprise=row["enterprise"], product_id=offer["product_id"],
                principal=offer["amount"], term_months=offer["term_months"],
                rate_bp=offer["rate_bp"], guaranteed_product=offer["fund_guaranteed"],
                channel=row["channel"],
                state="ACCEPTED", times=times,
            )
        )  # fmt: skip
        return loan_id

    def withdraw(self, enterprise: Identity, request_id: str, need_id: str) -> dict[str, Any]:
        def apply(c: Connection) -> Event:
            row = self._need_row(c, need_id, lock=True)
            if row["enterprise"] != enterprise.org_id:
                raise NotYourNeed(f"need {need_id} is not yours")
            nxt = rules.next_need_state(row["state"], "withdraw")
            c.execute(
                update(needs)
                .where(needs.c.need_id == need_id)
                .values(state=nxt, closed_at=self.now())
            )
            return Event("market_need", enterprise.org_id,
                         {"event": "need_withdrawn", "need_id": need_id}, {"need_id": need_id, "state": nxt})  # fmt: skip

        return self._change(enterprise, request_id, {"withdraw": need_id}, apply)

    def sweep(self) -> int:
        """Reopen needs whose claim or offer lapsed, each a ledgered ``need_lapsed`` event."""
        now = self.now()
        with self.store.tx() as c:
            ids = [r for (r,) in c.execute(select(needs.c.need_id).where(
                needs.c.state.in_(["CLAIMED", "OFFERED"]), needs.c.claim_until < now))]  # fmt: skip
        n = 0
        for need_id in ids:

            def apply(c: Connection, need_id: str = need_id) -> Event:
                row = self._need_row(c, need_id, lock=True)
                nxt = rules.next_need_state(row["state"], "lapse")
                if row["claim_until"] is None or row["claim_until"] >= now:
                    raise IllegalTransition(
                        "the claim is live again", state=row["state"], event="lapse"
                    )
                c.execute(update(needs).where(needs.c.need_id == need_id).values(
                    state=nxt, bank=None, offer=None, claim_until=None, consent_id=None))  # fmt: skip
                return Event("market_need", row["enterprise"], {"event": "need_lapsed",
                             "need_id": need_id, "bank": row["bank"]}, {"state": nxt})  # fmt: skip

            try:
                self._change("platform", f"lapse:{need_id}:{now}", {"lapse": need_id}, apply)
                n += 1
            except IllegalTransition:
                continue
        return n


# ---------------------------------------------------------------- conversions

PRODUCT_FIELDS = (
    "product_id", "name", "grade_floor", "amount_min", "amount_max", "term_min", "term_max",
    "rate_min_bp", "rate_max_bp", "industries", "regions", "fund_guaranteed",
)  # fmt: skip


def product_from(bank: str, spec: Mapping[str, Any]) -> rules.Product:
    """A product from its published spec (a malformed one is refused, naming the field)."""
    from fedcredit.market.errors import InvalidProduct

    missing = [f for f in PRODUCT_FIELDS[:9] if f not in spec]
    if missing:
        raise InvalidProduct(f"product spec lacks {', '.join(missing)}")
    try:
        return rules.Product(
            bank=bank,
            product_id=str(spec["product_id"]),
            name=str(spec["name"]),
            grade_floor=str(spec["grade_floor"]),
            amount_min=int(spec["amount_min"]),
            amount_max=int(spec["amount_max"]),
            term_min=int(spec["term_min"]),
            term_max=int(spec["term_max"]),
            rate_min_bp=int(spec["rate_min_bp"]),
            rate_max_bp=int(spec["rate_max_bp"]),
            industries=tuple(str(i) for i in spec.get("industries") or ()),
            regions=tuple(str(r) for r in spec.get("regions") or ()),
            fund_guaranteed=bool(spec.get("fund_guaranteed", False)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidProduct(f"product spec is malformed: {exc}") from None


def product_spec(p: rules.Product) -> dict[str, Any]:
    d = {f: getattr(p, f) for f in PRODUCT_FIELDS}
    d["industries"], d["regions"], d["bank"] = list(p.industries), list(p.regions), p.bank
    return d


def need_view(r: Mapping[str, Any]) -> dict[str, Any]:
    """A need in bands: everything a bank sees before the enterprise's consent."""
    prof = rules.Profile("", r["industry"], r["region"], r["headcount"], r["grade"])
    return {
        "need_id": r["need_id"],
        **rules.pseudonymous(prof),
        "amount_band": rules.amount_band(r["amount"]),
        "term_months": r["term_months"],
        "purpose": r["purpose"],
        "posted_day": r["created_at"] // 86400 * 86400,
    }
