"""Dynamic batching: rows go back to their request, failures stay with their batch, the queue is bounded."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from cifarkit.serve.batching import DynamicBatcher, QueueFull


def images(value: int, n: int) -> np.ndarray:
    return np.full((n, 32, 32, 3), value, dtype=np.uint8)


def first_pixel(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: one 'probability' row per image, holding the image's first pixel value."""
    return batch[:, :1, 0, 0].astype(np.float32)


def test_concurrent_requests_share_a_pass_and_get_their_own_rows():
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return first_pixel(batch)

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=64, max_wait=0.05)
        async with batcher.running():
            return await asyncio.gather(*(batcher.submit(images(v, n)) for v, n in [(1, 2), (2, 1), (3, 3)]))

    results = asyncio.run(scenario())
    assert [r.ravel().tolist() for r in results] == [[1, 1], [2], [3, 3, 3]]
    assert sizes == [6]


def test_batches_stop_at_max_batch():
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return first_pixel(batch)

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch=4, max_wait=0.05)
        async with batcher.running():
            await asyncio.gather(*(batcher.submit(images(v, 2)) for v in range(5)))

    asyncio.run(scenario())
    assert sizes == [4, 4, 2]


def test_an_idle_worker_waits_for_requests_on_their_way_and_only_for_them():
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return first_pixel(batch)

    async def scenario():
        batcher = DynamicBatcher(predict, max_wait=60)  # only an arrival (or its absence) can end the wait
        async with batcher.running():
            await asyncio.wait_for(batcher.submit(images(1, 1)), 10)  # alone: no wait
            with batcher.arriving():
                first = asyncio.create_task(batcher.submit(images(2, 1)))
                await asyncio.sleep(0.05)  # the worker holds the first request, waiting for this one
            second = await asyncio.wait_for(batcher.submit(images(3, 1)), 10)
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.ravel().tolist() == [2] and second.ravel().tolist() == [3]
    assert sizes == [1, 2]


def test_a_failed_pass_fails_its_requests_and_the_next_one_still_runs():
    def predict(batch):
        if (batch == 9).any():
            raise ValueError("model broke")
        return first_pixel(batch)

    async def scenario():
        batcher = DynamicBatcher(predict, max_wait=0)
        async with batcher.running():
            with pytest.raises(ValueError, match="model broke"):
                await batcher.submit(images(9, 1))
            return await batcher.submit(images(4, 1))

    assert asyncio.run(scenario()).ravel().tolist() == [4]


def test_queue_is_bounded():
    entered, release = threading.Event(), threading.Event()

    def predict(batch):
        entered.set()
        release.wait(timeout=30)
        return first_pixel(batch)

    async def scenario():
        batcher = DynamicBatcher(predict, max_queue=3, max_wait=0)
        async with batcher.running():
            busy = asyncio.create_task(batcher.submit(images(1, 1)))
            await asyncio.to_thread(entered.wait, 30)
            waiting = asyncio.create_task(batcher.submit(images(2, 3)))
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="3 images are waiting"):
                await batcher.submit(images(3, 1))
            release.set()
            return await busy, await waiting

    busy, waiting = asyncio.run(scenario())
    assert busy.ravel().tolist() == [1] and waiting.ravel().tolist() == [2, 2, 2]


def test_submit_needs_a_running_batcher():
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(DynamicBatcher(first_pixel).submit(images(0, 1)))
