"""A bank's long-running ClientApp executor for Flower's Deployment Engine.

Flower 1.42's SuperNode (``--isolation subprocess``, its default) starts a fresh
``flwr-clientapp`` process for every message: Python, Flower and the app are
imported again and the bank's rows reloaded, one to three seconds of CPU per message
and bank. A `hist` tree of depth 3 is 3 rounds (12 with SecAgg+'s four stages), so
30 trees would take many minutes on a small machine.

With ``--isolation process`` the SuperNode leaves running the ClientApp to an
executor of the operator's choosing. This one stays up for the whole session and,
for each task the SuperNode hands out, does what ``flwr-clientapp`` does —
pull the message and context from the SuperNode's Runtime API, run the ClientApp,
push the reply and the updated context — in this process, so imports, loaded rows
and binned data are reused. The ClientApp is the installed fedcredit one (the FAB of
``training/flwr_app`` names exactly this code), so no FAB is unpacked.

Run: ``python -m fedcredit.training.bank.executor --runtime-api-address 127.0.0.1:PORT``
next to ``flower-supernode --isolation process --host 127.0.0.1 --port PORT``
(see training/run/deployment.py, which starts both per bank). Loopback only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

# Fewer idle wake-ups than Flower's 1 s SuperExec poll, still quick to pick up a task.
IDLE_SLEEP = 0.005
MAX_IDLE_SLEEP = 0.1

log = logging.getLogger("fedcredit.executor")


class ForeignClientApp(PermissionError):
    """The run's app names another ClientApp than the one this bank runs."""


def call_clientapp(
    pull: Callable[[], tuple[Any, Any, Any]],
    client_app: Any,
    vet: Callable[[Any], None] | None = None,
) -> tuple[Any, Any, Any, Any, str]:
    """Pull one task's input (``pull`` -> message, context, fab), let ``vet`` refuse the
    fab, run the ClientApp: (message, context, reply, sub-status, details). A failure
    becomes an error reply to the ServerApp, as Flower's own ``run_clientapp`` does."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus

    message = reply = context = None
    try:
        message, context, fab = pull()
        if vet is not None:
            vet(fab)
        reply = client_app(message=message, context=context)
        return message, context, reply, SubStatus.COMPLETED, ""
    except Exception as ex:
        log.exception("ClientApp raised an exception")
        details = str(type(ex)) + ":<'" + str(ex) + "'>"
        if message is not None:
            code = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                if isinstance(ex, ForeignClientApp)
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            )
            reply = Message(Error(code=code, reason=details), reply_to=message)
        return message, context, reply, SubStatus.FAILED, details


def _run_task(address: str, token: str, client_app: Any) -> None:
    """One task, as flwr-clientapp's run_clientapp does it, without leaving the process."""
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))

    def pull() -> tuple[Any, Any, Any]:
        heartbeat.start()
        message, context, _run, fab = pull_task_input(client)
        return message, context, fab

    # Defined for the pushes below even if the task is interrupted (not an Exception).
    context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task interrupted"
    try:
        _message, context, reply, status, details = call_clientapp(pull, client_app)
    finally:
        # The heartbeat stops before the task is finished: one sent after it would be
        # refused (401, or success=False, on which Flower's sender raises SIGINT and
        # stopped this executor).
        if heartbeat.is_running:
            heartbeat.stop()
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, status, details)
        finally:
            client.close()


def serve(address: str, parent_pid: int | None = None) -> None:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    from fedcredit.training.bank.app import app as client_app
    from fedcredit.training.flower import fastpull

    fastpull.install()

    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    idle = IDLE_SLEEP
    try:
        while not stop.is_set():
            if parent_pid is not None and not _alive(parent_pid):
                break  # the SuperNode is gone: so is this executor
            res = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
            )
            if res.HasField("task") and res.token:
                _run_task(address, res.token, client_app)
                idle = IDLE_SLEEP
            else:
                stop.wait(idle)
                idle = min(idle * 1.5, MAX_IDLE_SLEEP)
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    args = p.parse_args(argv)
    host = args.runtime_api_address.rpartition(":")[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        sys.exit("the executor talks to its SuperNode on loopback only (plain HTTP)")
    own_lines(log)
    serve(args.runtime_api_address, args.parent_pid)


def own_lines(logger: logging.Logger) -> None:
    """Print ``logger``'s INFO records on stderr, and only its own: a root handler would
    also print every record of Flower's logger (DEBUG included) a second time, and
    httpx's line for every request."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":
    main()
