"""The dynamic batcher: batches form while the model runs, a lone request waits for no one."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from translator.serving import Batcher, ServeSettings, batching


class SlowModel:
    """Echoes its batch (upper-cased, with each sentence's length), taking `seconds` per call;
    records the batches it was given."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.batches: list[list[str]] = []
        self.running = threading.Event()

    def __call__(self, values: list[str]) -> dict[str, np.ndarray]:
        self.running.set()
        self.batches.append(list(values))
        time.sleep(self.seconds)
        self.running.clear()
        return {
            "text": np.array([v.upper().encode() for v in values]),
            "length": np.array([len(v) for v in values], np.int32),
        }


def test_default_wait_is_zero():
    assert ServeSettings().max_wait_ms == 0


def test_next_batch_forms_while_the_model_runs_and_each_client_gets_its_rows():
    model = SlowModel(0.3)
    batcher = Batcher(model, max_batch_size=32, max_wait_s=0.0)

    async def scenario():
        first = asyncio.create_task(batcher.submit(["lone"]))
        while not model.running.is_set():  # the lone sentence started without waiting
            await asyncio.sleep(0.005)
        started = time.perf_counter()
        # 12 clients arrive while the model runs: they queue and go together next
        others = [asyncio.create_task(batcher.submit([f"s{i}", f"t{i}x"])) for i in range(12)]
        results = await asyncio.gather(first, *others)
        return results, time.perf_counter() - started

    results, seconds = asyncio.run(scenario())
    assert model.batches[0] == ["lone"]
    assert len(model.batches) == 2 and len(model.batches[1]) == 24  # all queued, one call
    assert seconds < 0.3 * 2 + 0.5  # the second batch started as soon as the first ended
    assert results[0] == [{"text": b"LONE", "length": 4}]
    for i, rows in enumerate(results[1:]):
        assert rows == [
            {"text": f"S{i}".encode(), "length": len(f"s{i}")},
            {"text": f"T{i}X".encode(), "length": len(f"t{i}x")},
        ]
        assert all(type(row["length"]) is int for row in rows)  # converted once per batch
    assert batcher.stats.batches == 2 and batcher.stats.largest == 24


def test_max_batch_size_splits_the_queue():
    model = SlowModel(0.05)
    batcher = Batcher(model, max_batch_size=5, max_wait_s=0.0)

    async def scenario():
        return await asyncio.gather(*(batcher.submit([str(i)]) for i in range(12)))

    results = asyncio.run(scenario())
    assert [r[0]["text"] for r in results] == [str(i).encode() for i in range(12)]
    assert max(len(b) for b in model.batches) <= 5
    assert sorted(v for b in model.batches for v in b) == sorted(str(i) for i in range(12))


def test_a_wait_gathers_a_burst_into_one_batch():
    model = SlowModel(0.01)
    batcher = Batcher(model, max_batch_size=32, max_wait_s=0.2)

    async def scenario():
        tasks = []
        for i in range(6):  # arriving 10 ms apart, within the 200 ms wait
            tasks.append(asyncio.create_task(batcher.submit([str(i)])))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert model.batches == [[str(i) for i in range(6)]]


def test_batches_grow_to_the_demand_instead_of_alternating_halves(monkeypatch):
    monkeypatch.setattr(batching, "PATIENCE", 2.0)  # returning clients make it on a busy machine
    model = SlowModel(0.1)
    batcher = Batcher(model, max_batch_size=32, max_wait_s=0.0)

    async def client(name: str, rounds: int) -> None:
        for r in range(rounds):
            (row,) = await batcher.submit([f"{name}-{r}"])
            assert row["text"] == f"{name}-{r}".upper().encode()

    async def scenario():
        first = [asyncio.create_task(client(f"a{i}", 6)) for i in range(4)]
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        second = [asyncio.create_task(client(f"b{i}", 5)) for i in range(4)]
        await asyncio.gather(*first, *second)

    asyncio.run(scenario())
    sizes = [len(b) for b in model.batches]
    # 4 alone, then (a round later on a starved event loop) the queued 4 wait the few ms the
    # other 4 need to come back: 8 per call from then on; without the wait, 4 per call
    assert sizes[0] == 4 and sizes.count(8) >= 4, sizes
    assert sum(sizes) == 44


def test_one_client_waits_for_no_one(monkeypatch):
    monkeypatch.setattr(batching, "PATIENCE", 10.0)  # a wait would take a whole second
    model = SlowModel(0.1)
    batcher = Batcher(model, max_batch_size=32, max_wait_s=0.0)

    async def scenario():
        latencies = []
        for i in range(5):
            start = time.perf_counter()
            await batcher.submit([str(i)])
            latencies.append(time.perf_counter() - start)
        return latencies

    latencies = asyncio.run(scenario())
    assert len(model.batches) == 5
    assert max(latencies) < 0.1 + 0.6, latencies  # the call itself, no batching wait
