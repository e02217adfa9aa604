"""The floor ServerApp: empty rounds to every bank, no training.

``fedcredit.training.run.deployment`` submits it (``LocalDeployment.floor``) in place of
the trainer to measure the Deployment Engine's own cost per round: 3 warm-up rounds,
then it writes ``warm`` to the output folder and waits (up to 30 s) for ``go`` while the
caller reads the processes' CPU counters, then ``floor-rounds`` timed rounds, whose mean
it writes to ``floor.json`` (or the error to ``error.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcredit.training.flower import fastpull
from fedcredit.training.server.federation import Federation
from fedcredit.training.server.server_app import settings_from_run_config, write_outcome


def _make_floor_app() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        fastpull.install()
        out = Path(str(context.run_config.get("output-dir", "fedcredit-floor-output")))
        rounds = int(context.run_config.get("floor-rounds", 20))  # type: ignore[call-overload]
        try:
            fed = Federation.connect(grid, context, settings_from_run_config(context.run_config))
            fed.floor(3)  # warm-up
            out.mkdir(parents=True, exist_ok=True)
            (out / "warm").touch()
            deadline = time.monotonic() + 30
            while not (out / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            result = {"seconds_per_round": fed.floor(rounds), "rounds": rounds}
        except Exception as exc:
            write_outcome(exc, out)
            return
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "floor.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(out / "floor.json")

    return app


app = _make_floor_app()
