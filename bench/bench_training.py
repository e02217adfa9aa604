"""Federated credit model (issue 7): every trainer measured on the same held-out rows.

Run ``python -m bench.bench_training`` (``--quick`` for a short run,
``--skip-strong`` to run only FATE's settings). On the FATE homo split of the
UCI credit-card data (3 banks of 8,000 rows, 23 features; test on
``default_credit_homo_test.csv``, 6,000 rows), for FATE's benchmark settings
(30 trees, depth 3, 32 bins, learning rate 0.3) and a stronger one (200 trees,
depth 6, 255 bins, learning rate 0.05), it reports AUC and KS of:

* pooled LightGBM (all banks' rows together);
* our `hist` trainer run centrally on the pooled rows, with the same bins;
* federated `hist` in Flower's Simulation Engine, without and with SecAgg+;
* the LightGBM `bagging` and `cyclic` baselines in the same engine;
* each bank alone (LightGBM on its own rows);

with wall time, time per tree, bytes sent per bank per tree, and the largest
difference between federated and central predictions (lossless target 1e-6).
SecAgg+ costs seconds per tree, so at the strong settings it runs for its first
``--secagg-trees-strong`` trees only; its row then names its tree count and follows
federated hist cut at as many trees, and only those two AUCs compare.
The Simulation Engine's own round-trip floor (an empty message to every bank)
is measured in the same run, for Flower's stock poller and for the
low-latency one we use (see training/run/simulation.py).

Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcredit.training.bank.data import BankData, concat, load_csv
from fedcredit.training.bank.source import CsvSource
from fedcredit.training.gbdt import GBDTParams, fit_bin_spec, train_central
from fedcredit.training.gbdt.lgb_text import ModelParts
from fedcredit.training.gbdt.metrics import auc, auc_interval, format_auc, ks
from fedcredit.training.run.simulation import simulate_many
from fedcredit.training.server.server_app import Floor
from fedcredit.training.server.settings import TrainSettings
from fedcredit.training.server.strategies import TrainOutcome, lgb_params

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
FATE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fate-credit"
FATE_BANKS = (
    "default_credit_homo_guest.csv",
    "default_credit_homo_host_1.csv",
    "default_credit_homo_host_2.csv",
)
FATE_TEST = "default_credit_homo_test.csv"
console = Console(width=200)

SETTINGS = {
    "fate": GBDTParams(num_trees=30, max_depth=3, max_bins=32, learning_rate=0.3),
    "strong": GBDTParams(num_trees=200, max_depth=6, max_bins=255, learning_rate=0.05),
}
TARGETS = {
    "lossless_max_abs_diff": 1e-6,
    "auc_gap_to_pooled_lightgbm": 0.003,
    "seconds_per_tree_fate_settings": 0.25,
}


@dataclass
class Row:
    trainer: str
    auc: float
    ks: float
    trees: int
    wall_seconds: float | None = None
    seconds_per_tree: float | None = None
    bytes_per_bank_per_tree: float | None = None
    max_abs_diff_vs_central: float | None = None
    note: str = ""
    auc_ci95: list[float] | None = None  # bootstrap, 1000 resamples (gbdt/metrics.py)
    # Message round trips server -> banks -> server per tree (a SecAgg+ sum is 4 of them).
    rounds_per_tree: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _scores(model_text: str, x: np.ndarray) -> np.ndarray:
    return np.asarray(lgb.Booster(model_str=model_text).predict(x), dtype=np.float64)


def _trips(o: TrainOutcome) -> float:
    return o.message_rounds / max(o.trees, 1)


def _row(name: str, scores: np.ndarray, y: np.ndarray, trees: int, **kw: Any) -> Row:
    kw.setdefault("auc_ci95", list(auc_interval(y, scores)))
    return Row(name, auc(y, scores), ks(y, scores), trees, **kw)


def secagg_rows(
    fed: TrainOutcome,
    sec: TrainOutcome,
    x: np.ndarray,
    y: np.ndarray,
    central_scores: np.ndarray,
) -> list[Row]:
    """The SecAgg+ row, compared like for like with federated hist.

    SecAgg+ costs seconds per tree, so at the strong settings (and on the city's second
    pass) it runs for its first ``k`` trees only. Boosting is deterministic, so a k-tree
    run is the full run's first k trees; its AUC is that of a k-tree model, not of the
    full one. Then the row is named with its tree count and preceded by federated hist's
    first k trees, so the two AUCs side by side are of the same model size.
    """
    sec_scores = _scores(sec.model_text, x)
    k = sec.trees
    if k == fed.trees:
        same = sec.model_text == fed.model_text
        note = (
            "same model text as federated hist" if same else "DIFFERENT model from federated hist"
        )
        return [
            _row(
                "federated hist + SecAgg+",
                sec_scores,
                y,
                k,
                wall_seconds=sec.wall_seconds,
                seconds_per_tree=sec.seconds_per_tree,
                rounds_per_tree=_trips(sec),
                bytes_per_bank_per_tree=sec.bytes_up_per_bank_per_tree,
                max_abs_diff_vs_central=float(np.max(np.abs(sec_scores - central_scores))),
                note=note,
            )
        ]
    fed_first = np.asarray(
        lgb.Booster(model_str=fed.model_text).predict(x, num_iteration=k), dtype=np.float64
    )
    same = ModelParts.parse(sec.model_text).trees == ModelParts.parse(fed.model_text).trees[:k]
    return [
        _row(
            f"federated hist (first {k} trees)",
            fed_first,
            y,
            k,
            note=f"the {fed.trees}-tree run cut at {k} trees, for the SecAgg+ row below",
        ),
        _row(
            f"federated hist + SecAgg+ ({k} trees)",
            sec_scores,
            y,
            k,
            wall_seconds=sec.wall_seconds,
            seconds_per_tree=sec.seconds_per_tree,
            rounds_per_tree=_trips(sec),
            bytes_per_bank_per_tree=sec.bytes_up_per_bank_per_tree,
            max_abs_diff_vs_central=float(np.max(np.abs(sec_scores - fed_first))),
            note=(
                f"same trees as federated hist's first {k}"
                if same
                else f"DIFFERENT trees from federated hist's first {k}"
            )
            + f" (Δ vs those); AUC of a {k}-tree model",
        ),
    ]


def _reference_rows(
    params: GBDTParams, pooled: BankData, test: BankData, lp: dict[str, Any]
) -> tuple[list[Row], np.ndarray]:
    """Pooled LightGBM and the central hist trainer on the pooled rows (same bins); the
    central trainer's scores, which federated hist must equal."""
    t = time.perf_counter()
    ref = lgb.train(lp, lgb.Dataset(pooled.x, pooled.y), num_boost_round=params.num_trees)
    wall = time.perf_counter() - t
    rows = [_row("pooled LightGBM", np.asarray(ref.predict(test.x), dtype=np.float64), test.y,
                 ref.num_trees(), wall_seconds=wall, seconds_per_tree=wall / ref.num_trees())]  # fmt: skip
    t = time.perf_counter()
    spec = fit_bin_spec(pooled.x, pooled.feature_names, params.max_bins)
    central = train_central(spec, pooled.x, pooled.y, params, pooled.ids)
    wall = time.perf_counter() - t
    central_scores = central.predict(test.x)
    rows.append(_row("central hist", central_scores, test.y, len(central.trees),
                     wall_seconds=wall, seconds_per_tree=wall / len(central.trees)))  # fmt: skip
    return rows, central_scores


def _federated_rows(
    runs: list[TrainSettings], paths: tuple[str, ...], test: BankData, central_scores: np.ndarray
) -> tuple[list[Row], Floor, TrainOutcome]:
    """hist, hist + SecAgg+, bagging and cyclic in one Flower simulation."""
    results = simulate_many(runs, CsvSource(paths), len(paths), floor_rounds=20)
    floor = results[0]
    assert isinstance(floor, Floor), floor
    outcomes: list[TrainOutcome] = []
    for r in results[1:]:
        if isinstance(r, Exception):
            raise r
        assert isinstance(r, TrainOutcome)
        outcomes.append(r)
    fed, sec, bag, cyc = outcomes
    x_t, y_t = test.x, test.y
    fed_scores = _scores(fed.model_text, x_t)
    rows = [
        _row("federated hist", fed_scores, y_t, fed.trees, wall_seconds=fed.wall_seconds,
             seconds_per_tree=fed.seconds_per_tree, rounds_per_tree=_trips(fed),
             bytes_per_bank_per_tree=fed.bytes_up_per_bank_per_tree,
             max_abs_diff_vs_central=float(np.max(np.abs(fed_scores - central_scores))),
             note=f"{fed.tree_rounds} rounds; binning {fed.setup_seconds:.2f} s")
    ]  # fmt: skip
    rows.extend(secagg_rows(fed, sec, x_t, y_t, central_scores))
    for o, label in ((bag, "bagging (LightGBM)"), (cyc, "cyclic (LightGBM)")):
        rows.append(
            _row(label, _scores(o.model_text, x_t), y_t, o.trees, wall_seconds=o.wall_seconds,
                 seconds_per_tree=o.wall_seconds / max(o.trees, 1), rounds_per_tree=_trips(o),
                 bytes_per_bank_per_tree=o.bytes_up / o.banks / max(o.trees, 1),
                 note=f"{o.tree_rounds} rounds")
        )  # fmt: skip
    return rows, floor, fed


def _alone_rows(
    params: GBDTParams,
    banks: list[BankData],
    paths: tuple[str, ...],
    test: BankData,
    lp: dict[str, Any],
) -> list[Row]:
    rows = []
    for path, b in zip(paths, banks, strict=True):
        t = time.perf_counter()
        own = lgb.train(lp, lgb.Dataset(b.x, b.y), num_boost_round=params.num_trees)
        wall = time.perf_counter() - t
        rows.append(_row(f"alone: {Path(path).stem}", np.asarray(own.predict(test.x), dtype=np.float64),
                         test.y, own.num_trees(), wall_seconds=wall, seconds_per_tree=wall / own.num_trees()))  # fmt: skip
    return rows


def _stock_engine(run: TrainSettings, paths: tuple[str, ...], fed: TrainOutcome) -> dict[str, Any]:
    """Flower's stock simulation poller on the same hist run, for the engine comparison."""
    res = simulate_many([run], CsvSource(paths), len(paths), floor_rounds=20, low_latency=False)
    sfloor, sfed = res
    assert isinstance(sfloor, Floor) and isinstance(sfed, TrainOutcome), res
    return {
        "floor_seconds_per_round": sfloor.seconds_per_round,
        "hist_seconds_per_tree": sfed.seconds_per_tree,
        "same_model": sfed.model_text == fed.model_text,
    }


def run_setting(
    name: str,
    params: GBDTParams,
    banks: list[BankData],
    paths: tuple[str, ...],
    test: BankData,
    progress: Progress,
    secagg_trees: int,
    stock_engine: bool,
) -> dict[str, Any]:
    pooled = concat(banks)
    lp = lgb_params(params, boost_from_average=True)
    lp["num_threads"] = 2
    task = progress.add_task(
        f"[{name}] pooled LightGBM, central hist (pooled rows, same bins)", total=None
    )
    rows, central_scores = _reference_rows(params, pooled, test, lp)
    progress.update(
        task, description=f"[{name}] Flower simulation: hist, hist+SecAgg+, bagging, cyclic"
    )
    runs = [
        TrainSettings(strategy="hist", params=params),
        TrainSettings(strategy="hist", params=replace(params, num_trees=secagg_trees), secagg=True),
        TrainSettings(strategy="bagging", params=params),
        TrainSettings(strategy="cyclic", params=params),
    ]
    fed_rows, floor, fed = _federated_rows(runs, paths, test, central_scores)
    rows.extend(fed_rows)
    progress.update(task, description=f"[{name}] each bank alone")
    rows.extend(_alone_rows(params, banks, paths, test, lp))
    stock: dict[str, Any] | None = None
    if stock_engine:
        progress.update(task, description=f"[{name}] Flower's stock simulation poller")
        stock = _stock_engine(runs[0], paths, fed)
    progress.remove_task(task)
    return {
        "setting": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": params.to_dict(),
        "rows": [r.to_dict() for r in rows],
        "engine_floor_seconds_per_round": floor.seconds_per_round,
        "stock_engine": stock,
        "auc_gap_federated_vs_pooled_lightgbm": rows[2].auc - rows[0].auc,
    }


def render(
    result: dict[str, Any], *, dataset: str = "FATE homo split", test: str = "6,000 rows"
) -> None:
    p = result["params"]
    table = Table(
        title=f"{dataset}, {result['setting']} settings: {p['num_trees']} trees, depth "
        f"{p['max_depth']}, {p['max_bins']} bins, lr {p['learning_rate']} (test: {test})"
    )
    for col in (
        "trainer",
        "AUC (95 % CI)",
        "KS",
        "trees",
        "wall s",
        "s/tree",
        "rounds/tree",
        "bytes/bank/tree",
        "max |Δ| vs central",
        "note",
    ):
        table.add_column(col, justify="left" if col in ("trainer", "note") else "right")
    for r in result["rows"]:

        def f(v: Any, fmt: str) -> str:
            return "" if v is None else format(v, fmt)

        table.add_row(
            r["trainer"],
            format_auc(r["auc"], tuple(r["auc_ci95"]) if r.get("auc_ci95") else None),
            f(r["ks"], ".4f"),
            str(r["trees"]),
            f(r["wall_seconds"], ".2f"),
            f(r["seconds_per_tree"], ".3f"),
            f(r.get("rounds_per_tree"), ".1f"),
            f(r["bytes_per_bank_per_tree"], ",.0f"),
            f(r["max_abs_diff_vs_central"], ".1e"),
            r["note"],
        )
    console.print(table)
    console.print(
        f"engine floor (empty round to all banks, low-latency poller): "
        f"{result['engine_floor_seconds_per_round'] * 1000:.1f} ms; "
        f"AUC gap federated hist − pooled LightGBM: {result['auc_gap_federated_vs_pooled_lightgbm']:+.4f}"
    )
    if result["stock_engine"]:
        s = result["stock_engine"]
        console.print(
            f"Flower's stock poller: floor {s['floor_seconds_per_round'] * 1000:.1f} ms/round, "
            f"hist {s['hist_seconds_per_tree']:.3f} s/tree (same model: {s['same_model']})"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few trees, for a smoke run")
    ap.add_argument("--skip-strong", action="store_true", help="only FATE's settings")
    ap.add_argument(
        "--secagg-trees-strong",
        type=int,
        default=10,
        help="trees for SecAgg+ at the strong settings (its cost is per tree)",
    )
    args = ap.parse_args(argv)
    paths = tuple(str(FATE / f) for f in FATE_BANKS)
    banks = [load_csv(p) for p in paths]
    test = load_csv(FATE / FATE_TEST)
    settings = dict(SETTINGS)
    if args.skip_strong:
        settings.pop("strong")
    if args.quick:
        settings = {k: replace(v, num_trees=5) for k, v in settings.items()}
    results = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        for name, params in settings.items():
            secagg_trees = (
                params.num_trees
                if name == "fate"
                else min(args.secagg_trees_strong, params.num_trees)
            )
            results.append(
                run_setting(
                    name,
                    params,
                    banks,
                    paths,
                    test,
                    progress,
                    secagg_trees,
                    stock_engine=(name == "fate"),
                )
            )
    for r in results:
        render(r)
    if args.skip_strong and RESULTS.exists():
        # Keep the strong settings' rows from the last full run (they take ~11 minutes);
        # each result says when it was measured.
        kept = [
            r
            for r in json.loads(RESULTS.read_text()).get("results", [])
            if r.get("setting") == "strong"
        ]
        for r in kept:
            r.setdefault(
                "note", "kept from an earlier full run (bench_training without --skip-strong)"
            )
        results += kept
    out = {
        "dataset": "FATE homo split of UCI default of credit card clients (3 banks x 8,000 rows; test 6,000)",
        "targets": TARGETS,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "quick": args.quick,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
