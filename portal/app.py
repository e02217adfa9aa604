"""The portal's Starlette application: the routes, the vendored static files."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from fedcredit.portal.backend import Backend
from fedcredit.portal.market_pages import MARKET_ROUTES
from fedcredit.portal.routes import ROUTES
from fedcredit.portal.settings import PortalSettings
from fedcredit.portal.web import HERE, Portal


def build_app(
    settings: PortalSettings, backend: Backend, *, clock: Callable[[], float] | None = None
) -> Starlette:
    portal = Portal(settings, backend, **({"clock": clock} if clock else {}))
    app = Starlette(
        routes=[
            *ROUTES,
            *MARKET_ROUTES,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    app.state.portal = portal
    return app
