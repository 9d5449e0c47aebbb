"""Worker processes for the data stages: how many, and an ordered map over a forked pool."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def worker_count(requested: int) -> int:
    """``0`` means every core this process may use."""
    return requested or len(os.sched_getaffinity(0))


def fork_map(
    function: Callable[[Job], Result], jobs: Sequence[Job], workers: int, chunksize: int = 1
) -> Iterator[Result]:
    """``function`` over ``jobs``, results in order and lazily: in this process for one worker
    or one job, else on a pool of at most ``workers`` forked processes (forked, so that what
    the parent set up, a patched function included, reaches them)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(function, jobs, chunksize=chunksize)
