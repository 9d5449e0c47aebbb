"""A fake clock for the benchmarks' ``clock`` argument: timed sections take known seconds."""

from __future__ import annotations


class FakeClock:
    """Calls come in (start, end) pairs, one per timed section; the n-th section lasts
    ``seconds[n]``. ``calls`` counts the calls, so a test sees how many sections were timed."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = seconds
        self.calls = 0
        self.now = 1000.0

    def __call__(self) -> float:
        if self.calls % 2:
            self.now += self.seconds[self.calls // 2]
        self.calls += 1
        return self.now
