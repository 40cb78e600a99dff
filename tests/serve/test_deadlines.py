"""The request timeout's bookkeeping (deploy.batching.Deadlines), on an event
loop without a server: one timer for every request in flight, yet each request
is cancelled at its own deadline, and only a cancellation by its deadline
reads as a timeout. tests/serve/test_limits.py checks the 504 on a real server."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

import pytest

from deploy.batching import Deadlines

LIMIT_S = 0.2


async def _within(deadlines: Deadlines, work: Coroutine[Any, Any, None]) -> str:
    """What deploy.app does around a handler: 'answered' or 'timeout' (another
    cancellation propagates)."""
    deadline = deadlines.start()
    try:
        await work
    except BaseException as exc:
        if deadlines.finish(deadline) and isinstance(exc, asyncio.CancelledError):
            return "timeout"
        raise
    deadlines.finish(deadline)
    return "answered"


async def _request(deadlines: Deadlines, work_s: float) -> str:
    return await _within(deadlines, asyncio.sleep(work_s))


def test_a_request_past_its_deadline_times_out_and_the_others_are_answered():
    async def main():
        deadlines = Deadlines(LIMIT_S)
        quick = [asyncio.create_task(_request(deadlines, 0.0)) for _ in range(20)]
        slow = asyncio.create_task(_request(deadlines, 30.0))
        results = await asyncio.gather(*quick, slow)
        after = await _request(deadlines, 0.0)  # the bookkeeping is not stuck behind the timed-out request
        return results, after, len(deadlines._queue), slow.cancelling()

    results, after, queued, cancelling = asyncio.run(main())
    assert results == ["answered"] * 20 + ["timeout"]
    assert after == "answered" and queued == 0
    assert cancelling == 0  # the deadline's cancellation is withdrawn, as asyncio.timeout does


def test_a_request_is_cancelled_at_its_own_deadline_not_at_the_first_one():
    """The one timer was set for a request that has ended; a request started
    later must get its whole time limit, and then be cancelled."""

    async def main():
        deadlines = Deadlines(LIMIT_S)
        loop = asyncio.get_running_loop()
        await _request(deadlines, 0.0)  # sets the timer for its deadline, then ends
        await asyncio.sleep(LIMIT_S / 2)
        started = loop.time()
        outcome = await _request(deadlines, 30.0)
        return outcome, loop.time() - started

    outcome, elapsed = asyncio.run(main())
    assert outcome == "timeout"
    assert elapsed >= LIMIT_S - Deadlines.TOLERANCE_S - 0.005  # not cut short at the first request's deadline


def test_requests_started_in_a_stream_each_time_out_after_the_limit():
    async def main():
        deadlines = Deadlines(LIMIT_S)
        loop = asyncio.get_running_loop()

        async def timed() -> tuple[str, float]:
            started = loop.time()
            outcome = await _request(deadlines, 30.0)
            return outcome, loop.time() - started

        tasks = []
        for _ in range(5):
            tasks.append(asyncio.create_task(timed()))
            await asyncio.sleep(LIMIT_S / 4)
        return await asyncio.gather(*tasks)

    for outcome, elapsed in asyncio.run(main()):
        assert outcome == "timeout"
        assert elapsed >= LIMIT_S - Deadlines.TOLERANCE_S - 0.005


def test_another_cancellation_is_not_a_timeout():
    async def main():
        deadlines = Deadlines(30.0)
        task = asyncio.create_task(_request(deadlines, 30.0))
        await asyncio.sleep(0.01)
        task.cancel()  # a shutdown, say: the request is cancelled, not answered 504
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(deadlines._queue)

    assert asyncio.run(main()) == 0


def test_a_cancellation_on_top_of_the_deadline_still_cancels():
    async def main():
        deadlines = Deadlines(LIMIT_S)
        deadline_hit = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.sleep(30.0)
            except asyncio.CancelledError:
                deadline_hit.set()
                await asyncio.sleep(30.0)  # cleaning up, and cancelled again from outside

        task = asyncio.create_task(_within(deadlines, work()))
        await deadline_hit.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
