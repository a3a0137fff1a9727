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


# The longest a batch that is not full waits for the sentences the previous round had, as a
# share of the previous model call's duration (see `Batcher`).
PATIENCE = 0.1


class Batcher:
    """Collects sentences from concurrent requests into one model call.

    The model runs one batch at a time, in a worker thread, and the next batch forms while it
    runs: sentences arriving meanwhile queue up. When the model is free, a batch starts with
    whatever is queued, up to `max_batch_size` sentences: TF Serving's advice for CPUs (a
    batch timeout near 0), so a lone request waits for no one.

    Under load that alone settles into halves: with 32 clients, the 16 answered by one call
    come back while the other 16 run, so every call gets 16. So a batch smaller than the
    previous round's demand (the previous batch plus what queued during it) waits for more,
    for at most `PATIENCE` (10%) of the previous call's duration: the clients just answered
    return within that and the batches grow to the demand. At one client the demand is one
    sentence and nothing waits. With `max_wait_s` > 0 a batch that is not full also waits
    until its oldest sentence has waited that long (a fixed timeout, TF Serving's
    `batch_timeout_micros`).

    Per batch, not per request: the model's outputs become Python lists once (`tolist`), and
    each request gets its rows of them.
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
        self._demand = 1  # sentences of the previous round: its batch plus what queued meanwhile
        self._last_call_s = 0.0
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
            formed = loop.time()
            while len(self._items) < self.max_batch_size:
                fixed = self._items[0].enqueued + self.max_wait_s
                adaptive = formed + PATIENCE * self._last_call_s
                if len(self._items) < self._demand:
                    deadline = max(fixed, adaptive)
                else:
                    deadline = fixed
                remaining = deadline - loop.time()
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
            started = loop.time()
            try:
                outputs = await asyncio.to_thread(self._run, [item.value for item in batch])
            except Exception as exc:  # a server fault: every waiting request gets a 500
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self._last_call_s = loop.time() - started
            self._demand = min(len(batch) + len(self._items), self.max_batch_size)
            self.stats.batches += 1
            self.stats.sentences += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            columns = {k: _rows(v) for k, v in outputs.items()}
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result({k: v[row] for k, v in columns.items()})


def _rows(value: Any) -> Any:
    """A batch output as a list of Python rows (one `tolist` per batch); other values as is."""
    return value.tolist() if isinstance(value, np.ndarray) and value.ndim else value
