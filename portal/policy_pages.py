"""The policy-fund pages (涉企政策超市, 免申即享, 资金跟踪问效).

Departments publish a policy (its CEL rule and benefit formula type-checked by the policy
service, a refusal shown at its line and column), review their part of each application
before its deadline, run the screening of their own automatic policies and read the
counts, and read the tracking rounds (figures and bar charts). Enterprises see the
benefits a screening found them eligible for, apply (the policy's form fields,
attachments stored by SHA-256), decline a benefit within its window and file their
monthly self-evaluation.

Every call goes through the policy service's SDK under the portal's own certificate,
carrying the delegation ticket the consent service issued for the organisation signed in
with a passkey (``web.delegation``, verified by the service) — an enterprise or a
department, nothing broader; the service applies every rule to that
organisation exactly as to its own certificate (an enterprise reaches only its own
awards, applications and reports; a department reviews only its own part). Operator
steps (closing notices, payments, resolving objections) are not here. Every form posts
through the portal's CSRF check (``web.post``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fedcredit.common.errors import FedcreditError, InvalidArgument, RoleNotAllowed, Unavailable
from fedcredit.policies import progress
from fedcredit.policies.errors import RuleInvalid, RuleNotSplittable
from fedcredit.portal.security import Session
from fedcredit.portal.web import Portal, call, delegation, page, post

MAX_ATTACHMENTS = 8
MAX_ATTACHMENT_BYTES = 1_000_000  # all of them together (one gRPC message carries them)
DAY = 86_400.0


class PoliciesNotConfigured(Unavailable):
    reason = "POLICIES_NOT_CONFIGURED"


async def policies(portal: Portal, s: Session) -> Any:
    """The policy client calling for the signed-in organisation (enterprise or department)
    with its delegation ticket for the policy service."""
    c = getattr(portal.backend, "policies", None)
    if c is None:
        raise PoliciesNotConfigured("this portal has no policy service configured ([services.policies])")  # fmt: skip
    return c.delegated(await delegation(portal, s, "policies"))


def _need_role(s: Session, role: str) -> None:
    if not s.signed_in or s.role != role:
        raise RoleNotAllowed(f"only a signed-in {role} may do this; you are {s.role or 'not signed in'}")  # fmt: skip


def _text(data: dict[str, Any], key: str, *, limit: int = 64, required: bool = True) -> str:
    v = data.get(key, "")
    text = v.strip() if isinstance(v, str) else ""
    if (required and not text) or len(text) > limit:
        raise InvalidArgument(f"expected {key} (1 to {limit} characters), got {len(text)} characters")  # fmt: skip
    return text


def _whole(data: dict[str, Any], key: str, *, digits: int, default: str | None = None) -> int:
    v = data.get(key, default)
    text = (v if isinstance(v, str) else "").strip() or (default or "")
    if not text.isdigit() or len(text) > digits:
        raise InvalidArgument(f"expected a whole number of at most {digits} digits for {key}, got {text[:20]!r}")  # fmt: skip
    return int(text)


def _back(portal: Portal, s: Session, to: str, flash: str) -> Response:
    s.flash.append(flash)
    return portal.finish(RedirectResponse(to, 303), s)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


# --- department ----------------------------------------------------------------------------


def _mine(s: Session, ps: list[Any]) -> tuple[list[Any], list[Any]]:
    """(policies this department issues, policies it reviews)."""
    issued = [p for p in ps if p.department == s.org]
    reviews = [p for p in ps if s.org in p.reviewers and p.department != s.org]
    return issued, reviews


async def _dept_page(portal: Portal, request: Request, s: Session, **ctx: Any) -> Response:
    c = await policies(portal, s)
    issued, reviews = _mine(s, await call(c.policies))
    form = ctx.pop("form", {}) or {"opens": _today(), "closes": f"{datetime.now(UTC).year}-12-31"}
    return portal.render(request, s, "policy/department.html", issued=issued, reviews=reviews,
                         form=form, today=_today(), **ctx)  # fmt: skip


@page("department")
async def department_policies(portal: Portal, request: Request, s: Session) -> Response:
    return await _dept_page(portal, request, s)


def _policy_message(s: Session, data: dict[str, Any]) -> Any:
    from fedcredit.v1 import policies_pb2

    mode = _text(data, "mode", limit=16)
    formula = _text(data, "benefit_formula", limit=600, required=False)
    amount = _whole(data, "amount_yuan", digits=13)
    split = [x.strip() for x in _text(data, "reviewers", limit=600, required=False).split(",")]
    fields = [x.strip() for x in _text(data, "fields", limit=600, required=False).split(",")]
    return policies_pb2.PolicyMessage(
        id=_text(data, "id"), title=_text(data, "title", limit=200), department=s.org,
        mode=mode, amount_yuan=amount, budget_yuan=_whole(data, "budget_yuan", digits=13),
        opens=_text(data, "opens", limit=10), closes=_text(data, "closes", limit=10),
        rule=_text(data, "rule", limit=4096), reviewers=[x for x in split if x],
        fields=[x for x in fields if x], benefit_formula=formula,
        amount_cap_yuan=amount if formula else 0,
        target=_text(data, "target", limit=4096, required=False),
        decline_days=_whole(data, "decline_days", digits=2, default="7"),
        review_days=_whole(data, "review_days", digits=2, default="10"),
        notice_days=_whole(data, "notice_days", digits=2, default="5"),
    )  # fmt: skip


def _caret(text: str, line: int, column: int) -> dict[str, Any]:
    """The offending line of a CEL text and a marker under the error's column."""
    lines = text.split("\n")
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    return {"line": line, "column": column, "source": src, "marker": " " * max(0, column - 1) + "^"}  # fmt: skip


def _which_text(exc: FedcreditError, data: dict[str, Any]) -> str:
    """The CEL text an error points into: the formula's when the service says so."""
    key = "benefit_formula" if exc.metadata.get("field") == "benefit_formula" else "rule"
    return str(data.get(key, ""))


@post
async def publish(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "department")
    msg = _policy_message(s, data)
    keep = {k: v for k, v in data.items() if isinstance(v, str) and k != "csrf"}
    try:
        plan = await call((await policies(portal, s)).publish, msg)
    except (RuleInvalid, RuleNotSplittable) as exc:
        line, col = int(exc.metadata.get("line", 1)), int(exc.metadata.get("column", 1))
        err = {"reason": exc.reason, "message": str(exc), **_caret(_which_text(exc, data), line, col)}  # fmt: skip
        return await _dept_page(portal, request, s, form=keep, rule_error=err)
    return await _dept_page(portal, request, s, published=msg.id, plan=plan)


@post
async def check_rule(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    """htmx: the rule's type check and split, or its error at its position (a fragment)."""
    _need_role(s, "department")
    rule = _text(data, "rule", limit=4096)
    try:
        plan = await call((await policies(portal, s)).check_rule, rule)
        return portal.render(request, s, "policy/_check.html", plan=plan, rule_error=None)
    except (RuleInvalid, RuleNotSplittable) as exc:
        line, col = int(exc.metadata.get("line", 1)), int(exc.metadata.get("column", 1))
        err = {"reason": exc.reason, "message": str(exc), **_caret(rule, line, col)}
        return portal.render(request, s, "policy/_check.html", plan=None, rule_error=err)


@page("department")
async def reviews(portal: Portal, request: Request, s: Session) -> Response:
    """The applications to policies this department issues or reviews, its own part of
    each, and the review deadline."""
    apps = await call((await policies(portal, s)).applications)
    now = time.time()
    rows = [
        {
            "app": a,
            "part": a.parts.get(s.org, ""),
            "overdue": a.review_deadline and now > a.review_deadline,
        }
        for a in apps
    ]
    return portal.render(request, s, "policy/reviews.html", rows=rows)


@post
async def review(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "department")
    approve = str(data.get("approve", "")) == "1"
    await call((await policies(portal, s)).review, _text(data, "application_id"), approve)
    return _back(portal, s, "/policy/reviews", "po_approved" if approve else "po_rejected")


@post
async def screen(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    """Screen the department's own open automatic policies now; the counts per policy."""
    _need_role(s, "department")
    today = _text(data, "today", limit=10, required=False) or _today()
    run = await call(
        (await policies(portal, s)).run_screening, today, f"portal-{uuid.uuid4().hex[:12]}"
    )
    return await _dept_page(portal, request, s, run=run)


@page("department")
async def tracking(portal: Portal, request: Request, s: Session) -> Response:
    """The stored tracking rounds of this department's policies: funded, target met,
    flagged with the proposed adjustments, cohort means; a bar chart per round."""
    c = await policies(portal, s)
    rounds = await call(c.tracking_history)
    issued, reviewed = _mine(s, await call(c.policies))
    reports = {p.id: await call(c.progress, p.id) for p in issued + reviewed}
    return portal.render(request, s, "policy/tracking.html", rounds=rounds, reports=reports,
                         charts=[_chart(r) for r in rounds])  # fmt: skip


def _chart(r: Any) -> list[dict[str, Any]]:
    """Bars for one round: per policy, met and below target (widths in % of the largest)."""
    top = max([p.funded for p in r.policies] or [1]) or 1
    return [{"policy": p.policy_id, "funded": p.funded, "met": p.target_met,
             "met_w": round(100 * p.target_met / top, 1),
             "below_w": round(100 * (p.funded - p.target_met) / top, 1) if p.has_target else 0.0}
            for p in r.policies]  # fmt: skip


# --- enterprise ----------------------------------------------------------------------------


@page("enterprise")
async def enterprise_policies(portal: Portal, request: Request, s: Session) -> Response:
    c = await policies(portal, s)
    awards = await call(c.awards)
    apps = await call(c.applications)
    open_ = [p for p in await call(c.policies, "application") if p.opens <= _today() <= p.closes]
    funded = sorted({a.policy_id for a in awards if a.state == "paid"}
                    | {a.policy_id for a in apps if a.state == "paid"})  # fmt: skip
    reports = await call(c.progress)
    now = time.time()
    return portal.render(request, s, "policy/enterprise.html", awards=awards, apps=apps,
                         open_policies=open_, funded=funded, reports=reports, now=now,
                         indicators=list(progress.INDICATORS),
                         period=datetime.now(UTC).strftime("%Y-%m"))  # fmt: skip


@page("enterprise")
async def apply_form(portal: Portal, request: Request, s: Session) -> Response:
    pid = request.path_params["policy_id"]
    found = [
        p for p in await call((await policies(portal, s)).policies, "application") if p.id == pid
    ]
    if not found:
        s.flash.append("po_no_such_policy")
        return portal.finish(RedirectResponse("/policy/enterprise", 303), s)
    return portal.render(request, s, "policy/apply.html", p=found[0], rid=uuid.uuid4().hex[:16])


async def _attachments(data: dict[str, Any]) -> dict[str, bytes]:
    files = [v for k, v in data.items() if k.startswith("file") and isinstance(v, UploadFile) and v.filename]  # fmt: skip
    if len(files) > MAX_ATTACHMENTS:
        raise InvalidArgument(f"expected at most {MAX_ATTACHMENTS} attachments, got {len(files)}")
    out: dict[str, bytes] = {}
    total = 0
    for f in files:
        body = await f.read(MAX_ATTACHMENT_BYTES + 1)
        total += len(body)
        if total > MAX_ATTACHMENT_BYTES:
            raise InvalidArgument(f"expected attachments of at most {MAX_ATTACHMENT_BYTES:,} bytes in all")  # fmt: skip
        name = (f.filename or "").replace("\\", "/").rsplit("/", 1)[-1][:100]
        if name in out:
            raise InvalidArgument(f"attachment {name!r} appears twice")
        out[name] = body
    return out


@post
async def apply(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "enterprise")
    pid = _text(data, "policy_id")
    c = await policies(portal, s)
    found = [p for p in await call(c.policies, "application") if p.id == pid]
    if not found:
        raise InvalidArgument(f"no application policy {pid!r}")
    fields = {f: _text(data, f"field_{f}", limit=500, required=False) for f in found[0].fields}
    docs = await _attachments(data)
    rid = _text(data, "request_id", limit=16)
    app = await call(c.apply, f"w-{s.org}-{rid}", pid, fields, docs)
    s.flash.append("po_applied")
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in docs.items()}
    return portal.render(request, s, "policy/applied.html", app=app, digests=digests)


@post
async def decline(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _need_role(s, "enterprise")
    await call((await policies(portal, s)).decline, _text(data, "policy_id"))
    return _back(portal, s, "/policy/enterprise", "po_declined")


@post
async def report_progress(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    _need_role(s, "enterprise")
    values: dict[str, float] = {}
    for name in progress.INDICATORS:
        text = _text(data, name, limit=20, required=False)
        if text:
            try:
                values[name] = float(text)
            except ValueError:
                raise InvalidArgument(f"expected a number for {name}, got {text!r}") from None
    narrative = _text(data, "narrative", limit=progress.MAX_NARRATIVE, required=False)
    await call((await policies(portal, s)).report_progress, _text(data, "policy_id"),
               _text(data, "period", limit=7), values, narrative)  # fmt: skip
    return _back(portal, s, "/policy/enterprise", "po_reported")


POLICY_ROUTES = [
    Route("/policy/department", department_policies),
    Route("/policy/publish", publish, methods=["POST"]),
    Route("/policy/check", check_rule, methods=["POST"]),
    Route("/policy/reviews", reviews),
    Route("/policy/review", review, methods=["POST"]),
    Route("/policy/screen", screen, methods=["POST"]),
    Route("/policy/tracking", tracking),
    Route("/policy/enterprise", enterprise_policies),
    Route("/policy/apply/{policy_id}", apply_form),
    Route("/policy/apply", apply, methods=["POST"]),
    Route("/policy/decline", decline, methods=["POST"]),
    Route("/policy/progress", report_progress, methods=["POST"]),
]
