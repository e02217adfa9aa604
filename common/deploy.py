"""Writing a working local deployment: every service on loopback, SQLite under DIR, a PKI."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import tomli_w

from fedcredit.common import pki
from fedcredit.common.departments import DEFAULT_BANKS, DEPARTMENTS
from fedcredit.common.errors import AlreadyExists, InvalidArgument

CONFIG_NAME = "deployment.toml"


class DeploymentExists(AlreadyExists):
    reason = "DEPLOYMENT_EXISTS"


def free_port_base(count: int) -> int:
    """A base port with ``count`` consecutive free loopback ports above it (best effort)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise InvalidArgument(f"could not find {count} consecutive free loopback ports")


def default_organisations(banks: list[str]) -> list[tuple[str, str]]:
    return [
        ("consent-service", "consent"),
        ("ledger", "ledger"),
        ("coordinator", "coordinator"),
        ("operator", "operator"),
        ("auditor-pboc-weihai", "auditor"),
        *[(d.org_id, "department") for d in DEPARTMENTS],
        *[(b, "bank") for b in banks],
    ]


# Besides the federation's own organisations, a deployment runs the web portal and the
# policy-fund service, each with a certificate of its own (local and compose alike).
LOCAL_EXTRA_ORGS: list[tuple[str, str]] = [("portal", "portal"), ("policies", "policy")]


def local_config(name: str, base_port: int, banks: list[str]) -> dict[str, Any]:
    orgs = default_organisations(banks) + LOCAL_EXTRA_ORGS
    port = iter(range(base_port, base_port + 100))
    out: dict[str, Any] = {
        "deployment": {"name": name, "pki": "pki"},
        "organisations": [{"id": o, "role": r} for o, r in orgs],
        "services": {
            "consent": {
                "org": "consent-service",
                "address": f"127.0.0.1:{next(port)}",
                "database": "sqlite:///data/consent.sqlite",
            },
            "ledger": {
                "org": "ledger",
                "address": f"127.0.0.1:{next(port)}",
                "database": "sqlite:///data/ledger.sqlite",
            },
            "coordinator": {
                "org": "coordinator",
                "address": f"127.0.0.1:{next(port)}",
                "database": "sqlite:///data/coordinator.sqlite",
            },
        },
        "nodes": [
            {
                "department": d.id,
                "org": d.org_id,
                "address": f"127.0.0.1:{next(port)}",
                "database": f"sqlite:///data/node-{d.id}.sqlite",
            }
            for d in DEPARTMENTS
        ],
        "banks": {"orgs": banks},
        # All twelve nodes share this machine's cores: a node's signature workers
        # (node.sigpool) would only add the hand-off to a busy machine. Measured on 2 cores:
        # a 10,000-enterprise ScoreBatch ran about 10 % faster without them. A node on a
        # machine of its own keeps the default (one worker per core less one).
        "node": {"verify_workers": 0},
        # The web portal (plain HTTP on loopback only: http://localhost is a secure context
        # for WebAuthn and Secure cookies; anywhere else it needs TLS).
        "portal": {"org": "portal", "address": f"127.0.0.1:{next(port)}", "rp_id": "localhost"},
    }
    out["services"]["policies"] = {
        "org": "policies",
        "address": f"127.0.0.1:{next(port)}",
        "database": "sqlite:///data/policies.sqlite",
    }
    # each service's Prometheus /metrics, on loopback ports after the services' own
    for s in (*out["services"].values(), *out["nodes"]):
        s["metrics"] = f"127.0.0.1:{next(port)}"
    return out


def write_local_deployment(
    directory: Path,
    *,
    name: str = "weihai-local",
    base_port: int | None = None,
    bank_count: int = len(DEFAULT_BANKS),
    force: bool = False,
) -> Path:
    """Write ``DIR/deployment.toml`` and ``DIR/pki``; return the config path."""
    if not 1 <= bank_count <= len(DEFAULT_BANKS):
        raise InvalidArgument(
            f"--banks must be between 1 and {len(DEFAULT_BANKS)}, got {bank_count}"
        )
    directory = directory.resolve()
    cfg_path = directory / CONFIG_NAME
    if cfg_path.exists() and not force:
        raise DeploymentExists(f"{cfg_path} already exists; use --force to replace it")
    ports = 4 + 2 * len(DEPARTMENTS) + 5
    if base_port is not None and not 1024 <= base_port <= 65535 - ports:
        # checked before anything is written: a deployment that cannot load is not made
        raise InvalidArgument(
            f"--base-port must be between 1024 and {65535 - ports} (the deployment takes "
            f"{ports} ports from it), got {base_port}"
        )
    if not name or len(name) > 64 or not name.isprintable():
        raise InvalidArgument(
            f"--name must be 1 to 64 printable characters, got {len(name)} characters"
        )
    banks = list(DEFAULT_BANKS[:bank_count])
    base = base_port if base_port is not None else free_port_base(ports)
    data = local_config(name, base, banks)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    pki_dir = directory / "pki"
    if force and pki_dir.exists():
        import shutil

        shutil.rmtree(pki_dir)
    pki.init_pki(pki_dir, default_organisations(banks) + LOCAL_EXTRA_ORGS)
    cfg_path.write_text(
        "# fedcredit local deployment, written by `fedcredit init`.\n"
        "# Every service on loopback with mTLS; SQLite databases under data/.\n"
        "# [node] verify_workers = 0: the twelve nodes share this machine's cores, so a\n"
        "# node verifies its batches' signatures in its own thread (common/deploy.py).\n"
        + tomli_w.dumps(data)
    )
    return cfg_path
