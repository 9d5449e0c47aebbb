"""The data stages' worker pool: results in job order, in this process or on forked workers."""

from __future__ import annotations

import os

import pytest

from imgpipe.data.workers import fork_map, worker_count


def square_and_pid(job: int) -> tuple[int, int]:
    return job * job, os.getpid()


@pytest.mark.parametrize("workers", [1, 3])
def test_results_come_in_job_order(workers: int) -> None:
    jobs = list(range(40))
    results = list(fork_map(square_and_pid, jobs, workers, chunksize=2))
    assert [value for value, _ in results] == [job * job for job in jobs]
    in_parent = {pid for _, pid in results} == {os.getpid()}
    assert in_parent == (workers == 1)


def test_one_job_runs_in_this_process() -> None:
    assert list(fork_map(square_and_pid, [5], workers=4)) == [(25, os.getpid())]


def test_zero_workers_means_every_usable_core() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
