"""Admission control, request deadlines and micro-batching, all on the event loop.

`Admission` bounds the requests being worked on (`max_concurrency`) and those
waiting for a slot (`max_queue`); past both, a request is refused at once, so
overload answers 503 instead of piling up.

`Deadlines` cancels a request that is still being worked on when its time
(`request_timeout`) is up, with one timer for all requests in flight.

`Batcher` gathers the rows of concurrent requests into one onnxruntime run on
a dedicated thread. While a run is under way, new requests queue up and form
the next batch, so batches grow with load. A batch that has fewer requests than
the recent batches had waits at most `max_wait` for the others to arrive; a
lone client (recent batches of one request) never waits. Requests for
different models (a reload happened in between) never share a batch: a table
model's rows are encoded by its own encoder, and another version's may be wider.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable

import numpy as np

log = logging.getLogger("deploy.batching")


class Overloaded(Exception):
    """Every slot and every queue place is taken."""


class Admission:
    def __init__(self, max_active: int, max_waiting: int):
        self.max_active, self.max_waiting = max_active, max_waiting
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        """Every slot taken and the queue full: `acquire` would refuse."""
        return self.active >= self.max_active and len(self._waiters) >= self.max_waiting

    async def acquire(self) -> None:
        if self.active < self.max_active and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise Overloaded
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over by resolving this
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; `active` is unchanged
                return
        self.active -= 1


class Deadline:
    """One request's: when its time is up, and its task until it is done."""

    __slots__ = ("when", "task", "expired")

    def __init__(self, when: float, task: asyncio.Task | None):
        self.when, self.task, self.expired = when, task, False


class Deadlines:
    """The request timeout, with one timer for every request in flight instead
    of one each: asyncio.timeout's timer and bookkeeping cost the event loop
    about a twentieth of a small model's request (measured in instructions).

    Every request gets the same time limit, so deadlines come in the order
    requests start: the requests in flight are a queue by deadline. One timer
    is set for the oldest; when it fires it cancels every request past its
    deadline (marking it `expired` first, so that the request can tell its
    timeout from any other cancellation) and is set again for the oldest left.
    A request that ends leaves the queue as soon as the older ones have."""

    TOLERANCE_S = 0.001  # uvloop's clock and timers count whole milliseconds

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self._queue: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> Deadline:
        """The deadline of the request running in the current task."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline is for a request's task")
        loop = task.get_loop()
        deadline = Deadline(loop.time() + self.limit_s, task)
        self._queue.append(deadline)
        if self._timer is None:
            self._timer = loop.call_at(deadline.when, self._expire, loop)
        return deadline

    def finish(self, deadline: Deadline) -> bool:
        """The request has ended, however it did. True if its deadline cancelled
        it and nothing else did: it timed out. Either way a cancellation by the
        deadline is withdrawn (Task.uncancel), as asyncio.timeout does."""
        task, deadline.task = deadline.task, None
        queue = self._queue
        while queue and queue[0].task is None:
            queue.popleft()
        return deadline.expired and task is not None and task.uncancel() == 0

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        queue, due = self._queue, loop.time() + self.TOLERANCE_S
        while queue and (queue[0].task is None or queue[0].when <= due):
            deadline = queue.popleft()
            if deadline.task is not None:
                deadline.expired = True
                deadline.task.cancel()
        if queue:
            self._timer = loop.call_at(queue[0].when, self._expire, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class _Item:
    model: Any  # deploy.model.LoadedModel
    x: np.ndarray
    future: asyncio.Future


class Batcher:
    RECENT = 8  # batches whose request counts set how many requests a batch waits for

    def __init__(self, max_batch: int, max_wait_s: float, observe: Callable[[int, float], None]):
        """`observe(rows, seconds)` is called after each run (metrics)."""
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._observe = observe
        self._recent: deque[int] = deque([1], maxlen=self.RECENT)
        self._items: deque[_Item] = deque()
        self._wakeup: asyncio.Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._task: asyncio.Task | None = None
        self._closing = False
        self.running_rows = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: readiness turns 503 (alive is False)
            log.error("the batcher stopped", exc_info=task.exception())

    async def close(self) -> None:
        """Finish every queued request, then stop."""
        self._closing = True
        self._wake()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return len(self._items)

    async def submit(self, model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of `model` for the rows of `x`."""
        if not self.alive:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(model, x, future))
        self._wake()
        return await future

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        handle = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await self._wakeup
        finally:
            if handle is not None:
                handle.cancel()
            self._wakeup = None

    def _take(self) -> list[_Item]:
        """Queued items for the model of the first live one, up to max_batch rows."""
        items = self._items
        while items and items[0].future.done():  # cancelled by its request's timeout
            items.popleft()
        if not items:
            return []
        model, rows, batch, skipped = items[0].model, 0, [], []
        while items and (rows == 0 or rows + len(items[0].x) <= self.max_batch):
            item = items.popleft()
            if item.future.done():
                continue
            if item.model is not model:  # queued before or after a reload: its rows are for its own model's input
                skipped.append(item)
                continue
            batch.append(item)
            rows += len(item.x)
        items.extendleft(reversed(skipped))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                if self._closing:
                    return
                await self._sleep(None)
                continue
            if self.max_wait_s > 0 and not self._closing:
                await self._gather_more(loop)
            batch = self._take()
            if not batch:
                continue
            await self._run_batch(loop, batch)

    async def _gather_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to max_wait until as many requests are queued as recent batches
        had (the concurrency clients have been showing), or max_batch rows."""
        deadline = loop.time() + self.max_wait_s
        expected = max(self._recent)
        while True:
            if len(self._items) >= expected or sum(len(i.x) for i in self._items) >= self.max_batch:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._sleep(remaining)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        self._recent.append(len(batch))
        model = batch[0].model
        x = batch[0].x if len(batch) == 1 else np.concatenate([i.x for i in batch])
        self.running_rows = len(x)
        start = perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, model.run, x)
        except Exception as err:  # a model that fails on valid input: every request of the batch gets it
            log.exception(
                "onnxruntime failed on a batch of %d rows (model %s version %s)", len(x), model.name, model.version
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        finally:
            self.running_rows = 0
        self._observe(len(x), perf_counter() - start)
        offset = 0
        for item in batch:
            n = len(item.x)
            if not item.future.done():
                item.future.set_result({k: v[offset : offset + n] for k, v in outputs.items()})
            offset += n
