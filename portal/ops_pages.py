"""The operator's service health: each server's gRPC health check and its key metrics
(requests, refusals, disclosures, ledger size, checkpoint age, data age, ...), the same
figures `fedcredit status` shows (see :mod:`portal.watch`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcredit.common.metrics import ESSENTIALS
from fedcredit.portal.security import Session
from fedcredit.portal.watch import Watch
from fedcredit.portal.web import Portal, call, page

COLUMNS = list(ESSENTIALS.values())


@page("operator")
async def operator_health(portal: Portal, request: Request, s: Session) -> Response:
    watch: Watch | None = request.app.state.watch
    rows = await call(watch.health) if watch is not None else None
    return portal.render(request, s, "operator_health.html", rows=rows, columns=COLUMNS)


OPS_ROUTES = [Route("/operator/health", operator_health)]
