"""Micro-batching: the images of concurrent requests joined into one onnxruntime call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Outputs = tuple[np.ndarray, np.ndarray]  # probabilities, embeddings


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future[Outputs]


class MicroBatcher:
    """Joins the images of concurrent requests into batches for one inference thread.

    A batch starts with whatever is queued, up to ``max_batch`` images; when that is less it waits
    up to ``window_s`` for more. While a batch runs, new requests queue up and form the next one,
    so under load batches fill without waiting.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], Outputs],
        max_batch: int,
        window_s: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._infer = infer
        self._max_batch = max_batch
        self._window_s = window_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imgpipe-inference")
        self._task: asyncio.Task[None] | None = None
        self._held: _Pending | None = None  # took from the queue, but did not fit the batch

    async def __aenter__(self) -> MicroBatcher:
        self._task = asyncio.create_task(self._run(), name="imgpipe-batcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def predict(self, images: np.ndarray) -> Outputs:
        """Probabilities and embeddings for ``N x H x W x C`` uint8 images."""
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(images, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = await self._next_batch()
            count = sum(len(p.images) for p in pending)
            batch = np.concatenate([p.images for p in pending])
            self._on_batch(count)
            try:
                probabilities, embeddings = await loop.run_in_executor(
                    self._executor, self._infer, batch
                )
            except Exception as error:  # every waiting request gets the failure
                for p in pending:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            offset = 0
            for p in pending:
                end = offset + len(p.images)
                if not p.future.done():  # its client may have gone away
                    p.future.set_result((probabilities[offset:end], embeddings[offset:end]))
                offset = end

    async def _next_batch(self) -> list[_Pending]:
        """Requests whose images add up to at most ``max_batch`` (a request is never split: one
        larger than that runs alone), waiting up to the window for company. A request that
        would overflow the batch starts the next one."""
        loop = asyncio.get_running_loop()
        first, self._held = self._held or await self._queue.get(), None
        pending, count = [first], len(first.images)
        deadline = loop.time() + self._window_s
        while count < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if count + len(item.images) > self._max_batch:
                self._held = item
                break
            pending.append(item)
            count += len(item.images)
        return pending
