"""Dynamic batching: images from requests that arrive together share one forward pass.

A CNN classifies 64 images in far less than 64 times the time of one. :class:`DynamicBatcher` queues every
request's images; one worker runs the model on whatever is waiting (up to ``max_batch``) in a thread and hands
each request its rows. An idle worker waits up to ``max_wait`` seconds for requests on their way
(:meth:`DynamicBatcher.arriving`), not at all for one alone. Beyond ``max_queue`` waiting images,
:class:`QueueFull` (503) rather than unbounded latency and memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Job = tuple[np.ndarray, "asyncio.Future[np.ndarray]"]


class QueueFull(Exception):
    """More images are waiting than the queue holds; try again shortly."""


class DynamicBatcher:
    """Runs ``predict`` (uint8 images (N, 32, 32, 3) -> probabilities (N, C)) on batches gathered across requests."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 64,
        max_wait: float = 0.002,
        max_queue: int = 256,
    ) -> None:
        self.predict, self.max_batch, self.max_wait, self.max_queue = predict, max_batch, max_wait, max_queue
        self.waiting = 0  # images queued, not yet taken into a batch
        self._arriving = 0  # requests on their way to submit()
        self._queue: asyncio.Queue[Job] | None = None
        self._changed: asyncio.Event | None = None  # set when a job is queued or a request stops arriving

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DynamicBatcher]:
        """Run the batching worker for the duration of the block (the server's lifespan)."""
        self._queue, self._changed = asyncio.Queue(), asyncio.Event()
        # One thread: forward passes run one at a time, each using all the threads PyTorch has.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarkit-model") as executor:
            worker = asyncio.create_task(self._work(executor))
            try:
                yield self
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
                self._fail_waiting(RuntimeError("the server is shutting down"))
                self._queue = self._changed = None

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way to :meth:`submit` (call submit after the block): an idle worker waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._changed is not None:
                self._changed.set()

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for ``images``, computed in a shared batch; :class:`QueueFull` if the queue is full."""
        if self._queue is None or self._changed is None:
            raise RuntimeError("the batcher is not running; use `async with batcher.running():`")
        if self.waiting + len(images) > self.max_queue:
            raise QueueFull(f"{self.waiting} images are waiting (the queue holds {self.max_queue})")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.waiting += len(images)
        self._queue.put_nowait((images, future))
        self._changed.set()
        return await future

    async def _work(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            self.waiting -= sum(len(images) for images, _ in jobs)
            jobs = [(images, future) for images, future in jobs if not future.cancelled()]  # clients gone
            if not jobs:
                continue
            try:
                probs = await loop.run_in_executor(executor, self.predict, np.concatenate([i for i, _ in jobs]))
            except Exception as e:  # a failed forward pass fails its requests, not the server
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for images, future in jobs:
                if not future.done():
                    future.set_result(probs[start : start + len(images)])
                start += len(images)

    async def _gather(self) -> list[Job]:
        """The next jobs: the first to arrive and all that join it, up to ``max_batch`` images."""
        assert self._queue is not None and self._changed is not None
        jobs = [await self._queue.get()]
        count = len(jobs[0][0])
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while count < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                count += len(jobs[-1][0])
                continue
            timeout = deadline - asyncio.get_running_loop().time()
            if not self._arriving or timeout <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return jobs

    def _fail_waiting(self, error: Exception) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(error)
        self.waiting = 0
