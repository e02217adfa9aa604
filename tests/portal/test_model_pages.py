"""The operator's model registry over HTTP against the real coordinator (gRPC, mTLS,
delegation tickets checked at the consent service): the list with metrics and (ε, δ), an
activation only through the confirmation form with the CSRF token **and a fresh passkey
assertion naming the version** (step-up, checked by the consent service and the
coordinator), for operators only, refused when another activation came in between, and
ledgered as `fedcredit model activate` does (naming the operator, via the portal, with the
assertion's digest)."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fedcredit.common.errors import RoleNotAllowed
from fedcredit.consent import passkey_errors as P
from fedcredit.consent.delegation import DELEGATION_TYP, ticket_claims
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.coordinator.errors import ModelChanged
from tests.consent.softkey import SoftKey
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


def signed_activation(visitor: Visitor, key: SoftKey, fields: dict[str, str]) -> httpx.Response:
    """What the confirmation page's script does: the activate_model statement, signed with
    the operator's passkey, posted with the form's fields."""
    c = visitor.ok("/challenge", {"action": "activate_model", "model_version": fields["version"], "model_replaces": fields["replaces"]})  # fmt: skip
    assert json.loads(c["statement"])["model"] == {"version": fields["version"], "replaces": fields["replaces"]}  # fmt: skip
    return visitor.post_json("/operator/models/activate", {**fields, "assertion": key.get(c["options"])})  # fmt: skip


def step_up_ticket(fed: Federation, session: Any, key: SoftKey, version: str, replaces: str) -> str:
    """A step-up delegation ticket for the coordinator, as the portal asks for one."""
    with PasskeyClient(fed.consent_address, fed.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
        st, opts = pk.challenge(session.org, "activate_model", model_version=version, model_replaces=replaces)  # fmt: skip
        return pk.delegate(session.ticket, "coordinator", (st, key.get(opts)))[0]


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
    key = enrolled(federation, visitor, "operator", "operator")
    confirm = visitor.get(f"/operator/models/confirm?version={second}")
    assert confirm.status_code == 200 and f'<code id="current">{FIRST}</code>' in confirm.text
    assert 'data-webauthn="activate"' in confirm.text
    fields = form_fields(confirm.text)
    assert fields == {"csrf": visitor.csrf, "version": second, "confirm": second, "replaces": FIRST}  # fmt: skip
    # no CSRF token: refused, nothing changes
    r = visitor.post_json("/operator/models/activate", {k: v for k, v in fields.items() if k != "csrf"}, csrf="")  # fmt: skip
    assert r.status_code == 403 and r.json()["error"] == "CSRF_FAILED"
    # straight to the form's target without its confirmation: refused
    r = visitor.post_json("/operator/models/activate", {"version": second})
    assert r.status_code == 400 and r.json()["error"] == "INVALID_ARGUMENT"
    # the confirmation form and CSRF token without the passkey: refused (step-up)
    r = visitor.post_json("/operator/models/activate", fields)
    assert r.status_code == 400 and r.json()["error"] == "STEP_UP_REQUIRED"
    r = visitor.post_form("/operator/models/activate", fields)  # the form without script
    assert r.status_code == 303 and r.headers["location"] == "/"  # with the refusal as flash
    assert active(federation, scoring) == FIRST
    r = signed_activation(visitor, key, fields)
    assert r.status_code == 200 and r.json()["redirect"] == "/operator/models", r.text
    assert active(federation, scoring) == second
    entry = last_activation(federation)
    assert entry["payload"]["version"] == second and entry["payload"]["actor"] == "operator"
    assert entry["payload"]["via"] == "portal" and entry["actor"] == "coordinator"
    # the ledger names the passkey and the digests of the assertion and signed statement
    assert len(entry["payload"]["passkey_assertion_sha256"]) == 64
    assert (
        len(entry["payload"]["statement_sha256"]) == 64 and entry["payload"]["passkey_credential"]
    )
    page = visitor.get("/operator/models").text
    assert f"已启用模型 {second}" in page  # the flash names the version and its ledger entry
    # the same confirmation again is stale now: refused at the coordinator, nothing changes
    with operator_client(federation, scoring) as c:
        c.activate(FIRST)
    r = signed_activation(visitor, key, {**fields, "replaces": second})
    assert r.status_code == 409 and r.json()["error"] == "MODEL_CHANGED"
    assert active(federation, scoring) == FIRST


def test_the_signed_statement_must_name_what_is_activated(
    federation: Federation, scoring: Scoring, visitor: Visitor, second: str
) -> None:
    key = enrolled(federation, visitor, "operator", "operator")
    fields = form_fields(visitor.get(f"/operator/models/confirm?version={second}").text)
    # a statement signed for another version (or another act) does not activate this one
    c = visitor.ok("/challenge", {"action": "activate_model", "model_version": FIRST, "model_replaces": FIRST})  # fmt: skip
    r = visitor.post_json("/operator/models/activate", {**fields, "assertion": key.get(c["options"])})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "STEP_UP_MISMATCH"
    c = visitor.ok("/challenge", {"action": "add_passkey"})
    r = visitor.post_json("/operator/models/activate", {**fields, "assertion": key.get(c["options"])})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "STEP_UP_REQUIRED"
    # an assertion by a key that is not the operator's: the consent service refuses it
    c = visitor.ok("/challenge", {"action": "activate_model", "model_version": second, "model_replaces": FIRST})  # fmt: skip
    r = visitor.post_json("/operator/models/activate", {**fields, "assertion": SoftKey(federation.url).get(c["options"])})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "PASSKEY_ASSERTION_INVALID"
    assert active(federation, scoring) == FIRST


def test_the_coordinator_activates_through_the_portal_only_with_a_signed_act(
    federation: Federation, scoring: Scoring, second: str
) -> None:
    """Server side, whatever the portal does: the operator's ordinary delegation ticket (a
    sign-in) does not activate; a step-up ticket activates the version it names, once."""
    op, key = federation.signed_in("operator", "operator")
    with CoordinatorClient(scoring.target, federation.pki.tls("portal"), timeout=60) as c:
        session_only = c.delegated(federation.delegate(op.ticket, "coordinator"))
        with pytest.raises(P.StepUpRequired):
            session_only.activate(second)
        assert [m.version for m in session_only.list_models()]  # reading needs no step-up
        other = step_up_ticket(federation, op, key, FIRST, FIRST)
        with pytest.raises(P.StepUpMismatch):
            c.delegated(other).activate(second)
        ticket = step_up_ticket(federation, op, key, second, FIRST)
        assert c.delegated(ticket).activate(second).version == second
        c_op = operator_client(federation, scoring)
        with c_op:
            c_op.activate(FIRST)
        with pytest.raises(P.StepUpReplayed):  # one assertion, one act
            c.delegated(ticket).activate(second)
        stale = step_up_ticket(federation, op, key, second, "portal-v0")
        with pytest.raises(ModelChanged):
            c.delegated(stale).activate(second)
    assert active(federation, scoring) == FIRST


def test_only_an_operator_signs_an_activation(federation: Federation, scoring: Scoring, second: str) -> None:  # fmt: skip
    bank, _ = federation.signed_in(BANK, "bank")
    _, op_key = federation.signed_in("operator", "operator")
    with PasskeyClient(federation.consent_address, federation.pki.tls("portal"), server_org="consent-service") as pk:  # fmt: skip
        with pytest.raises(RoleNotAllowed):
            pk.challenge(BANK, "activate_model", model_version=second, model_replaces=FIRST)
        # the operator's signed statement does not buy a ticket for the bank's session
        st, opts = pk.challenge("operator", "activate_model", model_version=second, model_replaces=FIRST)  # fmt: skip
        with pytest.raises(P.WrongOrganisation):
            pk.delegate(bank.ticket, "coordinator", (st, op_key.get(opts)))
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


def test_a_step_up_ticket_is_short_and_names_a_known_act(
    federation: Federation, scoring: Scoring, second: str
) -> None:
    """The coordinator checks the consent service's own bounds on step-up tickets (RFC 8725
    §3.10): a signed act lives at most 60 s and is one of the known step-up acts."""
    op, _ = federation.signed_in("operator", "operator")
    now = int(time.time())

    def minted(act: dict[str, Any], ttl: int) -> str:
        claims = ticket_claims(
            issuer=federation.authority.settings.issuer, org=op.org, role=op.role,
            audience="coordinator", passkey=op.credential_id,
            portal_cert_sha256=federation.pki.tls("portal").identity().cert_sha256,
            org_cert_sha256=None, now=now, ttl_s=ttl,
        )  # fmt: skip
        claims["act"], claims["exp"] = act, now + ttl
        return federation.authority.keyring.signer().sign(claims, typ=DELEGATION_TYP)

    act = {"action": "activate_model", "terms": {"version": second, "replaces": FIRST}, "passkey": op.credential_id,
           "statement_sha256": "0" * 64, "assertion_sha256": "0" * 64}  # fmt: skip
    with CoordinatorClient(scoring.target, federation.pki.tls("portal"), timeout=60) as c:
        for bad in (minted(act, 300), minted({**act, "action": "issue_enrol_code"}, 60), minted({**act, "terms": "x"}, 60)):  # fmt: skip
            with pytest.raises(P.DelegationMalformed):
                c.delegated(bad).activate(second)
    assert active(federation, scoring) == FIRST


def test_hostile_requests_to_the_model_pages_activate_nothing(
    federation: Federation, scoring: Scoring, visitor: Visitor, second: str
) -> None:
    """tests/portal/test_hostile_http.py's requests, as the operator, with the coordinator
    behind the pages: no 500, no internals, and the active model is still the active one."""
    from starlette.routing import Route

    from fedcredit.portal.model_pages import MODEL_ROUTES
    from tests.portal.test_hostile_http import SEEN, hostile_requests

    before = active(federation, scoring)
    enrolled(federation, visitor, "operator", "operator")
    problems = hostile_requests(visitor, [r for r in MODEL_ROUTES if isinstance(r, Route)])
    assert not problems, "\n".join(problems[:40])
    assert SEEN[400] > 0, "no request reached a field's check"
    assert active(federation, scoring) == before
