"""Running the model off the event loop: each request on its own (``DirectRunner``), or the images of concurrent
requests gathered into one forward pass (``MicroBatcher``).

Both hand the blocking work to a thread pool, so the event loop keeps accepting and reading uploads while the
model runs. The batcher takes the first waiting request, waits ``max_wait`` for others (requests that come in
while a batch runs are waiting already), runs up to ``max_batch`` images at once and hands each request its own
rows back. A request whose client has gone is skipped when its rows come back; an error fails every request of
its batch and the batcher goes on with the next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import torch

log = logging.getLogger("medimg.serve")
Run = Callable[[torch.Tensor], np.ndarray]


class DirectRunner:
    """One forward pass per request, in the thread pool."""

    def __init__(self, run: Run, executor: Executor):
        self.run, self.executor = run, executor

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def probs(self, x: torch.Tensor) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, x)


class MicroBatcher:
    """Concurrent requests' images in shared forward passes of at most ``max_batch`` images (a request with
    more images than that runs alone)."""

    def __init__(self, run: Run, executor: Executor, max_batch: int, max_wait_s: float):
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self._carry: tuple[torch.Tensor, asyncio.Future] | None = None
        self._task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # images per forward pass, the latest 1000 (for logs and tests)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name="medimg-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting = [self._carry] if self._carry else []
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for _, future in waiting:
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))

    async def probs(self, x: torch.Tensor) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def _next_batch(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        first = self._carry or await self.queue.get()
        self._carry = None
        if self.max_wait_s > 0:
            await asyncio.sleep(self.max_wait_s)
        batch, size = [first], len(first[0])
        while size < self.max_batch and not self.queue.empty():
            item = self.queue.get_nowait()
            if size + len(item[0]) > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            live = [(x, f) for x, f in batch if not f.done()]
            if not live:
                continue
            x = torch.cat([b[0] for b in live])
            self.batch_sizes = [*self.batch_sizes[-999:], len(x)]
            try:
                probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, x)
            except Exception as e:  # handed to the requests of this batch; the batcher goes on
                log.exception("a batch of %d image(s) failed", len(x))
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for xi, future in live:
                if not future.done():
                    future.set_result(probs[start:start + len(xi)])
                start += len(xi)
