"""`fedcredit train`: federated training of the credit model.

Data, one of:

* ``--csv FILE`` once per bank (``id``, label, features; ``--label``), optionally
  ``--test-csv FILE`` to measure AUC/KS on held-out rows;
* ``--config deployment.toml`` (city mode): each bank trains on its own loan book
  and its borrowers' features from the department nodes under ``model_training``
  consents; the model is measured on held-out borrowers next to pooled LightGBM and,
  with ``--publish`` (the default in city mode), registered in the coordinator's model
  registry (``model_published`` in the ledger), with ``--activate`` made the scoring model.

Engines: ``--engine simulation`` (Flower's Simulation Engine, quick) or
``--engine deployment`` (a SuperLink and one SuperNode per bank as separate processes,
TLS and SuperNode authentication; all stopped at the end).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcredit.common.cliutil import err_console, output, user_errors
from fedcredit.common.errors import FedcreditError, InvalidArgument
from fedcredit.training.gbdt.metrics import format_auc

if TYPE_CHECKING:
    from fedcredit.training.server.settings import TrainSettings


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.{digits}f}"
    return str(v)


def _ci(v: Any) -> tuple[float, float] | None:
    return (float(v[0]), float(v[1])) if isinstance(v, list | tuple) and len(v) == 2 else None


def _table(d: dict[str, Any]) -> Table:
    t = Table(title=f"Federated training ({d['strategy']}{' + SecAgg+' if d['secagg'] else ''}, "
                    f"{d['engine']} engine)")  # fmt: skip
    t.add_column("", style="bold")
    t.add_column("", justify="right")
    rows: list[tuple[str, Any]] = [
        ("AUC (held-out)", format_auc(d.get("auc"), _ci(d.get("auc_ci95")))),
        ("KS (held-out)", _fmt(d.get("ks"))),
    ]
    priv = d.get("privacy")
    rows.append(
        (
            "differential privacy",
            f"epsilon {priv['epsilon']:.3g}, delta {priv['delta']:g} per training run "
            f"(noise multiplier {priv['noise_multiplier']:.3g})"
            if isinstance(priv, dict)
            else "none (--epsilon to add noise)",
        )
    )
    if d.get("pooled_auc") is not None:
        rows.append(
            ("pooled LightGBM AUC", format_auc(d.get("pooled_auc"), _ci(d.get("pooled_auc_ci95"))))
        )
    rows += [
        ("held-out rows", _fmt(d.get("test_rows"))),
        ("trees", _fmt(d.get("trees"))),
        ("seconds per tree", _fmt(d.get("seconds_per_tree"), 3)),
        ("message round trips per tree", _fmt(d.get("message_rounds_per_tree"), 1)),
        ("bytes per bank per tree", f"{d.get('bytes_per_bank_per_tree', 0):,.0f}"),
        ("banks", ", ".join(d["banks"]) if isinstance(d["banks"], list) else str(d["banks"])),
        *(
            [("cyclic order", " -> ".join(d["bank_order"]))]
            if d.get("strategy") == "cyclic"
            else []
        ),
        ("rows per bank", ", ".join(f"{k}: {v}" for k, v in d["rows_per_bank"].items())),
        ("total seconds", _fmt(d.get("seconds"), 1)),
    ]
    if d.get("model_version"):
        rows += [
            ("model version", d["model_version"]),
            ("active", str(d.get("active"))),
            ("ledger index (model_published)", _fmt(d.get("ledger_index"))),
        ]
    if d.get("model_file"):
        rows.append(("model file", d["model_file"]))
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _log_file(work_dir: Path | None) -> Path:
    """Where Flower's and Ray's logs go (error messages name it)."""
    if work_dir is not None:
        return work_dir / "flower.log"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"fedcredit-train-{stamp}-{os.getpid()}.log"


def _with_log(exc: FedcreditError, where: Path) -> FedcreditError:
    """The same error, its message naming the file with the engine's own logs."""
    err = type(exc).__new__(type(exc))
    FedcreditError.__init__(err, f"{exc.message} (Flower's log: {where})", **exc.metadata)
    err.reason = exc.reason  # type: ignore[misc]
    return err


def _engine(
    s: TrainSettings, engine: str, paths: tuple[str, ...], label: str, work_dir: Path | None
) -> tuple[str, dict[str, Any]]:
    """The model text and summary of one run; errors name the engine's log, never a
    traceback (Ray's and Flower's go to the log file)."""
    if engine == "simulation":
        from fedcredit.training.bank.source import CsvSource
        from fedcredit.training.run.simulation import SimulationFailed, simulate

        log_file = _log_file(work_dir)
        try:
            # Simulated banks hold the same public range file as the coordinator (a real
            # bank's SuperNode names its own copy: node config public-ranges).
            privacy = (("public-ranges", s.public_ranges),) if s.private else ()
            source = CsvSource(paths, label, privacy=privacy)
            out = simulate(s, source, len(paths), log_file=log_file)
        except FedcreditError as exc:
            raise _with_log(exc, log_file) from None
        except Exception as exc:  # Ray/Flower's own failure: its traceback is in the log
            raise SimulationFailed(
                f"the Simulation Engine stopped: {type(exc).__name__}: {exc} "
                f"(Flower's log: {log_file})"
            ) from None
        return out.model_text, out.summary()
    from fedcredit.training.run.deployment import run_local_deployment

    wd = work_dir or Path.cwd() / "fedcredit-training" / time.strftime("%Y%m%d-%H%M%S")
    try:
        res = run_local_deployment(s, paths, wd)
    except FedcreditError as exc:
        raise _with_log(exc, wd) from None
    return res.model_text, res.summary


def train_csv(
    csvs: list[Path],
    test_csv: Path | None,
    settings: TrainSettings,
    engine: str,
    label: str,
    work_dir: Path | None,
    progress: Progress | None,
) -> dict[str, Any]:
    """CSV mode: one file per bank; AUC/KS on ``test_csv`` if given. Every file is read
    and checked (training/run/inputs.py) before Flower starts."""
    from fedcredit.training.gbdt.metrics import auc, auc_interval, ks
    from fedcredit.training.run.inputs import check_csv_inputs

    if engine != "simulation" and label != "y":
        raise InvalidArgument(
            "--label is supported with --engine simulation only; the deployment's "
            "banks read the column 'y'"
        )
    inputs = check_csv_inputs(csvs, test_csv, label=label, strategy=settings.strategy)
    paths = tuple(str(p.resolve()) for p in csvs)
    s = replace(settings, label=label, num_banks=len(paths))
    task = progress.add_task(f"training on {len(paths)} banks ({engine})") if progress else None
    t0 = time.perf_counter()
    model_text, summary = _engine(s, engine, paths, label, work_dir)
    if progress is not None and task is not None:
        progress.update(task, description="evaluating")
    d: dict[str, Any] = {
        "engine": engine,
        "strategy": s.strategy,
        "secagg": s.secagg,
        "trees": summary.get("trees"),
        "seconds_per_tree": summary.get("seconds_per_tree"),
        "message_rounds_per_tree": summary.get("message_rounds_per_tree"),
        "bytes_per_bank_per_tree": summary.get("bytes_up_per_bank_per_tree", 0),
        "banks": [Path(p).name for p in paths],
        "bank_order": summary.get("bank_order", []),
        "rows_per_bank": {Path(n).name: b.rows for n, b in inputs.banks},
        "auc": None,
        "auc_ci95": None,
        "ks": None,
        "test_rows": None,
        "valid_logloss": summary.get("valid_logloss", []),
        "privacy": summary.get("privacy"),
    }
    if inputs.test is not None:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=model_text)
        if tuple(booster.feature_name()) != inputs.feature_names:
            raise InvalidArgument(
                f"the model's features {booster.feature_name()} are not the banks' "
                f"{list(inputs.feature_names)}"
            )
        test = inputs.test  # columns already in the model's order (inputs.align_features)
        scores = booster.predict(test.x)
        d["auc"], d["ks"], d["test_rows"] = auc(test.y, scores), ks(test.y, scores), test.rows
        d["auc_ci95"] = list(auc_interval(test.y, scores))
    d["seconds"] = time.perf_counter() - t0
    d["model_text"] = model_text
    return d


CsvOpt = Annotated[
    list[Path] | None,
    typer.Option("--csv", help="A bank's training CSV (id, label, features); once per bank."),
]
TestCsvOpt = Annotated[
    Path | None, typer.Option("--test-csv", help="Held-out rows to measure AUC and KS.")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="City mode: the deployment file (deployment.toml)."),
]
WorldOpt = Annotated[
    Path | None,
    typer.Option("--world", help="City mode: the generated city (default <config dir>/world)."),
]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="simulation (quick) or deployment (real processes).")
]
StrategyOpt = Annotated[str, typer.Option("--strategy", help="hist, bagging or cyclic.")]
SecaggOpt = Annotated[
    bool | None,
    typer.Option("--secagg/--no-secagg", help="SecAgg+ for hist (default: on in city mode)."),
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        help="fate (30 trees, depth 3, 32 bins, lr 0.3), strong or private (for --epsilon: "
        "40 stumps on 6 bins from the DP sketch, 8 features each).",
    ),
]
LabelOpt = Annotated[str, typer.Option("--label", help="CSV mode: the label column.")]
PublishOpt = Annotated[
    bool | None,
    typer.Option("--publish/--no-publish", help="City mode: register the model (default on)."),
]
ActivateOpt = Annotated[
    bool, typer.Option("--activate", help="Make the published model the scoring model.")
]
ModelOutOpt = Annotated[
    Path | None, typer.Option("--model-out", help="Also write the LightGBM text model here.")
]
WorkDirOpt = Annotated[
    Path | None,
    typer.Option("--work-dir", help="Deployment engine: folder for PKI, keys and logs."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
EpsilonOpt = Annotated[
    float | None,
    typer.Option(
        "--epsilon",
        help="Differential privacy budget of the run (hist; CSV mode with --public-ranges,"
        " city mode bins on the feature catalog's public domains; try --preset private).",
    ),
]
DeltaOpt = Annotated[float | None, typer.Option("--delta", help="DP delta (default 1e-6).")]
SketchOpt = Annotated[
    float | None,
    typer.Option(
        "--sketch-rounds",
        help="With --epsilon: bins at the quantiles of a DP sketch of the banks' rows on the "
        "public grid, priced as this many histogram rounds of the budget (default 1); 0: "
        "bins on the public grid itself.",
    ),
]
RangesOpt = Annotated[
    Path | None,
    typer.Option(
        "--public-ranges",
        help='Public schema: {"feature": [lo, hi] or [lo, hi, "linear"], ...}, or "catalog" '
        "(the feature catalog's declared domains; the default in city mode).",
    ),
]
MinBanksOpt = Annotated[
    int | None,
    typer.Option(
        "--min-banks",
        help="Fewest banks to train with: default and least 3 with SecAgg+ (so no bank can "
        "read another's histograms from the sum), default 2 without (least 1).",
    ),
]

# `fedcredit train` sits on the root itself (the "" group).
train_app = typer.Typer()
GROUPS: dict[str, typer.Typer] = {"": train_app}


def train_settings(
    *,
    engine: str,
    strategy: str,
    preset: str,
    city: bool,
    csv: bool,
    publish: bool | None,
    activate: bool,
    secagg: bool | None,
    overrides: dict[str, Any],
    min_banks: int | None = None,
    privacy: dict[str, Any] | None = None,
) -> TrainSettings:
    """The options checked, in the order the user reads them, and made one TrainSettings."""
    from fedcredit.training.gbdt.privacy import CATALOG
    from fedcredit.training.run.city import ENGINES, PRESETS, InvalidEngine
    from fedcredit.training.server.settings import (
        STRATEGIES,
        InvalidTrainSettings,
        TrainSettings,
    )

    if engine not in ENGINES:
        raise InvalidEngine(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if strategy not in STRATEGIES:
        raise InvalidTrainSettings(
            f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if preset not in PRESETS:
        raise InvalidTrainSettings(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if csv == city:
        raise InvalidArgument(
            "give either --csv FILE (once per bank) or --config deployment.toml (city mode)"
        )
    if not city and (publish or activate):
        raise InvalidArgument(
            "--publish/--activate need city mode (--config): the registry is the "
            "deployment's coordinator"
        )
    params = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    use_secagg = (secagg if secagg is not None else city) and strategy == "hist"
    if secagg and strategy != "hist":
        raise InvalidTrainSettings(f"--secagg applies to the hist strategy only, got {strategy!r}")
    if min_banks is not None and min_banks < 1:
        raise InvalidTrainSettings(f"--min-banks must be >= 1, got {min_banks}")
    priv = {k: v for k, v in (privacy or {}).items() if v is not None}
    if "public_ranges" in priv:
        where = str(priv["public_ranges"])
        priv["public_ranges"] = where if where == CATALOG else str(Path(where).resolve())
    if priv.get("epsilon") and city:
        # City mode: bins from the feature catalog's declared public domains (each bank
        # checks them against its own copy of the catalog), not the nodes' quantiles.
        priv.setdefault("public_ranges", CATALOG)
    return TrainSettings(
        strategy=strategy, params=params, secagg=use_secagg, min_banks=min_banks or 0, **priv
    )


def train_city_mode(
    config: Path,
    settings: TrainSettings,
    *,
    engine: str,
    publish: bool | None,
    activate: bool,
    world: Path | None,
    work_dir: Path | None,
    progress: Progress,
) -> dict[str, Any]:
    """City mode: train on the deployment's banks, evaluate, publish; the report."""
    from fedcredit.common.config import load_config
    from fedcredit.training.run.city import train_city

    report = train_city(
        load_config(config),
        engine=engine,
        secagg=settings.secagg,
        settings=settings,
        publish=publish if publish is not None else True,
        activate=activate,
        progress=progress,
        world=world,
        work_dir=work_dir,
    )
    return report.to_dict()


@train_app.command("train")
def train(
    csv: CsvOpt = None,
    test_csv: TestCsvOpt = None,
    config: ConfigOpt = None,
    world: WorldOpt = None,
    engine: EngineOpt = "simulation",
    strategy: StrategyOpt = "hist",
    secagg: SecaggOpt = None,
    preset: PresetOpt = "fate",
    trees: Annotated[int | None, typer.Option("--trees")] = None,
    depth: Annotated[int | None, typer.Option("--depth")] = None,
    bins: Annotated[int | None, typer.Option("--bins")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    label: LabelOpt = "y",
    publish: PublishOpt = None,
    activate: ActivateOpt = False,
    model_out: ModelOutOpt = None,
    work_dir: WorkDirOpt = None,
    min_banks: MinBanksOpt = None,
    epsilon: EpsilonOpt = None,
    delta: DeltaOpt = None,
    public_ranges: RangesOpt = None,
    sketch_rounds: SketchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the credit model with Flower: CSV files (one per bank) or the city (--config)."""
    with user_errors(as_json):
        settings = train_settings(
            engine=engine,
            strategy=strategy,
            preset=preset,
            city=config is not None,
            csv=bool(csv),
            publish=publish,
            activate=activate,
            secagg=secagg,
            overrides={
                "num_trees": trees,
                "max_depth": depth,
                "max_bins": bins,
                "learning_rate": learning_rate,
            },
            min_banks=min_banks,
            privacy={
                "epsilon": epsilon,
                "delta": delta,
                "public_ranges": public_ranges,
                "sketch_rounds": sketch_rounds,
            },
        )
        with _progress() as progress:
            if config is not None:
                d = train_city_mode(
                    config,
                    settings,
                    engine=engine,
                    publish=publish,
                    activate=activate,
                    world=world,
                    work_dir=work_dir,
                    progress=progress,
                )
                model_text = None
            else:
                assert csv is not None
                d = train_csv(csv, test_csv, settings, engine, label, work_dir, progress)
                model_text = d.pop("model_text")
        if model_out is not None:
            if model_text is None:
                raise InvalidArgument(
                    "--model-out is for CSV mode; in city mode the model is in the "
                    "coordinator's registry (`fedcredit model show`)"
                )
            model_out.write_text(model_text)
            d["model_file"] = str(model_out)
        output(_clean(d), as_json, None if as_json else _table(d))


def _clean(v: Any) -> Any:
    """NaN (one class only among the held-out rows) as null in JSON."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v
