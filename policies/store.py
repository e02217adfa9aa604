"""The policy service's store (SQLAlchemy 2.x; SQLite embedded, PostgreSQL in production).

Tables: published policies with their budget books (``committed`` = notified + paid,
``paid``), screening runs, and awards (one per policy and enterprise, ever). Budgets hold
by construction, under any concurrency: a benefit is committed by one conditional
``UPDATE ... SET committed = committed + amount WHERE committed + amount <= budget`` (a
row-level write, serialised by the database), and a CHECK constraint refuses any row
that would break ``0 <= paid <= committed <= budget`` whatever code runs. A decline gives
the amount back; a payment moves it from committed-only to paid.

Every state change is ledgered inside the same transaction, before it commits (the
``append`` callback): if the ledger refuses, nothing changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from fedcredit.common.db import create_schema, make_engine
from fedcredit.common.errors import Unavailable
from fedcredit.policies import approval, progress, rules
from fedcredit.policies.errors import (
    AlreadyApplied,
    AwardDeclined,
    BudgetExhausted,
    DeclineWindowClosed,
    IllegalTransition,
    NotFunded,
    PolicyExists,
    ProgressReported,
    RunExists,
    UnknownAward,
    UnknownPolicy,
)

metadata = MetaData()

policies_t = Table(
    "pol_policies",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("mode", String(16), nullable=False),
    Column("spec", Text, nullable=False),  # the policy as canonical JSON
    Column("amount_yuan", BigInteger, nullable=False),
    Column("budget_yuan", BigInteger, nullable=False),
    Column("committed_yuan", BigInteger, nullable=False, default=0),
    Column("paid_yuan", BigInteger, nullable=False, default=0),
    Column("published_at", Float, nullable=False),
    CheckConstraint(
        "paid_yuan >= 0 AND paid_yuan <= committed_yuan AND committed_yuan <= budget_yuan",
        name="pol_budget_never_exceeded",
    ),
)

awards_t = Table(
    "pol_awards",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("policy_id", String(64), nullable=False),
    Column("enterprise", String(18), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("amount_yuan", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # notified | declined | paid
    Column("notified_at", Float, nullable=False),
    Column("decline_until", Float, nullable=False),
    Column("decided_at", Float),
    UniqueConstraint("policy_id", "enterprise", name="pol_one_award_per_enterprise"),
)

runs_t = Table(
    "pol_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("summary", Text, nullable=False),
)

applications_t = Table(
    "pol_applications",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("policy_id", String(64), nullable=False),
    Column("enterprise", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("version", Integer, nullable=False),  # optimistic concurrency: one writer per step
    Column("doc", Text, nullable=False),  # the approval.Application as JSON
)

# One open application per (policy, enterprise): claimed with the application in one
# transaction, released when it ends rejected or withdrawn (the enterprise may then
# apply again); a paid one keeps it. The primary key makes a second or racing claim fail
# in the database, whatever application id it uses.
claims_t = Table(
    "pol_application_claims",
    metadata,
    Column("policy_id", String(64), primary_key=True),
    Column("enterprise", String(64), primary_key=True),
    Column("application_id", String(64), nullable=False),
)

registry_t = Table(
    "pol_registry",
    metadata,
    Column("code", String(18), primary_key=True),
    Column("attributes", Text, nullable=False),  # platform.* and registry.* as JSON
)

tracking_t = Table(
    "pol_tracking_rounds",
    metadata,
    Column("round_id", String(32), primary_key=True),  # one row per round (month), ever
    Column("state", String(16), nullable=False),  # running | done
    Column("claimed_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("result", Text),  # the round's per-policy summaries as JSON
)

progress_t = Table(
    "pol_progress",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("policy_id", String(64), nullable=False),
    Column("enterprise", String(64), nullable=False),
    Column("period", String(7), nullable=False),
    Column("submitted_at", Float, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("doc", Text, nullable=False),  # indicators and narrative as JSON
    UniqueConstraint("policy_id", "enterprise", "period", name="pol_one_report_per_month"),
)

Append = Callable[[Sequence[tuple[str, str | None, dict[str, Any]]]], Any]
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Award:
    id: int
    policy_id: str
    enterprise: str
    run_id: str
    amount_yuan: int
    state: str
    notified_at: float
    decline_until: float
    decided_at: float | None


@dataclass(frozen=True, slots=True)
class Books:
    budget_yuan: int
    committed_yuan: int
    paid_yuan: int


def policy_json(p: rules.Policy) -> str:
    d = asdict(p)
    d["opens"], d["closes"] = p.opens.isoformat(), p.closes.isoformat()
    d["reviewers"], d["fields"] = list(p.reviewers), list(p.fields)
    return json.dumps(d, sort_keys=True, ensure_ascii=False)


def policy_from_json(text: str) -> rules.Policy:
    d = json.loads(text)
    d["opens"], d["closes"] = date.fromisoformat(d["opens"]), date.fromisoformat(d["closes"])
    d["reviewers"], d["fields"] = tuple(d["reviewers"]), tuple(d["fields"])
    return rules.Policy(**d)


class PolicyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> PolicyStore:
        store = cls(make_engine(url))
        with store._guard():
            create_schema(store.engine, metadata)
        store._claim_existing_applications()
        return store

    def _claim_existing_applications(self) -> None:
        """A store made before pol_application_claims existed: each open or paid
        application claims its (policy, enterprise) once, oldest first, so an enterprise
        holding one cannot apply again after the upgrade. Idempotent (claims are kept)."""
        with self._tx() as conn:
            held = {(r[0], r[1]) for r in conn.execute(
                select(claims_t.c.policy_id, claims_t.c.enterprise))}  # fmt: skip
            rows = conn.execute(select(applications_t.c.id, applications_t.c.policy_id,
                                       applications_t.c.enterprise).where(
                applications_t.c.state.not_in(("rejected", "withdrawn"))
            ).order_by(applications_t.c.id)).all()  # fmt: skip
            new = []
            for app_id, policy_id, enterprise in rows:
                if (policy_id, enterprise) not in held:
                    held.add((policy_id, enterprise))
                    new.append({"policy_id": policy_id, "enterprise": enterprise,
                                "application_id": app_id})  # fmt: skip
            if new:
                conn.execute(insert(claims_t), new)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise Unavailable(f"the policy store is unavailable: {exc.orig}") from None

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._guard(), self.engine.begin() as conn:
            yield conn

    # -- policies --------------------------------------------------------------------------

    def publish(self, p: rules.Policy, now: float, append: Append) -> None:
        checked = rules.validate(p)
        rules.check_thresholds(p, self.policies())
        try:
            with self._tx() as conn:
                conn.execute(insert(policies_t).values(
                    id=p.id, mode=p.mode, spec=policy_json(p), amount_yuan=p.amount_yuan,
                    budget_yuan=p.budget_yuan, committed_yuan=0, paid_yuan=0, published_at=now,
                ))  # fmt: skip
                append([("policy_published", None, {
                    "policy": p.id, "department": p.department, "mode": p.mode,
                    "amount_yuan": p.amount_yuan, "budget_yuan": p.budget_yuan,
                    "opens": p.opens.isoformat(), "closes": p.closes.isoformat(),
                    "rule": p.rule,
                    "clauses": [{"evaluated_by": c.namespace, "cel": c.text} for c in checked.clauses],
                })])  # fmt: skip
        except IntegrityError:
            raise PolicyExists(f"policy {p.id} is already published", policy=p.id) from None

    def policy(self, policy_id: str) -> rules.Policy:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(
                select(policies_t.c.spec).where(policies_t.c.id == policy_id)
            ).first()
        if row is None:
            raise UnknownPolicy(f"no policy {policy_id!r} is published", policy=policy_id)
        return policy_from_json(row.spec)

    def policies(self, mode: str | None = None, on: date | None = None) -> list[rules.Policy]:
        q = select(policies_t.c.spec).order_by(policies_t.c.id)
        if mode is not None:
            q = q.where(policies_t.c.mode == mode)
        with self._guard(), self.engine.connect() as conn:
            out = [policy_from_json(r.spec) for r in conn.execute(q)]
        return [p for p in out if on is None or p.opens <= on <= p.closes]

    def books(self, policy_id: str) -> Books:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(
                select(policies_t.c.budget_yuan, policies_t.c.committed_yuan, policies_t.c.paid_yuan)
                .where(policies_t.c.id == policy_id)
            ).first()  # fmt: skip
        if row is None:
            raise UnknownPolicy(f"no policy {policy_id!r} is published", policy=policy_id)
        return Books(int(row[0]), int(row[1]), int(row[2]))

    # -- awards ----------------------------------------------------------------------------

    def awarded(self, policy_id: str) -> set[str]:
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                select(awards_t.c.enterprise).where(awards_t.c.policy_id == policy_id)
            )
            return {r[0] for r in rows}

    def notify(
        self, p: rules.Policy, codes: Sequence[str], run_id: str, now: float, append: Append,
        amounts: Sequence[int] | None = None,
    ) -> tuple[list[str], list[str]]:  # fmt: skip
        """Commit ``p``'s benefit for each of ``codes`` in order while the budget allows,
        ledgering each notice; returns (notified, unfunded). One transaction per call.
        ``amounts[i]``: the benefit of ``codes[i]`` (a formula's), each in 1..amount_yuan;
        default the fixed amount. Each is committed by the same conditional update, so a
        formula amount can no more exceed the budget than a fixed one."""
        owed = [p.amount_yuan] * len(codes) if amounts is None else [int(a) for a in amounts]
        if len(owed) != len(codes) or any(not 0 < a <= p.amount_yuan for a in owed):
            raise ValueError(f"expected one amount in 1..{p.amount_yuan} per enterprise")
        for _ in range(3):
            try:
                return self._notify(p, list(codes), owed, run_id, now, append)
            except IntegrityError:
                # A concurrent run awarded some of them first (one award per policy and
                # enterprise); this transaction wrote nothing: drop theirs and go again.
                done = self.awarded(p.id)
                kept = [(c, a) for c, a in zip(codes, owed, strict=True) if c not in done]
                codes, owed = [c for c, _ in kept], [a for _, a in kept]
        raise Unavailable(f"awards of {p.id!r} kept racing with other runs; nothing was done")

    def _notify(
        self, p: rules.Policy, codes: list[str], owed: list[int], run_id: str, now: float,
        append: Append,
    ) -> tuple[list[str], list[str]]:  # fmt: skip
        notified: list[tuple[str, int]] = []
        with self._tx() as conn:
            for code, amount in zip(codes, owed, strict=True):
                if not _commit(conn, p.id, amount):
                    break
                notified.append((code, amount))
            if notified:
                until = now + p.decline_days * DAY
                conn.execute(insert(awards_t), [
                    dict(policy_id=p.id, enterprise=c, run_id=run_id, amount_yuan=a,
                         state="notified", notified_at=now, decline_until=until) for c, a in notified
                ])  # fmt: skip
                append([("policy_award_notified", c, {
                    "policy": p.id, "run_id": run_id, "amount_yuan": a,
                    "decline_until": until, "legal_basis": "policy_screening",
                }) for c, a in notified])  # fmt: skip
        return [c for c, _ in notified], list(codes[len(notified) :])

    def award(self, policy_id: str, enterprise: str) -> Award:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(select(awards_t).where(
                and_(awards_t.c.policy_id == policy_id, awards_t.c.enterprise == enterprise)
            )).first()  # fmt: skip
        if row is None:
            raise UnknownAward(
                f"enterprise {enterprise} has no award of policy {policy_id!r}",
                policy=policy_id, enterprise=enterprise,
            )  # fmt: skip
        return Award(**row._asdict())

    def awards_of(self, enterprise: str) -> list[Award]:
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(select(awards_t).where(awards_t.c.enterprise == enterprise)
                                .order_by(awards_t.c.id))  # fmt: skip
            return [Award(**r._asdict()) for r in rows]

    def awards_of_policy(self, policy_id: str, state: str) -> list[str]:
        """The enterprises holding an award of ``policy_id`` in ``state``, in award order."""
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(select(awards_t.c.enterprise).where(and_(
                awards_t.c.policy_id == policy_id, awards_t.c.state == state)).order_by(awards_t.c.id))  # fmt: skip
            return [r[0] for r in rows]

    def award_totals(self) -> dict[str, dict[str, int]]:
        """Awards by state: how many and how much (integer yuan)."""
        from sqlalchemy import func

        q = select(awards_t.c.state, func.count(), func.sum(awards_t.c.amount_yuan)).group_by(awards_t.c.state)  # fmt: skip
        with self._guard(), self.engine.connect() as conn:
            return {r[0]: {"count": int(r[1]), "yuan": int(r[2] or 0)} for r in conn.execute(q)}

    def decline(self, policy_id: str, enterprise: str, now: float, append: Append) -> Award:
        """The enterprise declines within its window: the amount goes back to the budget."""
        a = self.award(policy_id, enterprise)
        if a.state == "declined":
            raise AwardDeclined(f"the award of {policy_id!r} was already declined")
        if a.state != "notified":
            raise IllegalTransition(f"an award in state {a.state!r} cannot be declined")
        if now > a.decline_until:
            raise DeclineWindowClosed(
                f"the decline window of {policy_id!r} closed at {a.decline_until:.0f}; "
                f"it is now {now:.0f}"
            )
        with self._tx() as conn:
            moved = conn.execute(update(awards_t).where(
                and_(awards_t.c.id == a.id, awards_t.c.state == "notified")
            ).values(state="declined", decided_at=now)).rowcount  # fmt: skip
            if moved != 1:
                raise IllegalTransition("the award changed state meanwhile; nothing was done")
            conn.execute(update(policies_t).where(policies_t.c.id == policy_id).values(
                committed_yuan=policies_t.c.committed_yuan - a.amount_yuan))  # fmt: skip
            append([("policy_award_declined", enterprise, {
                "policy": policy_id, "run_id": a.run_id, "amount_yuan": a.amount_yuan})])  # fmt: skip
        return self.award(policy_id, enterprise)

    def pay_due(self, now: float, append: Append, limit: int = 10_000) -> list[Award]:
        """Pay every notified award whose decline window has passed (each payment once)."""
        with self._guard(), self.engine.connect() as conn:
            due = [Award(**r._asdict()) for r in conn.execute(
                select(awards_t).where(and_(awards_t.c.state == "notified",
                                            awards_t.c.decline_until < now))
                .order_by(awards_t.c.id).limit(limit))]  # fmt: skip
        paid: list[Award] = []
        for a in due:
            with self._tx() as conn:
                moved = conn.execute(update(awards_t).where(
                    and_(awards_t.c.id == a.id, awards_t.c.state == "notified")
                ).values(state="paid", decided_at=now)).rowcount  # fmt: skip
                if moved != 1:
                    continue  # paid or declined concurrently
                conn.execute(update(policies_t).where(policies_t.c.id == a.policy_id).values(
                    paid_yuan=policies_t.c.paid_yuan + a.amount_yuan))  # fmt: skip
                append([("policy_payment", a.enterprise, {
                    "policy": a.policy_id, "run_id": a.run_id, "amount_yuan": a.amount_yuan})])  # fmt: skip
            paid.append(a)
        return paid

    # -- applications (joint approval, policies.approval) ------------------------------------

    def submit(self, app: approval.Application, append: Append) -> approval.Application:
        """Store and ledger a new application; refused (nothing written) when its id is
        taken or its enterprise already has an open one to the same policy."""
        with self._tx() as conn:
            try:
                conn.execute(insert(applications_t).values(
                    id=app.id, policy_id=app.policy, enterprise=app.enterprise, state=app.state,
                    version=len(app.history), doc=_app_json(app)))  # fmt: skip
            except IntegrityError:
                raise PolicyExists(f"application {app.id} exists", application=app.id) from None
            try:
                conn.execute(insert(claims_t).values(
                    policy_id=app.policy, enterprise=app.enterprise, application_id=app.id))  # fmt: skip
            except IntegrityError:
                raise self._already(app.policy, app.enterprise) from None
            append([_app_entry(app)])
        return app

    def open_application(self, policy_id: str, enterprise: str) -> str | None:
        """The id of ``enterprise``'s open (or paid) application to ``policy_id``, if any."""
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(select(claims_t.c.application_id).where(and_(
                claims_t.c.policy_id == policy_id, claims_t.c.enterprise == enterprise))).first()  # fmt: skip
        return None if row is None else str(row[0])

    def refuse_second_application(self, policy_id: str, enterprise: str) -> None:
        if self.open_application(policy_id, enterprise) is not None:
            raise self._already(policy_id, enterprise)

    def _already(self, policy_id: str, enterprise: str) -> AlreadyApplied:
        held = self.open_application(policy_id, enterprise)
        return AlreadyApplied(
            f"enterprise {enterprise} already applied to {policy_id!r} (application "
            f"{held!r}); one application per enterprise and policy until it is rejected or "
            "withdrawn",
            policy=policy_id,
        )  # fmt: skip

    def application(self, app_id: str) -> approval.Application:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(
                select(applications_t.c.doc).where(applications_t.c.id == app_id)
            ).first()
        if row is None:
            raise UnknownAward(f"no application {app_id!r}", application=app_id)
        return _app_from_json(row.doc)

    def step(
        self,
        app_id: str,
        transition: Callable[[approval.Application], approval.Application],
        append: Append,
    ) -> approval.Application:
        """Apply one transition of the state machine; the budget is committed when the
        notice closes (approved) and paid on payment, in the same transaction, and the step
        is ledgered before it commits. A concurrent step on the same application wins once."""
        before = self.application(app_id)
        after = transition(before)  # IllegalTransition: nothing is written
        with self._tx() as conn:
            moved = conn.execute(update(applications_t).where(and_(
                applications_t.c.id == app_id, applications_t.c.version == len(before.history)
            )).values(state=after.state, version=len(after.history), doc=_app_json(after))).rowcount  # fmt: skip
            if moved != 1:
                raise IllegalTransition(f"application {app_id} changed meanwhile; nothing was done")
            if after.state in ("rejected", "withdrawn"):
                conn.execute(claims_t.delete().where(claims_t.c.application_id == app_id))
            if after.state == "approved":
                commit_or_refuse(conn, after.policy, after.amount_yuan)
            if after.state == "paid":
                conn.execute(update(policies_t).where(policies_t.c.id == after.policy).values(
                    paid_yuan=policies_t.c.paid_yuan + after.amount_yuan))  # fmt: skip
            append([_app_entry(after)])
        return after

    # -- tracking: funded enterprises and their self-evaluations -----------------------------

    def funded(self, policy_id: str) -> list[str]:
        """Enterprises paid under ``policy_id`` (awards and applications), sorted."""
        with self._guard(), self.engine.connect() as conn:
            a = conn.execute(select(awards_t.c.enterprise).where(
                and_(awards_t.c.policy_id == policy_id, awards_t.c.state == "paid")))  # fmt: skip
            b = conn.execute(select(applications_t.c.enterprise).where(
                and_(applications_t.c.policy_id == policy_id, applications_t.c.state == "paid")))  # fmt: skip
            return sorted({r[0] for r in a} | {r[0] for r in b})

    def report_progress(self, ev: progress.SelfEvaluation, append: Append) -> None:
        """File a self-evaluation: only for a policy the enterprise was paid under, once per
        month; ledgered (by digest) in the same transaction."""
        self.policy(ev.policy)  # UnknownPolicy
        if ev.enterprise not in self.funded(ev.policy):
            raise NotFunded(f"enterprise {ev.enterprise} was not paid under policy "
                            f"{ev.policy!r}; only a funded enterprise reports progress",
                            policy=ev.policy)  # fmt: skip
        doc = json.dumps({"indicators": dict(ev.indicators), "narrative": ev.narrative},
                         sort_keys=True, ensure_ascii=False)  # fmt: skip
        try:
            with self._tx() as conn:
                conn.execute(insert(progress_t).values(
                    policy_id=ev.policy, enterprise=ev.enterprise, period=ev.period,
                    submitted_at=ev.submitted_at, digest=ev.digest, doc=doc))  # fmt: skip
                append([("policy_self_evaluation", ev.enterprise, {
                    "policy": ev.policy, "period": ev.period, "digest": ev.digest,
                    "indicators": sorted(ev.indicators)})])  # fmt: skip
        except IntegrityError:
            raise ProgressReported(
                f"enterprise {ev.enterprise} already reported {ev.period} of {ev.policy!r}",
                policy=ev.policy,
                period=ev.period,
            ) from None

    def progress_reports(
        self, policy_id: str | None = None, enterprise: str | None = None
    ) -> list[progress.SelfEvaluation]:
        q = select(progress_t).order_by(progress_t.c.policy_id, progress_t.c.enterprise,
                                        progress_t.c.period)  # fmt: skip
        if policy_id:
            q = q.where(progress_t.c.policy_id == policy_id)
        if enterprise:
            q = q.where(progress_t.c.enterprise == enterprise)
        with self._guard(), self.engine.connect() as conn:
            rows = list(conn.execute(q))
        out = []
        for r in rows:
            d = json.loads(r.doc)
            out.append(progress.SelfEvaluation(r.policy_id, r.enterprise, r.period,
                                               d["indicators"], d["narrative"], r.submitted_at))  # fmt: skip
        return out

    # -- the platform's registry (enterprises and their platform attributes) ------------

    def load_registry(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Replace the registry: (credit code, ``rules.platform_row(...)``) per enterprise."""
        with self._tx() as conn:
            conn.execute(registry_t.delete())
            if rows:
                conn.execute(insert(registry_t), [
                    {"code": c, "attributes": json.dumps(a, sort_keys=True)} for c, a in rows
                ])  # fmt: skip
        return len(rows)

    def registry_rows(self, codes: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
        """The platform rows of ``codes`` (an enterprise not in the registry: no variables)."""
        with self._guard(), self.engine.connect() as conn:
            found = {r.code: json.loads(r.attributes) for r in conn.execute(
                select(registry_t).where(registry_t.c.code.in_(list(codes))))}  # fmt: skip
        return list(codes), [found.get(c, {}) for c in codes]

    def registry(self) -> tuple[list[str], list[dict[str, Any]]]:
        with self._guard(), self.engine.connect() as conn:
            rows = list(conn.execute(select(registry_t).order_by(registry_t.c.code)))
        return [r.code for r in rows], [json.loads(r.attributes) for r in rows]

    # -- tracking rounds (one per round id, ever) ----------------------------------------

    def claim_round(self, round_id: str, now: float, stale_s: float = 3_600.0) -> bool:
        """Claim ``round_id`` for running: True once (a round left ``running`` by a crash
        for ``stale_s`` may be claimed again); False when it is done or running."""
        try:
            with self._tx() as conn:
                conn.execute(insert(tracking_t).values(round_id=round_id, state="running",
                                                       claimed_at=now))  # fmt: skip
            return True
        except IntegrityError:
            pass
        with self._tx() as conn:
            moved = conn.execute(update(tracking_t).where(and_(
                tracking_t.c.round_id == round_id, tracking_t.c.state == "running",
                tracking_t.c.claimed_at < now - stale_s,
            )).values(claimed_at=now)).rowcount  # fmt: skip
        return moved == 1

    def finish_round(self, round_id: str, now: float, result: Any) -> None:
        with self._tx() as conn:
            conn.execute(update(tracking_t).where(tracking_t.c.round_id == round_id).values(
                state="done", finished_at=now, result=json.dumps(result, sort_keys=True)))  # fmt: skip

    def release_round(self, round_id: str) -> None:
        """A round that failed before finishing is claimable again at once."""
        with self._tx() as conn:
            conn.execute(tracking_t.delete().where(and_(
                tracking_t.c.round_id == round_id, tracking_t.c.state == "running")))  # fmt: skip

    def tracking_round(self, round_id: str) -> tuple[str, float | None, Any] | None:
        """(state, finished_at, result) of a round, or None if it never ran."""
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(select(tracking_t).where(tracking_t.c.round_id == round_id)).first()
        if row is None:
            return None
        return row.state, row.finished_at, json.loads(row.result) if row.result else None

    def tracking_rounds(self, limit: int = 12) -> list[tuple[str, float, Any]]:
        """Finished rounds, newest first: (round id, finished at, result)."""
        q = (select(tracking_t).where(tracking_t.c.state == "done")
             .order_by(tracking_t.c.finished_at.desc()).limit(limit))  # fmt: skip
        with self._guard(), self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [(r.round_id, float(r.finished_at), json.loads(r.result)) for r in rows]

    def applications(
        self, policy_ids: Sequence[str] | None = None, enterprise: str | None = None,
        state: str | None = None, limit: int = 500,
    ) -> list[approval.Application]:  # fmt: skip
        q = select(applications_t.c.doc).order_by(applications_t.c.id.desc()).limit(limit)
        if policy_ids is not None:
            q = q.where(applications_t.c.policy_id.in_(list(policy_ids)))
        if enterprise is not None:
            q = q.where(applications_t.c.enterprise == enterprise)
        if state:
            q = q.where(applications_t.c.state == state)
        with self._guard(), self.engine.connect() as conn:
            apps = [_app_from_json(r.doc) for r in conn.execute(q)]
        return sorted(apps, key=lambda a: -a.submitted_at)

    # -- runs ------------------------------------------------------------------------------

    def claim_run(self, run_id: str, started_at: float, department: str = "") -> None:
        """Claim ``run_id`` before anything is screened or ledgered: once, ever
        (:class:`RunExists` for a retry or a racing caller with the same id)."""
        running = json.dumps({"state": "running", "department": department})
        try:
            with self._tx() as conn:
                conn.execute(insert(runs_t).values(id=run_id, started_at=started_at,
                                                   summary=running))  # fmt: skip
        except IntegrityError:
            raise RunExists(f"screening run {run_id!r} was already started; a new run needs "
                            "a new id", run=run_id) from None  # fmt: skip

    def runs_of(self, department: str, since: float) -> int:
        """How many screening runs ``department`` started after ``since``."""
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(select(runs_t.c.summary).where(runs_t.c.started_at > since))
            return sum(1 for r in rows if json.loads(r[0]).get("department") == department)

    def release_run(self, run_id: str) -> None:
        """A run that failed before it ledgered anything may be retried under its id."""
        with self._tx() as conn:
            conn.execute(runs_t.delete().where(runs_t.c.id == run_id))

    def record_run(self, run_id: str, started_at: float, summary: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(
                started_at=started_at, summary=json.dumps(summary, sort_keys=True)))  # fmt: skip


def _commit(conn: Connection, policy_id: str, amount: int) -> bool:
    """Commit ``amount`` of ``policy_id``'s budget if it fits (one conditional update)."""
    res = conn.execute(
        update(policies_t)
        .where(and_(policies_t.c.id == policy_id,
                    policies_t.c.committed_yuan + amount <= policies_t.c.budget_yuan))
        .values(committed_yuan=policies_t.c.committed_yuan + amount)
    )  # fmt: skip
    return res.rowcount == 1


def _app_json(a: approval.Application) -> str:
    d = asdict(a)
    d["fields"], d["attachments"], d["parts"] = dict(a.fields), dict(a.attachments), dict(a.parts)
    return json.dumps(d, sort_keys=True, ensure_ascii=False)


def _app_from_json(text: str) -> approval.Application:
    d = json.loads(text)
    d["objections"] = tuple(tuple(o) for o in d["objections"])
    d["history"] = tuple(tuple(h) for h in d["history"])
    return approval.Application(**d)


def _app_entry(a: approval.Application) -> tuple[str, str | None, dict[str, Any]]:
    at, event, state = a.history[-1]
    return ("policy_application", a.enterprise, {
        "application": a.id, "policy": a.policy, "event": event, "state": state, "at": at,
        "attachments": dict(a.attachments) if event == "submit" else {},
    })  # fmt: skip


def commit_or_refuse(conn: Connection, policy_id: str, amount: int) -> None:
    if not _commit(conn, policy_id, amount):
        raise BudgetExhausted(f"paying {amount} yuan would take {policy_id!r} past its budget")
