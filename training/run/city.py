"""Train the credit model on the synthetic city and publish it: the operator's side.

:func:`train_city` runs the federation (one ClientApp per bank, each loading its own
loan book and its consented borrowers' features from the nodes — see
training/bank/city.py), in the Deployment Engine (a SuperLink and one SuperNode per
bank, separate processes) or the Simulation Engine, then:

* measures the model on the held-out borrowers, next to pooled LightGBM trained on
  the same training rows. Both need the rows in one place, which only a local
  deployment (all banks on this machine) can do: this process loads every bank's
  data as that bank, with the bank's own certificate and consents. The federated
  model itself never saw pooled rows.
* publishes the model to the coordinator's registry over gRPC as the operator
  (``model_published`` in the ledger; with ``activate`` also ``model_activated``),
  calibrated on the model's probabilities of default over every consented borrower.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from rich.progress import Progress

from fedcredit.common.config import Deployment
from fedcredit.common.errors import FailedPrecondition, InvalidArgument
from fedcredit.coordinator.model import model_sha256
from fedcredit.training.bank.city import CityBank, CitySource, load_city_bank
from fedcredit.training.bank.data import BankData, concat
from fedcredit.training.bank.source import PRIVACY_KEYS
from fedcredit.training.gbdt.metrics import auc, auc_interval, ks
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.server.publish import finite, publish_model
from fedcredit.training.server.settings import TrainSettings
from fedcredit.training.server.strategies import lgb_params

ENGINES = ("deployment", "simulation")
PRESETS = {
    "fate": GBDTParams(num_trees=30, max_depth=3, max_bins=32, learning_rate=0.3),
    "strong": GBDTParams(num_trees=200, max_depth=6, max_bins=255, learning_rate=0.05),
    # For --epsilon (bins from the DP sketch, TrainSettings.sketch_rounds): stumps (one
    # split per tree: one histogram round each, so the budget goes over fewer releases,
    # each less noisy), each on a public random subset of 8 features (the seed drawn per
    # run; the same budget on fewer released cells), 6 quantile bins, a strong L2 pull
    # (it shrinks the Newton step -G/(H + lambda) of the noisy gradient sums towards 0,
    # and the gain of splits that noise alone makes look good), clipped leaf outputs
    # (noisy hessian sums), leaves of at least 200 rows. Chosen at epsilon 4 with seeded
    # noise and each run's own subsets (a scratch variant of
    # bench/tune_training_privacy.py with the sketch; 24 runs per variant unless said):
    # FATE homo split (24,000 rows): this preset 0.774 (three sets of seeds: 0.774,
    # 0.775, 0.774); 30 trees 0.773, 50 0.775, 8 bins 0.774, 12 features 0.774; depth 2
    # on 16 features, 20 trees 0.775 and 0.772 on two sets of 16 seeds, 15 trees 0.774
    # (4 quantile bins 0.769, 8 0.773, 12 0.770); the previous preset (10 trees of depth
    # 2 on 4 bins of the public grid) 0.763. Synthetic city (4,953 rows, 182 defaults,
    # 66 features), 20 runs: this preset 0.736, 30 trees 0.738 (20: 0.735), lambda 150
    # 0.730; depth 2 fails there (15 trees, 16 features: 0.669; 10 trees on 8 features:
    # 0.715), stumps on 16 features 0.715.
    "private": GBDTParams(
        num_trees=40,
        max_depth=1,
        max_bins=6,
        learning_rate=0.3,
        lambda_l2=300.0,
        max_delta_step=1.0,
        min_data_in_leaf=200,
        min_sum_hessian_in_leaf=10.0,
        features_per_tree=8,
    ),
}


class InvalidEngine(InvalidArgument):
    reason = "INVALID_ENGINE"


class NoOperator(FailedPrecondition):
    reason = "NO_OPERATOR_IDENTITY"


@dataclass
class TrainResult:
    """What any engine hands back: the model and the run's own figures."""

    model_text: str
    summary: dict[str, Any]
    feature_names: list[str]
    start_seconds: float = 0.0  # deployment: PKI, SuperLink, SuperNodes


@dataclass
class CityTrainReport:
    model_version: str
    sha256: str
    auc: float
    ks: float
    pooled_auc: float
    pooled_ks: float
    trees: int
    seconds: float  # the whole call: engine start, data, training, evaluation, publication
    train_seconds: float  # from the first tree to the model
    seconds_per_tree: float
    bytes_per_bank_per_tree: float
    banks: list[str]
    rows_per_bank: dict[str, int]  # training rows
    test_rows: int
    ledger_index: int | None
    activate_ledger_index: int | None
    engine: str
    strategy: str
    secagg: bool
    active: bool
    features: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    # Bootstrap 95 % intervals (training/gbdt/metrics.auc_interval) of auc and pooled_auc.
    auc_ci95: list[float] = field(default_factory=list)
    pooled_auc_ci95: list[float] = field(default_factory=list)
    # Message round trips server -> banks -> server per tree (strategies.run_hist says why).
    message_rounds_per_tree: float = 0.0
    # Private runs: the (epsilon, delta) spent and the noise plan; None without noise.
    privacy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def city_settings(settings: TrainSettings | None, *, secagg: bool, banks: int) -> TrainSettings:
    s = settings or TrainSettings(params=PRESETS["fate"])
    use_secagg = secagg and s.strategy == "hist"
    # TrainSettings refuses fewer banks than --min-banks (or SecAgg+'s 3), saying why.
    return replace(s, secagg=use_secagg, num_banks=banks)


def _operator(dep: Deployment) -> str:
    for o in dep.organisations.values():
        if o.role == "operator":
            return o.id
    raise NoOperator(
        f"{dep.path} lists no organisation with role operator; publishing and activating a "
        "model needs one"
    )


# A bank's own settings for private training (training/bank/source.py PRIVACY_KEYS):
# its budget cap, its public ranges, and (tests only) a seed that replays its noise.
BankConfig = tuple[tuple[str, str | int | float], ...]


def _node_config(
    dep: Deployment, bank: str, world: Path, cache: Path, extra: BankConfig = ()
) -> str:
    for what, v in (
        ("deployment file", str(dep.path)),
        ("world folder", str(world)),
        ("cache folder", str(cache)),
        *((f"bank setting {k}", str(v)) for k, v in extra),
    ):
        if "'" in v:
            raise InvalidArgument(f"the {what} {v!r} contains a quote; Flower cannot pass it")
    unknown = [k for k, _ in extra if k not in PRIVACY_KEYS]
    if unknown:
        raise InvalidArgument(
            f"unknown bank setting(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(PRIVACY_KEYS)}"
        )
    more = "".join(f" {k}={v}" if isinstance(v, int | float) else f" {k}='{v}'" for k, v in extra)
    return f"deployment='{dep.path}' bank='{bank}' world='{world}' cache='{cache}'{more}"


def run_engine(
    dep: Deployment,
    banks: list[str],
    world: Path,
    settings: TrainSettings,
    engine: str,
    work_dir: Path | None,
    timeout: float,
    bank_config: BankConfig = (),
) -> TrainResult:
    """Train once; every bank's fetched rows (its cache) are deleted afterwards."""
    wd = work_dir or dep.dir / "training" / time.strftime("%Y%m%d-%H%M%S")
    cache = wd / "bank-cache"
    try:
        return _run_engine(dep, banks, world, settings, engine, wd, cache, timeout, bank_config)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _run_engine(
    dep: Deployment,
    banks: list[str],
    world: Path,
    settings: TrainSettings,
    engine: str,
    wd: Path,
    cache: Path,
    timeout: float,
    bank_config: BankConfig = (),
) -> TrainResult:
    if engine == "simulation":
        from fedcredit.training.run.simulation import SimulationFailed, simulate

        source = CitySource(
            str(dep.path), tuple(banks), str(world), cache=str(cache), privacy=bank_config
        )
        try:
            out = simulate(settings, source, len(banks))
        except RuntimeError as exc:  # Flower/Ray's own failures (e.g. Ray did not start)
            raise SimulationFailed(
                f"Flower's Simulation Engine stopped: {exc}; see the Flower log above"
            ) from exc
        return TrainResult(out.model_text, out.summary(), list(out.feature_names))
    from fedcredit.training.run.deployment import run_local_deployment

    res = run_local_deployment(
        settings,
        [],
        wd,
        timeout,
        node_configs=[_node_config(dep, b, world, cache, bank_config) for b in banks],
        bank_names=banks,
    )
    names = [str(n) for n in res.summary.get("feature_names", [])]
    return TrainResult(res.model_text, res.summary, names, res.start_seconds)


def _load_all(dep: Deployment, banks: list[str], world: Path) -> list[CityBank]:
    with ThreadPoolExecutor(min(4, len(banks))) as pool:
        return list(pool.map(lambda b: load_city_bank(dep.path, b, world=world), banks))


@dataclass
class Evaluation:
    """The federated model next to pooled LightGBM on the banks' held-out borrowers."""

    booster: lgb.Booster
    feature_names: list[str]
    train: BankData
    test: BankData
    auc: float
    ks: float
    pooled_auc: float
    pooled_ks: float
    auc_ci95: tuple[float, float] = (float("nan"), float("nan"))
    pooled_auc_ci95: tuple[float, float] = (float("nan"), float("nan"))


def evaluate(result: TrainResult, data: list[CityBank], params: GBDTParams) -> Evaluation:
    """AUC and KS of the model on every bank's held-out rows, and of LightGBM trained on
    all the banks' training rows pooled (same settings)."""
    booster = lgb.Booster(model_str=result.model_text)
    names = result.feature_names or list(booster.feature_name())
    train = concat([d.train for d in data])
    test = concat([d.test for d in data])
    scores = np.asarray(booster.predict(test.x), dtype=np.float64)
    lp = lgb_params(params, boost_from_average=True) | {"num_threads": 2}
    pooled = lgb.train(
        lp, lgb.Dataset(train.x, train.y, feature_name=list(train.feature_names)), params.num_trees
    )
    pooled_scores = np.asarray(pooled.predict(test.x), dtype=np.float64)
    return Evaluation(
        booster,
        names,
        train,
        test,
        auc(test.y, scores),
        ks(test.y, scores),
        auc(test.y, pooled_scores),
        ks(test.y, pooled_scores),
        auc_interval(test.y, scores),
        auc_interval(test.y, pooled_scores),
    )


def _report(
    result: TrainResult,
    ev: Evaluation,
    data: list[CityBank],
    s: TrainSettings,
    engine: str,
    banks: list[str],
    phases: dict[str, float],
) -> CityTrainReport:
    summary = result.summary
    return CityTrainReport(
        model_version="",
        sha256=model_sha256(result.model_text),
        auc=ev.auc,
        ks=ev.ks,
        pooled_auc=ev.pooled_auc,
        pooled_ks=ev.pooled_ks,
        trees=int(summary.get("trees", ev.booster.num_trees())),
        seconds=0.0,
        train_seconds=float(summary.get("wall_seconds", 0.0)),
        seconds_per_tree=float(summary.get("seconds_per_tree", 0.0)),
        bytes_per_bank_per_tree=float(summary.get("bytes_up_per_bank_per_tree", 0.0)),
        banks=banks,
        rows_per_bank={d.bank: d.train.rows for d in data},
        test_rows=ev.test.rows,
        ledger_index=None,
        activate_ledger_index=None,
        engine=engine,
        strategy=s.strategy,
        secagg=s.secagg,
        active=False,
        features=ev.feature_names,
        phases=phases,
        message_rounds_per_tree=float(summary.get("message_rounds_per_tree", 0.0)),
        auc_ci95=list(ev.auc_ci95),
        pooled_auc_ci95=list(ev.pooled_auc_ci95),
        privacy=summary.get("privacy"),
    )


def _publish(
    dep: Deployment,
    operator: str,
    result: TrainResult,
    ev: Evaluation,
    s: TrainSettings,
    report: CityTrainReport,
    *,
    activate: bool,
    version: str,
) -> None:
    """Register the model (calibrated on its PDs over every consented borrower) and note
    the registry's answer in ``report``."""
    pds = np.asarray(ev.booster.predict(np.vstack([ev.train.x, ev.test.x])), dtype=np.float64)
    metrics = {
        "auc": report.auc,
        "ks": report.ks,
        "auc_ci95": report.auc_ci95,
        "pooled_lightgbm_auc": report.pooled_auc,
        "pooled_lightgbm_auc_ci95": report.pooled_auc_ci95,
        "pooled_lightgbm_ks": report.pooled_ks,
        "test_rows": report.test_rows,
        "rows_per_bank": report.rows_per_bank,
        "banks": report.banks,
        "trees": report.trees,
        "seconds_per_tree": report.seconds_per_tree,
        "bytes_per_bank_per_tree": report.bytes_per_bank_per_tree,
        "sha256": report.sha256,
        "features": report.features,
        "engine": report.engine,
        "valid_logloss": result.summary.get("valid_logloss", []),
    }
    settings_doc = {
        "strategy": s.strategy,
        "secagg": s.secagg,
        "engine": report.engine,
        "banks": report.banks,
        "settings": s.to_dict(),
        "bins": result.summary.get("bins"),
        "data": "city: each bank's loan book, features from the department nodes "
        "under model_training consents",
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mv = publish_model(
        dep,
        operator,
        result.model_text,
        pds,
        # A metric that is undefined (an AUC on held-out rows of one class) is null.
        metrics=finite(metrics),
        settings=settings_doc,
        activate=activate,
        version=version or f"fed-{s.strategy}-{stamp}-{report.sha256[:8]}",
        privacy=result.summary.get("privacy"),
    )
    report.model_version = mv.version
    report.ledger_index = int(mv.publish_ledger_index)
    report.activate_ledger_index = int(mv.activate_ledger_index) or None
    report.active = bool(mv.active)


def train_city(
    dep: Deployment,
    *,
    engine: str = "deployment",
    secagg: bool = True,
    settings: TrainSettings | None = None,
    publish: bool = True,
    activate: bool = True,
    progress: Progress | None = None,
    world: Path | None = None,
    banks: list[str] | None = None,
    work_dir: Path | None = None,
    timeout: float = 1800.0,
    version: str = "",
    bank_config: BankConfig = (),
) -> CityTrainReport:
    """Federated training on the city's banks, evaluation, publication (see the module doc)."""
    if engine not in ENGINES:
        raise InvalidEngine(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    t0 = time.perf_counter()
    world_dir = (world or dep.dir / "world").resolve()
    bank_list = list(banks) if banks is not None else list(dep.banks)
    s = city_settings(settings, secagg=secagg, banks=len(bank_list))
    operator = _operator(dep) if publish else ""
    task = progress.add_task("federated training", total=None) if progress else None

    def say(text: str) -> None:
        if progress is not None and task is not None:
            progress.update(task, description=text)

    say(
        f"training: {s.strategy}{' + SecAgg+' if s.secagg else ''}, {len(bank_list)} banks, "
        f"{engine} engine"
    )
    phases: dict[str, float] = {}
    # The evaluation rows load while the federation trains (mostly waiting on the nodes).
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(_load_all, dep, bank_list, world_dir)
        t = time.perf_counter()
        result = run_engine(dep, bank_list, world_dir, s, engine, work_dir, timeout, bank_config)
        phases["federation"] = time.perf_counter() - t
        say("evaluating on the held-out borrowers")
        data = loading.result()
    t = time.perf_counter()
    ev = evaluate(result, data, s.params)
    phases["evaluation"] = time.perf_counter() - t
    report = _report(result, ev, data, s, engine, bank_list, phases)
    if publish:
        say("publishing to the model registry")
        t = time.perf_counter()
        _publish(dep, operator, result, ev, s, report, activate=activate, version=version)
        phases["publication"] = time.perf_counter() - t
    report.seconds = time.perf_counter() - t0
    if progress is not None and task is not None:
        progress.update(task, description="done", total=1, completed=1)
    return report
