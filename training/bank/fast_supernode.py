"""``flower-supernode`` for a bank: short polls, and the ClientApp run in this process.

Flower 1.42's SuperNode sleeps 3 s whenever the SuperLink has no message for it and
0.5 s while it waits for the ClientApp's reply. Training rounds are short and many
(a `hist` tree of depth 3 is 3 rounds, 12 with SecAgg+), so those sleeps, not the
work, would set the pace. This entry point runs the unchanged SuperNode with its
sleeps capped at ``FEDCREDIT_SUPERNODE_POLL`` seconds (default 0.02), backing off
to 0.25 s while the SuperLink has nothing for it, so an idle SuperNode does not
hammer the SuperLink.

With ``--clientapp MODULE:ATTR`` (and ``--isolation process``) the SuperNode also
runs the ClientApp itself, in this process, as soon as a message has arrived:
Flower's SuperNode stores the message and creates a task, then waits for a separate
process to claim the task and exchange the message, the context and the reply with
it over the Runtime HTTP API — a dozen HTTP requests per message, a task-heartbeat
thread, and an executor polling for tasks. Here the same steps (claim, pull the task
input, run, push the reply and the context, finish) call the Runtime API's own
handlers on the SuperNode's state directly (:class:`LocalRuntime`), with Flower's
``run_clientapp`` functions doing the rest unchanged. The ClientApp runs only if the
run's FAB names exactly the ``--clientapp`` component: a bank runs the code it has
installed, nothing a run brings. Other arguments are flower-supernode's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time as _time
from typing import Any

DEFAULT_POLL = 0.02
IDLE_SECONDS = 3.0  # the SuperNode's sleep when the SuperLink had nothing for it
IDLE_GROWTH = 1.25
MAX_IDLE = 0.25
# A claimed task counts as dead after 2 x 30 s without a heartbeat (Flower's
# HEARTBEAT_PATIENCE x HEARTBEAT_DEFAULT_INTERVAL); a long ClientApp call (city mode's
# first message fetches the bank's rows from the nodes) keeps its claim alive.
TASK_HEARTBEAT_SECONDS = 20.0

log = logging.getLogger("fedcredit.supernode")


class _Time:
    """The ``time`` module as the SuperNode sees it: everything real, shorter sleeps."""

    def __init__(self, poll: float) -> None:
        self.poll = poll
        self._idle = poll
        # When the SuperNode last asked the SuperLink for a message: a SuperLink that
        # holds an empty pull (training/flower/fastpull.py's long polls) has
        # already made it wait, so the idle interval counts from the pull's start.
        self.pull_started: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        if seconds >= IDLE_SECONDS:
            # Nothing from the SuperLink: poll again soon, backing off while idle.
            wait = self._idle
            self._idle = min(self._idle * IDLE_GROWTH, MAX_IDLE)
            if self.pull_started is not None:
                wait -= _time.monotonic() - self.pull_started
            if wait <= 0:
                return
        else:
            # Waiting for a reply being computed: a message arrived, so work is on.
            wait = min(seconds, self.poll)
            self._idle = self.poll
        _time.sleep(wait)


class TaskNotFound(RuntimeError):
    pass


class LocalRuntime:
    """The SuperNode's Runtime API for one claimed task, without HTTP.

    Exposes the methods of Flower's ``RuntimeHttpClient`` that ``run_clientapp``'s
    ``pull_task_input`` / ``push_message`` / ``push_task_output`` call; each one
    authenticates the task by its token, as the HTTP router does, and calls the same
    handler (``flwr.supernode.servicer.runtime.runtime_handlers``) on the same state.
    """

    def __init__(self, state: Any, token: str) -> None:
        from flwr.supernode.servicer.runtime import runtime_handlers

        self._state = state
        self._token = token
        self._h = runtime_handlers

    def _task(self) -> Any:
        task = self._state.get_task_by_token(self._token)
        if task is None:
            raise TaskNotFound("the task's claim is no longer valid")
        return task

    def _call(self, name: str, request: Any) -> Any:
        return getattr(self._h, name)(request, self._state, self._task())

    def PullTaskInput(self, request: Any) -> Any:
        return self._call("pull_task_input", request)

    def PullMessages(self, request: Any) -> Any:
        return self._call("pull_messages", request)

    def PullObject(self, request: Any) -> Any:
        return self._call("pull_object", request)

    def ConfirmMessageReceived(self, request: Any) -> Any:
        return self._call("confirm_message_received", request)

    def PushMessages(self, request: Any) -> Any:
        return self._call("push_messages", request)

    def PushObject(self, request: Any) -> Any:
        return self._call("push_object", request)

    def PushTaskOutput(self, request: Any) -> Any:
        return self._call("push_task_output", request)


def _fab_clientapp(fab: Any) -> str:
    from flwr.common.config import get_fab_config

    cfg = get_fab_config(fab.content)
    return str(cfg["tool"]["flwr"]["app"]["components"]["clientapp"])


def run_task(state: Any, token: str, task_id: int, component: str, client_app: Any) -> None:
    """One claimed ClientApp task, as ``flwr-clientapp`` runs it, in this process."""
    from flwr.common.constant import SubStatus
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    from fedcredit.training.bank.executor import ForeignClientApp, call_clientapp

    runtime = LocalRuntime(state, token)
    done = threading.Event()

    def keep_claim() -> None:
        while not done.wait(TASK_HEARTBEAT_SECONDS):
            if not state.acknowledge_task_heartbeat(task_id):
                return

    beat = threading.Thread(target=keep_claim, name="task-heartbeat", daemon=True)
    beat.start()

    def pull() -> tuple[Any, Any, Any]:
        message, context, _run, fab = pull_task_input(runtime)  # type: ignore[arg-type]
        return message, context, fab

    def vet(fab: Any) -> None:
        named = _fab_clientapp(fab)
        if named != component:
            raise ForeignClientApp(
                f"the run's app names ClientApp {named!r}; this SuperNode runs {component!r}"
            )

    # Defined for the pushes below even if the task is interrupted (not an Exception).
    context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task interrupted"
    try:
        _message, context, reply, status, details = call_clientapp(pull, client_app, vet)
    finally:
        done.set()
        beat.join()
        try:
            if reply is not None and context is not None:
                push_message(runtime, reply, context)  # type: ignore[arg-type]
        finally:
            push_task_output(runtime, context, status, details)  # type: ignore[arg-type]


def run_pending_tasks(state: Any, component: str, client_app: Any) -> int:
    """Claim and run every pending ClientApp task; the number run."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.servicer.runtime import runtime_handlers as core

    ran = 0
    while True:
        res = core.acquire_task(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]), state
        )
        if not (res.HasField("task") and res.token):
            return ran
        run_task(state, res.token, res.task.task_id, component, client_app)
        ran += 1


def install_inline(sci: Any, component: str) -> None:
    """Run the ClientApp ``component`` in the SuperNode's loop, right after a message
    is stored and before the SuperNode waits for the reply."""
    from flwr.supercore.object_ref import load_app

    client_app = load_app(component, ImportError)
    original = sci._push_messages

    def push_messages(*args: Any, **kwargs: Any) -> None:
        state = kwargs["state"] if "state" in kwargs else args[0]
        run_pending_tasks(state, component, client_app)
        original(*args, **kwargs)

    sci._push_messages = push_messages


def main(argv: list[str] | None = None) -> None:
    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli.flower_supernode import flower_supernode

    from fedcredit.training.flower import fastpull

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--clientapp", default=None)
    ours, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if ours.clientapp is not None:
        if "--isolation" not in rest or rest[rest.index("--isolation") + 1] != "process":
            sys.exit("--clientapp needs --isolation process (no other executor may claim tasks)")
        from fedcredit.training.bank.executor import own_lines

        own_lines(log)  # a ClientApp's failure, once
        install_inline(sci, ours.clientapp)
    fastpull.install()

    clock = _Time(float(os.environ.get("FEDCREDIT_SUPERNODE_POLL", DEFAULT_POLL)))
    sci.time = clock  # type: ignore[assignment]
    pull = sci._pull_and_store_message

    def pull_and_store(*args: Any, **kwargs: Any) -> Any:
        clock.pull_started = _time.monotonic()
        return pull(*args, **kwargs)

    sci._pull_and_store_message = pull_and_store
    sys.argv = [sys.argv[0], *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
