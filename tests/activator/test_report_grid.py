"""The load reporter keeps a fixed 1-second grid, on an event loop whose clock is virtual.

The autoscaler buckets load by whole seconds; a reporter that slept a second after each report
drifted by its own lateness and now and then left a bucket without a report.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Callable

from activator.stats import LoadTracker
from autoscaler.aggregation import StatSample


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the real file descriptors, and where the loop would wait, moves the clock instead."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self.advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            assert timeout is not None, "the loop would wait forever"
            self.advance(timeout)
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_JumpingSelector(self.advance))

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return self.now


class Sink:
    """Records when each report was taken; taking one costs `cost_s` of (virtual) time."""

    def __init__(self, loop: VirtualClockLoop, cost_s: float) -> None:
        self.loop = loop
        self.cost_s = cost_s
        self.stall_at: dict[int, float] = {}
        self.times: list[float] = []

    def report(self, samples: list[StatSample]) -> None:
        self.times.append(self.loop.time())
        self.loop.advance(self.cost_s + self.stall_at.get(len(self.times), 0.0))

    def poke(self, model: str) -> None:
        pass


def run_reporter(sink_setup: Callable[[VirtualClockLoop], Sink], seconds: float) -> tuple[float, list[float]]:
    loop = VirtualClockLoop()
    try:
        sink = sink_setup(loop)
        tracker = LoadTracker(sink, "a", clock=loop.time)
        tracker.get("m")
        start = loop.time()

        async def main() -> None:
            task = asyncio.ensure_future(tracker.run(1.0))
            await asyncio.sleep(seconds)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        loop.run_until_complete(main())
        return start, sink.times
    finally:
        loop.close()


def test_reports_stay_on_the_grid_whatever_each_report_costs() -> None:
    start, times = run_reporter(lambda loop: Sink(loop, cost_s=0.003), seconds=300.5)
    # Sleeping a second after each 3 ms report would put report 300 at +300.9 s, in the next bucket.
    assert len(times) == 300
    assert max(abs(t - start - k) for k, t in enumerate(times, 1)) < 1e-6


def test_a_stalled_loop_skips_the_missed_reports_instead_of_bursting() -> None:
    def stalled(loop: VirtualClockLoop) -> Sink:
        sink = Sink(loop, cost_s=0.003)
        sink.stall_at[10] = 3.5  # the 10th report blocks the loop until +13.503 s
        return sink

    start, times = run_reporter(stalled, seconds=20.5)
    offsets = [round(t - start, 6) for t in times]
    assert offsets == [*range(1, 11), *range(14, 21)]
