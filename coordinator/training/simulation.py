"""Run a training in Flower's Simulation Engine (Ray backend, all on this machine)."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from queue import Queue
from typing import Any

from flwr.clientapp.typing import Mod
from flwr.server.superlink.fleet.vce import vce_api
from flwr.simulation import run_simulation

from clients.training.app import make_client_app
from clients.training.source import DataSource
from common.errors import Internal
from coordinator.training.server_app import Floor, make_server_app
from coordinator.training.settings import TrainSettings
from coordinator.training.strategies import TrainOutcome


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


def simulate(
    settings: TrainSettings,
    source: DataSource,
    num_banks: int,
    *,
    client_mods: Sequence[Mod] = (),
    verbose: bool = False,
    low_latency: bool = True,
) -> TrainOutcome:
    """One training run in the Simulation Engine; raises the error that stopped it."""
    result = simulate_many(
        [settings],
        source,
        num_banks,
        client_mods=client_mods,
        verbose=verbose,
        low_latency=low_latency,
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
) -> list[TrainOutcome | Floor | Exception]:
    """Several runs on the same simulated banks (one Ray start-up); each outcome or error,
    preceded by the engine's round-trip floor when ``floor_rounds`` > 0."""
    box: list[TrainOutcome | Floor | Exception] = []
    server_app = make_server_app(runs, box.append, floor_rounds=floor_rounds)
    client_app = make_client_app(source, client_mods)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    poller = low_latency_polling() if low_latency else _keep_poller()
    with poller:
        _run(server_app, client_app, num_banks, actors or num_banks, verbose)
    if len(box) != len(runs) + (1 if floor_rounds and runs else 0):
        raise SimulationFailed(
            f"the simulation ended with {len(box)} results for {len(runs)} runs; "
            "the ServerApp stopped early (see the Flower log above)"
        )
    return box


@contextmanager
def _keep_poller() -> Iterator[bool]:
    yield False


def _run(server_app: Any, client_app: Any, num_banks: int, actors: int, verbose: bool) -> None:
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_banks,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            # Ray on loopback only, no dashboard; ``actors`` ClientApp processes.
            "init_args": {
                "num_cpus": actors,
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
            },
        },
        verbose_logging=verbose,
    )
