"""The fan-out without a task per node (coordinator.scoring._collect): every call is
started first and the answers awaited in turn. Each node keeps its own outcome; a call
that outlives its node's deadline is cancelled and named; the caller's cancellation is
never mistaken for a late node."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.coordinator.errors import NodeUnavailable
from fedcredit.coordinator.fanout import NodeAnswer
from fedcredit.coordinator.scoring import _Ask, _collect, _Started


@dataclass
class FakeNode:
    org_id: str
    category: str
    max_batch: int = 1000


@dataclass
class FakeCall:
    """A call that answers ``answers`` after ``delay_s`` (None: never), or raises ``error``."""

    answers_: list[NodeAnswer] = field(default_factory=list)
    delay_s: float | None = 0.0
    error: Exception | None = None
    cancelled: bool = False
    _gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def answers(self) -> list[NodeAnswer]:
        if self.delay_s is None:
            await self._gate.wait()  # until cancelled
        else:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.answers_

    def cancel(self) -> None:
        self.cancelled = True


def _plan(n: int) -> list[_Ask]:
    return [_Ask(f"cat{k}", FakeNode(f"node-{k}", f"cat{k}"), [0]) for k in range(n)]  # type: ignore[arg-type]


def _run(started: list[_Started], plan: list[_Ask], deadline_s: float) -> list[Any]:
    results: list[Any] = [[None] for _ in plan]
    asyncio.run(_collect(plan, started, [deadline_s] * len(plan), results))
    return results


def test_each_node_keeps_its_own_outcome() -> None:
    plan = _plan(3)
    ok = NodeAnswer({"x": 1.0})
    down = NodeUnavailable("node node-1 (cat1) is unavailable", node="node-1")
    calls = [FakeCall([ok], 0.02), FakeCall(error=down), FakeCall([ok], 0.0)]
    res = _run([_Started(k, [0], c) for k, c in enumerate(calls)], plan, 2.0)
    assert res[0] == [ok] and res[2] == [ok]
    assert res[1] is down
    assert not any(c.cancelled for c in calls)


def test_a_call_outliving_its_deadline_is_cancelled_and_named() -> None:
    plan = _plan(2)
    ok = NodeAnswer({"x": 1.0})
    stuck = FakeCall(delay_s=None)

    async def run() -> list[Any]:
        results: list[Any] = [[None], [None]]
        started = [_Started(0, [0], FakeCall([ok])), _Started(1, [0], stuck)]

        async def release_when_cancelled() -> None:
            while not stuck.cancelled:
                await asyncio.sleep(0.01)
            stuck.error = asyncio.CancelledError()  # what awaiting a cancelled call raises
            stuck._gate.set()

        helper = asyncio.create_task(release_when_cancelled())
        await _collect(plan, started, [0.05, 0.05], results)
        await helper
        return results

    res = asyncio.run(run())
    assert res[0] == [ok]
    err = res[1]
    assert isinstance(err, NodeUnavailable)
    assert "node-1 (cat1) did not answer within 0.1 s" in err.message
    assert err.metadata["node"] == "node-1"


def test_the_callers_cancellation_is_not_taken_for_a_late_node() -> None:
    plan = _plan(1)
    stuck = FakeCall(delay_s=None)

    async def run() -> None:
        results: list[Any] = [[None]]
        task = asyncio.create_task(_collect(plan, [_Started(0, [0], stuck)], [30.0], results))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert results == [[None]]  # nothing was decided for the node

    asyncio.run(run())


def test_chunks_fill_their_own_items_and_a_failed_chunk_refuses_the_node() -> None:
    plan = [_Ask("cat0", FakeNode("node-0", "cat0"), [0, 1, 2])]  # type: ignore[arg-type]
    a, b, c = (NodeAnswer({"x": float(k)}) for k in range(3))
    results: list[Any] = [[None, None, None]]
    started = [_Started(0, [0, 2], FakeCall([a, c])), _Started(0, [1], FakeCall([b]))]
    asyncio.run(_collect(plan, started, [1.0], results))
    assert results == [[a, b, c]]

    bad = NodeUnavailable("node node-0 (cat0) is unavailable", node="node-0")
    results = [[None, None, None]]
    started = [_Started(0, [0, 2], FakeCall([a, c])), _Started(0, [1], FakeCall(error=bad))]
    asyncio.run(_collect(plan, started, [1.0], results))
    assert results == [bad]
    assert isinstance(results[0], FedcreditError)
