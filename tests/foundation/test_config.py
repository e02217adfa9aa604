"""Deployment files: `fedcredit init` writes a working one; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcredit.common.config import load_config
from fedcredit.common.deploy import DeploymentExists, write_local_deployment
from fedcredit.common.errors import ConfigError
from fedcredit.node.settings import NodeSettings


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_deployment(tmp_path_factory.mktemp("dep"), base_port=46000)


def test_init_writes_a_complete_deployment(deployment: Path) -> None:
    dep = load_config(deployment)
    assert set(dep.services) == {"consent", "ledger", "coordinator", "policies"}
    assert len(dep.nodes) == 12
    assert len(dep.banks) == 7
    for org in dep.organisations.values():
        assert org.tls.cert.exists() and org.tls.key.exists()
        assert org.tls.identity().org_id == org.id
        assert org.tls.identity().role == org.role
    assert dep.service("consent").database.startswith("sqlite:////")  # resolved to an absolute path
    addresses = [s.address for s in dep.services.values()] + [n.address for n in dep.nodes]
    assert len(set(addresses)) == len(addresses)
    # twelve nodes on one machine: no signature worker processes beside them
    assert NodeSettings.from_section(dep.section("node")).signature_workers() == 0


def test_init_refuses_to_overwrite(deployment: Path) -> None:
    with pytest.raises(DeploymentExists):
        write_local_deployment(deployment.parent, base_port=46000)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "d.toml"
    p.write_text(text)
    return p


BASE = """
[deployment]
name = "t"
pki = "pki"
[[organisations]]
id = "dept-tax"
role = "department"
[[organisations]]
id = "consent-service"
role = "consent"
"""


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("[bogus]\n", "unknown top-level table(s) bogus"),
        (
            '[services.consent]\norg = "consent-service"\naddress = "nowhere"\ndatabase = "sqlite:///x"\n',
            "address must be HOST:PORT, got 'nowhere'",
        ),
        (
            '[services.consent]\norg = "nobody"\naddress = "127.0.0.1:1"\ndatabase = "sqlite:///x"\n',
            "org 'nobody' is not declared",
        ),
        (
            '[services.consent]\norg = "consent-service"\naddress = "127.0.0.1:1"\n',
            "[services.consent]: database is required",
        ),
        (
            '[services.payments]\norg = "consent-service"\naddress = "127.0.0.1:1"\ndatabase = "sqlite:///x"\n',
            "[services.payments]: unknown service",
        ),
        (
            '[[nodes]]\ndepartment = "weather"\norg = "dept-tax"\naddress = "127.0.0.1:2"\ndatabase = "sqlite:///x"\n',
            "department must be one of",
        ),
        (
            '[[nodes]]\ndepartment = "tax"\norg = "consent-service"\naddress = "127.0.0.1:2"\ndatabase = "sqlite:///x"\n',
            "a node needs role 'department'",
        ),
        (
            '[[nodes]]\ndepartment = "tax"\norg = "dept-tax"\naddress = "127.0.0.1:2"\ndatabase = "mysql://x"\n',
            None,
        ),
        ('[banks]\norgs = ["dept-tax"]\n', "not an organisation with role 'bank'"),
        ('[[organisations]]\nid = "x"\nrole = "king"\n', "role must be one of"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, extra: str, fragment: str | None) -> None:
    path = _write(tmp_path, BASE + extra)
    if fragment is None:  # accepted by the parser; the store refuses the driver when it opens
        from fedcredit.common.db import make_engine

        dep = load_config(path)
        with pytest.raises(ConfigError, match="driver 'mysql' is not supported"):
            make_engine(dep.nodes[0].database)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in info.value.message
    assert str(path) in info.value.message


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[deployment\n"))


def test_section_getters_say_expected_and_got(tmp_path: Path) -> None:
    dep = load_config(
        _write(tmp_path, BASE + '[ledger]\nbatch_size = "big"\ninterval = 0.5\nflag = 1\n')
    )
    sec = dep.section("ledger")
    with pytest.raises(ConfigError, match=r"\[ledger\] batch_size must be an integer, got 'big'"):
        sec.get_int("batch_size", 100)
    assert sec.get_float("interval", 1.0) == 0.5
    with pytest.raises(ConfigError, match="must be true or false, got 1"):
        sec.get_bool("flag", False)
    with pytest.raises(ConfigError, match="missing_key is required"):
        sec.get_int("missing_key")
    with pytest.raises(ConfigError, match="unknown key"):
        sec.check_keys({"batch_size", "interval"})
    with pytest.raises(ConfigError, match="between 1 and 10"):
        dep.section("consent").__class__("x", {"n": 11}).get_int("n", min=1, max=10)
