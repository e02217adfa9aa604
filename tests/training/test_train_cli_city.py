"""`fedcredit train` on CSV files (Simulation Engine), and city mode end to end in the
Deployment Engine: consents, features from the nodes, publication, ledger, every
process stopped."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from typer.testing import CliRunner

from fedcredit.clients.cli import build_app
from tests.training.conftest import CityDeployment

# Ray (the Simulation Engine) start-up is heavy and times out when two start at once on two
# busy cores: every test that starts Ray runs in the same xdist worker, one after another.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _write(path: Path, rng: np.random.Generator, n: int, start: int) -> None:
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] - x[:, 1] + rng.logistic(size=n) > 0).astype(int)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "y", "a", "b", "c", "d"])
        for i in range(n):
            w.writerow([start + i, y[i], *(f"{v:.17g}" for v in x[i])])


def test_cli_csv_simulation(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    paths = []
    for b, n in enumerate([250, 300, 200, 400]):
        p = tmp_path / f"{'test' if b == 3 else f'bank{b}'}.csv"
        _write(p, rng, n, 1000 * b)
        paths.append(p)
    runner = CliRunner()
    model = tmp_path / "model.txt"
    args = ["train", "--engine", "simulation", "--trees", "2", "--depth", "2"]
    args += [a for p in paths[:3] for a in ("--csv", str(p))]
    res = runner.invoke(
        build_app(), [*args, "--json", "--test-csv", str(paths[3]), "--model-out", str(model)]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout[res.stdout.index("{") :])
    assert d["trees"] == 2 and d["strategy"] == "hist" and d["secagg"] is False
    assert d["rows_per_bank"] == {"bank0.csv": 250, "bank1.csv": 300, "bank2.csv": 200}
    assert d["test_rows"] == 400 and d["auc"] > 0.7
    assert lgb.Booster(model_str=model.read_text()).num_trees() == 2

    # User errors: precise reason, no stack trace, no training started.
    res = runner.invoke(build_app(), ["train", "--json"])
    assert res.exit_code == 3
    assert json.loads(res.stdout)["error"]["reason"] == "INVALID_ARGUMENT"
    assert "--csv FILE" in json.loads(res.stdout)["error"]["message"]
    res = runner.invoke(build_app(), [*args, "--strategy", "bagging", "--secagg", "--json"])
    assert res.exit_code == 3
    assert json.loads(res.stdout)["error"]["reason"] == "TRAINING_SETTINGS_INVALID"
    res = runner.invoke(build_app(), ["train", "--csv", str(tmp_path / "nope.csv"), "--json"])
    assert res.exit_code == 3 and "does not exist" in res.stdout


def _group_members(pgids: set[int]) -> list[str]:
    """Processes still alive in any of these process groups (zombies excluded)."""
    alive = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids and state != "Z":
            alive.append(f"{pid}: {stat[: stat.rindex(')') + 1]}")
    return alive


def _train_watching_processes(cd: CityDeployment, trained: list[str], work_dir: Path) -> Any:
    """hist over the deployment engine; afterwards every process it started is gone and the
    banks' fetched rows are deleted."""
    from fedcredit.training.gbdt.params import GBDTParams
    from fedcredit.training.run import deployment as deployment_mod
    from fedcredit.training.run.city import train_city
    from fedcredit.training.server.settings import TrainSettings

    dep = cd.dep
    pgids: set[int] = set()
    real = deployment_mod.LocalDeployment.start

    def start(self: deployment_mod.LocalDeployment) -> None:
        real(self)
        pgids.update(self.pids())  # each process leads its own group

    deployment_mod.LocalDeployment.start = start  # type: ignore[method-assign]
    try:
        report = train_city(
            dep,
            engine="deployment",
            secagg=False,
            settings=TrainSettings(params=GBDTParams(num_trees=2, max_depth=2, max_bins=16)),
            banks=list(trained),
            world=cd.world,
            work_dir=work_dir,
            timeout=300,
        )
    finally:
        deployment_mod.LocalDeployment.start = real  # type: ignore[method-assign]

    # Every process the runner started (SuperLink, SuperNodes that run their bank's
    # ClientApp themselves, and their children such as the ServerApp) is gone; the
    # banks' fetched rows are deleted.
    assert len(pgids) == 1 + len(trained)
    assert _group_members(pgids) == []
    assert not (work_dir / "bank-cache").exists()
    return report


def _check_published(
    cd: CityDeployment, report: Any, trained: list[str], granted: dict[str, int]
) -> None:
    """The model is in the registry, active, on the nodes' catalog features, and ledgered."""
    from fedcredit.coordinator.client import CoordinatorClient
    from fedcredit.ledger.client import LedgerClient
    from fedcredit.ledger.entry import Entry

    dep = cd.dep
    assert report.trees == 2 and report.banks == list(trained)
    assert sum(report.rows_per_bank.values()) + report.test_rows == sum(granted.values())
    assert report.active and report.ledger_index is not None

    svc = dep.service("coordinator")
    with CoordinatorClient(svc.address, dep.tls("operator"), server_org=svc.org_id) as c:
        mv = c.get_model(report.model_version, include_model_text=True)
    assert mv.active and mv.publish_ledger_index == report.ledger_index
    booster = lgb.Booster(model_str=mv.model_text)
    # The model's features are the nodes' catalogs: what the coordinator scores with.
    assert list(booster.feature_name()) == list(mv.features) == report.features
    metrics = json.loads(mv.metrics_json)
    assert metrics["banks"] == list(trained) and metrics["sha256"] == mv.sha256
    assert json.loads(mv.settings_json)["strategy"] == "hist"

    lsvc = dep.service("ledger")
    with LedgerClient(lsvc.address, dep.tls("auditor-pboc-weihai"), server_org=lsvc.org_id) as lc:
        [(index, data)] = list(lc.entries(report.ledger_index, report.ledger_index + 1))
    entry = Entry.parse(data)
    assert index == report.ledger_index and entry.kind == "model_published"
    assert entry.payload["sha256"] == mv.sha256 and entry.payload["version"] == mv.version


def _train_private_and_check(cd: CityDeployment, trained: list[str], work_dir: Path) -> None:
    from fedcredit.coordinator.client import CoordinatorClient
    from fedcredit.ledger.client import LedgerClient
    from fedcredit.ledger.entry import Entry
    from fedcredit.training.run.city import train_city
    from fedcredit.training.server.settings import TrainSettings

    dep = cd.dep
    svc, lsvc = dep.service("coordinator"), dep.service("ledger")
    # Private mode in the city (issue 15): bins on the feature catalog's public domains,
    # OpenDP noise inside the masked sums of 3 banks; the (epsilon, delta) the run spent
    # is in the report, the registry and the model_published entry.
    from dataclasses import replace as _replace

    from fedcredit.training.gbdt.lgb_text import _f
    from fedcredit.training.gbdt.privacy import catalog_ranges
    from fedcredit.training.run.city import PRESETS

    private = train_city(
        dep,
        engine="deployment",
        secagg=True,
        settings=TrainSettings(
            # A few hundred rows in all: one stump, small leaves, no hessian floor. The
            # banks' noise is seeded (node config noise-seed, tests only) so the run
            # replays: at this size a fresh draw leaves no valid split in ~3 % of runs.
            params=_replace(
                PRESETS["private"],
                num_trees=1,
                max_depth=1,
                min_data_in_leaf=1,
                min_sum_hessian_in_leaf=0.0,
                lambda_l2=10.0,
                feature_seed=0,  # the preset's subsets of 16 features, fixed for replay
            ),
            epsilon=4.0,
            public_ranges="catalog",
        ),
        banks=list(trained),
        world=cd.world,
        work_dir=work_dir,
        timeout=300,
        activate=False,
        bank_config=(("noise-seed", 11), ("max-epsilon", 4.0)),
    )
    assert private.privacy is not None and private.secagg
    assert 3.9 < private.privacy["epsilon"] <= 4.0 and private.privacy["delta"] == 1e-6
    with CoordinatorClient(svc.address, dep.tls("operator"), server_org=svc.org_id) as c:
        pmv = c.get_model(private.model_version, include_model_text=True)
    assert not pmv.active and pmv.privacy.epsilon == private.privacy["epsilon"]
    assert json.loads(pmv.privacy.details_json)["noise_shares"] == len(trained)
    # feature_infos are the catalog's public ranges, not any bank's min/max.
    header = dict(ln.split("=", 1) for ln in pmv.model_text.splitlines()[:12] if "=" in ln)
    infos = dict(zip(header["feature_names"].split(), header["feature_infos"].split(), strict=True))
    catalog = catalog_ranges()
    assert infos == {n: f"[{_f(catalog[n].lo)}:{_f(catalog[n].hi)}]" for n in infos}
    with LedgerClient(lsvc.address, dep.tls("auditor-pboc-weihai"), server_org=lsvc.org_id) as lc:
        [(_, pdata)] = list(lc.entries(private.ledger_index, private.ledger_index + 1))
    published = Entry.parse(pdata).payload
    assert published["version"] == pmv.version
    assert published["privacy"]["epsilon"] == private.privacy["epsilon"]


def test_city_deployment_end_to_end(city_deployment: CityDeployment, tmp_path: Path) -> None:
    from fedcredit.training.bank.city import NoTrainingConsents, load_city_bank
    from fedcredit.training.bank.consents import collect_training_consents

    cd = city_deployment
    dep = cd.dep
    trained, left_out = list(dep.banks[:3]), dep.banks[3]
    granted = collect_training_consents(dep, cd.world, banks=trained)
    assert set(granted) == set(trained) and all(v > 0 for v in granted.values())

    # A bank whose borrowers granted nothing cannot train: a precise error.
    with pytest.raises(NoTrainingConsents) as exc:
        load_city_bank(dep.path, left_out, world=cd.world)
    assert left_out in exc.value.message and "model_training" in exc.value.message

    report = _train_watching_processes(cd, trained, tmp_path / "run")
    _check_published(cd, report, trained, granted)
    _train_private_and_check(cd, trained, tmp_path / "private")
