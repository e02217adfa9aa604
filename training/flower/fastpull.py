"""Shorter waits in Flower's pulls, on a local deployment's loopback.

Flower 1.42 sends a message's content as separate objects; a reader that asks before
they arrived backs off for 1 s, then 2 s, 4 s ... (``PULL_INITIAL_BACKOFF``). A `hist`
round is a few milliseconds of work, so those back-offs, not the training, would set
the pace. :func:`install` makes every object pull in this process start at 5 ms and
cap at 100 ms (also patching the modules that imported the function by name).

In the SuperLink (``python -m fedcredit.training.flower.fastpull ARGS`` is
``flower-superlink ARGS`` with :func:`install_long_poll`), a pull for messages that
finds none waits up to a second for one to be stored instead of answering at once:
SuperNodes and the ServerApp then learn of a message as soon as it exists, with one
request instead of a poll every few milliseconds; a pull for an object of a message
whose objects are still being pushed likewise waits for it (instead of the puller
backing off and asking again).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

INITIAL_BACKOFF = 0.005
BACKOFF_CAP = 0.1
_USERS = (
    "flwr.supercore.inflatable.inflatable_utils",
    "flwr.superlink.grid.http_grid",
    "flwr.supernode.start_client_internal",
)
log = logging.getLogger(__name__)


def install() -> bool:
    """Patch the pulls in this process; False if Flower's layout is not the one we know."""
    try:
        utils = importlib.import_module(_USERS[0])
    except ImportError:
        return False
    original = getattr(utils, "pull_objects", None)
    if original is None:
        log.warning("Flower has no inflatable_utils.pull_objects; keeping its back-off")
        return False
    if getattr(original, "_fedcredit_fast", False):
        return True

    @wraps(original)
    def fast(*args: Any, **kwargs: Any) -> Any:
        # Callers pass Flower's defaults explicitly too: override, never lengthen.
        kwargs["initial_backoff"] = min(kwargs.get("initial_backoff", 1.0), INITIAL_BACKOFF)
        kwargs["backoff_cap"] = min(kwargs.get("backoff_cap", 10.0), BACKOFF_CAP)
        return original(*args, **kwargs)

    fast._fedcredit_fast = True  # type: ignore[attr-defined]
    for name in _USERS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(mod, "pull_objects", None) is original:
            mod.pull_objects = fast  # type: ignore[attr-defined]
    return True


# -- the SuperLink: pulls that wait for a message instead of coming back empty -----------

LONG_POLL_SECONDS = 1.0


class _Changes:
    """A generation counter bumped whenever a message is stored in the SuperLink."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0

    def bump(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wait(self, seen: int, until: float) -> None:
        with self.cond:
            while self.generation == seen:
                left = until - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)


def _held(original: Any, changes: _Changes, hold: float, empty: Callable[[Any], bool]) -> Any:
    @wraps(original)
    def pull(*args: Any, **kwargs: Any) -> Any:
        until = time.monotonic() + hold
        while True:
            seen = changes.generation
            res = original(*args, **kwargs)
            if not empty(res) or time.monotonic() >= until:
                return res
            changes.wait(seen, until)

    pull._fedcredit_fast = True  # type: ignore[attr-defined]
    return pull


def _notifying(original: Any, changes: _Changes) -> Any:
    @wraps(original)
    def push(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            changes.bump()

    push._fedcredit_fast = True  # type: ignore[attr-defined]
    return push


def install_long_poll(hold: float = LONG_POLL_SECONDS) -> bool:
    """In the SuperLink process: a SuperNode's or ServerApp's pull that finds nothing
    waits (up to ``hold`` seconds, in the handler's worker thread) until a message is
    stored, then answers. The SuperNodes and the ServerApp poll in a loop; with empty
    answers coming back at once, those polls were most of the SuperLink's requests (and
    CPU) in a round, and each poll interval was latency added to the round. False if
    Flower's layout is not the one we know (the SuperLink then answers at once)."""
    try:
        fleet = importlib.import_module("flwr.superlink.servicer.fleet.fleet_handlers")
        runtime = importlib.import_module("flwr.superlink.servicer.runtime.runtime_handlers")
    except ImportError:
        return False
    names = ("pull_messages", "push_messages", "pull_object", "push_object")
    if any(getattr(m, n, None) is None for m in (fleet, runtime) for n in names):
        log.warning("Flower's SuperLink handlers are not the ones we know; no long polls")
        return False
    if getattr(fleet.pull_messages, "_fedcredit_fast", False):
        return True
    changes = _Changes()

    def no_messages(res: Any) -> bool:
        return not res.messages_list

    def not_yet_pushed(res: Any) -> bool:
        # A message's objects are pushed after the message itself: one asked for
        # between the two is known but still empty.
        return bool(res.object_found and not res.object_available)

    for mod in (fleet, runtime):
        # A SuperNode asks for its next instruction, the ServerApp for the replies,
        # and each then for the message's objects ...
        setattr(mod, "pull_messages", _held(mod.pull_messages, changes, hold, no_messages))  # noqa: B010
        setattr(mod, "pull_object", _held(mod.pull_object, changes, hold, not_yet_pushed))  # noqa: B010
        # ... stored by a SuperNode (replies) or the ServerApp (instructions).
        setattr(mod, "push_messages", _notifying(mod.push_messages, changes))  # noqa: B010
        setattr(mod, "push_object", _notifying(mod.push_object, changes))  # noqa: B010
    return True


class _Skip:
    """An ASGI middleware that runs ``inner`` (one of Flower's ``BaseHTTPMiddleware``
    layers) only for the requests it can act on, and passes the others straight on."""

    def __init__(
        self, app: Any, *args: Any, inner: Any, acts_on: Callable[[Any], bool], **kwargs: Any
    ) -> None:
        self.app = app
        self.inner = inner(app, *args, **kwargs)
        self.acts_on = acts_on

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("root_path") and not self.acts_on(scope):
            await self.app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def install_lean_middleware() -> bool:
    """In the SuperLink process: Flower's middleware layers that only act on Control
    API requests (authentication, licence, event log, no-cache headers) skip the
    Fleet and Runtime requests of training, as does the SuperNode authentication on
    non-Fleet requests and the Fleet event log when there is no event-log plugin.

    Each of these layers is a Starlette ``BaseHTTPMiddleware`` whose ``dispatch``
    checks the path (or the plugin) and calls on; the layer itself — task groups and
    streams around every request — was most of the SuperLink's CPU (py-spy: ~70 %
    in FastAPI/Starlette/anyio, ~3 % in Flower's handlers). A skipped layer is one
    that would have done nothing for that request; SuperNode authentication, the
    protobuf translation and the error translation still run on every request they
    act on. False (nothing changed) if Flower's layout is not the one we know."""
    try:
        main = importlib.import_module("flwr.superlink.main")
        control = importlib.import_module("flwr.superlink.routers.control.middlewares")
        fleet_mw = importlib.import_module("flwr.superlink.routers.fleet.middlewares")
        node_auth = importlib.import_module("flwr.superlink.routers.fleet.node_auth")
    except ImportError:
        return False
    original = getattr(main, "_get_middleware", None)
    if original is None or getattr(original, "_fedcredit_fast", False):
        return original is not None
    sensitive = getattr(control, "CONTROL_SENSITIVE_ROUTE_KEYS", None)
    if sensitive is None or any(not p.startswith("/v1/control/") for _m, p in sensitive):
        log.warning("Flower's Control routes are not the ones we know; full middleware")
        return False

    def control_path(scope: Any) -> bool:
        return str(scope.get("path", "")).startswith("/v1/control/")

    def fleet_path(scope: Any) -> bool:
        return str(scope.get("path", "")).startswith("/v1/fleet/")

    def fleet_logged(scope: Any) -> bool:
        state = getattr(scope.get("app"), "state", None)
        plugin = getattr(state, "fleet_event_log_plugin", "unknown")
        return fleet_path(scope) and plugin is not None

    acts_on: dict[Any, Callable[[Any], bool]] = {
        getattr(control, "ControlSensitiveResponseMiddleware", None): control_path,
        getattr(control, "ControlEventLogMiddleware", None): control_path,
        getattr(control, "ControlLicenseMiddleware", None): control_path,
        getattr(control, "ControlAuthenticationMiddleware", None): control_path,
        getattr(fleet_mw, "FleetEventLogMiddleware", None): fleet_logged,
        getattr(node_auth, "NodeAuthMiddleware", None): fleet_path,
    }
    acts_on.pop(None, None)
    if len(acts_on) != 6:
        log.warning("Flower's SuperLink middleware is not the one we know; full middleware")
        return False
    from starlette.middleware import Middleware

    @wraps(original)
    def lean() -> list[Any]:
        out = []
        for m in original():
            if m.cls in acts_on:
                m = Middleware(_Skip, *m.args, inner=m.cls, acts_on=acts_on[m.cls], **m.kwargs)  # type: ignore[arg-type]
            out.append(m)
        return out

    lean._fedcredit_fast = True  # type: ignore[attr-defined]
    setattr(main, "_get_middleware", lean)  # noqa: B010
    return True


def superlink_main() -> None:
    """``python -m fedcredit.training.flower.fastpull ARGS``: ``flower-superlink ARGS`` with
    long polls and lean middleware."""
    from flwr.superlink.cli.flower_superlink import flower_superlink

    install_long_poll()
    install_lean_middleware()
    sys.argv = ["flower-superlink", *sys.argv[1:]]
    flower_superlink()


if __name__ == "__main__":
    superlink_main()
