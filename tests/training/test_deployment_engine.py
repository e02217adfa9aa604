"""The Deployment Engine's latency parts: the SuperLink's long polls (fastpull), the
SuperNode running the ClientApp in its own process (fast_supernode), and a local
deployment that measures its empty-round floor and trains with SecAgg+."""

from __future__ import annotations

import csv
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.constant import SubStatus
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supernode.nodestate import NodeStateFactory

from fedcredit.training.bank import fast_supernode
from fedcredit.training.flower import fastpull
from fedcredit.training.run.deployment import APP_DIR, CLIENTAPP

# -- long polls ------------------------------------------------------------------------


class _Res:
    def __init__(self, msgs: list[str]) -> None:
        self.messages_list = msgs


def test_a_held_pull_answers_when_a_message_is_stored_and_not_before() -> None:
    changes = fastpull._Changes()
    box: list[str] = []
    calls = []

    def pull(node: int) -> _Res:
        calls.append(node)
        return _Res(list(box))

    def push(msg: str) -> None:
        box.append(msg)

    held = fastpull._held(pull, changes, 2.0, lambda r: not r.messages_list)
    notifying = fastpull._notifying(push, changes)

    threading.Timer(0.3, notifying, args=("m1",)).start()
    t0 = time.monotonic()
    res = held(1)
    waited = time.monotonic() - t0
    assert res.messages_list == ["m1"]
    assert 0.25 < waited < 1.5  # woke on the push, long before the 2 s hold ran out
    assert len(calls) == 2  # asked once, waited without polling, asked again

    # Nothing stored: an empty answer after the hold, not before.
    box.clear()
    t0 = time.monotonic()
    res = fastpull._held(pull, changes, 0.3, lambda r: not r.messages_list)(1)
    assert res.messages_list == [] and time.monotonic() - t0 >= 0.3

    # A message already there: no wait at all.
    box.append("m2")
    t0 = time.monotonic()
    assert held(1).messages_list == ["m2"] and time.monotonic() - t0 < 0.1


def test_long_polls_wrap_the_superlinks_fleet_and_runtime_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    for mod in (fleet_handlers, runtime_handlers):  # restored after the test
        for name in ("pull_messages", "push_messages", "pull_object", "push_object"):
            monkeypatch.setattr(mod, name, getattr(mod, name))
    original = fleet_handlers.pull_messages
    assert fastpull.install_long_poll() is True
    assert fleet_handlers.pull_messages is not original
    for mod in (fleet_handlers, runtime_handlers):
        for name in ("pull_messages", "push_messages", "pull_object", "push_object"):
            assert getattr(getattr(mod, name), "_fedcredit_fast", False), (mod, name)
    wrapped = fleet_handlers.pull_messages
    assert fastpull.install_long_poll() is True and fleet_handlers.pull_messages is wrapped


def test_lean_middleware_skips_only_layers_that_would_do_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flwr.superlink.main as link
    from flwr.superlink.routers.control import middlewares as control
    from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware

    monkeypatch.setattr(link, "_get_middleware", link._get_middleware)  # restored after
    stock = [m.cls for m in link._get_middleware()]
    assert fastpull.install_lean_middleware() is True
    lean = link._get_middleware()
    # Same layers, same order; some wrapped so that they run only where they act.
    assert [m.kwargs.get("inner", m.cls) for m in lean] == stock
    acts: dict[Any, Any] = {
        m.kwargs["inner"]: m.kwargs["acts_on"] for m in lean if "inner" in m.kwargs
    }

    class _State:
        fleet_event_log_plugin = None

    class _App:
        state = _State()

    def scope(path: str) -> dict[str, Any]:
        return {"type": "http", "path": path, "app": _App()}

    fleet, runtime, ctl = (
        scope("/v1/fleet/pull-messages"),
        scope("/v1/runtime/pull-messages"),
        scope("/v1/control/start-run"),
    )
    # SuperNode authentication still runs on every Fleet request.
    assert acts[NodeAuthMiddleware](fleet) and not acts[NodeAuthMiddleware](runtime)
    for cls in (
        control.ControlAuthenticationMiddleware,
        control.ControlLicenseMiddleware,
        control.ControlEventLogMiddleware,
        control.ControlSensitiveResponseMiddleware,
    ):
        assert acts[cls](ctl) and not acts[cls](fleet) and not acts[cls](runtime)
    # Layers not in the list (protobuf and error translation) are untouched.
    assert sum("inner" not in m.kwargs for m in lean) == len(stock) - len(acts)


# -- the ClientApp inside the SuperNode ------------------------------------------------


def _fab(clientapp: str = CLIENTAPP) -> Fab:
    from flwr.cli.build import build_fab_from_files

    pyproject = (APP_DIR / "pyproject.toml").read_text()
    content, _meta = build_fab_from_files(
        {"pyproject.toml": pyproject.replace(f'"{CLIENTAPP}"', f'"{clientapp}"').encode()}
    )
    return Fab(hashlib.sha256(content).hexdigest(), content, {})


def _deliver(state: Any, fab: Fab, content: RecordDict, message_type: str) -> Message:
    """A message from the ServerApp, stored by the SuperNode's own receive step."""
    import flwr.supernode.start_client_internal as sci

    node_id = 7
    state.set_node_id(node_id)
    msg = Message(content, dst_node_id=node_id, message_type=message_type, group_id="1")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    tree = get_object_tree(msg)
    objects = {k: v.deflate() for k, v in get_all_nested_objects(msg).items()}
    run = Run.create_empty(11)
    run.fab_hash = fab.hash_str
    run.primary_task_type = "client_app"
    confirmed: list[str] = []
    run_id = sci._pull_and_store_message(
        state=state,
        object_store=state.object_store,
        node_config={},
        receive=lambda: (remove_content_from_message(msg), tree),
        get_run=lambda _rid: run,
        get_fab=lambda _h, _rid: fab,
        pull_object=lambda _rid, oid: objects[oid],
        confirm_message_received=lambda _rid, mid: confirmed.append(mid),
        trusted_entities=None,
    )
    assert run_id == 11 and confirmed == [msg.object_id]
    return msg


def _state() -> Any:
    return NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state()


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's process-wide task identity (a Message takes its run from it): the
    ServerApp's while the test builds a message, restored afterwards."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, getattr(TaskIdentity, name))
    TaskIdentity.run_id = 11
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 1


def test_the_supernode_runs_the_clientapp_itself_on_its_own_state() -> None:
    from fedcredit.training.bank.app import app as client_app

    state = _state()
    fab = _fab()
    msg = _deliver(state, fab, RecordDict(), "query.ping")
    assert len(state.get_tasks()) == 1

    assert fast_supernode.run_pending_tasks(state, CLIENTAPP, client_app) == 1
    [reply] = state.get_messages_legacy(is_reply=True)
    assert reply.metadata.reply_to_message_id == msg.object_id
    assert not reply.has_error()
    [task] = state.get_tasks()
    assert (task.status.status, task.status.sub_status) == ("finished", SubStatus.COMPLETED)
    # The reply's objects are in the store, for the SuperNode to push to the SuperLink.
    assert state.object_store.get_object_tree(reply.metadata.message_id).object_id
    # Nothing left to run.
    assert fast_supernode.run_pending_tasks(state, CLIENTAPP, client_app) == 0


def test_the_supernode_refuses_a_run_whose_app_names_another_clientapp() -> None:
    from fedcredit.training.bank.app import app as client_app

    state = _state()
    msg = _deliver(state, _fab("evil.module:app"), RecordDict(), "query.ping")
    assert fast_supernode.run_pending_tasks(state, CLIENTAPP, client_app) == 1
    [reply] = state.get_messages_legacy(is_reply=True)
    assert reply.metadata.reply_to_message_id == msg.object_id
    assert reply.has_error() and "evil.module:app" in reply.error.reason
    [task] = state.get_tasks()
    assert task.status.sub_status == SubStatus.FAILED


def test_a_clientapp_error_goes_back_as_an_error_reply() -> None:
    from fedcredit.training.bank.app import app as client_app

    state = _state()
    # "setup" without the bank's data configured: the ClientApp raises.
    _deliver(state, _fab(), RecordDict({"config": ConfigRecord({"x": 1})}), "query.setup")
    fast_supernode.run_pending_tasks(state, CLIENTAPP, client_app)
    [reply] = state.get_messages_legacy(is_reply=True)
    assert reply.has_error() and reply.error.reason
    assert state.get_tasks()[0].status.sub_status == SubStatus.FAILED


# -- a local deployment ------------------------------------------------------------------


def _write_bank(path: Path, rng: np.random.Generator, n: int, start: int) -> None:
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "y", "a", "b", "c", "d"])
        for i in range(n):
            w.writerow([start + i, y[i], *(f"{v:.6f}" for v in x[i])])


@pytest.mark.timeout(600)
def test_local_deployment_floor_and_secagg_training_match_the_simulation(
    tmp_path: Path,
) -> None:
    from fedcredit.training.bank.source import CsvSource
    from fedcredit.training.gbdt import GBDTParams
    from fedcredit.training.run.deployment import LocalDeployment
    from fedcredit.training.run.simulation import simulate_many
    from fedcredit.training.server.settings import TrainSettings
    from fedcredit.training.server.strategies import TrainOutcome

    rng = np.random.default_rng(3)
    paths = []
    for b in range(3):
        p = tmp_path / f"bank{b}.csv"
        _write_bank(p, rng, 300, 1000 * b)
        paths.append(str(p))
    settings = TrainSettings(params=GBDTParams(num_trees=2, max_depth=2, max_bins=16), secagg=True)
    dep = LocalDeployment(tmp_path / "run", paths, timeout=300)
    try:
        dep.start()
        # SuperLink and one SuperNode per bank: no executor processes.
        assert [w.split("-")[0] for w, _ in dep.procs] == ["superlink"] + ["supernode"] * 3
        floor = dep.floor(5)
        assert 0 < floor < 30
        cpu = dep.last_floor["cpu_seconds_per_round"]
        assert set(cpu) >= {"superlink", "supernode", "flwr-serverapp"}
        text, summary, _wall = dep.run(settings)
    finally:
        dep.stop()
    [sim] = simulate_many([settings], CsvSource(tuple(paths)), len(paths))
    assert isinstance(sim, TrainOutcome)
    assert summary["trees"] == 2 and summary["secagg"] is True
    assert text == sim.model_text
