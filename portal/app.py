"""The portal's Starlette application: the routes, the vendored static files."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from fedcredit.portal.audit_pages import AUDIT_ROUTES
from fedcredit.portal.backend import Backend
from fedcredit.portal.bank_pages import BANK_ROUTES
from fedcredit.portal.dept_pages import DEPT_ROUTES
from fedcredit.portal.market_pages import MARKET_ROUTES
from fedcredit.portal.model_pages import MODEL_ROUTES
from fedcredit.portal.ops_pages import OPS_ROUTES
from fedcredit.portal.policy_pages import POLICY_ROUTES
from fedcredit.portal.routes import ROUTES
from fedcredit.portal.security import BodyLimit
from fedcredit.portal.settings import PortalSettings
from fedcredit.portal.watch import Watch
from fedcredit.portal.web import HERE, Portal


def build_app(
    settings: PortalSettings,
    backend: Backend,
    *,
    clock: Callable[[], float] | None = None,
    watch: Watch | None = None,
) -> Starlette:
    """``watch``: the deployment's nodes and services for the department and operator
    pages (without it those pages say that nothing is configured)."""
    portal = Portal(settings, backend, **({"clock": clock} if clock else {}))
    app = Starlette(
        routes=[
            *ROUTES,
            *AUDIT_ROUTES,
            *MODEL_ROUTES,
            *BANK_ROUTES,
            *MARKET_ROUTES,
            *DEPT_ROUTES,
            *OPS_ROUTES,
            *POLICY_ROUTES,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        # every request body is bounded before anything parses it (CSRF check included)
        middleware=[Middleware(BodyLimit)],
    )
    app.state.portal = portal
    app.state.watch = watch
    return app
