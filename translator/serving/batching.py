"""Dynamic batching: sentences of concurrent requests gathered into one model call."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _Item:
    value: str
    future: asyncio.Future
    enqueued: float


@dataclass
class BatchStats:
    """What a batcher did (exposed on /health, used by tests and benchmarks)."""

    batches: int = 0
    sentences: int = 0
    largest: int = 0


class Batcher:
    """Collects sentences from concurrent requests into one model call.

    A batch is sent when it holds `max_batch_size` sentences or when its oldest sentence has
    waited `max_wait_s`; while the model runs (in a worker thread) new sentences queue up and
    form the next batch. One batch per signature is in flight at a time.
    """

    def __init__(
        self,
        run: Callable[[list[str]], dict[str, np.ndarray]],
        max_batch_size: int,
        max_wait_s: float,
    ):
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._items: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        """Sentences waiting for a model call (not counting the batch being run)."""
        return len(self._items)

    async def submit(self, values: list[str]) -> list[dict[str, Any]]:
        """The output rows for `values`, in order."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(v, loop.create_future(), now) for v in values]
        self._items.extend(items)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._items:
            while len(self._items) < self.max_batch_size:
                remaining = self._items[0].enqueued + self.max_wait_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch: list[_Item] = []
            while self._items and len(batch) < self.max_batch_size:
                item = self._items.popleft()
                if not item.future.done():  # skip sentences of cancelled requests
                    batch.append(item)
            if not batch:
                continue
            try:
                outputs = await asyncio.to_thread(self._run, [item.value for item in batch])
            except Exception as exc:  # a server fault: every waiting request gets a 500
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.sentences += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result({k: v[row] for k, v in outputs.items()})
