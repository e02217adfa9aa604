"""The operator's model registry: every registered version with its metrics, state and,
for a differentially private training run, its (ε, δ); activating one takes a
confirmation step.

Every call goes to the coordinator's ModelRegistry under the portal's certificate **with
the operator's delegation ticket** (consent/delegation.py): the coordinator lists and
activates with the operator's own rights, and its ``model_activated`` ledger entry (the
one ``fedcredit model activate`` makes) names the operator and says ``via: portal``.

Activation: the registry page links to a confirmation page (a GET, it changes nothing)
showing the version beside the one it replaces; only its form, CSRF-protected, posts the
activation, naming the version confirmed and the version that was active then. If another
activation happened in between, nothing changes (MODEL_CHANGED: review again).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fedcredit.common.errors import FailedPrecondition, InvalidArgument, RoleNotAllowed
from fedcredit.coordinator.client import model_dict
from fedcredit.coordinator.errors import NoActiveModel
from fedcredit.portal import i18n
from fedcredit.portal.bank_pages import coordinator
from fedcredit.portal.security import Session
from fedcredit.portal.web import Portal, call, page, post

# The metrics a person compares models by (shown when the trainer reported them).
SHOWN_METRICS = ("auc", "ks", "pooled_lightgbm_auc", "test_rows", "trees", "engine")


class ModelChanged(FailedPrecondition):
    reason = "MODEL_CHANGED"


def _operator(s: Session) -> None:
    if s.role != "operator":
        raise RoleNotAllowed(f"only an operator activates a model; you signed in as {s.role or 'nobody'}")  # fmt: skip


def _version(text: Any) -> str:
    v = str(text or "").strip()
    if not v or len(v) > 128:
        raise InvalidArgument(f"expected a model version (1 to 128 characters), got {v[:40]!r}")
    return v


def shown(d: dict[str, Any]) -> dict[str, Any]:
    """A registry entry as the page shows it: the usual metrics, (ε, δ) or None."""
    m = d["metrics"] if isinstance(d["metrics"], dict) else {}
    metrics = {k: m[k] for k in SHOWN_METRICS if isinstance(m.get(k), (int, float, str)) and not isinstance(m.get(k), bool)}  # fmt: skip
    p = d["privacy"]
    privacy = None
    if p is not None and math.isfinite(float(p["epsilon"])):
        privacy = {"epsilon": float(p["epsilon"]), "delta": float(p["delta"])}
    return {**d, "shown_metrics": metrics, "dp": privacy}


async def _active(c: Any) -> dict[str, Any] | None:
    try:
        return shown(model_dict(await call(c.get_model, "")))
    except NoActiveModel:
        return None


@page("operator")
async def models(portal: Portal, request: Request, s: Session) -> Response:
    c = await coordinator(portal, s)
    rows = [shown(model_dict(m)) for m in await call(c.list_models)]
    rows.sort(key=lambda r: (not r["active"], -int(r["created_at"])))
    return portal.render(request, s, "operator_models.html", rows=rows, metric_names=SHOWN_METRICS)  # fmt: skip


@page("operator")
async def confirm(portal: Portal, request: Request, s: Session) -> Response:
    """What activating a version does, beside the version it replaces; the only way to
    the activation form."""
    version = _version(request.query_params.get("version"))
    c = await coordinator(portal, s)
    target = shown(model_dict(await call(c.get_model, version)))
    current = await _active(c)
    return portal.render(
        request, s, "operator_model_confirm.html", target=target, current=current,
        metric_names=SHOWN_METRICS,
    )  # fmt: skip


@post
async def activate(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    _operator(s)
    version = _version(data.get("version"))
    if str(data.get("confirm", "")) != version:
        raise InvalidArgument("confirm the activation on its confirmation page (/operator/models)")
    c = await coordinator(portal, s)
    current = await _active(c)
    was = str(data.get("replaces", ""))
    if (current["version"] if current else "") != was:
        raise ModelChanged(
            f"the active model is now {current['version'] if current else 'none'}, not {was or 'none'} "
            "as when you confirmed; nothing was activated: review it again"
        )
    got = model_dict(await call(c.activate, version))
    s.flash.append(i18n.tr("md_activated", s.lang).format(version=version, index=got["activate_ledger_index"]))  # fmt: skip
    return portal.finish(RedirectResponse("/operator/models", 303), s)


MODEL_ROUTES = [
    Route("/operator/models", models),
    Route("/operator/models/confirm", confirm),
    Route("/operator/models/activate", activate, methods=["POST"]),
]
