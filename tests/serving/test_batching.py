"""Micro-batching: the batcher alone, and concurrent requests to a live server sharing calls."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from imgpipe.data.splits import SplitArrays
from imgpipe.serving.batching import MicroBatcher
from tests.serving.live import LiveServer, metric_value, uploads


def test_micro_batcher_joins_concurrent_requests_up_to_its_cap() -> None:
    calls: list[int] = []

    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(batch))
        time.sleep(0.02)
        return batch.reshape(len(batch), -1).astype(float), batch.reshape(len(batch), -1) * 2.0

    sizes = [1 + i % 3 for i in range(20)] + [20]  # the last request alone exceeds the cap

    async def scenario() -> list[tuple[np.ndarray, np.ndarray]]:
        async with MicroBatcher(infer, max_batch=16, window_s=0.01) as batcher:
            return await asyncio.gather(
                *(batcher.predict(np.full((size, 1), i)) for i, size in enumerate(sizes))
            )

    results = asyncio.run(scenario())
    for i, (probabilities, embeddings) in enumerate(results):  # each gets its own rows back
        assert probabilities.shape == (sizes[i], 1) and (probabilities == i).all()
        assert (embeddings == 2 * i).all()
    assert sum(calls) == sum(sizes)
    assert len(calls) < 10 and max(calls[:-1]) > 1  # joined
    assert 20 in calls and all(size <= 16 for size in calls if size != 20)  # capped, not split


def test_micro_batcher_passes_inference_errors_to_every_waiter() -> None:
    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("model exploded")

    async def scenario() -> list[BaseException | tuple[np.ndarray, np.ndarray]]:
        async with MicroBatcher(infer, max_batch=8, window_s=0.01) as batcher:
            return await asyncio.gather(
                *(batcher.predict(np.zeros((1, 1))) for _ in range(3)), return_exceptions=True
            )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(scenario()))


def test_concurrent_requests_over_loopback_are_batched(
    live_server: LiveServer, test_split: SplitArrays
) -> None:
    import httpx

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post("/predict", files=uploads(test_split.images[i : i + 1]))
                    for i in range(48)
                )
            )

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * 48
    metrics = httpx.get(f"{live_server.url}/metrics").text
    batches = metric_value(metrics, "imgpipe_inference_batch_images_count")
    assert metric_value(metrics, "imgpipe_inference_batch_images_sum") == 48
    assert batches < 48  # some requests shared an onnxruntime call
