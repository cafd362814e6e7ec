"""Group commit for the web front: requests that arrive while a transaction is under way share the next one;
and `Signal`, the wake-up between threads, processes' relays and the deliverer's event loop.

A `Batcher` runs a blocking function over a list of items in a thread of the event loop's executor, one
batch at a time per event loop. An item that arrives when no batch is under way starts one at once (nothing
waits for a timer); items that arrive meanwhile wait, and all of them go into the next batch. Under load
this turns N transactions (N turns of SQLite's one write lock, N fsyncs, N hops to a thread) into one, and
each caller still gets its own item's outcome only once that batch committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The outcome of each item, in order: its result, or the exception its caller gets.
Run = Callable[[list[T]], Sequence[R | Exception]]


class _Queue(Generic[T, R]):
    def __init__(self) -> None:
        self.waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.task: asyncio.Task[None] | None = None


class Batcher(Generic[T, R]):
    """`await batcher.submit(item)`: `run` sees the item with the others that waited beside it."""

    def __init__(self, run: Run[T, R], *, name: str, max_batch: int = 200) -> None:
        self.run = run
        self.name = name
        self.max_batch = max_batch
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[T, R]] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[R] = loop.create_future()
        queue.waiting.append((item, future))
        if queue.task is None:
            queue.task = asyncio.create_task(self._drain(queue), name=self.name)
        return await future

    async def _drain(self, queue: _Queue[T, R]) -> None:
        try:
            while queue.waiting:
                batch, queue.waiting = queue.waiting[: self.max_batch], queue.waiting[self.max_batch :]
                try:
                    outcomes = list(await asyncio.to_thread(self.run, [item for item, _ in batch]))
                except Exception as error:
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its caller went away; what it asked for was done all the same
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            queue.task = None


class Signal(threading.Event):
    """A `threading.Event` that event loops can await too: `set()` from any thread also sets the asyncio events
    subscribed to it (`subscribe`), at once, so that the deliverer wakes when replies were queued instead of at
    its next tick."""

    def __init__(self) -> None:
        super().__init__()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def subscribe(self, event: asyncio.Event) -> None:
        """Set `event` (in the running loop) whenever this signal is set."""
        self._subscribers.append((asyncio.get_running_loop(), event))

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._subscribers = [(loop, e) for loop, e in self._subscribers if e is not event]

    def set(self) -> None:
        super().set()
        for loop, event in list(self._subscribers):
            with contextlib.suppress(RuntimeError):  # that loop is closed: nothing waits there any more
                loop.call_soon_threadsafe(event.set)
