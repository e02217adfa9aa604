"""Run a training in Flower's Simulation Engine (Ray backend, all on this machine)."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from queue import Queue
from typing import Any

import ray
from flwr.clientapp.typing import Mod
from flwr.server.superlink.fleet.vce import vce_api
from flwr.simulation import run_simulation

from fedcredit.common.errors import Internal
from fedcredit.training.bank.app import make_client_app
from fedcredit.training.bank.source import DataSource
from fedcredit.training.server.server_app import Floor, make_server_app
from fedcredit.training.server.settings import TrainSettings
from fedcredit.training.server.strategies import TrainOutcome


class SimulationFailed(Internal):
    reason = "SIMULATION_FAILED"


log = logging.getLogger(__name__)

# Flower 1.42's Simulation Engine hands messages to the virtual SuperNodes from a
# thread that polls the in-memory link state and then sleeps 0.1 s
# (``vce_api.add_messages_to_queue``). Every round therefore waits ~0.1 s before
# a bank even sees it — 0.3 s per depth-3 tree before any work. With
# ``low_latency=True`` that poller is replaced, for the duration of the run, by
# one that sleeps 2 ms when idle and not at all while messages keep coming.
# Benchmarks report both.
POLL_SECONDS = 0.002
_EXPECTED_SIGNATURE = ["state", "queue", "nodes_mapping", "f_stop"]


def _fast_add_messages_to_queue(
    state: Any, queue: Queue[Any], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    while not f_stop.is_set():
        found = False
        for node_id in nodes_mapping:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
                found = True
        if not found:
            f_stop.wait(POLL_SECONDS)


@contextmanager
def low_latency_polling() -> Iterator[bool]:
    """Swap in the low-latency poller if Flower's is the one we know; yields whether it did."""
    original = vce_api.add_messages_to_queue
    params = list(inspect.signature(original).parameters)
    if params != _EXPECTED_SIGNATURE:
        log.warning("unknown Flower simulation poller %s; keeping it", params)
        yield False
        return
    vce_api.add_messages_to_queue = _fast_add_messages_to_queue  # type: ignore[assignment]
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = original


class _DropDeprecation(logging.Filter):
    """Flower 1.42 warns, in eight lines, that ``run_simulation`` is deprecated in favour of
    ``flwr run``; the Python API is still the only way to run a ServerApp in-process with
    our own ClientApp objects, so the warning says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is deprecated" not in record.getMessage()


_QUIET = _DropDeprecation()


@contextmanager
def flower_logs(log_file: Path | None) -> Iterator[None]:
    """Flower's log (its ClientApp tracebacks included) to ``log_file`` rather than the
    terminal (nor the root logger a CLI may have configured), and its deprecation warning
    dropped, for the duration."""
    flwr_log = logging.getLogger("flwr")
    saved, propagate = list(flwr_log.handlers), flwr_log.propagate
    handler: logging.Handler | None = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        flwr_log.handlers = [handler]
        flwr_log.propagate = False
    flwr_log.addFilter(_QUIET)  # on the logger: before any handler, its own or the root's
    try:
        yield
    finally:
        flwr_log.removeFilter(_QUIET)
        flwr_log.handlers, flwr_log.propagate = saved, propagate
        if handler is not None:
            handler.close()


def simulate(
    settings: TrainSettings,
    source: DataSource,
    num_banks: int,
    *,
    client_mods: Sequence[Mod] = (),
    verbose: bool = False,
    low_latency: bool = True,
    log_file: Path | None = None,
) -> TrainOutcome:
    """One training run in the Simulation Engine; raises the error that stopped it.

    With ``log_file``, Flower's and Ray's logs go there, not to the terminal."""
    result = simulate_many(
        [settings],
        source,
        num_banks,
        client_mods=client_mods,
        verbose=verbose,
        low_latency=low_latency,
        log_file=log_file,
    )[0]
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, TrainOutcome)
    return result


def simulate_many(
    runs: Sequence[TrainSettings],
    source: DataSource,
    num_banks: int,
    *,
    client_mods: Sequence[Mod] = (),
    verbose: bool = False,
    low_latency: bool = True,
    floor_rounds: int = 0,
    actors: int = 0,
    log_file: Path | None = None,
) -> list[TrainOutcome | Floor | Exception]:
    """Several runs on the same simulated banks (one Ray start-up); each outcome or error,
    preceded by the engine's round-trip floor when ``floor_rounds`` > 0."""
    box: list[TrainOutcome | Floor | Exception] = []
    server_app = make_server_app(runs, box.append, floor_rounds=floor_rounds)
    client_app = make_client_app(source, client_mods)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    poller = low_latency_polling() if low_latency else _keep_poller()
    with poller, flower_logs(log_file):
        _run(server_app, client_app, num_banks, actors or num_banks, verbose, log_file)
    if len(box) != len(runs) + (1 if floor_rounds and runs else 0):
        raise SimulationFailed(
            f"the simulation ended with {len(box)} results for {len(runs)} runs; "
            "the ServerApp stopped early (see the Flower log above)"
        )
    return box


@contextmanager
def _keep_poller() -> Iterator[bool]:
    yield False


# Ray's head node waits a fixed time for its GCS server to write its port file;
# on a loaded 2-core machine (CI running tests on both cores) that start-up has
# been seen to time out. Flower's backend calls ray.init() only when Ray is not
# already up, and raises a bare "Simulation Runtime crashed" when it fails, so
# we start Ray ourselves, retrying the start-up alone (nothing has run yet).
RAY_START_ATTEMPTS = 3
RAY_RETRY_PAUSE_S = 2.0


def start_ray(actors: int, *, attempts: int = RAY_START_ATTEMPTS, to_driver: bool = True) -> None:
    """Start a loopback-only Ray for ``actors`` ClientApp processes, retrying start-up."""
    # As Flower's RayBackend does: Ray's workers get this process's import path.
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    errors: list[str] = []
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                num_cpus=actors,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                logging_level=logging.WARNING,
                # False: the ClientApps' output (tracebacks) stays in Ray's session logs.
                log_to_driver=to_driver,
            )
            return
        except Exception as exc:  # Ray raises RuntimeError/ConnectionError/TimeoutError here
            errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
            log.warning("Ray did not start (%s); attempt %d of %d", exc, attempt, attempts)
            ray.shutdown()
            if attempt < attempts:
                time.sleep(RAY_RETRY_PAUSE_S)
    raise SimulationFailed(
        f"Ray (the Simulation Engine's backend) did not start in {attempts} attempts; "
        + "; ".join(errors)
    )


def _run(
    server_app: Any,
    client_app: Any,
    num_banks: int,
    actors: int,
    verbose: bool,
    log_file: Path | None,
) -> None:
    # loopback only, no dashboard, ``actors`` ClientApp processes
    start_ray(actors, to_driver=log_file is None)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_banks,
            # No "init_args": Ray is already up (start_ray), so Flower does not start it.
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
            verbose_logging=verbose,
        )
    finally:
        ray.shutdown()  # Flower's backend shuts Ray down too; this covers an early failure
