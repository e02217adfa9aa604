"""How the scorer counts uses: reserve before anything is disclosed, then commit or release.

:class:`AsyncUses` is the scorer's view of the consent service's use counter, awaited on
the event loop: the coordinator's daemon gives it
:class:`~fedcredit.consent.remote.AsyncRemoteUseCounter` (grpc.aio: no thread between the
loop and the call), and :class:`ThreadedUses` adapts any blocking
:class:`~fedcredit.consent.verify.UseCounter` (an in-process one, a verifier's own) by
running its calls in a thread pool.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

from fedcredit.common.errors import FedcreditError
from fedcredit.consent.useref import Reservation, UseRef
from fedcredit.consent.verify import UseCounter


class AsyncUses(Protocol):
    """A use counter the scorer awaits (see :class:`~fedcredit.consent.verify.UseCounter`)."""

    async def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """Reserve (or join) use ``use_id`` of each token: per token its reservation or
        the error that refused it; raise when the counter cannot answer at all."""
        ...

    async def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        """Commit or release the uses this counter's owner opened under ``use_id``."""
        ...


class ThreadedUses:
    """:class:`AsyncUses` over a blocking counter, each call in ``pool``."""

    def __init__(self, counter: UseCounter, pool: Executor) -> None:
        self.counter = counter
        self.pool = pool

    async def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        call = functools.partial(self.counter.reserve, use_id, refs, pin=pin)
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        call = functools.partial(self.counter.settle, use_id, refs, commit=commit)
        await asyncio.get_running_loop().run_in_executor(self.pool, call)
