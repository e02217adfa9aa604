"""The policy service over gRPC (sync server, mTLS): who may do what, and the wire mapping.

Access (from the caller's certificate): anyone authenticated may check a rule and list
policies; a ``department`` or the ``operator`` publishes; the ``operator`` runs screening
and pays what is due; an ``enterprise`` lists and declines only its own awards (its
certificate's organisation id is its credit code). Every refusal is a typed error with
its reason; malformed input is INVALID_ARGUMENT and changes nothing.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import grpc

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.common.rpc import handle_errors
from fedcredit.common.server import build_server
from fedcredit.common.tls import Identity, TlsFiles, peer_identity
from fedcredit.consent.delegation import DelegationVerifier
from fedcredit.consent.delegation import acting as delegated
from fedcredit.policies import approval, progress, rules, runs, screening, tracking
from fedcredit.policies.errors import (
    BenefitUndefined,
    InvalidPolicy,
    PolicyExists,
    RunLimit,
    UnknownAward,
)
from fedcredit.policies.store import Award, PolicyStore
from fedcredit.v1 import policies_pb2, policies_pb2_grpc

SERVICE_NAME = policies_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
PUBLISHERS = frozenset({"department", "operator"})
OPERATORS = frozenset({"operator"})
# The portal (its own certificate, role ``portal``) calls for the organisation signed in to
# it with a passkey only with a delegation ticket the consent service signed for this
# service (consent/delegation.py: audience, the portal's certificate, expiry, the passkey
# still registered). It may act only as an enterprise or a department; every rule of the
# call then holds for the named organisation exactly as for its own certificate (an
# enterprise sees, applies for, declines and reports on only its own; a department reviews
# only its own part). Operator steps stay with the operator's own certificate. Without a
# ticket the portal's certificate acts for no one (DELEGATION_MISSING).
PORTAL_ACTS_AS = ("enterprise", "department")
# A department's own screening runs per 24 hours: each screens every registered enterprise
# inside the nodes and ledgers one entry per enterprise (120,000 for the city).
DEPARTMENT_RUNS = 4
DAY_S = 86_400.0


def acting(context: Any, delegation: DelegationVerifier | None = None) -> Identity:
    """The caller, or for the portal the organisation its delegation ticket names."""
    who = peer_identity(context)
    if who.role != "portal":
        return who
    md = tuple(context.invocation_metadata() or ())
    return delegated(who, md, delegation, PORTAL_ACTS_AS, "the policy service")


def _allow(caller: Identity, roles: frozenset[str], what: str) -> None:
    if caller.role not in roles:
        raise RoleNotAllowed(
            f"{caller.org_id} has role {caller.role!r}; {what} is for {', '.join(sorted(roles))}",
            role=caller.role,
        )


def _date(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidPolicy(f"{name}: expected YYYY-MM-DD, got {text!r}", field=name) from None


def policy_from_pb(m: Any) -> rules.Policy:
    return rules.Policy(
        id=m.id, title=m.title, department=m.department, mode=m.mode,
        amount_yuan=m.amount_yuan, budget_yuan=m.budget_yuan,
        opens=_date(m.opens, "opens"), closes=_date(m.closes, "closes"), rule=m.rule,
        decline_days=m.decline_days or 7, reviewers=tuple(m.reviewers),
        notice_days=m.notice_days or 5, review_days=m.review_days or 10, fields=tuple(m.fields),
        benefit_formula=m.benefit_formula, amount_cap_yuan=m.amount_cap_yuan, target=m.target,
    )  # fmt: skip


def policy_to_pb(p: rules.Policy) -> policies_pb2.PolicyMessage:
    return policies_pb2.PolicyMessage(
        id=p.id, title=p.title, department=p.department, mode=p.mode,
        amount_yuan=p.amount_yuan, budget_yuan=p.budget_yuan, opens=p.opens.isoformat(),
        closes=p.closes.isoformat(), rule=p.rule, decline_days=p.decline_days,
        reviewers=list(p.reviewers), notice_days=p.notice_days, review_days=p.review_days,
        fields=list(p.fields), benefit_formula=p.benefit_formula,
        amount_cap_yuan=p.amount_cap_yuan, target=p.target,
    )  # fmt: skip


def rule_to_pb(checked: rules.CheckedRule) -> policies_pb2.CheckRuleResponse:
    return policies_pb2.CheckRuleResponse(
        combination=checked.describe(),
        clauses=[policies_pb2.RuleClause(id=f"c{i}", evaluated_by=c.namespace, cel=c.text)
                 for i, c in enumerate(checked.clauses)],
    )  # fmt: skip


def award_to_pb(a: Award) -> policies_pb2.AwardMessage:
    return policies_pb2.AwardMessage(
        policy_id=a.policy_id, enterprise=a.enterprise, run_id=a.run_id,
        amount_yuan=a.amount_yuan, state=a.state, notified_at=a.notified_at,
        decline_until=a.decline_until,
    )  # fmt: skip


def application_to_pb(a: approval.Application) -> policies_pb2.ApplicationMessage:
    return policies_pb2.ApplicationMessage(
        id=a.id, policy_id=a.policy, enterprise=a.enterprise, state=a.state,
        parts=dict(a.parts), review_deadline=a.review_deadline, notice_until=a.notice_until,
        attachments=dict(a.attachments), history=[f"{t:.0f} {e} {s}" for t, e, s in a.history],
        amount_yuan=a.amount_yuan, fields=dict(a.fields), submitted_at=a.submitted_at,
    )  # fmt: skip


class Acting:
    """Who a call acts as (mixed into every servicer part)."""

    delegation: DelegationVerifier | None = None

    def _acting(self, context: Any) -> Identity:
        return acting(context, self.delegation)

    def _append_as(self, who: Identity) -> Any:
        """The ledger append for an act of ``who``: an act through the portal (a person's
        delegated session) is ledgered with ``"via": "portal"``, like the coordinator's."""
        base: Any = self.append  # type: ignore[attr-defined]
        if not who.via:
            return base
        return lambda items: base([(k, sub, {**p, "via": who.via}) for k, sub, p in items])


class ApplicationServicer(Acting):
    """The application RPCs, mixed into :class:`PolicyServicer` (one service)."""

    store: PolicyStore
    append: Any
    clock: Callable[[], float]
    nodes: Mapping[str, screening.NodeScreener]

    def _step(
        self, app_id: str, fn: Callable[[approval.Application], approval.Application],
        who: Identity | None = None,
    ) -> Any:  # fmt: skip
        append = self.append if who is None else self._append_as(who)
        return application_to_pb(self.store.step(app_id, fn, append))

    @handle_errors
    def Apply(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise"}), "applying")
        policy = self.store.policy(request.policy_id)
        now = self.clock()
        docs = {a.name: approval.attachment_digest(a.content) for a in request.attachments}
        fields = {f.name: f.value for f in request.fields}
        if len(docs) != len(request.attachments) or len(fields) != len(request.fields):
            raise InvalidPolicy("a form field or attachment name appears twice", field="fields")
        replayed = self._replay(request.application_id, caller, policy, fields, docs, now)
        if replayed is not None:
            return replayed
        # Every check before the department's node is asked for a formula's amount: a
        # refused application must not cost a node evaluation nobody ledgers.
        app = approval.apply(policy, request.application_id, caller.org_id, fields, docs, now)
        self.store.refuse_second_application(policy.id, caller.org_id)
        append = self._append_as(caller)
        if policy.benefit_formula:
            amount, disclosed = self._formula_amount(policy, caller.org_id)
            app = approval.apply(policy, app.id, caller.org_id, fields, docs, now, amount)
            append = _with_benefit(append, policy, disclosed)
        self.store.submit(app, append)
        return self._step(app.id, lambda a: approval.push(a, policy, now), caller)

    def _replay(
        self, app_id: str, caller: Identity, policy: rules.Policy, fields: dict[str, str],
        docs: dict[str, str], now: float,
    ) -> Any | None:  # fmt: skip
        """A retried Apply (same id, enterprise, policy, form and attachments) answers the
        application as it stands, ledgering nothing again; one whose push was lost (the
        service stopped between the two steps) is pushed now. Another's id: PolicyExists."""
        try:
            old = self.store.application(app_id)
        except UnknownAward:
            return None
        if (old.enterprise, old.policy, dict(old.fields), dict(old.attachments)) != (
            caller.org_id, policy.id, fields, docs,
        ):  # fmt: skip
            raise PolicyExists(f"application {app_id} exists", application=app_id)
        if old.state == "submitted":
            return self._step(old.id, lambda a: approval.push(a, policy, now), caller)
        return application_to_pb(old)

    def _formula_amount(self, policy: rules.Policy, enterprise: str) -> tuple[int, list[int]]:
        """The policy's formula for one applicant, asked of its department as booleans,
        and the node's disclosure-log indexes."""
        _, rows = self.store.registry_rows([enterprise])
        formula = rules.check_formula(policy.benefit_formula, policy.amount_cap_yuan)
        (got,), disclosed = screening.benefit_amounts(
            f"apply:{policy.id}"[:64], formula, [enterprise], self.nodes, rows)  # fmt: skip
        if not got:
            raise BenefitUndefined(
                f"the benefit formula of {policy.id!r} has no positive amount for {enterprise} "
                f"({formula.namespace} holds no value it reads, or the amount is 0)",
                policy=policy.id,
            )  # fmt: skip
        return got, disclosed

    @handle_errors
    def ListApplications(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise", "department", "operator"}), "listing applications")
        if request.state and request.state not in approval.STATES:
            raise InvalidPolicy(f"state: expected one of {', '.join(approval.STATES)}, got "
                                f"{request.state[:20]!r}", field="state")  # fmt: skip
        ids = [request.policy_id] if request.policy_id else None
        mine = caller.org_id if caller.role == "enterprise" else None
        if caller.role == "department":
            readable = [p.id for p in self.store.policies() if _reads(caller, p)]
            ids = [i for i in (ids or readable) if i in readable]
        apps = self.store.applications(ids, mine, request.state or None)
        return policies_pb2.ListApplicationsResponse(
            applications=[application_to_pb(a) for a in apps]
        )

    @handle_errors
    def Review(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"department"}), "reviewing")
        app = self.store.application(request.application_id)
        policy = self.store.policy(app.policy)
        if not _reads(caller, policy):  # as GetApplication: no state or existence oracle
            raise UnknownAward(f"no application {app.id!r}", application=app.id)
        now = self.clock()
        return self._step(app.id, lambda a: approval.review(
            a, policy, caller.org_id, request.approve, now), caller)  # fmt: skip

    @handle_errors
    def Object(self, request: Any, context: Any) -> Any:
        """Anyone may object during the public notice (公示). Someone who is not a party
        learns only what the notice publishes (the application, its policy, enterprise,
        amount and notice period) — not the form, the attachments or the reviews — and
        outside the notice an application of others is an unknown id."""
        caller = self._acting(context)
        app = self.store.application(request.application_id)
        party = _party(caller, app, self.store.policy(app.policy))
        if not party and app.state not in ("notice", "objected"):
            raise UnknownAward(f"no application {app.id!r}", application=app.id)
        now = self.clock()
        after = self.store.step(app.id, lambda a: approval.lodge_objection(
            a, caller.org_id, request.reason, now), self._append_as(caller))  # fmt: skip
        return application_to_pb(after) if party else _public(after)

    @handle_errors
    def ResolveObjection(self, request: Any, context: Any) -> Any:
        _allow(self._acting(context), OPERATORS, "resolving an objection")
        app = self.store.application(request.application_id)
        policy = self.store.policy(app.policy)
        now = self.clock()
        return self._step(app.id, lambda a: approval.resolve(a, policy, request.upheld, now))

    @handle_errors
    def Advance(self, request: Any, context: Any) -> Any:
        _allow(self._acting(context), OPERATORS, "closing notices and paying")
        now = self.clock()
        steps = {"close": approval.close_notice, "pay": approval.pay}
        if request.step not in steps:
            raise InvalidPolicy(f"step: expected close or pay, got {request.step!r}", field="step")
        return self._step(request.application_id, lambda a: steps[request.step](a, now))

    @handle_errors
    def GetApplication(self, request: Any, context: Any) -> Any:
        """An application, to its parties only (as ListApplications): its enterprise, the
        departments that issue or review its policy, the operator. For anyone else's id the
        answer is the unknown id's (issue 14: no existence oracle, no enterprise named)."""
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise", "department", "operator"}), "reading an application")  # fmt: skip
        app = self.store.application(request.application_id)
        if (caller.role == "enterprise" and caller.org_id != app.enterprise) or (
            caller.role == "department" and not _reads(caller, self.store.policy(app.policy))
        ):
            raise UnknownAward(f"no application {request.application_id!r}", application=request.application_id)  # fmt: skip
        return application_to_pb(app)


def _with_benefit(append: Any, policy: rules.Policy, disclosed: list[int]) -> Any:
    """The submit entry also names where the formula's evaluation is logged: the node and
    its disclosure-log indexes, under the policy_screening basis (the amount is in the
    application itself)."""
    ns = rules.check_formula(policy.benefit_formula, policy.amount_cap_yuan).namespace
    extra = {"benefit_evaluated_by": ns, "node_disclosures": disclosed,
             "legal_basis": "policy_screening"}  # fmt: skip
    return lambda items: append([(k, sub, {**p, **extra}) for k, sub, p in items])


def _party(caller: Identity, app: approval.Application, p: rules.Policy) -> bool:
    """The application's enterprise, its policy's departments, or the operator."""
    return (
        caller.role == "operator"
        or (caller.role == "enterprise" and caller.org_id == app.enterprise)
        or (caller.role == "department" and _reads(caller, p))
    )


def _public(a: approval.Application) -> policies_pb2.ApplicationMessage:
    """What the public notice shows of an application (to an objector who is no party)."""
    return policies_pb2.ApplicationMessage(
        id=a.id, policy_id=a.policy, enterprise=a.enterprise, state=a.state,
        notice_until=a.notice_until, amount_yuan=a.amount_yuan,
    )  # fmt: skip


def _reads(caller: Identity, p: rules.Policy) -> bool:
    """A department reads the applications and tracking of policies it issues or reviews."""
    return caller.org_id in (p.department, *p.reviewers)


def progress_to_pb(e: progress.SelfEvaluation) -> policies_pb2.ProgressMessage:
    return policies_pb2.ProgressMessage(
        policy_id=e.policy, enterprise=e.enterprise, period=e.period,
        indicators=dict(e.indicators), narrative=e.narrative, submitted_at=e.submitted_at,
        digest=e.digest,
    )  # fmt: skip


_ROUND = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_RUN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def tracking_to_pb(r: tracking.Round) -> policies_pb2.TrackingRoundResponse:
    out = []
    for row in r.policies:
        out.append(policies_pb2.PolicyTrackingSummary(
            policy_id=row["policy_id"], funded=row["funded"], has_target=row["has_target"],
            target_met=row["target_met"], flagged=row["flagged"],
            proposals=[policies_pb2.Proposal(**p) for p in row["proposals"]],
            cohort_status=row["cohort_status"],
            cohort=[policies_pb2.CohortIndicator(**c) for c in row["cohort"]],
        ))  # fmt: skip
    return policies_pb2.TrackingRoundResponse(
        round_id=r.round_id, policies=out, replayed=r.replayed, finished_at=r.finished_at
    )


class ProgressServicer(Acting):
    """Self-evaluations (policies.progress), mixed into :class:`PolicyServicer`."""

    store: PolicyStore
    append: Any
    clock: Callable[[], float]
    ledger: runs.Ledger
    nodes: Mapping[str, screening.NodeScreener]

    @handle_errors
    def TrackingRound(self, request: Any, context: Any) -> Any:
        _allow(self._acting(context), OPERATORS, "running a tracking round")
        rid = request.round_id
        if not _ROUND.fullmatch(rid):
            raise InvalidPolicy(f"round_id: expected 1-32 of A-Z a-z 0-9 _ . -, got {rid!r}",
                                field="round_id")  # fmt: skip
        # production node clients answer both screening and aggregates (node.client)
        return tracking_to_pb(tracking.run_round(self.store, self.ledger, self.nodes,
                                                 round_id=rid, now=self.clock()))  # fmt: skip

    @handle_errors
    def TrackingHistory(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, PUBLISHERS, "reading tracking rounds")
        readable = {p.id for p in self.store.policies()
                    if caller.role == "operator" or _reads(caller, p)}  # fmt: skip
        if request.policy_id:
            readable &= {request.policy_id}
        rounds = []
        for rid, at, rows in self.store.tracking_rounds(request.limit or 12):
            kept = [r for r in rows if r["policy_id"] in readable]
            rounds.append(tracking_to_pb(tracking.Round(rid, kept, at, True)))
        return policies_pb2.TrackingHistoryResponse(rounds=rounds)

    @handle_errors
    def ReportProgress(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise"}), "reporting progress")
        values = {i.name: i.value for i in request.indicators}
        if len(values) != len(request.indicators):
            raise InvalidPolicy("an indicator appears twice", field="indicators")
        ev = progress.evaluation(request.policy_id, caller.org_id, request.period,
                                 values, request.narrative, self.clock())  # fmt: skip
        self.store.report_progress(ev, self._append_as(caller))
        return progress_to_pb(ev)

    @handle_errors
    def ListProgress(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise"}) | PUBLISHERS, "reading self-evaluations")
        if caller.role == "enterprise":
            reports = self.store.progress_reports(request.policy_id or None, caller.org_id)
        else:
            if not request.policy_id:
                raise InvalidPolicy("policy_id: expected a policy id, got none", field="policy_id")
            policy = self.store.policy(request.policy_id)
            if caller.role == "department" and caller.org_id not in (
                policy.department,
                *policy.reviewers,
            ):
                raise RoleNotAllowed(f"{caller.org_id} neither issues nor reviews "
                                     f"{policy.id!r}", role=caller.role)  # fmt: skip
            reports = self.store.progress_reports(policy.id)
        return policies_pb2.ListProgressResponse(reports=[progress_to_pb(e) for e in reports])


class PolicyServicer(
    ApplicationServicer, ProgressServicer, policies_pb2_grpc.PolicyServiceServicer
):
    def __init__(
        self,
        *,
        store: PolicyStore,
        ledger: runs.Ledger,
        nodes: Mapping[str, screening.NodeScreener],
        clock: Callable[[], float] = time.time,
        delegation: DelegationVerifier | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.append = runs.batched(ledger.append_many)
        self.nodes = nodes
        self.clock = clock
        # the checker of the portal's delegation tickets; None: the portal acts for no one
        self.delegation = delegation

    @handle_errors
    def CheckRule(self, request: Any, context: Any) -> Any:
        self._acting(context)
        return rule_to_pb(rules.check_rule(request.rule))

    @handle_errors
    def PublishPolicy(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, PUBLISHERS, "publishing a policy")
        policy = policy_from_pb(request)
        if caller.role == "department" and policy.department != caller.org_id:
            # a department publishes in its own name only (the operator for any department)
            raise RoleNotAllowed(
                f"{caller.org_id} publishes policies as itself; the policy names department "
                f"{policy.department[:64]!r}",
                role=caller.role,
            )
        self.store.publish(policy, self.clock(), self._append_as(caller))
        return rule_to_pb(rules.check_rule(policy.rule))

    @handle_errors
    def ListPolicies(self, request: Any, context: Any) -> Any:
        self._acting(context)
        mode = request.mode or None
        if mode is not None and mode not in rules.MODES:
            raise InvalidPolicy(f"mode: expected one of {', '.join(rules.MODES)}, got {mode!r}",
                                field="mode")  # fmt: skip
        return policies_pb2.ListPoliciesResponse(
            policies=[policy_to_pb(p) for p in self.store.policies(mode=mode)]
        )

    @handle_errors
    def RunScreening(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, PUBLISHERS, "running a screening")
        if request.run_id and not _RUN.fullmatch(request.run_id):
            raise InvalidPolicy(f"run_id: expected 1-64 of A-Z a-z 0-9 _ . : -, got "
                                f"{request.run_id[:40]!r}", field="run_id")  # fmt: skip
        today = _date(request.today, "today")
        # a department screens only the automatic policies it issues, and only as of today
        # (a date of its choosing would award under a policy that closed or is not open)
        own = caller.org_id if caller.role == "department" else None
        clock_day = datetime.fromtimestamp(self.clock(), UTC).date()
        if own is not None and abs((today - clock_day).days) > 1:
            raise InvalidPolicy(f"today: a department screens as of today ({clock_day}, "
                                f"within a day), got {today}", field="today")  # fmt: skip
        if own is not None and self.store.runs_of(own, self.clock() - DAY_S) >= DEPARTMENT_RUNS:
            raise RunLimit(f"{own} ran {DEPARTMENT_RUNS} screenings in the last 24 hours, the "
                           "most a department may; the operator's scheduled runs go on",
                           department=own)  # fmt: skip
        codes, rows = self.store.registry()
        s = runs.run_automatic(self.store, self.ledger, self.nodes, codes, rows,
                               run_id=request.run_id or f"run-{int(self.clock())}-{secrets.token_hex(4)}",
                               today=today, now=self.clock(),
                               department=own)  # fmt: skip
        return policies_pb2.RunScreeningResponse(
            run_id=s.run_id, enterprises=s.enterprises, policies=s.policies, clauses=s.clauses,
            screening_seconds=s.screening_seconds, eligible=s.eligible, notified=s.notified,
            unfunded=s.unfunded,
        )  # fmt: skip

    @handle_errors
    def ListAwards(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise"}), "listing awards")
        return policies_pb2.ListAwardsResponse(
            awards=[award_to_pb(a) for a in self.store.awards_of(caller.org_id)]
        )

    @handle_errors
    def DeclineAward(self, request: Any, context: Any) -> Any:
        caller = self._acting(context)
        _allow(caller, frozenset({"enterprise"}), "declining a benefit")
        return award_to_pb(
            self.store.decline(
                request.policy_id, caller.org_id, self.clock(), self._append_as(caller)
            )
        )

    @handle_errors
    def PayDue(self, request: Any, context: Any) -> Any:
        _allow(self._acting(context), OPERATORS, "paying awards")
        paid = self.store.pay_due(self.clock(), self.append)
        return policies_pb2.PayDueResponse(
            paid=len(paid), amount_yuan=sum(a.amount_yuan for a in paid)
        )


@dataclass
class PolicyServer:
    server: grpc.Server
    port: int

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float | None = 1.0) -> None:
        self.server.stop(grace).wait()


def build_policy_server(
    servicer: PolicyServicer, *, address: str, tls: TlsFiles | None, insecure: bool = False,
    extra: Sequence[Any] = (),
) -> PolicyServer:  # fmt: skip
    server, port = build_server(
        address=address, tls=tls, service_names=[SERVICE_NAME], insecure=insecure,
        register=lambda s: policies_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, s),
    )  # fmt: skip
    return PolicyServer(server, port)
