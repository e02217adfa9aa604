"""ScoreBatch's chunk pipeline (coordinator.service.in_order): answers in order, a slow chunk
does not hold later ones back, and what waits behind it is bounded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from fedcredit.coordinator.service import in_order


async def _chunks(n: int, size: int = 3) -> AsyncIterator[list[int]]:
    for k in range(n):
        yield list(range(k * size, (k + 1) * size))


def test_answers_keep_the_order_of_the_input() -> None:
    rng = random.Random(7)

    async def run(chunk: list[int]) -> list[int]:
        await asyncio.sleep(rng.random() / 200)
        return [x * 10 for x in chunk]

    async def main() -> list[int]:
        return [x async for x in in_order(_chunks(40), run, 4)]

    assert asyncio.run(main()) == [x * 10 for x in range(120)]


def test_a_slow_chunk_does_not_hold_the_next_ones_back_but_bounds_them() -> None:
    """Chunk 0 waits on ``release``. With 2 in flight, chunks 1-3 run and finish meanwhile
    (the old pipeline counted finished chunks as in flight: chunk 2 waited for chunk 0);
    at most 2 x 2 chunks are held, so chunk 4 waits until chunk 0 is answered."""

    async def main() -> tuple[set[int], set[int], list[int]]:
        release = asyncio.Event()
        started: set[int] = set()

        async def run(chunk: list[int]) -> list[int]:
            k = chunk[0] // 3
            started.add(k)
            if k == 0:
                await release.wait()
            return chunk

        out: list[int] = []

        async def consume() -> None:
            async for x in in_order(_chunks(8), run, 2):
                out.append(x)

        task = asyncio.create_task(consume())
        for _ in range(200):
            await asyncio.sleep(0.005)
            if {1, 2, 3} <= started:
                break
        seen = set(started)
        await asyncio.sleep(0.05)  # chunk 4 must still not start: 4 chunks are held
        seen_later = set(started)
        assert out == []  # nothing answered before chunk 0
        release.set()
        await asyncio.wait_for(task, 5)
        return seen, seen_later, out

    seen, seen_later, out = asyncio.run(main())
    assert seen == {0, 1, 2, 3}  # chunks 2 and 3 ran while chunk 0 was still running
    assert seen_later == {0, 1, 2, 3}  # and no more than that were held
    assert out == list(range(24))


def test_a_failing_chunk_fails_the_stream_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def run(chunk: list[int]) -> list[int]:
        k = chunk[0] // 3
        if k == 0:
            await asyncio.sleep(0.05)  # chunks 1 and 2 are running by then
            raise RuntimeError("chunk 0 failed")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(k)
            raise
        return chunk

    async def main() -> list[int]:
        out: list[int] = []
        with pytest.raises(RuntimeError, match="chunk 0 failed"):
            async for x in in_order(_chunks(6), run, 3):
                out.append(x)
        await asyncio.sleep(0)  # the cancellations are delivered
        return out

    assert asyncio.run(main()) == []
    assert sorted(cancelled) == [1, 2]  # the chunks still running were cancelled
