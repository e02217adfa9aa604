"""The caller's deadline, carried to every dependency call a request makes.

A servicer sets :data:`CALL_DEADLINE` (``time.monotonic()`` seconds) from the gRPC
deadline of the bank's call; asyncio tasks inherit it, so each node, consent-service and
ledger call made for that request is given no more than what the bank still waits for
(:func:`bounded`). Without a deadline set, each call keeps its own.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

CALL_DEADLINE: ContextVar[float | None] = ContextVar("fedcredit_call_deadline", default=None)

# Kept back from the caller's deadline to answer it (the refusal has to travel back too).
ANSWER_MARGIN_S = 0.1
# Never less than this for a call: a refusal names the dependency rather than the clock.
MIN_CALL_S = 0.05


def bounded(own_s: float) -> float:
    """``own_s``, or less when the caller's deadline comes sooner."""
    end = CALL_DEADLINE.get()
    if end is None:
        return own_s
    return max(MIN_CALL_S, min(own_s, end - time.monotonic() - ANSWER_MARGIN_S))


def set_from_remaining(remaining_s: float | None) -> None:
    """Set the deadline of the current request from gRPC's ``context.time_remaining()``."""
    if remaining_s is not None:
        CALL_DEADLINE.set(time.monotonic() + remaining_s)
