"""A tiny city deployment for city-mode training: a generated world, a local deployment
(PKI, mTLS) trimmed to three department nodes, every service its own process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CITY_DEPARTMENTS = ("tax", "courts", "social_security")


@dataclass
class CityDeployment:
    dir: Path
    config: Path
    world: Path
    dep: Any
    supervisor: Any


def _trim_nodes(config: Path, keep: tuple[str, ...]) -> None:
    """Drop the [[nodes]] of departments not in ``keep`` (fewer processes, a lean test)."""
    import tomllib

    import tomli_w

    data = tomllib.loads(config.read_text())
    data["nodes"] = [n for n in data["nodes"] if n["department"] in keep]
    config.write_text(tomli_w.dumps(data))


def build_city_deployment(
    directory: Path,
    *,
    enterprises: int,
    banks: int,
    seed: int = 5,
    months: int = 24,
    departments: tuple[str, ...] = CITY_DEPARTMENTS,
) -> CityDeployment:
    from fedcredit.clients.supervisor import Supervisor, service_specs
    from fedcredit.common.config import load_config
    from fedcredit.common.deploy import write_local_deployment
    from fedcredit.node.store import NodeStore
    from fedcredit.world.generate import generate

    cfg = write_local_deployment(directory, name="training-test", bank_count=banks)
    _trim_nodes(cfg, departments)
    dep = load_config(cfg)
    assert sorted(n.department for n in dep.nodes) == sorted(departments)
    world = directory / "world"
    generate(world, enterprises=enterprises, banks=banks, months=months, seed=seed)
    for n in dep.nodes:
        store = NodeStore(n.database, n.department)
        store.create_schema()
        store.load(world)
        store.close()
    sup = Supervisor(dep)
    sup.start_all(service_specs(dep), timeout=90)
    return CityDeployment(directory, cfg, world, dep, sup)


@pytest.fixture(scope="session")
def city_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CityDeployment]:
    d = tmp_path_factory.mktemp("citydep")
    cd = build_city_deployment(d / "dep", enterprises=900, banks=4)
    try:
        yield cd
    finally:
        cd.supervisor.stop()
