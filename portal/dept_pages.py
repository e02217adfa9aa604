"""The department's page: its node's status (reachable, department, features), its data's
month, version and freshness, and how many enterprises' features it disclosed, by bank and
purpose (see :mod:`portal.watch` for where each figure comes from)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcredit.portal.security import Session
from fedcredit.portal.watch import Watch
from fedcredit.portal.web import Portal, call, page


def age_text(seconds: float | None) -> str:
    """``3 h 12 min`` style; ``—`` when unknown."""
    if seconds is None:
        return "—"
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s % 60} s"


@page("department")
async def department(portal: Portal, request: Request, s: Session) -> Response:
    watch: Watch | None = request.app.state.watch
    view = await call(watch.node_view, s.org) if watch is not None else None
    return portal.render(request, s, "department.html", view=view, age=age_text)


DEPT_ROUTES = [Route("/department", department)]
