"""Online applications with joint approval: the state machine, as pure data and functions.

An enterprise applies to an application policy (form fields, attachments by SHA-256).
The application is pushed to every reviewing department at once; each reviews its own
part in parallel before the review deadline. Then:

==================  =====================  =============================================
state               event                  next state
==================  =====================  =============================================
submitted           push                   under_review (parts pending, deadline set)
submitted           withdraw               withdrawn
under_review        review (approve)       under_review; notice once every part approves
under_review        review (reject)        rejected (one rejection is enough)
under_review        deadline               overdue (reviews still accepted; reported)
overdue             review                 as under_review
under_review        withdraw               withdrawn
notice (公示)        object                 objected (the notice period stops counting)
objected            resolve (dismissed)    notice, the period starts again in full
objected            resolve (upheld)       rejected
notice              close                  approved (only once the period has passed)
approved            pay                    paid
==================  =====================  =============================================

Anything else is refused with :class:`IllegalTransition` naming the state and the event,
and leaves the application as it was (applications are immutable values; every step
returns a new one with the step appended to its history). Times are POSIX seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from fedcredit.policies.errors import IllegalTransition, InvalidPolicy, PolicyNotOpen
from fedcredit.policies.rules import Policy

DAY = 86_400.0
State = Literal[
    "submitted", "under_review", "overdue", "notice", "objected", "approved", "paid",
    "rejected", "withdrawn",
]  # fmt: skip
STATES: tuple[State, ...] = ("submitted", "under_review", "overdue", "notice", "objected",
                             "approved", "paid", "rejected", "withdrawn")  # fmt: skip
EVENTS = ("push", "review", "deadline", "object", "resolve", "close", "pay", "withdraw")
FINAL: frozenset[str] = frozenset({"paid", "rejected", "withdrawn"})
SHA256 = re.compile(r"[0-9a-f]{64}")
# the store's column holds 64 characters (a longer id made PostgreSQL fail INTERNAL)
APPLICATION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# the submit entry lists the attachments: 1,000 names of 1,024 characters (what the request
# shape check lets through) overflowed the ledger's 16 KiB payload
MAX_ATTACHMENTS = 20
ATTACHMENT_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]{1,128}")


@dataclass(frozen=True, slots=True)
class Application:
    id: str
    policy: str
    enterprise: str
    amount_yuan: int
    fields: Mapping[str, str]
    attachments: Mapping[str, str]  # file name -> SHA-256 (hex)
    state: State
    submitted_at: float
    parts: Mapping[str, str] = dataclasses.field(
        default_factory=dict
    )  # dept -> pending|approved|rejected
    review_deadline: float = 0.0
    notice_until: float = 0.0
    objections: tuple[tuple[float, str, str], ...] = ()  # (at, by, reason)
    history: tuple[tuple[float, str, str], ...] = ()  # (at, event, state after)


def attachment_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def apply(
    policy: Policy,
    app_id: str,
    enterprise: str,
    fields: Mapping[str, str],
    attachments: Mapping[str, str],
    at: float,
    amount_yuan: int | None = None,
) -> Application:
    """A new application, its form checked against the policy's fields. ``amount_yuan``:
    the benefit for this enterprise when the policy's is a formula (default: the fixed
    amount); never above the policy's ``amount_yuan`` (its cap)."""
    if not APPLICATION_ID.fullmatch(app_id):
        raise InvalidPolicy(f"application_id: expected 1-64 of A-Z a-z 0-9 _ . : -, got "
                            f"{app_id[:70]!r}", field="application_id")  # fmt: skip
    if policy.mode != "application":
        raise InvalidPolicy(f"policy {policy.id} is automatic: nobody applies to it", field="mode")
    day = datetime.fromtimestamp(at, UTC).date()
    if not policy.opens <= day <= policy.closes:
        raise PolicyNotOpen(
            f"policy {policy.id} takes applications from {policy.opens} to {policy.closes}; "
            f"it is {day}",
            policy=policy.id,
        )
    missing = [f for f in policy.fields if not str(fields.get(f, "")).strip()]
    extra = sorted(set(fields) - set(policy.fields))
    if missing or extra:
        raise InvalidPolicy(
            f"the form of {policy.id} needs {', '.join(policy.fields) or 'no field'}; "
            f"missing {missing or 'none'}, unknown {extra or 'none'}",
            field=(missing or extra)[0],
        )
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidPolicy(f"attachments: at most {MAX_ATTACHMENTS}, got {len(attachments)}",
                            field="attachments")  # fmt: skip
    odd = next((n for n in attachments if not ATTACHMENT_NAME.fullmatch(n)), None)
    if odd is not None:
        raise InvalidPolicy(f"attachment name: expected 1-128 characters without / \\ or "
                            f"control characters, got {odd[:40]!r}", field="attachments")  # fmt: skip
    bad = [n for n, d in attachments.items() if not SHA256.fullmatch(d)]
    if bad:
        raise InvalidPolicy(
            f"attachment {bad[0]!r}: expected a SHA-256 in hex", field="attachments"
        )
    amount = policy.amount_yuan if amount_yuan is None else amount_yuan
    if type(amount) is not int or not 0 < amount <= policy.amount_yuan:
        raise InvalidPolicy(f"amount_yuan: expected 1..{policy.amount_yuan}, got {amount!r}",
                            field="amount_yuan")  # fmt: skip
    return Application(app_id, policy.id, enterprise, amount, dict(fields),
                       dict(attachments), "submitted", at, history=((at, "submit", "submitted"),))  # fmt: skip


def _refuse(app: Application, event: str, why: str = "") -> IllegalTransition:
    return IllegalTransition(
        f"application {app.id} is {app.state}: {event!r} is not allowed"
        + (f" ({why})" if why else ""),
        state=app.state,
        event=event,
    )


def _to(app: Application, at: float, event: str, state: State, **kw: object) -> Application:
    return dataclasses.replace(app, state=state, history=(*app.history, (at, event, state)), **kw)  # type: ignore[arg-type]


def push(app: Application, policy: Policy, at: float) -> Application:
    if app.state != "submitted":
        raise _refuse(app, "push")
    parts = {d: "pending" for d in policy.reviewers}
    return _to(app, at, "push", "under_review", parts=parts,
               review_deadline=at + policy.review_days * DAY)  # fmt: skip


def review(
    app: Application, policy: Policy, department: str, approve: bool, at: float
) -> Application:
    if app.state not in ("under_review", "overdue"):
        raise _refuse(app, "review")
    if department not in app.parts:
        raise _refuse(app, "review", f"{department} is not a reviewer of {app.policy}")
    if app.parts[department] != "pending":
        raise _refuse(app, "review", f"{department} already reviewed ({app.parts[department]})")
    parts = {**app.parts, department: "approved" if approve else "rejected"}
    if not approve:
        return _to(app, at, f"review:{department}:reject", "rejected", parts=parts)
    if all(v == "approved" for v in parts.values()):
        return _to(app, at, f"review:{department}:approve", "notice", parts=parts,
                   notice_until=at + policy.notice_days * DAY)  # fmt: skip
    return _to(app, at, f"review:{department}:approve", app.state, parts=parts)


def deadline(app: Application, at: float) -> Application:
    if app.state != "under_review" or at < app.review_deadline:
        raise _refuse(app, "deadline", "only past the review deadline, while under review")
    return _to(app, at, "deadline", "overdue")


def lodge_objection(app: Application, by: str, reason: str, at: float) -> Application:
    if app.state != "notice" or at > app.notice_until:
        raise _refuse(app, "object", "objections are lodged during the public notice")
    if not reason.strip():
        raise InvalidPolicy("an objection needs a reason", field="reason")
    if any(o[1] == by for o in app.objections):
        # each dismissal restarts the notice in full: one objector objecting again after
        # every dismissal would hold the payment back for ever
        raise _refuse(app, "object", f"{by} already objected to it once")
    return _to(app, at, f"object:{by}", "objected", objections=(*app.objections, (at, by, reason)))


def resolve(app: Application, policy: Policy, upheld: bool, at: float) -> Application:
    if app.state != "objected":
        raise _refuse(app, "resolve")
    if upheld:
        return _to(app, at, "resolve:upheld", "rejected")
    return _to(app, at, "resolve:dismissed", "notice", notice_until=at + policy.notice_days * DAY)


def close_notice(app: Application, at: float) -> Application:
    if app.state != "notice" or at < app.notice_until:
        raise _refuse(app, "close", "only once the public notice period has passed")
    return _to(app, at, "close", "approved")


def pay(app: Application, at: float) -> Application:
    if app.state != "approved":
        raise _refuse(app, "pay")
    return _to(app, at, "pay", "paid")


def withdraw(app: Application, at: float) -> Application:
    if app.state not in ("submitted", "under_review", "overdue"):
        raise _refuse(app, "withdraw", "possible until every department has decided")
    return _to(app, at, "withdraw", "withdrawn")


def cycle_seconds(app: Application) -> float | None:
    """Submission to payment (None until paid)."""
    return app.history[-1][0] - app.submitted_at if app.state == "paid" else None


def cycle_report(apps: Sequence[Application]) -> dict[str, dict[str, float]]:
    """Per policy: paid applications, median and 90th-percentile cycle time in days."""
    by: dict[str, list[float]] = {}
    for a in apps:
        c = cycle_seconds(a)
        if c is not None:
            by.setdefault(a.policy, []).append(c / DAY)
    out = {}
    for pid, xs in sorted(by.items()):
        xs.sort()
        out[pid] = {"paid": float(len(xs)), "median_days": xs[len(xs) // 2],
                    "p90_days": xs[min(len(xs) - 1, int(0.9 * len(xs)))]}  # fmt: skip
    return out
