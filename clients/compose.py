"""docker-compose for a real deployment: one container per organisation.

``fedcredit operator compose --out DIR`` writes ``docker-compose.yml`` and
``deployment.toml`` for containers: every service addressed by its compose
name, certificates mounted as secrets (each container sees only its own key
as ``/run/secrets/org.key``), PostgreSQL for the platform's stores, one volume
per department node, a Flower SuperLink and one SuperNode per bank. No port
is published in plaintext: every fedcredit port speaks mTLS, the SuperLink
speaks TLS with SuperNode authentication, and PostgreSQL is reachable only on
the compose network.

The committed ``docker-compose.yml`` at the repository root is this module's
output for the default organisations (a test keeps them equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from fedcredit.common.departments import DEFAULT_BANKS, DEPARTMENTS
from fedcredit.common.deploy import default_organisations

IMAGE = "fedcredit:latest"
CONFIG_IN_CONTAINER = "/etc/fedcredit/deployment.toml"
SECRETS = "/run/secrets"
SUPERLINK_FLEET = "superlink:9092"

PORTS = {"consent": 7101, "ledger": 7102, "coordinator": 7103}
NODE_PORT = 7110


def compose_config(banks: list[str]) -> dict[str, Any]:
    """The deployment file as containers see it."""
    own = {"cert": f"{SECRETS}/org.pem", "key": f"{SECRETS}/org.key", "ca": f"{SECRETS}/ca.pem"}
    return {
        "deployment": {"name": "weihai-compose", "pki": SECRETS},
        "organisations": [{"id": o, "role": r, **own} for o, r in default_organisations(banks)],
        "services": {
            "consent": {
                "org": "consent-service",
                "address": f"consent:{PORTS['consent']}",
                "database": "postgresql://fedcredit@postgres:5432/consent",
            },
            "ledger": {
                "org": "ledger",
                "address": f"ledger:{PORTS['ledger']}",
                "database": "postgresql://fedcredit@postgres:5432/ledger",
            },
            "coordinator": {
                "org": "coordinator",
                "address": f"coordinator:{PORTS['coordinator']}",
                "database": "postgresql://fedcredit@postgres:5432/coordinator",
            },
        },
        "nodes": [
            {
                "department": d.id,
                "org": d.org_id,
                "address": f"node-{d.id.replace('_', '-')}:{NODE_PORT}",
                "database": "sqlite:////data/node.sqlite",
            }
            for d in DEPARTMENTS
        ],
        "banks": {"orgs": banks},
    }


def _secrets_for(org: str) -> list[dict[str, str]]:
    return [
        {"source": "ca", "target": "ca.pem"},
        {"source": f"{org}-cert", "target": "org.pem"},
        {"source": f"{org}-key", "target": "org.key"},
    ]


def _fedcredit(
    org: str,
    service: str,
    command: list[str],
    *,
    volumes: list[str] | None = None,
    depends: list[str] | None = None,
) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": IMAGE,
        "build": ".",
        "command": command,
        "secrets": _secrets_for(org),
        "configs": [{"source": "deployment", "target": CONFIG_IN_CONTAINER}],
        "restart": "unless-stopped",
        "healthcheck": {
            "test": [
                "CMD",
                "fedcredit",
                "operator",
                "probe",
                "--config",
                CONFIG_IN_CONTAINER,
                "--service",
                service,
                "--as",
                org,
            ],
            "interval": "30s",
            "timeout": "10s",
            "retries": 3,
        },
    }
    if volumes:
        svc["volumes"] = volumes
    if depends:
        svc["depends_on"] = depends
    return svc


def _platform_services() -> dict[str, Any]:
    """PostgreSQL, the ledger and the consent service."""
    cfg = ["--config", CONFIG_IN_CONTAINER]
    services: dict[str, Any] = {
        "postgres": {
            "image": "postgres:16",
            "environment": {
                "POSTGRES_USER": "fedcredit",
                "POSTGRES_HOST_AUTH_METHOD": "trust",
                "POSTGRES_DB": "fedcredit",
            },
            "volumes": [
                "postgres-data:/var/lib/postgresql/data",
                "./deploy/initdb.sql:/docker-entrypoint-initdb.d/initdb.sql:ro",
            ],
            "restart": "unless-stopped",
        },
        "ledger": _fedcredit(
            "ledger",
            "ledger",
            ["ledger", "serve", *cfg],
            volumes=["ledger-keys:/srv"],
            depends=["postgres"],
        ),
        "consent": _fedcredit(
            "consent-service",
            "consent",
            ["consent", "serve", *cfg],
            volumes=["consent-keys:/srv"],
            depends=["postgres", "ledger"],
        ),
    }
    return services


def _node_services(services: dict[str, Any], volumes: dict[str, Any]) -> None:
    """One node per department (each with its own volume), then the coordinator."""
    cfg = ["--config", CONFIG_IN_CONTAINER]
    for d in DEPARTMENTS:
        name = f"node-{d.id.replace('_', '-')}"
        services[name] = _fedcredit(
            d.org_id,
            f"node-{d.id}",
            ["node", "serve", "--department", d.id, *cfg],
            volumes=[f"{name}-data:/data"],
            depends=["ledger", "consent"],
        )
        volumes[f"{name}-data"] = {}
    services["coordinator"] = _fedcredit(
        "coordinator", "coordinator", ["coordinator", "serve", *cfg], volumes=["coordinator-data:/srv"],
        depends=["postgres", "ledger", "consent", *[f"node-{d.id.replace('_', '-')}" for d in DEPARTMENTS]],
    )  # fmt: skip


def _flower_services(services: dict[str, Any], banks: list[str]) -> None:
    """Flower's SuperLink (at the coordinator) and one SuperNode per bank."""
    services["superlink"] = {
        "image": IMAGE,
        "build": ".",
        "entrypoint": ["flower-superlink"],
        "command": [
            "--ssl-ca-certfile", f"{SECRETS}/ca.pem", "--ssl-certfile", f"{SECRETS}/org.pem", "--ssl-keyfile", f"{SECRETS}/org.key",
            "--enable-supernode-auth", "--fleet-api-address", "0.0.0.0:9092", "--control-api-address", "0.0.0.0:9093",
        ],
        "secrets": _secrets_for("coordinator"),
        "restart": "unless-stopped",
    }  # fmt: skip
    for b in banks:
        services[f"supernode-{b}"] = {
            "image": IMAGE,
            "build": ".",
            "entrypoint": ["flower-supernode"],
            "command": [
                "--root-certificates", f"{SECRETS}/ca.pem", "--superlink", SUPERLINK_FLEET,
                "--auth-supernode-private-key", f"{SECRETS}/supernode.key", "--node-config", f"bank='{b}' config='{CONFIG_IN_CONTAINER}'",
            ],
            "secrets": [*_secrets_for(b), {"source": f"{b}-supernode-key", "target": "supernode.key"}],
            "configs": [{"source": "deployment", "target": CONFIG_IN_CONTAINER}],
            "depends_on": ["superlink"],
            "restart": "unless-stopped",
        }  # fmt: skip


def _secrets(banks: list[str]) -> dict[str, Any]:
    orgs = [o for o, _ in default_organisations(banks)]
    secrets: dict[str, Any] = {"ca": {"file": "./secrets/ca.pem"}}
    for o in orgs:
        secrets[f"{o}-cert"] = {"file": f"./secrets/orgs/{o}.pem"}
        secrets[f"{o}-key"] = {"file": f"./secrets/orgs/{o}.key"}
    for b in banks:
        secrets[f"{b}-supernode-key"] = {"file": f"./secrets/supernode/{b}.key"}
    return secrets


def compose_file(banks: list[str]) -> dict[str, Any]:
    services = _platform_services()
    volumes: dict[str, Any] = {
        "postgres-data": {},
        "ledger-keys": {},
        "consent-keys": {},
        "coordinator-data": {},
    }
    _node_services(services, volumes)
    _flower_services(services, banks)
    return {
        "name": "fedcredit",
        "services": services,
        "volumes": volumes,
        "secrets": _secrets(banks),
        "configs": {"deployment": {"file": "./deploy/deployment.toml"}},
    }


def render_compose(banks: list[str] | None = None) -> tuple[str, str]:
    """(docker-compose.yml text, deploy/deployment.toml text)."""
    import json

    banks = list(banks or DEFAULT_BANKS)
    # JSON is valid YAML 1.2; no YAML library is needed to write it.
    header = "# Generated by `fedcredit operator compose`; do not edit by hand.\n"
    yml = header + json.dumps(compose_file(banks), indent=2) + "\n"
    toml = header + tomli_w.dumps(compose_config(banks))
    return yml, toml


INITDB = """-- One database per platform store (the department nodes keep their own volumes).
CREATE DATABASE consent OWNER fedcredit;
CREATE DATABASE ledger OWNER fedcredit;
CREATE DATABASE coordinator OWNER fedcredit;
"""


def write_compose(out: Path, banks: list[str] | None = None) -> list[Path]:
    yml, toml = render_compose(banks)
    (out / "deploy").mkdir(parents=True, exist_ok=True)
    paths = [
        out / "docker-compose.yml",
        out / "deploy" / "deployment.toml",
        out / "deploy" / "initdb.sql",
    ]
    paths[0].write_text(yml)
    paths[1].write_text(toml)
    paths[2].write_text(INITDB)
    return paths
