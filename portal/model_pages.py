"""The operator's model registry: every registered version with its metrics, state and,
for a differentially private training run, its (ε, δ); activating one takes a
confirmation step.

Every call goes to the coordinator's ModelRegistry under the portal's certificate **with
the operator's delegation ticket** (consent/delegation.py): the coordinator lists and
activates with the operator's own rights, and its ``model_activated`` ledger entry (the
one ``fedcredit model activate`` makes) names the operator and says ``via: portal``.

Activation: the registry page links to a confirmation page (a GET, it changes nothing)
showing the version beside the one it replaces. Activating changes every bank's scores, so
it takes a **fresh passkey assertion** (step-up), not only the session and the CSRF token:
the page asks the consent service for an ``activate_model`` statement naming the version
and the version it replaces (its SHA-256 is the WebAuthn challenge; the page re-hashes
what it shows), the operator touches the key, and the portal hands statement and
assertion to the consent service, which verifies them (py_webauthn, user verification
required) and answers a step-up delegation ticket carrying that one signed act (60 s,
consent/delegation.py). The coordinator activates through the portal only with such a
ticket for exactly that version (``STEP_UP_REQUIRED``, ``STEP_UP_MISMATCH``), once
(``STEP_UP_REPLAYED``), and only while the version it replaces is still the active one
(``MODEL_CHANGED``: nothing changes); its ``model_activated`` entry records the passkey,
the assertion's and the statement's SHA-256.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcredit.common.errors import InvalidArgument, RoleNotAllowed
from fedcredit.consent import passkey_errors as P
from fedcredit.coordinator.client import model_dict
from fedcredit.coordinator.errors import ModelChanged, NoActiveModel
from fedcredit.portal import i18n
from fedcredit.portal.bank_pages import CoordinatorNotConfigured, coordinator
from fedcredit.portal.security import Session
from fedcredit.portal.web import Portal, call, json_ok, page, post

# The metrics a person compares models by (shown when the trainer reported them).
SHOWN_METRICS = ("auc", "ks", "pooled_lightgbm_auc", "test_rows", "trees", "engine")


__all__ = ["MODEL_ROUTES", "ModelChanged"]


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


def _signed_activation(s: Session, version: str, was: str) -> str:
    """The activate_model statement this session was issued, naming ``version`` replacing
    ``was`` (the consent service checks the assertion over it; this refuses early)."""
    st = str(s.pending.pop("statement", ""))
    try:
        doc = json.loads(st) if st else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict) or doc.get("action") != "activate_model":
        raise P.StepUpRequired("activating a model needs your passkey: confirm it on its confirmation page")  # fmt: skip
    if doc.get("model") != {"version": version, "replaces": was}:
        raise P.StepUpMismatch(f"the statement you signed names {doc.get('model')!r:.200}, not {version} replacing {was or 'none'}")  # fmt: skip
    return st


@post
async def activate(portal: Portal, request: Request, s: Session, data: dict[str, Any]) -> Response:  # fmt: skip
    _operator(s)
    version = _version(data.get("version"))
    if str(data.get("confirm", "")) != version:
        raise InvalidArgument("confirm the activation on its confirmation page (/operator/models)")
    was = str(data.get("replaces", ""))
    st = _signed_activation(s, version, was)
    if portal.backend.coordinator is None:
        raise CoordinatorNotConfigured("this portal has no coordinator configured ([services.coordinator])")  # fmt: skip
    # a ticket for this one act: the consent service verifies the assertion first
    audience = portal.backend.audiences.get("coordinator", "coordinator")
    ticket, _ = await call(portal.backend.passkeys.delegate, s.ticket, audience, (st, str(data.get("assertion", ""))))  # fmt: skip
    got = model_dict(await call(portal.backend.coordinator.delegated(ticket).activate, version))
    s.flash.append(i18n.tr("md_activated", s.lang).format(version=version, index=got["activate_ledger_index"]))  # fmt: skip
    return json_ok(portal, s, {"redirect": "/operator/models", "version": version, "ledger_index": got["activate_ledger_index"]})  # fmt: skip


MODEL_ROUTES = [
    Route("/operator/models", models),
    Route("/operator/models/confirm", confirm),
    Route("/operator/models/activate", activate, methods=["POST"]),
]
