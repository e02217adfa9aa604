"""The bank's pages: score an enterprise under a granted consent (rating, PD and the
reasons as a chart), apply for a guarantee and see the decision, the watch list with
rating warnings, and a batch upload with progress and a results download.

Every call to the coordinator (and the marketplace's warnings) goes under the portal's own
certificate **with the bank's delegation ticket** (consent/delegation.py): the coordinator
acts as the bank, with the bank's rights only, and ledgers the act ``via: portal``. The
consent tokens come from the consent service for the bank's session (bound to the bank's
own certificate); they are used here and never sent to the browser.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fedcredit.common.errors import InvalidArgument, RoleNotAllowed, Unavailable
from fedcredit.coordinator.client import score_dict
from fedcredit.portal import batches as B
from fedcredit.portal.security import Session
from fedcredit.portal.web import Portal, call, delegation, page, post

CHART_W, BAR_H, LABEL_W = 640, 34, 250  # the reasons chart (SVG user units)


class CoordinatorNotConfigured(Unavailable):
    reason = "PORTAL_COORDINATOR_NOT_CONFIGURED"


def _bank(s: Session) -> None:
    if s.role != "bank":
        raise RoleNotAllowed(f"this is a bank's page; you signed in as {s.role or 'nobody'}")


async def coordinator(portal: Portal, s: Session) -> Any:
    """The coordinator client carrying the bank's delegation ticket."""
    c = portal.backend.coordinator
    if c is None:
        raise CoordinatorNotConfigured("this portal has no coordinator configured ([services.coordinator])")  # fmt: skip
    return c.delegated(await delegation(portal, s, "coordinator"))


async def consents(portal: Portal, s: Session, purpose: str = "") -> list[Any]:
    got = await call(portal.backend.passkeys.list_consents, s.ticket, ["ACTIVE"])
    return [c for c in got if not purpose or c.purpose == purpose]


def _int(data: dict[str, Any], key: str, *, lo: int, hi: int) -> int:
    text = str(data.get(key, "")).strip().replace(",", "")
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise InvalidArgument(f"expected {key} as a whole number from {lo:,} to {hi:,}, got {text[:20]!r}")  # fmt: skip
    return int(text)


def _consent_id(data: dict[str, Any]) -> str:
    cid = str(data.get("consent_id", "")).strip()
    if not cid or len(cid) > 64:
        raise InvalidArgument("choose one of your granted consents")
    return cid


def chart(reasons: list[dict[str, Any]]) -> dict[str, Any]:
    """The reasons as horizontal bars (server-rendered SVG: no script, CSP-clean): a label
    column, then each bar's length is the feature's contribution to the risk (log-odds),
    to scale, from a zero line (in the middle when some contribution lowers the risk)."""
    top = max((abs(r["contribution"]) for r in reasons), default=0.0) or 1.0
    area_x, area_w = LABEL_W + 10, CHART_W - LABEL_W - 10 - 70  # 70: room for the figure
    both = any(r["contribution"] < 0 for r in reasons)
    zero = area_x + area_w / 2 if both else area_x
    scale = (area_w / 2 if both else area_w) / top
    bars = []
    for i, r in enumerate(reasons):
        c = r["contribution"]
        w = max(1.0, abs(c) * scale)
        x = zero if c >= 0 else zero - w
        bars.append({**r, "x": round(x, 1), "y": i * BAR_H + 4, "w": round(w, 1), "up": c >= 0,
                     "tx": round(x + w + 4 if c >= 0 else zero + 4, 1)})  # fmt: skip
    return {"bars": bars, "w": CHART_W, "h": max(1, len(bars)) * BAR_H + 8, "mid": zero}


def score_view(r: Any) -> dict[str, Any]:
    """The SDK's mapping of a score (coordinator/client.py ``score_dict``) with what the page
    adds: the PD in per cent, contributions rounded for display, the reasons chart."""
    d = score_dict(r)
    reasons = [{**x, "contribution": round(x["contribution"], 4)} for x in d["reasons"]]
    return {**d, "pd": d["probability_of_default"], "pd_pct": round(100 * d["probability_of_default"], 2),
            "reasons": reasons, "chart": chart(reasons)}  # fmt: skip


# --- score ------------------------------------------------------------------------------------


@page("bank")
async def score_page(portal: Portal, request: Request, s: Session) -> Response:
    granted = await consents(portal, s, "credit_assessment")
    return portal.render(request, s, "bank_score.html", consents=granted,
                         result=s.data.get("score"), selected=request.query_params.get("consent", ""))  # fmt: skip


@post
async def score(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:
    _bank(s)
    view = await call(portal.backend.passkeys.bank_token, s.ticket, _consent_id(data))
    c = await coordinator(portal, s)
    r = await call(c.score, view.enterprise, view.token or "", request_id=f"portal-{uuid.uuid4().hex}")  # fmt: skip
    s.data["score"] = {**score_view(r), "consent_id": view.consent_id}
    return portal.finish(RedirectResponse("/bank/score#result", 303), s)


# --- guarantee ----------------------------------------------------------------------------------


@page("bank")
async def guarantee_page(portal: Portal, request: Request, s: Session) -> Response:
    granted = await consents(portal, s, "guarantee")
    return portal.render(request, s, "bank_guarantee.html", consents=granted,
                         decision=s.data.get("guarantee"), selected=request.query_params.get("consent", ""))  # fmt: skip


@post
async def guarantee(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    _bank(s)
    cid = _consent_id(data)
    amount = _int(data, "amount_yuan", lo=1, hi=100_000_000)
    term = _int(data, "term_months", lo=1, hi=120)
    collateral = _int(data, "collateral_yuan", lo=0, hi=1_000_000_000)
    view = await call(portal.backend.passkeys.bank_token, s.ticket, cid)
    c = await coordinator(portal, s)
    d = await call(
        c.apply, application_id=f"pg-{uuid.uuid4().hex}", enterprise=view.enterprise,
        token=view.token or "", amount_yuan=amount, term_months=term, collateral_yuan=collateral,
    )  # fmt: skip
    s.data["guarantee"] = {
        "application_id": d.application_id, "approved": d.approved, "reason": d.reason,
        "explanation": d.explanation, "rating": d.rating, "pd_pct": round(100 * d.probability_of_default, 2),
        "fund_share_pct": d.fund_share_bp / 100, "fund_amount": d.fund_amount_yuan,
        "collateral_required": d.collateral_required_yuan, "amount": d.amount_yuan,
        "term_months": d.term_months, "enterprise": d.enterprise, "ledger_index": d.ledger_index,
        "status": d.status,
    }  # fmt: skip
    return portal.finish(RedirectResponse("/bank/guarantee#decision", 303), s)


# --- watch list ------------------------------------------------------------------------------------


@page("bank")
async def watch_page(portal: Portal, request: Request, s: Session) -> Response:
    """The post-loan watch list: the bank's monitoring consents, the ratings of its last
    check with downgrades flagged, and the marketplace's rating warnings on its loans."""
    watched = await consents(portal, s, "post_loan_monitoring")
    warnings: list[dict[str, Any]] = []
    if portal.backend.market is not None:
        m = portal.backend.market.delegated(await delegation(portal, s, "market"))
        warnings = await call(m.warnings)
    return portal.render(request, s, "bank_watch.html", consents=watched, warnings=warnings,
                         check=portal.watch_checks.get(s.org))  # fmt: skip


@post
async def watch_check(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    """One round of WatchRatings over the monitoring consents (one use of each): each
    enterprise's rating now, and whether it moved since the page's last check."""
    _bank(s)
    watched = await consents(portal, s, "post_loan_monitoring")
    if not watched:
        raise InvalidArgument("you hold no active post-loan monitoring consent to check")
    subs = []
    for v in watched[:100]:
        view = await call(portal.backend.passkeys.bank_token, s.ticket, v.consent_id)
        subs.append((view.enterprise, view.token or ""))
    c = await coordinator(portal, s)
    events = await call(lambda: list(c.watch(subs, max_rounds=1, timeout=120)))
    before: dict[str, Any] = portal.watch_checks.get(s.org).get("rows", {})
    rows: dict[str, Any] = {}
    for ev in events:
        if ev.HasField("error") and ev.error.reason:
            rows[ev.enterprise] = {"error": ev.error.reason, "message": ev.error.message}
            continue
        prev = (before.get(ev.enterprise) or {}).get("rating", "")
        now = ev.result.rating
        move = "down" if prev and now > prev else "up" if prev and now < prev else ""
        rows[ev.enterprise] = {"rating": now, "previous": prev, "move": move,
                               "pd_pct": round(100 * ev.result.probability_of_default, 2)}  # fmt: skip
    await call(portal.watch_checks.put, s.org, {**before, **rows})
    return portal.finish(RedirectResponse("/bank/watch#checked", 303), s)


# --- batch ----------------------------------------------------------------------------------------


@page("bank")
async def batch_page(portal: Portal, request: Request, s: Session) -> Response:
    return portal.render(request, s, "bank_batch.html", jobs=portal.jobs.list(s.org))


@post
async def batch_upload(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    _bank(s)
    upload = data.get("file")
    if upload is None or not hasattr(upload, "read"):
        raise B.BatchFileInvalid("choose a CSV file to upload")
    rows, bad = B.parse_csv(await upload.read(B.MAX_BYTES + 1))
    c = await coordinator(portal, s)  # the ticket is checked when the stream opens
    job = B.Job(B.new_batch_id(), s.org, len(rows) + len(bad), rows=rows, bad=bad)
    ticket, passkeys = s.ticket, portal.backend.passkeys
    portal.jobs.start(job, lambda j: _run(j, j.rows, c, ticket, passkeys))
    return portal.finish(RedirectResponse(f"/bank/batch/{job.batch_id}", 303), s)


@post
async def batch_resume(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    """Send the batch again under its batch id (after a failure, say): the coordinator
    replays every row it scored already — no new disclosure, ledger entry or consent use —
    and scores the rest."""
    _bank(s)
    job = portal.jobs.get(s.org, request.path_params["batch_id"])
    c = await coordinator(portal, s)
    ticket, passkeys = s.ticket, portal.backend.passkeys
    portal.jobs.run(job, lambda j: _run(j, j.rows, c, ticket, passkeys))
    return portal.finish(RedirectResponse(f"/bank/batch/{job.batch_id}", 303), s)


def _run(job: B.Job, rows: list[B.Row], c: Any, ticket: str, passkeys: Any) -> None:
    """Tokens for the consent-id rows (a refusal per row that has none), then one
    resumable ScoreBatch stream; every answer is counted as it arrives."""
    ready: list[B.Row] = []
    for r in rows:
        if r.token_lost:  # read back after a restart: the portal kept no token
            job.add(B.refusal(r, B.TokenNotKept.reason, "the portal keeps no consent token on disk and restarted since this row was uploaded; upload this row again"))  # fmt: skip
            continue
        if not r.consent_id:
            ready.append(r)
            continue
        try:
            view = passkeys.bank_token(ticket, r.consent_id)
        except Exception as exc:  # this row's refusal, never the batch's
            job.add(B.refusal(r, getattr(exc, "reason", "CONSENT_UNAVAILABLE"), getattr(exc, "message", str(exc))))  # fmt: skip
            continue
        ready.append(B.Row(r.row, r.consent_id, view.enterprise, view.token or "", r.request_id))
    if not ready:
        return
    stream = c.score_batch([(r.enterprise, r.token, r.request_id) for r in ready], batch_id=job.batch_id)  # fmt: skip
    for r, item in B.in_order(ready, stream):
        job.add(B.scored(r, item))


@page("bank")
async def batch_status(portal: Portal, request: Request, s: Session) -> Response:
    job = portal.jobs.get(s.org, request.path_params["batch_id"])
    return portal.render(request, s, "bank_batch_job.html", job=job)


@page("bank")
async def batch_progress(portal: Portal, request: Request, s: Session) -> Response:
    """The progress fragment htmx polls (it stops polling once the job is over)."""
    job = portal.jobs.get(s.org, request.path_params["batch_id"])
    return portal.render(request, s, "_batch_progress.html", job=job)


@page("bank")
async def batch_results(portal: Portal, request: Request, s: Session) -> Response:
    job = portal.jobs.get(s.org, request.path_params["batch_id"])
    body = B.results_csv(job)
    resp = Response(body, media_type="text/csv; charset=utf-8")
    resp.headers["Content-Disposition"] = f'attachment; filename="{job.batch_id}.csv"'
    return portal.finish(resp, s)


BANK_ROUTES = [
    Route("/bank/score", score_page),
    Route("/bank/score", score, methods=["POST"]),
    Route("/bank/guarantee", guarantee_page),
    Route("/bank/guarantee", guarantee, methods=["POST"]),
    Route("/bank/watch", watch_page),
    Route("/bank/watch/check", watch_check, methods=["POST"]),
    Route("/bank/batch", batch_page),
    Route("/bank/batch", batch_upload, methods=["POST"]),
    Route("/bank/batch/{batch_id}", batch_status),
    Route("/bank/batch/{batch_id}/resume", batch_resume, methods=["POST"]),
    Route("/bank/batch/{batch_id}/progress", batch_progress),
    Route("/bank/batch/{batch_id}/results.csv", batch_results),
]
