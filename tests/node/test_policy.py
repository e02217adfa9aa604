"""The access policy as data: default deny, purposes per role, on whose behalf."""

from __future__ import annotations

import numpy as np
import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import Identity
from fedcredit.node.engine import quantile_upper_bounds
from fedcredit.node.policy import AccessPolicy, Rule

COORD = Identity("coordinator", "coordinator", b"\x02" * 32)
BANK = Identity("bank-a", "bank", b"\x03" * 32)
CERT = b"\x04" * 32


def reason(fn: object, *args: object) -> str:
    with pytest.raises(FedcreditError) as exc:
        fn(*args)  # type: ignore[operator]
    return exc.value.reason


def test_coordinator_acts_for_a_named_bank_for_credit_purposes() -> None:
    p = AccessPolicy(banks=["bank-a", "bank-b"])
    for purpose in ("credit_assessment", "guarantee", "post_loan_monitoring"):
        d = p.decide(COORD, purpose, "bank-b", CERT)
        assert (d.bank_org, d.bank_cert_sha256, d.release) == ("bank-b", CERT, False)
    assert reason(p.decide, COORD, "model_training", "bank-b", CERT) == "PURPOSE_NOT_ALLOWED"
    assert reason(p.decide, COORD, "credit_assessment", "", CERT) == "ON_BEHALF_OF_REQUIRED"
    assert reason(p.decide, COORD, "credit_assessment", "bank-b", b"") == "ON_BEHALF_OF_REQUIRED"
    assert reason(p.decide, COORD, "credit_assessment", "bank-z", CERT) == "UNKNOWN_BANK"
    assert reason(p.decide, COORD, "", "bank-b", CERT) == "PURPOSE_REQUIRED"
    assert reason(p.decide, COORD, "marketing", "bank-b", CERT) == "PURPOSE_REQUIRED"


def test_a_bank_only_for_model_training_and_only_for_itself() -> None:
    p = AccessPolicy()
    d = p.decide(BANK, "model_training", "", b"")
    assert (d.bank_org, d.bank_cert_sha256, d.release) == ("bank-a", BANK.cert_sha256, True)
    assert p.decide(BANK, "model_training", "bank-a", BANK.cert_sha256).bank_org == "bank-a"
    assert reason(p.decide, BANK, "credit_assessment", "", b"") == "PURPOSE_NOT_ALLOWED"
    assert reason(p.decide, BANK, "model_training", "bank-b", b"") == "ON_BEHALF_OF_MISMATCH"
    assert reason(p.decide, BANK, "model_training", "", CERT) == "ON_BEHALF_OF_MISMATCH"


def test_default_deny_for_every_other_role() -> None:
    p = AccessPolicy()
    for role in ("department", "enterprise", "consent", "ledger", "auditor", "operator"):
        who = Identity("x", role, b"\x05" * 32)
        assert reason(p.decide, who, "credit_assessment", "bank-a", CERT) == "ROLE_NOT_ALLOWED"
        assert reason(p.decide_aggregate, who, "model_training") == "ROLE_NOT_ALLOWED"
    # The policy is data: a deployment may narrow it.
    narrow = AccessPolicy(rules=(Rule("coordinator", frozenset({"guarantee"}), "bank", False),))
    assert (
        reason(narrow.decide, COORD, "credit_assessment", "bank-a", CERT) == "PURPOSE_NOT_ALLOWED"
    )
    assert reason(narrow.decide, BANK, "model_training", "", b"") == "ROLE_NOT_ALLOWED"
    assert reason(p.decide_aggregate, COORD, "credit_assessment") == "PURPOSE_NOT_ALLOWED"


def test_quantile_bounds_respect_max_bins_and_min_count() -> None:
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.lognormal(0, 1, 5000), np.zeros(800), [np.nan] * 100])
    b = quantile_upper_bounds(v, 32, 50)
    assert len(b) <= 32 and b[-1] == np.inf and b == sorted(b)
    counts = np.bincount(np.searchsorted(b, v[~np.isnan(v)], side="left"))
    assert counts.min() >= 50 and counts.sum() == 5800
    assert quantile_upper_bounds(np.array([np.nan]), 8, 5) == [np.inf]
    assert quantile_upper_bounds(np.arange(10.0), 8, 20) == [np.inf]  # too few for two bins


def test_settings_from_the_deployment_section() -> None:
    from fedcredit.common.config import ConfigError, Section
    from fedcredit.node.settings import NodeSettings, disclosure_url

    s = NodeSettings.from_section(
        Section("node", {"max_batch": 500, "stream_chunk": 100, "witness": False})
    )
    assert (s.max_batch, s.stream_chunk, s.witness, s.checkpoint_publish_interval) == (
        500,
        100,
        False,
        10.0,
    )
    with pytest.raises(ConfigError, match="max_bach"):
        NodeSettings.from_section(Section("node", {"max_bach": 5}))
    with pytest.raises(ConfigError, match="disclosure_synchronous must be one of full, normal"):
        NodeSettings.from_section(Section("node", {"disclosure_synchronous": "off"}))
    with pytest.raises(ConfigError, match="stream_chunk"):
        NodeSettings(max_batch=10, stream_chunk=11)
    assert (
        disclosure_url("sqlite:////d/node-tax.sqlite", s)
        == "sqlite:////d/node-tax-disclosures.sqlite"
    )
    assert disclosure_url("postgresql://h/db", s) == "postgresql://h/db"
