"""The coordinator's Flower ServerApp (Message API)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcredit.training.server.federation import Federation
from fedcredit.training.server.settings import TrainSettings
from fedcredit.training.server.strategies import TrainOutcome, run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Floor:
    """Mean seconds of an empty round trip to all banks, measured before the runs."""

    seconds_per_round: float
    rounds: int


Sink = Callable[[TrainOutcome | Floor | Exception], None]


def make_server_app(
    runs: Sequence[TrainSettings], sink: Sink, *, floor_rounds: int = 0
) -> ServerApp:
    """A ServerApp that trains once per entry of ``runs``, one after the other on the same
    banks, and hands each outcome, or the error that stopped it, to ``sink``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if floor_rounds and runs:
            try:
                fed = Federation.connect(grid, context, runs[0])
                fed.floor(3)  # warm-up
                sink(Floor(fed.floor(floor_rounds), floor_rounds))
            except Exception as exc:
                sink(exc)
        for s in runs:
            try:
                sink(run(Federation.connect(grid, context, s)))
            except Exception as exc:  # handed to the caller, who reports it
                log.debug("training failed", exc_info=True)
                sink(exc)

    return app


def settings_from_run_config(cfg: dict[str, Any]) -> TrainSettings:
    """Deployment runs carry the settings as JSON in the run config key ``settings``."""
    return TrainSettings.from_dict(json.loads(str(cfg.get("settings", "{}"))))


def write_outcome(outcome: TrainOutcome | Exception, out_dir: Path) -> None:
    """Deployment runs write the model and a summary (or the error) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(outcome, Exception):
        reason = getattr(outcome, "reason", type(outcome).__name__)
        (out_dir / "error.json").write_text(
            json.dumps({"reason": reason, "message": str(getattr(outcome, "message", outcome))})
        )
        return
    (out_dir / "model.txt").write_text(outcome.model_text)
    summary = outcome.summary() | {
        "feature_names": outcome.feature_names,
        "settings": outcome.settings,
        "bins": outcome.spec.to_dict() if outcome.spec is not None else None,
    }
    # Written aside and renamed: the waiting side takes summary.json's existence as done.
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / "summary.json")


def _make_deployment_app() -> ServerApp:
    """`flwr run` entry: settings and output directory from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedcredit.training.flower import fastpull

        # This ServerApp process pulls every bank's replies: no 1-2-4 s back-offs.
        fastpull.install()
        out = Path(str(context.run_config.get("output-dir", "fedcredit-training-output")))
        try:
            s = settings_from_run_config(context.run_config)
            outcome: TrainOutcome | Exception = run(Federation.connect(grid, context, s))
        except Exception as exc:
            outcome = exc
        write_outcome(outcome, out)

    return app


app = _make_deployment_app()
