"""The operator's model registry over HTTP against the real coordinator (gRPC, mTLS,
delegation tickets checked at the consent service): the list with metrics and (ε, δ), an
activation only through the confirmation form with the CSRF token, for operators only,
refused when another activation came in between, and ledgered as `fedcredit model
activate` does (naming the operator, via the portal)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.consent import passkey_errors as P
from fedcredit.coordinator.client import CoordinatorClient
from tests.portal.conftest import BANK, Federation, Scoring
from tests.portal.test_portal_http import enrolled
from tests.portal.webclient import Visitor

FIRST = "portal-v1"  # the scoring fixture's model, active


@pytest.fixture
def visitor(federation: Federation) -> Iterator[Visitor]:
    base = federation.url.replace("localhost", "127.0.0.1")
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as c:
        yield Visitor(c)


@pytest.fixture
def second(federation: Federation, scoring: Scoring) -> Iterator[str]:
    """A second version of the same model, from a private run (ε 2.5, δ 1e-6), published
    by the operator's own certificate; the first is active again afterwards."""
    version = publish_private(federation, scoring)
    try:
        yield version
    finally:
        with operator_client(federation, scoring) as c:
            c.activate(FIRST)


def publish_private(fed: Federation, scoring: Scoring) -> str:
    """The first model's text again as a new version from a private run; its name."""
    version = f"portal-v2-{secrets.token_hex(3)}"
    with operator_client(fed, scoring) as c:
        text = c.get_model(FIRST, include_model_text=True).model_text
        pds = [0.01 + 0.3 * i / 99 for i in range(100)]
        c.publish(text, calibration_pds=pds, version=version, metrics_json=json.dumps({"auc": 0.7312, "ks": 0.41}), privacy={"epsilon": 2.5, "delta": 1e-6, "noise_multiplier": 1.2})  # fmt: skip
    return version


def operator_client(fed: Federation, scoring: Scoring) -> CoordinatorClient:
    return CoordinatorClient(scoring.target, fed.pki.tls("operator"), timeout=60)


def active(fed: Federation, scoring: Scoring) -> str:
    with operator_client(fed, scoring) as c:
        return str(c.get_model("").version)


def form_fields(html: str) -> dict[str, str]:
    form = html[html.index('<form id="activate"') :]
    form = form[: form.index("</form>")]
    return dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', form))


def last_activation(fed: Federation) -> dict[str, Any]:
    size = fed.ledger.size
    for e in reversed(fed.ledger.get_entries(max(0, size - 200), size)):
        body = json.loads(e.data)
        if body["kind"] == "model_activated":
            return dict(body)
    raise AssertionError("no model_activated entry in the ledger's last 200")


def test_the_registry_lists_versions_with_metrics_and_privacy(
    federation: Federation, scoring: Scoring, visitor: Visitor, second: str
) -> None:
    enrolled(federation, visitor, "operator", "operator")
    page = visitor.get("/operator/models").text
    row = page[page.index(f'<tr data-version="{second}"') :]
    row = row[: row.index("</tr>")]
    assert 'data-active="0"' in row and "auc 0.7312" in row and "ks 0.41" in row
    assert "ε = 2.5, δ = 1e-06" in row
    assert f"/operator/models/confirm?version={second}" in row
    first = page[page.index(f'<tr data-version="{FIRST}"') :]
    assert 'data-active="1"' in first[: first.index("</tr>")]
    assert "训练未加噪声" in first[: first.index("</tr>")]  # the first run had no noise
    # the model file itself never reaches the browser (operators read it with their own
    # certificate): no LightGBM tree text on either page
    confirm = visitor.get(f"/operator/models/confirm?version={second}").text
    assert "Tree=" not in page and "Tree=" not in confirm and "tree_sizes" not in confirm


def test_activation_takes_the_confirmation_and_is_ledgered(
    federation: Federation, scoring: Scoring, visitor: Visitor, second: str
) -> None:
    enrolled(federation, visitor, "operator", "operator")
    confirm = visitor.get(f"/operator/models/confirm?version={second}")
    assert confirm.status_code == 200 and f'<code id="current">{FIRST}</code>' in confirm.text
    fields = form_fields(confirm.text)
    assert fields == {"csrf": visitor.csrf, "version": second, "confirm": second, "replaces": FIRST}  # fmt: skip
    # no CSRF token: refused, nothing changes
    r = visitor.post_json("/operator/models/activate", {k: v for k, v in fields.items() if k != "csrf"}, csrf="")  # fmt: skip
    assert r.status_code == 403 and r.json()["error"] == "CSRF_FAILED"
    # straight to the form's target without its confirmation: refused
    r = visitor.post_json("/operator/models/activate", {"version": second})
    assert r.status_code == 400 and r.json()["error"] == "INVALID_ARGUMENT"
    assert active(federation, scoring) == FIRST
    r = visitor.post_form("/operator/models/activate", fields)
    assert r.status_code == 303 and r.headers["location"] == "/operator/models"
    assert active(federation, scoring) == second
    entry = last_activation(federation)
    assert entry["payload"]["version"] == second and entry["payload"]["actor"] == "operator"
    assert entry["payload"]["via"] == "portal" and entry["actor"] == "coordinator"
    page = visitor.get("/operator/models").text
    assert f"已启用模型 {second}" in page  # the flash names the version and its ledger entry
    # the same confirmation again is stale now: refused, nothing changes
    with operator_client(federation, scoring) as c:
        c.activate(FIRST)
    r = visitor.post_json("/operator/models/activate", {**fields, "replaces": second})
    assert r.status_code == 409 and r.json()["error"] == "MODEL_CHANGED"
    assert active(federation, scoring) == FIRST


def test_only_the_operator_activates(
    federation: Federation, scoring: Scoring, visitor: Visitor, second: str
) -> None:
    r = visitor.get("/operator/models")
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    enrolled(federation, visitor, BANK, "bank")
    for path in ("/operator/models", f"/operator/models/confirm?version={second}"):
        r = visitor.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/home", path
    body = {"version": second, "confirm": second, "replaces": FIRST}
    r = visitor.post_json("/operator/models/activate", body)
    assert r.status_code == 400 and r.json()["error"] == "ROLE_NOT_ALLOWED"
    assert active(federation, scoring) == FIRST


def test_the_portal_certificate_alone_activates_nothing(
    federation: Federation, scoring: Scoring, second: str
) -> None:
    with CoordinatorClient(scoring.target, federation.pki.tls("portal"), timeout=60) as c:
        with pytest.raises(P.DelegationMissing):
            c.activate(second)
        with pytest.raises(P.DelegationMissing):
            c.list_models()
        bank = federation.signed_in(BANK, "bank")[0]
        with pytest.raises(RoleNotAllowed):
            c.delegated(federation.delegate(bank.ticket, "coordinator")).activate(second)
    assert active(federation, scoring) == FIRST
