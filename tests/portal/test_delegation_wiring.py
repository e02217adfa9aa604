"""The wiring of delegated sessions in a deployment as `fedcredit init` writes it: the
audience the portal asks tickets for is each service's own organisation id, and each
service checks the consent service's issuer — so a ticket for one service is refused by
every other, and a real deployment's tickets are accepted where they are meant."""

from __future__ import annotations

from pathlib import Path

from fedcredit.common.config import load_config
from fedcredit.common.deploy import write_local_deployment
from fedcredit.consent.settings import ConsentSettings
from fedcredit.coordinator.daemon import _delegation as coordinator_delegation
from fedcredit.coordinator.daemon import verifier_issuer
from fedcredit.coordinator.settings import CoordinatorSettings
from fedcredit.ledger.service import _delegation as ledger_delegation
from fedcredit.portal.backend import Backend


def test_audiences_and_issuer_agree(tmp_path: Path) -> None:
    dep = load_config(write_local_deployment(tmp_path / "dep"))
    backend = Backend.from_deployment(dep, str(dep.raw["portal"].get("org", "portal")))
    issuer = ConsentSettings.from_deployment(dep).issuer
    coord_org, ledger_org = dep.service("coordinator").org_id, dep.service("ledger").org_id
    settings = CoordinatorSettings.from_sections(dep.section("coordinator"), dep.section("fund"))
    c = coordinator_delegation(dep, coord_org, verifier_issuer(settings, dep), False)
    lg = ledger_delegation(dep, ledger_org, False)
    try:
        assert backend.audiences["coordinator"] == c.verifier.audience == coord_org
        assert backend.audiences["ledger"] == lg.verifier.audience == ledger_org
        assert c.verifier.issuer == lg.verifier.issuer == issuer
        assert backend.coordinator is not None  # the bank's pages have their coordinator
        # without a portal (or with --insecure) no service accepts a ticket at all
        assert coordinator_delegation(dep, coord_org, issuer, True) is None
        assert ledger_delegation(dep, ledger_org, True) is None
    finally:
        c.close()
        lg.close()
        backend.close()
